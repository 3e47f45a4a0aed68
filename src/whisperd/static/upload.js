// Sending the chosen file or link: transcribed as it goes (segments streamed into the transcript
// panel, or all at once with words or speakers), or submitted as a background job.
import { ApiError, api, apiJson } from "./api.js";
import { $ } from "./dom.js";
import { audioForm, liveMode, lockSource, options, sourceName } from "./form.js";
import { clock } from "./formats.js";
import { startJob, stopWatching } from "./jobs.js";
import { clearError, setProgress, setStatus, showError } from "./messages.js";
import { waitForDuration } from "./player.js";
import { events } from "./sse.js";
import { state } from "./state.js";
import { addSegment, revealTranscript, setExport, showSegments, showVerbose, startTranscript } from "./transcript.js";

function setRunning(controller) {
  state.running = controller;
  $("submit").disabled = Boolean(controller) || Date.now() < state.retryAt;
  $("stop").hidden = !controller;
  $("form").setAttribute("aria-busy", String(Boolean(controller)));
  lockSource();
}

async function submitJob(opts) {
  const form = audioForm(opts);
  form.append("response_format", "verbose_json");
  form.append("task", opts.task);
  if (opts.words) form.append("word_timestamps", "true");
  setRunning(new AbortController());
  setStatus("Uploading…");
  setProgress(null, "");
  try {
    await startJob(form, sourceName());
  } catch (err) {
    setProgress(undefined);
    setStatus("It didn't work: see why below the form.");
    showError(err);
  } finally {
    setRunning(null);
  }
}

async function runLive(opts) {
  const form = audioForm(opts);
  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  const verb = opts.task === "translate" ? "Translating" : "Transcribing";
  const name = sourceName();
  // The last transcript stays until this one starts: a refused request loses nothing.
  revealTranscript();
  setStatus(`${verb}…`);
  setProgress(null, "");
  try {
    const path = opts.task === "translate" ? "/v1/audio/translations" : "/v1/audio/transcriptions";
    if (opts.words || opts.speakers) {
      // The stream's events carry no words, nor speakers (known only once the whole file is
      // heard, when the stream would come at once anyway): ask for verbose_json.
      form.append("response_format", "verbose_json");
      if (opts.words) {
        form.append("timestamp_granularities[]", "word");
        form.append("timestamp_granularities[]", "segment");
        form.append("word_timestamps", "true");
      }
      const extra = opts.words ? (opts.speakers ? "word timestamps and speakers" : "word timestamps") : "speakers";
      setStatus(`${verb} with ${extra}… the segments appear when it is done.`);
      const result = await apiJson(path, { method: "POST", body: form, signal: controller.signal });
      startTranscript(name, opts.task);
      showVerbose(result);
    } else {
      form.append("stream", "true");
      const response = await api(path, { method: "POST", body: form, signal: controller.signal });
      startTranscript(name, opts.task);
      await readStream(response, verb);
    }
    const segments = state.transcript.segments;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setProgress(1, state.duration ? `${clock(state.duration)} of ${clock(state.duration)}` : "");
    setStatus(`Done: ${segments.length} segment${segments.length === 1 ? "" : "s"} in ${seconds} s.`);
    $("transcript-title").focus({ preventScroll: true });
  } catch (err) {
    setProgress(undefined);
    if (err.name === "AbortError") setStatus("Stopped.");
    else {
      setStatus("It didn't work: see why below the form.");
      showError(err);
    }
    const kept = state.transcript?.segments.length ?? 0;
    $("empty").hidden = kept > 0;
    setExport(kept > 0);
  } finally {
    setRunning(null);
  }
}

/** The streamed transcription's segments into the transcript, until its done event. */
async function readStream(response, verb) {
  for await (const event of events(response)) {
    if (event.type === "transcript.text.delta") {
      addSegment({ id: state.transcript.segments.length, start: event.start, end: event.end, text: event.delta });
      setExport(true);
      const of = state.duration ? ` of ${clock(state.duration)}` : "";
      setProgress(state.duration ? event.end / state.duration : null, `${clock(event.end)}${of}`);
      setStatus(`${verb}…`);
    } else if (event.type === "transcript.text.done") {
      if (event.usage?.seconds && !state.transcript.duration) state.transcript.duration = event.usage.seconds;
      if (!state.transcript.segments.length) showSegments([]);
      return;
    }
  }
  throw new ApiError(0, { message: "The connection closed before the transcript was finished." });
}

async function submit(event) {
  event.preventDefault();
  if (state.running || liveMode()) return;
  clearError();
  const url = $("url").value.trim();
  if (!state.file && !url) {
    showError(new ApiError(400), [
      "Choose a file or paste a link first.",
      "Drop a file on the box above, press it to pick one, or paste a link.",
    ]);
    $("drop").focus();
    return;
  }
  if (!state.file && !/^https?:\/\//i.test(url)) {
    showError(new ApiError(400), ["That link doesn't look right.", "Paste a link that starts with http:// or https://."]);
    $("url").focus();
    return;
  }
  // The choice between live and background needs the length: wait briefly for the header.
  if (state.mediaUrl && state.duration === null) await waitForDuration(3000);
  const opts = options();
  if ($("background").checked && !$("background").disabled) await submitJob(opts);
  else {
    stopWatching();
    await runLive(opts);
  }
}

/** Transcribe (or Translate) sends the audio; Stop aborts a transcription in progress. */
export function initUpload() {
  $("form").addEventListener("submit", submit);
  $("stop").addEventListener("click", () => state.running?.abort());
}
