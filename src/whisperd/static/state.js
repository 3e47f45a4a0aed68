// What the page's panels share: one object, each field owned by the panel that sets it.

export const state = {
  models: [], // the models this server offers (form.js)
  defaultName: undefined, // the model whisper-1 stands for (form.js)
  file: null, // the chosen File (form.js)
  mediaUrl: null, // object URL of the file, or the pasted link (player.js)
  duration: null, // seconds, once the player has read the file's header (player.js)
  backgroundTouched: false, // whether the user ticked or unticked "background" (form.js)
  jobsEnabled: true, // false once the server said its jobs are off (jobs.js)
  running: null, // AbortController of the request that transcribes a file as it goes (upload.js)
  live: null, // the LiveSession of the microphone, while it runs (live.js)
  transcript: null, // {name, task, language, duration, segments, speakers, verbose?, live?} (transcript.js)
  watching: null, // the job id the transcript panel follows (jobs.js)
  retryAt: 0, // after a 429: when the server said to try again, ms since the epoch (messages.js)
};
