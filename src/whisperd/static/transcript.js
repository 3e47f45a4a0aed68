// The transcript panel: the segments as they come (each one plays the audio from its start),
// the speakers, the one under the playhead marked, and the downloads.
import { $ } from "./dom.js";
import { clock, render } from "./formats.js";
import { toast } from "./messages.js";
import { player, playFrom } from "./player.js";
import { Speakers, editSpeaker, showSpeakers, speakerButton } from "./speakers.js";
import { state } from "./state.js";

const EMPTY_TEXT = $("empty").querySelector("p").textContent;
const SEGMENTS_LABEL = $("segments").getAttribute("aria-label");

let active = null; // the segment's button under the playhead
let activeWord = null;

/** An empty transcript of `name` (a file's name: the downloads are named after it). */
export function startTranscript(name, task) {
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
export function revealTranscript() {
  const card = $("transcript-title").closest(".card");
  if (card.getBoundingClientRect().top > innerHeight * 0.6) card.scrollIntoView({ behavior: "smooth" });
}

export function addSegment(segment) {
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

export function showSegments(segments) {
  for (const s of segments) addSegment(s);
  if (!segments.length) {
    $("empty").hidden = false;
    $("empty").querySelector("p").textContent = "No speech was found in this audio.";
  }
  setExport(segments.length > 0);
}

/** The API's verbose_json (of a request or a job): kept for the JSON download, and shown. */
export function showVerbose(result) {
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

/** The segments list, given over to a live transcript (a line per turn, `emptyText` until one). */
export function showLiveList(emptyText) {
  $("transcript-title").closest(".card").dataset.live = "";
  $("segments").setAttribute("aria-label", "Live transcript: a line for each turn");
  $("empty").hidden = false;
  $("empty").querySelector("p").textContent = emptyText;
}

/** Mark the segment (and word) under the playhead; keep it in view while it plays. */
export function highlight() {
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

/** The downloads and Copy all, on once there is something to export. */
export function setExport(enabled) {
  $("copy").disabled = !enabled;
  for (const b of document.querySelectorAll("[data-format]")) b.disabled = !enabled;
  // cues are cut at words: only a transcript with word timestamps can be
  $("cue-width").disabled = !enabled || !state.transcript?.segments.some((s) => s.words?.length);
}

/** The transcript in `format`, its subtitles cut as the menu says. */
function rendered(format) {
  const width = $("cue-width").disabled ? 0 : Number($("cue-width").value);
  return render(state.transcript, format, width);
}

function download(format) {
  const { type, text } = rendered(format);
  const blob = new Blob([text], { type: `${type};charset=utf-8` });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${state.transcript.name.replace(/\.[^.]+$/, "") || "transcript"}.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function copyAll() {
  const { text } = rendered("txt");
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
}

/** Pressing a speaker renames them; pressing a segment (or a word) plays from there. */
export function initTranscript() {
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
    if (playFrom(word ? Number(word.dataset.start) : segment.start)) highlight();
  });
  for (const button of document.querySelectorAll("[data-format]")) {
    button.addEventListener("click", () => download(button.dataset.format));
  }
  $("copy").addEventListener("click", copyAll);
}
