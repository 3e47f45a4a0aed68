// Transcript formats, generated in the browser from the segments ({id, start, end, text}).
// They match what the API renders for response_format=srt|vtt|text (whisperd/formats.py).

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

export function toText(segments) {
  return oneLine(segments.map((s) => s.text).join(" ")) + "\n";
}

export function toSrt(segments) {
  return segments
    .map((s, i) => `${i + 1}\n${timestamp(s.start)} --> ${timestamp(s.end)}\n${oneLine(s.text)}\n\n`)
    .join("");
}

export function toVtt(segments) {
  const escape = (t) => t.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
  const cues = segments.map(
    (s) => `${timestamp(s.start, ".")} --> ${timestamp(s.end, ".")}\n${oneLine(escape(s.text))}\n\n`,
  );
  return "WEBVTT\n\n" + cues.join("");
}

/** The API's verbose_json when we have it, else the same shape built from the segments. */
export function toJson(transcript) {
  const body = transcript.verbose ?? {
    task: transcript.task,
    language: transcript.language ?? null,
    duration: transcript.duration ?? null,
    text: toText(transcript.segments).trim(),
    segments: transcript.segments.map(({ id, start, end, text }) => ({ id, start, end, text })),
  };
  return JSON.stringify(body, null, 2) + "\n";
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
    const body = lines
      .slice(at + 1)
      .join(" ")
      .replaceAll("&lt;", "<")
      .replaceAll("&gt;", ">")
      .replaceAll("&amp;", "&");
    segments.push({ id: segments.length, start: seconds(from), end: seconds(to), text: body });
  }
  return segments;
}
