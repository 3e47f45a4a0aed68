// The Audio card's form: where the audio comes from (a file, a link or the microphone), the
// model, language, task and speakers, and whether a file runs live or as a background job.
import { apiJson } from "./api.js";
import { $ } from "./dom.js";
import { clock } from "./formats.js";
import { clearError, setStatus } from "./messages.js";
import { isVideoLink, loadPlayer } from "./player.js";
import { state } from "./state.js";

const LANGUAGES = ("af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr " +
  "gl gu ha haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn " +
  "mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th " +
  "tk tl tr tt uk ur uz vi yi yo yue zh").split(" ");

const params = new URLSearchParams(location.search);
const threshold = {
  seconds: Number(params.get("job_threshold_seconds") ?? document.body.dataset.jobThresholdSeconds),
  bytes: Number(params.get("job_threshold_mb") ?? document.body.dataset.jobThresholdMb) * 1024 * 1024,
};

const SPEAKER_NOTES = {
  voice: "Speakers are told apart by their voices; the segments appear when it is done.",
  channel: "For stereo calls: each channel is one speaker.",
  translate: "Speakers are labelled in transcriptions, not translations.",
};

const HINTS = {
  file: $("status").textContent,
  live: "Press Start listening, then speak.",
};

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

/** The language menu, by the languages' English names. */
export function fillLanguages() {
  const names = "DisplayNames" in Intl ? new Intl.DisplayNames(["en"], { type: "language" }) : null;
  const entries = LANGUAGES.map((code) => [code, languageName(code, names)]);
  entries.sort((a, b) => a[1].localeCompare(b[1]));
  for (const [code, name] of entries) $("language").add(new Option(name, code));
}

/** The model menu, from the server's list; the top bar says whether the server answered. */
export async function loadModels() {
  try {
    const { data } = await apiJson("/v1/models");
    // OpenAI's names for the default are all one model: the menu offers it as whisper-1
    const offered = (m) => (m.available || m.loaded) && (!m.openai_name || m.id === "whisper-1");
    state.models = data.filter(offered);
    const real = data.find((m) => m.default && !m.openai_name);
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

/** Offer only the options the model, the task and the server allow, and say why not. */
export function updateOptions() {
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

function updateModeNote() {
  const note = $("mode-note");
  if (!state.jobsEnabled) note.textContent = "Background jobs are off on this server: every file runs live.";
  else if (document.querySelector("input[name=speakers]:checked").value === "channel")
    note.textContent = "By channel runs live: a background job would mix the channels into one.";
  else if ($("background").checked)
    note.textContent = "Runs as a background job: you can leave this page and come back to it.";
  else note.textContent = "Runs live: segments appear as they are transcribed.";
}

// --- a file or the microphone ---------------------------------------------------------------------
export function liveMode() {
  return document.querySelector("input[name=source]:checked").value === "live";
}

/** The parts of the form for a file, or for the microphone. */
export function showSource() {
  const source = liveMode() ? "live" : "file";
  for (const part of document.querySelectorAll("[data-source]")) part.hidden = part.dataset.source !== source;
  if (!state.transcript && !state.watching) setStatus(HINTS[source]);
  updateOptions();
}

/** While a file or the microphone is being transcribed, the other can't be chosen. */
export function lockSource() {
  const busy = Boolean(state.running || state.live);
  for (const radio of document.querySelectorAll("input[name=source]")) radio.disabled = busy;
}

// --- choosing the audio ------------------------------------------------------------------------
function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

/** Show the chosen file, and pick live or background by its size and length. */
export function describeChoice() {
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

/** No file chosen (nor in the player) any more. */
export function clearFile() {
  state.file = null;
  $("file").value = "";
  $("chosen").hidden = true;
  loadPlayer(null, false);
  if (!state.backgroundTouched) $("background").checked = false;
  updateModeNote();
}

function chooseLink() {
  const url = $("url").value.trim();
  if (!url) return;
  if (state.file) clearFile();
  state.backgroundTouched = false;
  loadPlayer(url, isVideoLink(url));
}

// --- what is sent ------------------------------------------------------------------------------
/** The options chosen for a file: {task, model, language, words, vad, speakers}. */
export function options() {
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

/** The name of the chosen file or, for a link, of the file it names. */
export function sourceName() {
  if (state.file) return state.file.name;
  const url = $("url").value.trim();
  try {
    return decodeURIComponent(new URL(url).pathname.split("/").pop()) || "transcript";
  } catch {
    return "transcript";
  }
}

/** The chosen audio and `opts`, as the form fields both the transcription and jobs routes read. */
export function audioForm(opts) {
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

/** The drop zone, the file and link fields, and the options' menus and switches. */
export function initForm() {
  $("model").addEventListener("change", updateOptions);
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
  $("url").addEventListener("change", chooseLink);
}
