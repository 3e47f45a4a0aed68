// What the page tells the user: the status line and progress bar of the transcript, the
// error box below the form, and short toasts.
import { explain } from "./api.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

export function setStatus(text) {
  $("status").textContent = text;
}

/** The progress bar: a fraction (0-1), null for "busy, no idea how far", undefined to hide it. */
export function setProgress(fraction, text) {
  $("progress-row").hidden = fraction === undefined;
  if (fraction === null) $("progress").removeAttribute("value");
  else if (fraction !== undefined) $("progress").value = Math.min(100, Math.max(0, fraction * 100));
  $("progress-text").textContent = text ?? "";
}

/** An error in plain words (`override` is [title, hint] instead of explain()'s); after a 429,
 * Transcribe waits as long as the server asked. */
export function showError(err, override = null) {
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

export function clearError() {
  $("error").hidden = true;
}

let toastTimer = null;

export function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), 2200);
}
