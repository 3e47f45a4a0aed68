// The player above the transcript: the chosen file or link, in an <audio> or (for a video) a
// <video> element. It tells the form the audio's length once it has read the header, and the
// transcript where it is playing.
import { $ } from "./dom.js";
import { state } from "./state.js";

const VIDEO_EXT = /\.(mp4|m4v|mov|webm|mkv|ogv|avi)(\?|#|$)/i;

let metadata = Promise.resolve(null); // resolves when the player knows the duration (or cannot)
let durationKnown = () => {}; // called when the current source's duration is known

/** Whether a link names a video, by its extension. */
export function isVideoLink(url) {
  return VIDEO_EXT.test(url);
}

/** The element that plays: the <video> for a video, else the <audio>. */
export function player() {
  return $("video").hidden ? $("audio") : $("video");
}

/** Play `src` (an object URL or a link; null for nothing), in the video element if `isVideo`;
 * state.duration follows once its header is read. */
export function loadPlayer(src, isVideo) {
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
    durationKnown();
  });
  el.src = src;
}

/** Wait until the player knows the length of what it holds, or `ms` have passed. */
export function waitForDuration(ms) {
  return Promise.race([metadata, new Promise((resolve) => setTimeout(resolve, ms))]);
}

/** Play from `seconds`; whether there is a player to (not every format plays in a browser). */
export function playFrom(seconds) {
  if ($("player").hidden) return false;
  const el = player();
  el.currentTime = seconds;
  el.play().catch(() => {}); // autoplay rules may refuse; the seek stands
  return true;
}

/** `onDuration()` once the length of each new source is known; `onTime()` as it plays or seeks. */
export function initPlayer({ onDuration, onTime }) {
  durationKnown = onDuration;
  for (const el of [$("audio"), $("video")]) {
    el.addEventListener("timeupdate", onTime);
    el.addEventListener("seeked", onTime);
  }
}
