// Live transcription: the microphone, as 24 kHz PCM (live-worklet.js), streamed to the server's
// Realtime WebSocket (/v1/realtime: OpenAI's GA protocol, in transcription mode), and the events
// it sends back handed to the page as they come.
import { ApiError, TYPE_STATUS, api, explain, savedKey } from "./api.js";

const KEY_PROTOCOL = "openai-insecure-api-key."; // how a browser, which can't set headers, sends its key
const MAX_UNSENT = 4_000_000; // bytes waiting in the socket: about a minute of audio
const FLUSH_MS = 1000; // how long Stop waits for the last piece of audio from the worklet
const FINISH_MS = 60_000; // how long Stop waits for the turns the server still has to transcribe
const FINISHED = new Set([
  "conversation.item.input_audio_transcription.completed",
  "conversation.item.input_audio_transcription.failed",
]);
const STATUS = { ...TYPE_STATUS, invalid_request_error: 400, authentication_error: 401, not_found_error: 404 };

/** A live session that could not start or go on, with what to do about it (`explained`). */
export class LiveError extends ApiError {
  constructor(title, hint, error = {}) {
    super(-1, error);
    this.explained = [title, hint];
  }
}

function microphoneError(err) {
  switch (err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new LiveError(
        "The microphone is blocked for this page.",
        "Allow it in the browser's site settings (by the address bar), then press Start listening again.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new LiveError("No microphone was found.", "Plug one in or turn it on, then press Start listening again.");
    default:
      return new LiveError(
        "The microphone couldn't be opened.",
        "Another program may be using it: close that, then press Start listening again.",
        { message: String(err.message || err) },
      );
  }
}

/** An `error` event of the server, in plain words. */
export function serverError(error) {
  if (error.code === "too_many_sessions")
    return new LiveError("The server can't take a live session now.", "Try again later.", error);
  if (error.code === "realtime_disabled")
    return new LiveError("Live transcription is off on this server.", "Transcribe a file or a link instead.", error);
  if (error.code === "idle_timeout")
    return new LiveError(
      "The live session stopped: no audio reached the server for a while.",
      "Press Start listening to go on.",
      error,
    );
  const err = new ApiError(STATUS[error.type] ?? 400, error);
  return new LiveError(...explain(err), error);
}

function closedError(event) {
  const error = event.reason ? { message: event.reason } : {};
  if (event.code === 1001)
    return new LiveError("The server is shutting down.", "Press Start listening again when it is back.", error);
  return new LiveError(
    "The live connection was lost.",
    "Check that whisperd is still running, then press Start listening again.",
    error,
  );
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One session, from start() to its end. `onEvent(event)` gets each server event but errors;
 * `onError(err)` each problem (a LiveError), and `onEnd()` is called once, when the microphone
 * and the connection are closed, after stop() or by a problem that ends it.
 */
export class LiveSession {
  constructor({ model, language, onEvent, onError, onEnd }) {
    this.session = {
      type: "transcription",
      audio: {
        input: {
          format: { type: "audio/pcm", rate: 24000 },
          transcription: { model, language: language || null },
          turn_detection: { type: "server_vad" },
        },
      },
    };
    Object.assign(this, { onEvent, onError, onEnd });
    this.turn = null; // the item id of the turn in progress
    this.pending = new Set(); // committed turns still without their transcript
    this.waiting = new Set(); // [test, resolve]: resolved by the first event test() takes, or null at the close
    this.stopping = false;
    this.told = false; // whether onError has been told of an error event
    this.ended = false;
  }

  /** Open the microphone and the connection; rejects with why it can't (everything closed again). */
  async start() {
    // Made in the click's own turn of the event loop, so that autoplay rules let it run.
    this.context = new AudioContext();
    try {
      if (!navigator.mediaDevices?.getUserMedia)
        throw new LiveError(
          "This page can't use the microphone here.",
          "Browsers give the microphone only to secure pages: open whisperd over https, or at localhost.",
        );
      try {
        // Whisper learnt from noisy audio; a noise suppressor's artefacts cost it more words.
        const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: false };
        this.stream = await navigator.mediaDevices.getUserMedia({ audio });
      } catch (err) {
        throw microphoneError(err);
      }
      for (const track of this.stream.getTracks()) {
        track.addEventListener("ended", () => {
          if (this.stopping) return;
          const hint = "Check that it is still plugged in, then press Start listening again.";
          this.onError(new LiveError("The microphone stopped.", hint));
          this.stop();
        });
      }
      this.socket = await this.open(true);
      this.socket.onmessage = (message) => this.receive(JSON.parse(message.data));
      this.socket.onclose = (event) => this.closed(event);
      const answer = await this.update();
      if (answer?.type === "error") throw serverError(answer.error);
      await this.context.audioWorklet.addModule("/ui/live-worklet.js");
      // No outputs: the browser runs it for its input alone, and nothing is played back.
      this.worklet = new AudioWorkletNode(this.context, "pcm24k", { numberOfOutputs: 0 });
      this.worklet.port.onmessage = (message) => this.audio(message.data);
      this.context.createMediaStreamSource(this.stream).connect(this.worklet);
      await this.context.resume();
    } catch (err) {
      this.stopping = true;
      this.release();
      this.socket?.close(1000);
      throw err;
    }
  }

  /** The socket, its session created; when the server refuses it for want of a key, asks for one. */
  async open(retry) {
    const key = savedKey();
    const protocols = key ? ["realtime", KEY_PROTOCOL + key] : ["realtime"];
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/v1/realtime?intent=transcription`, protocols);
    // The server's first event is session.created, or the error that says why it refuses.
    const first = await new Promise((resolve) => {
      socket.onmessage = (message) => resolve(JSON.parse(message.data));
      socket.onclose = () => resolve(null);
    });
    if (first?.type === "session.created") return socket;
    socket.close();
    if (first === null)
      throw new LiveError(
        "Couldn't open the live connection.",
        "Check that whisperd is still running; a proxy in front of it must let WebSockets through.",
      );
    // api() asks for a key on the API's 401; with a new one, this tries again
    if (first.error?.type === "authentication_error" && retry) {
      await api("/v1/models");
      if (savedKey() !== key) return this.open(false);
    }
    throw serverError(first.error);
  }

  /** Send the session's settings; resolves with session.updated or error (null if it closed). */
  update() {
    this.send({ type: "session.update", session: this.session });
    return this.next((event) => event.type === "session.updated" || event.type === "error");
  }

  send(event) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(event));
  }

  next(test) {
    if (this.socket?.readyState !== WebSocket.OPEN) return Promise.resolve(null);
    return new Promise((resolve) => this.waiting.add([test, resolve]));
  }

  receive(event) {
    const type = event.type;
    if (type === "input_audio_buffer.speech_started") this.turn = event.item_id;
    else if (type === "input_audio_buffer.committed") {
      this.pending.add(event.item_id);
      if (this.turn === event.item_id) this.turn = null;
    } else if (FINISHED.has(type)) this.pending.delete(event.item_id);
    const waiters = [...this.waiting].filter(([test]) => test(event));
    for (const waiter of waiters) {
      this.waiting.delete(waiter);
      waiter[1](event);
    }
    // An error answering one of start()'s or stop()'s own events is theirs to report.
    if (type !== "error") this.onEvent(event);
    else if (!waiters.length) {
      this.told = true;
      this.onError(serverError(event.error));
    }
  }

  audio(data) {
    if (data === "flushed") return this.flushed?.();
    if (this.socket.bufferedAmount > MAX_UNSENT) {
      const hint = "The network or the server is too slow for live audio; try again later.";
      this.onError(new LiveError("The connection can't keep up with the microphone.", hint));
      return this.stop();
    }
    this.send({ type: "input_audio_buffer.append", audio: base64(data) });
  }

  /** Close the microphone, let the server transcribe what it heard, then close the socket. */
  async stop() {
    if (this.stopping) return;
    this.stopping = true;
    for (const track of this.stream.getTracks()) track.stop();
    if (this.context.state === "running") {
      const flushed = new Promise((resolve) => (this.flushed = resolve));
      this.worklet.port.postMessage("flush");
      await Promise.race([flushed, wait(FLUSH_MS)]);
    }
    this.release();
    // The server takes events in order: when it has answered this one it has all the audio,
    // and a turn still open here is open there too. It is committed, not lost.
    const deadline = wait(FINISH_MS).then(() => "late");
    await Promise.race([this.update(), deadline]);
    if (this.turn) {
      this.send({ type: "input_audio_buffer.commit" });
      const done = (event) => event.type === "input_audio_buffer.committed" || event.type === "error";
      await Promise.race([this.next(done), deadline]);
    }
    while (this.pending.size) {
      const more = await Promise.race([this.next((event) => FINISHED.has(event.type)), deadline]);
      if (!more || more === "late") break;
    }
    this.socket.close(1000, "Stopped");
    this.end();
  }

  closed(event) {
    for (const [, resolve] of this.waiting) resolve(null);
    this.waiting.clear();
    if (this.stopping) return;
    this.stopping = true;
    // After an error event the server may close the session itself: that error says why.
    if (!this.told) this.onError(closedError(event));
    this.release();
    this.end();
  }

  release() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.worklet?.disconnect();
    if (this.context.state !== "closed") this.context.close();
  }

  end() {
    if (this.ended) return;
    this.ended = true;
    this.onEnd();
  }
}
