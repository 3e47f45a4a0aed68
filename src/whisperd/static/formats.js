// Transcript formats, the page's one renderer of them: render() makes each download (and what
// Copy all copies) from the transcript's segments ({id, start, end, text, words?, speaker?}).
// They match what the API renders for response_format=text|srt|vtt|verbose_json
// (whisperd/formats.py), speakers as it writes them with diarize=true, and fitCues what it
// renders with max_line_width and max_line_count (whisperd/subtitles.py).

const oneLine = (text) => text.split(/\s+/).filter(Boolean).join(" ");

/** HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT). */
export function timestamp(seconds, separator = ",") {
  let ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3_600_000);
  ms -= h * 3_600_000;
  const m = Math.floor(ms / 60_000);
  ms -= m * 60_000;
  const s = Math.floor(ms / 1000);
  ms -= s * 1000;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(ms, 3)}`;
}

/** 0:07, 12:34, 1:02:03: for people, not files. */
export function clock(seconds) {
  const total = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** Consecutive segments of one speaker, as turns of {speaker, text}. */
export function turns(segments) {
  const found = [];
  for (const s of segments) {
    const last = found.at(-1);
    if (last && last.speaker === s.speaker) last.text += " " + s.text;
    else found.push({ speaker: s.speaker, text: s.text });
  }
  return found;
}

const hasSpeakers = (segments) => segments.some((s) => s.speaker != null);

/** The API's text; with speakers, a line per turn, after the speaker's name. */
export function toText(segments) {
  if (!hasSpeakers(segments)) return oneLine(segments.map((s) => s.text).join(" ")) + "\n";
  return turns(segments)
    .map((t) => `${t.speaker != null ? `${t.speaker}: ` : ""}${oneLine(t.text)}\n`)
    .join("");
}

/** A line per segment: a live transcript, whose segments are the speaker's turns. */
export function toLines(segments) {
  return segments.map((s) => oneLine(s.text) + "\n").join("");
}

/** A cue's text: a segment's on one line, or the lines fitCues made. */
const cueText = (cue, escape = (t) => t) => (cue.lines ?? [cue.text]).map((t) => oneLine(escape(t))).join("\n");

/** What starts an SRT cue's first line when its segment has a speaker (as
 * subtitles.speaker_label). */
const speakerLabel = (speaker) => (speaker != null ? `${speaker}: ` : "");

/** SRT cues, each after `Name: ` when its segment has a speaker (as formats.srt_block). */
export function toSrt(cues) {
  return cues
    .map((c, i) => {
      const said = speakerLabel(c.speaker);
      return `${i + 1}\n${timestamp(c.start)} --> ${timestamp(c.end)}\n${said}${cueText(c)}\n\n`;
    })
    .join("");
}

const vttEscape = (t) => t.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");

/** WebVTT cues, each in a voice span (`<v Name>`) when its segment has a speaker (as
 * formats.vtt_block). */
export function toVtt(cues) {
  const blocks = cues.map((c) => {
    const voice = c.speaker != null ? `<v ${vttEscape(c.speaker)}>` : "";
    return `${timestamp(c.start, ".")} --> ${timestamp(c.end, ".")}\n${voice}${cueText(c, vttEscape)}\n\n`;
  });
  return "WEBVTT\n\n" + blocks.join("");
}

/** The fewest runs the items fill, each run as long as it fits. */
function fewest(items, fits) {
  let count = 1;
  let start = 0;
  for (let end = 2; end <= items.length; end++) {
    if (!fits(items.slice(start, end))) [count, start] = [count + 1, end - 1];
  }
  return count;
}

/** The items cut into `count` runs [start, end) that fit, as even in characters as can be. */
function even(items, count, fits, size) {
  const n = items.length;
  if (count === 1) return [[0, n]];
  const best = Array.from({ length: count + 1 }, () => Array.from({ length: n + 1 }, () => [Infinity, 0]));
  best[0][0] = [0, 0];
  for (let k = 1; k <= count; k++) {
    for (let j = k - 1; j < n; j++) {
      const before = best[k - 1][j][0];
      if (before === Infinity) continue;
      for (let i = j + 1; i <= n && (i === j + 1 || fits(items.slice(j, i))); i++) {
        const cost = before + size(items.slice(j, i)) ** 2;
        if (cost < best[k][i][0]) best[k][i] = [cost, j];
      }
    }
  }
  const runs = [];
  for (let k = count, end = n; k > 0; k--) {
    const start = best[k][end][1];
    runs.unshift([start, end]);
    end = start;
  }
  return runs;
}

/** Cues fit for a screen from the segments' words: at most `count` lines of `width`
 * characters (but for a single longer word), cut at words, lines and cues balanced.
 * `labelled`: SRT's `Name: ` counts in the width (as subtitles.Cuer). */
export function fitCues(segments, width, count = 2, labelled = false) {
  const size = (words) => oneLine(words.map((w) => w.word).join(" ")).length;
  let room = width;
  const lineFits = (words) => words.length === 1 || size(words) <= room;
  const cueFits = (words) => words.length === 1 || fewest(words, lineFits) <= count;
  const cues = [];
  let lastEnd = 0;
  for (const segment of segments) {
    room = labelled ? Math.max(1, width - speakerLabel(segment.speaker).length) : width;
    const words = (segment.words ?? []).filter((w) => w.word.trim());
    if (!words.length) {
      cues.push(segment);
      continue;
    }
    for (const [j, i] of even(words, fewest(words, cueFits), cueFits, size)) {
      const cue = words.slice(j, i);
      const lines = even(cue, fewest(cue, lineFits), lineFits, size).map(([a, b]) =>
        cue.slice(a, b).map((w) => w.word).join(" "),
      );
      const start = Math.max(cue[0].start, lastEnd);
      lastEnd = Math.max(cue[cue.length - 1].end, start);
      cues.push({ start, end: lastEnd, lines, speaker: segment.speaker });
    }
  }
  return cues;
}

/** The API's verbose_json when we have it, else the same shape built from the segments;
 * each segment's speaker as `name` gives it (the name it was given on the page). */
export function toJson(transcript, name = (speaker) => speaker) {
  const renamed = (s) => (s.speaker != null ? { ...s, speaker: name(s.speaker) } : s);
  const built = () => ({
    task: transcript.task,
    language: transcript.language ?? null,
    duration: transcript.duration ?? null,
    text: oneLine(transcript.segments.map((s) => s.text).join(" ")),
    segments: transcript.segments.map(({ id, start, end, text, speaker }) => ({ id, start, end, text, speaker })),
  });
  const body = transcript.verbose ?? built();
  const segments = Array.isArray(body.segments) ? body.segments.map(renamed) : body.segments;
  return JSON.stringify({ ...body, segments }, null, 2) + "\n";
}

/** Cues of an SRT or WebVTT document (a job's result in those formats) as segments. */
export function parseCues(text) {
  const time = /(\d+):(\d{2}):(\d{2})[,.](\d{3})/;
  const seconds = (t) => {
    const [, h, m, s, ms] = t.match(time);
    return +h * 3600 + +m * 60 + +s + +ms / 1000;
  };
  const segments = [];
  for (const block of text.replaceAll("\r", "").split(/\n\n+/)) {
    const lines = block.split("\n");
    const at = lines.findIndex((line) => line.includes("-->"));
    if (at < 0) continue;
    const [from, to] = lines[at].split("-->");
    if (!time.test(from) || !time.test(to)) continue;
    let body = lines.slice(at + 1).join(" ");
    // A WebVTT voice span (<v Name>) is the cue's speaker.
    const voice = body.match(/^<v(?:\.[^\s>]*)?\s+([^>]*)>/);
    if (voice) body = body.slice(voice[0].length).replace(/<\/v>\s*$/, "");
    const unescape = (t) => t.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&amp;", "&");
    const segment = { id: segments.length, start: seconds(from), end: seconds(to), text: unescape(body) };
    if (voice) segment.speaker = unescape(voice[1]);
    segments.push(segment);
  }
  return segments;
}

/** SRT or WebVTT cues of `segments`: a segment each, or fit for a screen (`width` > 0). */
const cues = (segments, width, labelled = false) =>
  width ? fitCues(segments, width, 2, labelled) : segments;

// Downloads name the speakers as they were named on the page; a live transcript's text is a
// line per turn.
const RENDERERS = {
  txt: ["text/plain", (t) => (t.live ? toLines(t.segments) : toText(t.speakers.named(t.segments)))],
  srt: ["application/x-subrip", (t, width) => toSrt(cues(t.speakers.named(t.segments), width, true))],
  vtt: ["text/vtt", (t, width) => toVtt(cues(t.speakers.named(t.segments), width))],
  json: ["application/json", (t) => toJson(t, (label) => t.speakers.name(label))],
};

/** The transcript shown on the page ({segments, speakers, live?, verbose?, ...}) as `format`
 * (txt, srt, vtt or json): `{type, text}`. SRT and WebVTT cues are cut into lines of at most
 * `cueWidth` characters when it is given (the segments need their words for that). */
export function render(transcript, format, cueWidth = 0) {
  const [type, rendered] = RENDERERS[format];
  return { type, text: rendered(transcript, cueWidth) };
}
