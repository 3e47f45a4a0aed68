// The whisperd web page: plain JavaScript against the server's own API, nothing else.
import { ApiError, TYPE_STATUS, api, apiJson, explain } from "./api.js";
import { FINAL, WATCH_STORE, forgetJob, rememberJob, renderJobs, savedJobs } from "./jobs.js";
import { LiveSession, serverError } from "./realtime.js";
import { Speakers, editSpeaker, showSpeakers, speakerButton } from "./speakers.js";
import { clock, fitCues, parseCues, toJson, toLines, toSrt, toText, toVtt } from "./formats.js";

const $ = (id) => document.getElementById(id);
const VIDEO_EXT = /\.(mp4|m4v|mov|webm|mkv|ogv|avi)(\?|#|$)/i;
const LANGUAGES = ("af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr " +
  "gl gu ha haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn " +
  "mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th " +
  "tk tl tr tt uk ur uz vi yi yo yue zh").split(" ");

const params = new URLSearchParams(location.search);
const threshold = {
  seconds: Number(params.get("job_threshold_seconds") ?? document.body.dataset.jobThresholdSeconds),
  bytes: Number(params.get("job_threshold_mb") ?? document.body.dataset.jobThresholdMb) * 1024 * 1024,
};

const state = {
  models: [],
  file: null, // the chosen File
  mediaUrl: null, // object URL of the file, or the pasted link
  duration: null, // seconds, once the player has read the file's header
  backgroundTouched: false,
  jobsEnabled: true,
  running: null, // AbortController of the request that transcribes a file as it goes
  live: null, // the LiveSession of the microphone, while it runs
  transcript: null, // {name, task, language, duration, segments, speakers, verbose?, live?}
  watching: null, // the job id the transcript panel follows
  retryAt: 0, // after a 429: when the server said to try again (ms since the epoch)
};

// --- messages -----------------------------------------------------------------------------------
function showError(err, override = null) {
  const [title, hint] = override ?? explain(err);
  $("error-title").textContent = title;
  $("error-hint").textContent = hint;
  const detail = err.error?.message || "";
  $("error-detail").textContent = detail && detail !== title ? `Server said: ${detail}` : "";
  $("error").hidden = false;
  $("error").scrollIntoView({ block: "nearest" });
  $("error").focus({ preventScroll: true });
  if (err.status === 429) {
    const until = (state.retryAt = Date.now() + (Number(err.retryAfter) || 5) * 1000);
    $("submit").disabled = true;
    const tick = setInterval(() => {
      const left = Math.ceil((until - Date.now()) / 1000);
      if (left > 0 && !$("error").hidden) {
        $("error-title").textContent = `The server is busy; try again in ${left} seconds.`;
        return;
      }
      clearInterval(tick);
      state.retryAt = 0;
      $("submit").disabled = Boolean(state.running);
    }, 1000);
  }
}

function clearError() {
  $("error").hidden = true;
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 2200);
}

// --- models, language, task -----------------------------------------------------------------
function selectedModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function languageName(code, names) {
  try {
    const name = names?.of(code);
    if (name && name !== code) return name;
  } catch {
    /* not a code Intl knows */
  }
  return code;
}

function fillLanguages() {
  const names = "DisplayNames" in Intl ? new Intl.DisplayNames(["en"], { type: "language" }) : null;
  const entries = LANGUAGES.map((code) => [code, languageName(code, names)]);
  entries.sort((a, b) => a[1].localeCompare(b[1]));
  for (const [code, name] of entries) $("language").add(new Option(name, code));
}

async function loadModels() {
  try {
    const { data } = await apiJson("/v1/models");
    state.models = data.filter((m) => m.available || m.loaded);
    const real = data.find((m) => m.default && m.id !== "whisper-1");
    const select = $("model");
    select.replaceChildren();
    for (const m of state.models) {
      let label = m.id;
      if (m.id === "whisper-1" && real) label += ` (${real.id})`;
      else if (!m.loaded) label += " (loads when used)";
      select.add(new Option(label, m.id));
    }
    state.defaultName = real?.id;
    select.value = "whisper-1";
    $("server").textContent = real ? `Ready · ${real.id}` : "Ready";
    $("server").classList.add("ok");
  } catch (err) {
    $("server").textContent = err.status === 401 ? "API key needed" : "Server not reachable";
    $("server").classList.add("bad");
  }
  updateOptions();
}

function updateOptions() {
  const model = selectedModel();
  const englishOnly = model?.multilingual === false;
  const name = model?.id === "whisper-1" ? state.defaultName ?? "the default model" : model?.id;
  const translate = $("translate");
  translate.disabled = englishOnly;
  if (englishOnly && translate.checked) document.querySelector("input[name=task][value=transcribe]").checked = true;
  // Task is for files: a live session transcribes
  const task = liveMode() ? "transcribe" : document.querySelector("input[name=task]:checked").value;
  $("task-note").hidden = !englishOnly;
  $("task-note").textContent = englishOnly
    ? `Translation needs a multilingual model; ${name} understands English only.`
    : "";

  const language = $("language");
  language.disabled = englishOnly || task === "translate";
  if (englishOnly) language.value = "en";
  else if (language.value === "en" && language.dataset.forced) language.value = "";
  language.dataset.forced = englishOnly ? "1" : "";
  $("language-note").hidden = !(task === "translate" && !englishOnly);
  $("language-note").textContent = "Translation detects the spoken language itself.";

  // OpenAI's translation route has no word timestamps, nor speakers.
  $("words").disabled = task === "translate";
  if (task === "translate") $("words").checked = false;
  for (const radio of document.querySelectorAll("input[name=speakers]")) radio.disabled = task === "translate";
  if (task === "translate") document.querySelector("input[name=speakers][value='']").checked = true;
  const speakers = document.querySelector("input[name=speakers]:checked").value;
  $("speakers-note").hidden = !(task === "translate" || speakers);
  $("speakers-note").textContent = SPEAKER_NOTES[task === "translate" ? "translate" : speakers] ?? "";
  // A job transcribes the channels mixed down: by channel runs here.
  const background = $("background");
  background.disabled = !state.jobsEnabled || speakers === "channel";
  if (background.disabled) background.checked = false;
  $("submit").textContent = task === "translate" ? "Translate" : "Transcribe";
  updateModeNote();
}

const SPEAKER_NOTES = {
  voice: "Speakers are told apart by their voices; the segments appear when it is done.",
  channel: "For stereo calls: each channel is one speaker.",
  translate: "Speakers are labelled in transcriptions, not translations.",
};

function updateModeNote() {
  const note = $("mode-note");
  if (!state.jobsEnabled) note.textContent = "Background jobs are off on this server: every file runs live.";
  else if (document.querySelector("input[name=speakers]:checked").value === "channel")
    note.textContent = "By channel runs live: a background job would mix the channels into one.";
  else if ($("background").checked)
    note.textContent = "Runs as a background job: you can leave this page and come back to it.";
  else note.textContent = "Runs live: segments appear as they are transcribed.";
}

$("model").addEventListener("change", updateOptions);

// --- a file or the microphone ---------------------------------------------------------------------
const HINTS = {
  file: $("status").textContent,
  live: "Press Start listening, then speak.",
};

function liveMode() {
  return document.querySelector("input[name=source]:checked").value === "live";
}

function showSource() {
  const source = liveMode() ? "live" : "file";
  for (const part of document.querySelectorAll("[data-source]")) part.hidden = part.dataset.source !== source;
  if (!state.transcript && !state.watching) setStatus(HINTS[source]);
  updateOptions();
}

/** While a file or the microphone is being transcribed, the other can't be chosen. */
function lockSource() {
  const busy = Boolean(state.running || state.live);
  for (const radio of document.querySelectorAll("input[name=source]")) radio.disabled = busy;
}

for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", showSource);
for (const radio of document.querySelectorAll("input[name=task]")) radio.addEventListener("change", updateOptions);
for (const radio of document.querySelectorAll("input[name=speakers]")) {
  radio.addEventListener("change", () => {
    updateOptions();
    describeChoice(); // leaving By channel, a long file is a background job again
  });
}
$("background").addEventListener("change", () => {
  state.backgroundTouched = true;
  updateModeNote();
});

// --- choosing the audio ------------------------------------------------------------------------
function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

function player() {
  return $("video").hidden ? $("audio") : $("video");
}

let metadata = null; // resolves when the player knows the duration (or cannot)

function loadPlayer(src, isVideo) {
  if (state.mediaUrl?.startsWith("blob:")) URL.revokeObjectURL(state.mediaUrl);
  state.mediaUrl = src;
  state.duration = null;
  for (const el of [$("audio"), $("video")]) {
    el.pause();
    el.removeAttribute("src");
    el.load();
  }
  $("audio").hidden = isVideo;
  $("video").hidden = !isVideo;
  $("player").hidden = !src;
  if (!src) {
    metadata = Promise.resolve(null);
    return;
  }
  const el = player();
  metadata = new Promise((resolve) => {
    const finish = (event) => {
      el.removeEventListener("loadedmetadata", finish);
      el.removeEventListener("error", finish);
      // The browser can't play every format the server reads: then there is no player.
      if (event.type === "error" && state.mediaUrl === src) $("player").hidden = true;
      const d = el.duration;
      resolve(Number.isFinite(d) && d > 0 ? d : null);
    };
    el.addEventListener("loadedmetadata", finish);
    el.addEventListener("error", finish);
  });
  metadata.then((duration) => {
    if (state.mediaUrl !== src) return; // another file was chosen since
    state.duration = duration;
    describeChoice();
  });
  el.src = src;
}

/** Show the chosen file, and pick live or background by its size and length. */
function describeChoice() {
  const file = state.file;
  if (file) {
    const meta = [formatBytes(file.size)];
    if (state.duration) meta.push(clock(state.duration));
    $("chosen-name").textContent = file.name;
    $("chosen-meta").textContent = meta.join(" · ");
    $("chosen").hidden = false;
  }
  const long = (file?.size ?? 0) > threshold.bytes || (state.duration ?? 0) > threshold.seconds;
  if (!state.backgroundTouched && !$("background").disabled) $("background").checked = long;
  updateModeNote();
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.backgroundTouched = false;
  $("url").value = "";
  clearError();
  loadPlayer(URL.createObjectURL(file), file.type.startsWith("video/"));
  describeChoice();
}

function clearFile() {
  state.file = null;
  $("file").value = "";
  $("chosen").hidden = true;
  loadPlayer(null, false);
  if (!state.backgroundTouched) $("background").checked = false;
  updateModeNote();
}

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file").click();
  }
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  chooseFile(event.dataTransfer.files[0]);
});
$("file").addEventListener("change", () => chooseFile($("file").files[0]));
$("clear").addEventListener("click", () => {
  clearFile();
  drop.focus();
});
$("url").addEventListener("change", () => {
  const url = $("url").value.trim();
  if (!url) return;
  if (state.file) clearFile();
  state.backgroundTouched = false;
  loadPlayer(url, VIDEO_EXT.test(url));
});

// --- the transcript ------------------------------------------------------------------------------
const EMPTY_TEXT = $("empty").querySelector("p").textContent;
const SEGMENTS_LABEL = $("segments").getAttribute("aria-label");
function startTranscript(name, task) {
  const speakers = new Speakers();
  state.transcript = { name, task, language: null, duration: state.duration, segments: [], speakers };
  showSpeakers(speakers);
  revealTranscript();
  delete $("transcript-title").closest(".card").dataset.live;
  $("segments").setAttribute("aria-label", SEGMENTS_LABEL);
  $("segments").replaceChildren();
  active = activeWord = null;
  $("empty").hidden = true;
  $("empty").querySelector("p").textContent = EMPTY_TEXT;
  setExport(false);
}

/** On a phone the transcript is below the form: bring it up so that the progress is seen. */
function revealTranscript() {
  const card = $("transcript-title").closest(".card");
  if (card.getBoundingClientRect().top > innerHeight * 0.6) card.scrollIntoView({ behavior: "smooth" });
}

function addSegment(segment) {
  const { segments, speakers } = state.transcript;
  const before = segments.at(-1);
  segments.push(segment);
  const li = document.createElement("li");
  if (segment.speaker != null) {
    if (speakers.add(segment.speaker)) showSpeakers(speakers);
    li.dataset.speaker = segment.speaker;
    li.style.setProperty("--speaker", speakers.colour(segment.speaker));
    // A label where the speaker changes: a turn's segments are one block under it.
    if (before?.speaker !== segment.speaker) {
      li.classList.add("turn-start");
      li.append(speakerButton(speakers, segment.speaker, "tag"));
    }
  }
  const button = document.createElement("button");
  button.type = "button";
  button.className = "segment";
  button.dataset.index = String(state.transcript.segments.length - 1);
  button.dataset.start = String(segment.start);
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = clock(segment.start);
  const text = document.createElement("span");
  text.className = "text";
  if (segment.words?.length) {
    for (const word of segment.words) {
      const span = document.createElement("span");
      span.className = "word";
      span.dataset.start = word.start;
      span.dataset.end = word.end;
      span.textContent = word.word + " ";
      text.append(span);
    }
  } else {
    text.textContent = segment.text.trim();
  }
  button.append(time, text);
  li.append(button);
  $("segments").append(li);
}

function showSegments(segments) {
  for (const s of segments) addSegment(s);
  if (!segments.length) {
    $("empty").hidden = false;
    $("empty").querySelector("p").textContent = "No speech was found in this audio.";
  }
  setExport(segments.length > 0);
}

for (const list of [$("segments"), $("speaker-list")]) {
  list.addEventListener("click", (event) => {
    const button = event.target.closest(".speaker");
    if (button && state.transcript) editSpeaker(state.transcript.speakers, button);
  });
}

$("segments").addEventListener("click", (event) => {
  const button = event.target.closest(".segment");
  if (!button || !state.transcript) return;
  const segment = state.transcript.segments[Number(button.dataset.index)];
  const word = event.target.closest(".word");
  const el = player();
  if ($("player").hidden) return;
  el.currentTime = word ? Number(word.dataset.start) : segment.start;
  el.play().catch(() => {}); // autoplay rules may refuse; the seek stands
  highlight();
});

let active = null;
let activeWord = null;

/** Mark the segment (and word) under the playhead; keep it in view while it plays. */
function highlight() {
  const segments = state.transcript?.segments ?? [];
  const t = player().currentTime;
  let index = -1;
  for (let i = 0; i < segments.length && segments[i].start <= t + 0.05; i++) index = i;
  const button = index >= 0 ? $("segments").children[index]?.querySelector(".segment") : null;
  if (button !== active) {
    active?.removeAttribute("aria-current");
    button?.setAttribute("aria-current", "true");
    active = button;
    if (button && !player().paused) button.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
  let word = null;
  for (const span of button?.querySelectorAll(".word") ?? []) if (Number(span.dataset.start) <= t) word = span;
  if (word !== activeWord) {
    activeWord?.classList.remove("on");
    word?.classList.add("on");
    activeWord = word;
  }
}

for (const el of [$("audio"), $("video")]) {
  el.addEventListener("timeupdate", highlight);
  el.addEventListener("seeked", highlight);
}

function setExport(enabled) {
  $("copy").disabled = !enabled;
  for (const b of document.querySelectorAll("[data-format]")) b.disabled = !enabled;
  // cues are cut at words: only a transcript with word timestamps can be
  $("cue-width").disabled = !enabled || !state.transcript?.segments.some((s) => s.words?.length);
}

/** The SRT/VTT cues of `segments`: a segment each, or fit for a screen as the menu says. */
function cues(segments) {
  const width = Number($("cue-width").value);
  return width && !$("cue-width").disabled ? fitCues(segments, width) : segments;
}

/** Plain text: a live transcript a line per turn, a file's as the API writes it (with
 * speakers, a line per speaker's turn). */
const plainText = (t) => (t.live ? toLines(t.segments) : toText(t.speakers.named(t.segments)));

// Downloads name the speakers as they were named on the page.
const EXPORTS = {
  txt: ["text/plain", plainText],
  srt: ["application/x-subrip", (t) => toSrt(cues(t.speakers.named(t.segments)))],
  vtt: ["text/vtt", (t) => toVtt(cues(t.speakers.named(t.segments)))],
  json: ["application/json", (t) => toJson(t, (label) => t.speakers.name(label))],
};

for (const button of document.querySelectorAll("[data-format]")) {
  button.addEventListener("click", () => {
    const format = button.dataset.format;
    const [type, render] = EXPORTS[format];
    const blob = new Blob([render(state.transcript)], { type: `${type};charset=utf-8` });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.transcript.name.replace(/\.[^.]+$/, "") || "transcript"}.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  });
}

$("copy").addEventListener("click", async () => {
  const text = plainText(state.transcript);
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (plain http on another host): the old way still works.
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied the transcript");
});

function setProgress(fraction, text) {
  $("progress-row").hidden = fraction === undefined;
  if (fraction === null) $("progress").removeAttribute("value");
  else if (fraction !== undefined) $("progress").value = Math.min(100, Math.max(0, fraction * 100));
  $("progress-text").textContent = text ?? "";
}

function setStatus(text) {
  $("status").textContent = text;
}

// --- running it live ------------------------------------------------------------------------------
function options() {
  const task = document.querySelector("input[name=task]:checked").value;
  return {
    task,
    model: $("model").value,
    language: task === "translate" ? "" : $("language").value,
    words: $("words").checked,
    vad: $("vad").checked,
    speakers: task === "translate" ? "" : document.querySelector("input[name=speakers]:checked").value,
  };
}

function sourceName() {
  if (state.file) return state.file.name;
  const url = $("url").value.trim();
  try {
    return decodeURIComponent(new URL(url).pathname.split("/").pop()) || "transcript";
  } catch {
    return "transcript";
  }
}

function audioForm(opts) {
  const form = new FormData();
  if (state.file) form.append("file", state.file);
  else form.append("url", $("url").value.trim());
  form.append("model", opts.model);
  if (opts.language) form.append("language", opts.language);
  form.append("vad_filter", String(opts.vad));
  if (opts.speakers === "voice") form.append("diarize", "true");
  if (opts.speakers === "channel") form.append("multichannel", "true");
  return form;
}

function setRunning(controller) {
  state.running = controller;
  $("submit").disabled = Boolean(controller) || Date.now() < state.retryAt;
  $("stop").hidden = !controller;
  $("form").setAttribute("aria-busy", String(Boolean(controller)));
  lockSource();
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

async function readStream(response, verb) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer
        .slice(0, end)
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim())
        .join("\n");
      buffer = buffer.slice(end + 2);
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(TYPE_STATUS[event.error.type] ?? 500, event.error);
      if (event.type === "transcript.text.delta") {
        addSegment({ id: event.segment_id, start: event.start, end: event.end, text: event.delta });
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
  }
  throw new ApiError(0, { message: "The connection closed before the transcript was finished." });
}

function showVerbose(result) {
  state.transcript.verbose = result;
  state.transcript.task = result.task ?? state.transcript.task;
  state.transcript.language = result.language ?? null;
  state.transcript.duration = result.duration ?? state.transcript.duration;
  const words = result.words ?? [];
  const segments = (result.segments ?? []).map((s) => ({
    id: s.id,
    start: s.start,
    end: s.end,
    text: s.text,
    speaker: s.speaker,
    words: words.filter((w) => w.start >= s.start - 0.01 && w.end <= s.end + 0.01),
  }));
  if (!segments.length && result.text) segments.push({ id: 0, start: 0, end: result.duration ?? 0, text: result.text });
  showSegments(segments);
}

$("stop").addEventListener("click", () => state.running?.abort());

// --- live from the microphone ------------------------------------------------------------------
const LIVE_BUTTON = { starting: "Starting…", listening: "Stop listening", stopping: "Stopping…" };

function setLive(live, phase) {
  state.live = live;
  const button = $("live");
  button.textContent = live ? LIVE_BUTTON[phase] : "Start listening";
  // aria-disabled rather than disabled: a disabled button would lose the keyboard's focus
  button.setAttribute("aria-disabled", String(phase === "starting" || phase === "stopping"));
  button.classList.toggle("on", phase === "listening");
  $("form").setAttribute("aria-busy", String(Boolean(live)));
  lockSource();
}

async function startLive() {
  clearError();
  clearTimeout(watchTimer);
  state.watching = null;
  localStorage.removeItem(WATCH_STORE);
  const live = new LiveSession({
    model: $("model").value,
    language: $("language").value,
    onEvent: (event) => liveEvent(live, event),
    onError: (err) => showError(err, err.explained),
    onEnd: () => endLive(live),
  });
  setLive(live, "starting");
  setStatus("Opening the microphone…");
  try {
    await live.start();
  } catch (err) {
    setLive(null);
    setStatus("It didn't work: see why below the form.");
    showError(err, err.explained);
    return;
  }
  showLive(live);
  setLive(live, "listening");
  setStatus("Listening: speak, and each pause ends a line.");
}

function stopLive() {
  setLive(state.live, "stopping");
  setStatus("Finishing the last line…");
  state.live.stop();
}

$("live").addEventListener("click", () => {
  if ($("live").getAttribute("aria-disabled") === "true") return;
  if (state.live) stopLive();
  else startLive();
});

/** The transcript panel, given over to `live` (once). */
function showLive(live) {
  if (state.transcript?.live === live) return;
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const day = `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
  startTranscript(`live-${day}-${pad(now.getHours())}${pad(now.getMinutes())}`, "transcribe");
  state.transcript.live = live;
  $("transcript-title").closest(".card").dataset.live = "";
  $("segments").setAttribute("aria-label", "Live transcript: a line for each turn");
  $("empty").hidden = false;
  $("empty").querySelector("p").textContent = "Listening. The text appears here as you speak.";
}

/** The line of turn `id`, made (as partial text) when it is first heard of. */
function turnLine(id, start) {
  for (const li of $("segments").children) if (li.dataset.item === id) return li;
  const li = document.createElement("li");
  li.className = "turn partial";
  li.dataset.item = id;
  const last = state.transcript.segments.at(-1);
  li.dataset.start = String(start ?? last?.end ?? 0);
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = clock(Number(li.dataset.start));
  const text = document.createElement("span");
  text.className = "text";
  li.append(time, text);
  $("segments").append(li);
  $("empty").hidden = true;
  return li;
}

function liveEvent(live, event) {
  showLive(live);
  const list = $("segments");
  const following = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const id = event.item_id;
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      turnLine(id, event.audio_start_ms / 1000);
      break;
    case "conversation.item.input_audio_transcription.delta":
      // Deltas only ever add to the text: what was shown stays.
      turnLine(id).querySelector(".text").textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed":
      settleTurn(turnLine(id), event.transcript.trim(), event.usage?.seconds ?? 0);
      break;
    case "conversation.item.input_audio_transcription.failed": {
      turnLine(id).remove();
      const err = serverError(event.error);
      showError(err, err.explained);
      break;
    }
  }
  if (following) list.scrollTop = list.scrollHeight;
}

/** A turn's final text replaces its partial text; a turn with no words (a cough) goes. */
function settleTurn(li, text, seconds) {
  if (!text) return li.remove();
  li.classList.remove("partial");
  li.querySelector(".text").textContent = text;
  const segments = state.transcript.segments;
  const start = Number(li.dataset.start);
  segments.push({ id: segments.length, start, end: start + seconds, text });
  setExport(true);
}

function endLive(live) {
  setLive(null);
  if (state.transcript?.live !== live) return;
  // What was still partial never got its final text; what holds no text at all goes.
  for (const li of $("segments").querySelectorAll(".turn.partial")) {
    if (!li.querySelector(".text").textContent.trim()) li.remove();
  }
  const n = state.transcript.segments.length;
  $("empty").hidden = $("segments").children.length > 0;
  $("empty").querySelector("p").textContent = "No speech was heard.";
  setStatus(`Stopped: ${n} line${n === 1 ? "" : "s"}.`);
}

// --- background jobs ----------------------------------------------------------------------------
async function submitJob(opts) {
  const form = audioForm(opts);
  form.append("response_format", "verbose_json");
  form.append("task", opts.task);
  if (opts.words) form.append("word_timestamps", "true");
  setRunning(new AbortController());
  setStatus("Uploading…");
  setProgress(null, "");
  try {
    const job = await apiJson("/v1/jobs", { method: "POST", body: form });
    rememberJob(job, sourceName());
    watch(job.id, sourceName());
    refreshJobs();
  } catch (err) {
    setProgress(undefined);
    setStatus("It didn't work: see why below the form.");
    showError(err);
  } finally {
    setRunning(null);
  }
}

let watchTimer = null;

/** Follow a job in the transcript panel until it ends, then show its transcript. */
function watch(id, name) {
  clearTimeout(watchTimer);
  state.watching = id;
  localStorage.setItem(WATCH_STORE, id);
  startTranscript(name, "transcribe");
  setStatus("Queued…");
  setProgress(0, "");
  poll();

  async function poll() {
    if (state.watching !== id) return;
    let job;
    try {
      job = await apiJson(`/v1/jobs/${id}`);
    } catch (err) {
      if (err.status === 404) {
        forgetJob(id);
        setProgress(undefined);
        setStatus("That job is gone: finished jobs are kept for a day, then deleted.");
        $("empty").hidden = false;
        return;
      }
      watchTimer = setTimeout(poll, 3000); // the server may be restarting: keep trying
      return;
    }
    showJobProgress(job);
    if (!FINAL.has(job.status)) {
      watchTimer = setTimeout(poll, 1000);
      return;
    }
    localStorage.removeItem(WATCH_STORE);
    if (job.status === "succeeded") openResult(job);
    else if (job.status === "cancelled") {
      setStatus("The job was cancelled.");
      $("empty").hidden = false;
    } else {
      setProgress(undefined);
      setStatus("The job failed.");
      showError(new ApiError(-1, job.error), ["The job failed.", "See below why; fix that and submit it again."]);
      $("empty").hidden = false;
    }
    refreshJobs();
  }
}

function showJobProgress(job) {
  const { seconds, duration } = job.progress;
  const fraction = job.status === "succeeded" ? 1 : duration ? seconds / duration : 0;
  const text = duration ? `${clock(seconds)} of ${clock(duration)}` : "";
  setProgress(fraction, text);
  const words = {
    queued: "Waiting in the queue…",
    running: `${job.task === "translate" ? "Translating" : "Transcribing"} in the background; you can leave this page and come back.`,
    succeeded: "Done.",
    failed: "Failed.",
    cancelled: "Cancelled.",
  };
  setStatus(job.cancel_requested && !FINAL.has(job.status) ? "Cancelling…" : words[job.status]);
}

function openResult(job) {
  const result = job.result;
  if (result && typeof result === "object" && Array.isArray(result.segments)) showVerbose(result);
  else if (typeof result === "string" && result.includes("-->")) showSegments(parseCues(result));
  else {
    const text = typeof result === "string" ? result : result?.text ?? "";
    const end = job.progress.duration ?? 0;
    showSegments(text.trim() ? [{ id: 0, start: 0, end, text }] : []);
  }
  const n = state.transcript.segments.length;
  setStatus(`Done: ${n} segment${n === 1 ? "" : "s"} from a background job.`);
}

async function openJob(id, name) {
  clearError();
  clearTimeout(watchTimer);
  state.watching = id;
  // The player keeps the chosen file when the job came from it; other jobs have no media here.
  if (state.file && state.file.name !== name) clearFile();
  startTranscript(name, "transcribe");
  try {
    const job = await apiJson(`/v1/jobs/${id}`);
    if (job.input?.type === "url" && job.input.url && state.mediaUrl !== job.input.url) {
      loadPlayer(job.input.url, VIDEO_EXT.test(job.input.url));
    }
    showJobProgress(job);
    openResult(job);
    $("transcript-title").focus();
  } catch (err) {
    showError(err);
  }
}

async function cancelJob(id) {
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
    toast("Cancel requested");
  } catch (err) {
    showError(err);
  }
  refreshJobs();
}

let jobsTimer = null;

async function refreshJobs() {
  clearTimeout(jobsTimer);
  if (!state.jobsEnabled) return;
  let jobs;
  try {
    const list = await apiJson("/v1/jobs?limit=20");
    jobs = list.data;
    // Jobs from this browser that have dropped off the first page are still ours to show.
    const listed = new Set(jobs.map((j) => j.id));
    const missing = savedJobs().filter((j) => !listed.has(j.id)).slice(0, 10);
    for (const saved of missing) {
      try {
        jobs.push(await apiJson(`/v1/jobs/${saved.id}`));
      } catch (err) {
        if (err.status === 404) forgetJob(saved.id);
      }
    }
  } catch (err) {
    if (err.status === 503 && /jobs are off/i.test(err.message)) {
      state.jobsEnabled = false;
      $("jobs-card").hidden = true;
      updateOptions();
    } else {
      $("jobs-note").textContent = "Couldn't load the jobs: " + explain(err)[0];
      $("jobs-note").hidden = false;
    }
    return;
  }
  jobs.sort((a, b) => b.created_at - a.created_at);
  renderJobs(jobs, { open: openJob, follow: watch, cancel: cancelJob });
  if (jobs.some((j) => !FINAL.has(j.status))) jobsTimer = setTimeout(refreshJobs, 2000);
}

$("jobs-refresh").addEventListener("click", refreshJobs);

// --- submit -------------------------------------------------------------------------------------
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.running || liveMode()) return;
  clearError();
  const url = $("url").value.trim();
  if (!state.file && !url) {
    showError(new ApiError(400), [
      "Choose a file or paste a link first.",
      "Drop a file on the box above, press it to pick one, or paste a link.",
    ]);
    drop.focus();
    return;
  }
  if (!state.file && !/^https?:\/\//i.test(url)) {
    showError(new ApiError(400), ["That link doesn't look right.", "Paste a link that starts with http:// or https://."]);
    $("url").focus();
    return;
  }
  // The choice between live and background needs the length: wait briefly for the header.
  if (state.mediaUrl && state.duration === null) {
    await Promise.race([metadata, new Promise((r) => setTimeout(r, 3000))]);
  }
  const opts = options();
  if ($("background").checked && !$("background").disabled) await submitJob(opts);
  else {
    clearTimeout(watchTimer);
    state.watching = null;
    localStorage.removeItem(WATCH_STORE);
    await runLive(opts);
  }
});

// --- start --------------------------------------------------------------------------------------
fillLanguages();
showSource();
await loadModels();
await refreshJobs();
const watching = localStorage.getItem(WATCH_STORE);
if (watching && state.jobsEnabled) {
  const saved = savedJobs().find((j) => j.id === watching);
  watch(watching, saved?.name ?? "transcript");
}
