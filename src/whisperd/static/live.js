// Live transcription from the microphone: Start listening opens a Realtime session
// (realtime.js), and the transcript panel shows a line per turn, partial text first, final
// text when the turn ends.
import { $ } from "./dom.js";
import { lockSource } from "./form.js";
import { clock } from "./formats.js";
import { stopWatching } from "./jobs.js";
import { clearError, setStatus, showError } from "./messages.js";
import { LiveSession, serverError } from "./realtime.js";
import { state } from "./state.js";
import { setExport, showLiveList, startTranscript } from "./transcript.js";

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
  stopWatching();
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

/** The transcript panel, given over to `live` (once). */
function showLive(live) {
  if (state.transcript?.live === live) return;
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const day = `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
  startTranscript(`live-${day}-${pad(now.getHours())}${pad(now.getMinutes())}`, "transcribe");
  state.transcript.live = live;
  showLiveList("Listening. The text appears here as you speak.");
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

/** Start listening / Stop listening. */
export function initLive() {
  $("live").addEventListener("click", () => {
    if ($("live").getAttribute("aria-disabled") === "true") return;
    if (state.live) stopLive();
    else startLive();
  });
}
