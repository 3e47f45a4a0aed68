// A transcript's speakers: a colour and a name each. They are listed above the segments, and
// labelled on a segment where the speaker changes; pressing either renames the speaker, and
// every label of that speaker follows.
import { $ } from "./dom.js";

const COLOURS = 6; // --speaker-0 ... --speaker-5 in app.css

export class Speakers {
  constructor() {
    this.labels = []; // as the server labelled them (A, B, ... or known names), by first word
    this.names = new Map(); // label -> the name given on the page
  }

  /** Note a segment's speaker; whether it is the first of theirs. */
  add(label) {
    if (label == null || this.labels.includes(label)) return false;
    this.labels.push(label);
    return true;
  }

  name(label) {
    return this.names.get(label) ?? label;
  }

  colour(label) {
    return `var(--speaker-${this.labels.indexOf(label) % COLOURS})`;
  }

  /** The segments with each speaker as named on the page, for the downloads. */
  named(segments) {
    return segments.map((s) => (s.speaker != null ? { ...s, speaker: this.name(s.speaker) } : s));
  }
}

/** A button that shows `label`'s name and renames them when pressed. */
export function speakerButton(speakers, label, className) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `speaker ${className}`;
  button.dataset.speaker = label;
  button.style.setProperty("--speaker", speakers.colour(label));
  button.setAttribute("aria-describedby", "speakers-hint");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.setAttribute("aria-hidden", "true");
  const name = document.createElement("span");
  name.className = "speaker-name";
  name.textContent = speakers.name(label);
  button.append(swatch, name);
  return button;
}

/** The list of speakers above the transcript (hidden when it has none). */
export function showSpeakers(speakers) {
  const list = $("speaker-list");
  list.replaceChildren(
    ...speakers.labels.map((label) => {
      const li = document.createElement("li");
      li.append(speakerButton(speakers, label, "chip"));
      return li;
    }),
  );
  $("speakers").hidden = speakers.labels.length === 0;
}

/** Every shown name of `label`, after a rename. */
function relabel(speakers, label) {
  for (const el of document.querySelectorAll(".speaker[data-speaker]")) {
    if (el.dataset.speaker === label) el.querySelector(".speaker-name").textContent = speakers.name(label);
  }
}

/** Rename the speaker of `button` in place: an input instead of it; Enter saves and Escape
 * cancels (the focus back on the button), leaving it saves too. An empty name is the label
 * again. */
export function editSpeaker(speakers, button) {
  const label = button.dataset.speaker;
  const input = document.createElement("input");
  input.type = "text";
  input.className = "speaker-input";
  input.value = speakers.name(label);
  input.maxLength = 64;
  input.spellcheck = false;
  input.setAttribute("aria-label", `New name for ${speakers.name(label)}`);
  input.style.setProperty("--speaker", speakers.colour(label));
  let done = false;
  const finish = (save, refocus) => {
    if (done) return;
    done = true;
    if (save) {
      const name = input.value.trim();
      if (name && name !== label) speakers.names.set(label, name);
      else speakers.names.delete(label);
      relabel(speakers, label);
    }
    input.remove();
    button.hidden = false;
    if (refocus) button.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true, true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false, true);
    }
  });
  input.addEventListener("blur", () => finish(true, false));
  button.hidden = true;
  button.after(input);
  input.focus();
  input.select();
}
