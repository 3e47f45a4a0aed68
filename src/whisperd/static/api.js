// Talking to the API: the key (asked for on a 401), errors, and what they mean in plain words.
import { $ } from "./dom.js";

const KEY_STORE = "whisperd.apiKey"; // sessionStorage: this tab only

// --- requests ------------------------------------------------------------------------------------
export class ApiError extends Error {
  constructor(status, error, retryAfter = null) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.error = error || {};
    this.retryAfter = retryAfter;
  }
}

// The status an error event of a stream stands for (it arrives after the 200).
export const TYPE_STATUS = { timeout_error: 504, rate_limit_error: 429, service_unavailable: 503, cancelled: 499 };

/** The API key this tab was given, if any. */
export function savedKey() {
  return sessionStorage.getItem(KEY_STORE);
}

let keyPrompt = null;

/** Ask for an API key once, however many requests got a 401 at the same time. */
function askKey(rejected) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  $("key-error").hidden = !rejected;
  $("key").value = "";
  keyPrompt = new Promise((resolve) => {
    const done = (key) => {
      keyPrompt = null;
      dialog.removeEventListener("close", onClose);
      resolve(key);
    };
    const onClose = () => {
      const key = dialog.returnValue === "ok" ? $("key").value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORE, key);
      done(key || null);
    };
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
  });
  return keyPrompt;
}

/** The key dialog's buttons: Continue needs a key, Cancel goes on without one. */
export function initKeyDialog() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("key").value.trim()) return $("key").focus();
    $("key-dialog").close("ok");
  });
  $("key-cancel").addEventListener("click", () => $("key-dialog").close(""));
}

/** fetch() with the API key; on a 401, asks for a key and tries again. */
export async function api(path, init = {}) {
  for (;;) {
    const key = savedKey();
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (exc) {
      if (exc.name === "AbortError") throw exc;
      throw new ApiError(0, { message: String(exc.message || exc) });
    }
    if (response.ok) return response;
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      if (key) sessionStorage.removeItem(KEY_STORE);
      if (await askKey(Boolean(key))) continue;
    }
    throw new ApiError(response.status, body.error, response.headers.get("Retry-After"));
  }
}

export async function apiJson(path, init) {
  return (await api(path, init)).json();
}

// --- errors in plain words --------------------------------------------------------------------
export function explain(err) {
  const message = err.error?.message || err.message || "";
  switch (err.status) {
    case 0:
      return ["Can't reach the server.", "Check that whisperd is still running and reachable from here, then try again."];
    case 400:
      if (err.error?.param === "multichannel")
        return [
          "This recording can't be split by channel.",
          "By channel is for stereo calls, a speaker on each channel; choose By voice for this one.",
        ];
      return ["The server couldn't use this request.", "See below for what to change."];
    case 401:
      return ["This server needs an API key.", "Press Transcribe again to enter it; ask whoever runs the server for one."];
    case 404:
      return err.error?.type === "not_found_error" && /model/i.test(message)
        ? ["That model isn't available on this server.", "Pick another model from the list."]
        : ["Not found.", "It may have expired; refresh the list."];
    case 409:
      return ["That job has already finished.", "Refresh the list to see how it ended."];
    case 413:
      return [
        "This file is too large for the server.",
        "Send a shorter or compressed file, or paste a link to it instead.",
      ];
    case 415:
      return ["This file isn't audio or video we can read.", "Try mp3, wav, m4a, mp4, webm."];
    case 429: {
      const wait = Number(err.retryAfter) || 5;
      return [`The server is busy; try again in ${wait} seconds.`, "Other transcriptions are running right now."];
    }
    case 499:
      return ["Stopped.", "Nothing was kept; press Transcribe to start again."];
    case 503:
      return ["The server isn't ready.", "It is starting or shutting down; try again in a minute."];
    case 504:
      return [
        "This took longer than the server allows for one request.",
        "Tick “Run as a background job” and try again, or send a shorter file.",
      ];
    default:
      if (err.status >= 500) return ["Something went wrong on the server.", "Try again; if it keeps happening, the server log says why."];
      return ["The server couldn't use this request.", "See below for what to change."];
  }
}
