"""Helpers for the jobs tests (no tests here): a local HTTP server, polling, processes.

The HTTP server on 127.0.0.1 plays both the callback receiver and the audio host:

- ``POST /callback/<name>`` records the request; answers from a script of statuses given
  with :meth:`LocalServer.script`, then 200;
- ``GET /audio/<file>`` serves a file from the shared audio dir (or one registered with
  :meth:`LocalServer.add_audio`); ``/audio/gated/<file>`` holds the first request until
  :meth:`LocalServer.open_gate` (so a job is known to be running); ``/audio/flaky/<n>/<file>``
  answers 503 to the first n requests; ``/audio/missing`` is a 404.

Long recordings with a known text (:func:`speech_and_silence`) are here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import redis

from whisperd import audio
from whisperd.jobs.embedded import redis_server_binary
from whisperd.settings import Settings

from support import AUDIO, HOTWORDS, JFK, QuietHandler, poll, wav

TEXT = {"Content-Type": "text/plain"}

JFK_WORDS = "ask not what your country can do for you"
SECRET = "test-callback-secret"
# What the two recordings say (as conftest's fixtures have them).
SAID = {
    JFK.name: "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    HOTWORDS.name: "Then you go into your ComfyUI folder again in the ComfyUI",
}
# Words outside tiny.en's vocabulary: it writes "ComfyUI" as "comfy eye", "comps you I", ...
FREE_WORDS = frozenset({"comfyui"})


def spaced_wav(path: Path, times: int) -> bytes:
    """``path`` then silence up to 30 s, ``times`` times, as 16 kHz mono WAV bytes.

    One utterance per 30-second window: back-to-back copies would make Whisper repeat
    itself and fall back to higher temperatures, several times slower. Send such audio
    with ``vad_filter=false``, or the silences go and the copies touch again.
    """
    speech = audio.decode(path)
    gap = np.zeros(max(0, 30 * audio.SAMPLE_RATE - speech.size), dtype=np.float32)
    samples = np.concatenate([speech, gap] * times)
    return wav(samples)


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Callback:
    name: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def call_id(self) -> str:
        return self.headers["x-call-id"]


class LocalServer:
    """A threaded HTTP server on 127.0.0.1: callback receiver and audio host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.callbacks: list[Callback] = []
        self._scripts: dict[str, list[int]] = defaultdict(list)
        self._files: dict[str, bytes] = {}
        self._hits: dict[str, int] = defaultdict(int)
        self.gate = threading.Event()
        self.gate_entered = threading.Event()
        self._gated_once = False
        owner = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                name = self.path.rsplit("/", 1)[-1]
                status = owner._next_status(name)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner.callbacks.append(Callback(name, headers, body, status))
                self.reply(status, b"ok", TEXT)

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:1] != ["audio"] or len(parts) < 2:
                    self.reply(404, b"no such path", TEXT)
                    return
                if parts[1] == "gated":
                    if owner._enter_gate():
                        owner.gate.wait(120)
                    parts = ["audio", *parts[2:]]
                elif parts[1] == "flaky":
                    failures = int(parts[2])
                    key = "/".join(parts)
                    with owner._lock:
                        owner._hits[key] += 1
                        hit = owner._hits[key]
                    if hit <= failures:
                        self.reply(503, b"try later", TEXT)
                        return
                    parts = ["audio", *parts[3:]]
                data = owner._file(parts[-1])
                if data is None:
                    self.reply(404, b"not found", TEXT)
                    return
                with contextlib.suppress(OSError):
                    self.reply(200, data, {"Content-Type": "audio/flac"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # --- scripting ----------------------------------------------------------------------
    def script(self, name: str, statuses: list[int]) -> None:
        """Answer the next callbacks to ``name`` with these statuses (then 200)."""
        with self._lock:
            self._scripts[name] = list(statuses)

    def add_audio(self, name: str, data: bytes) -> None:
        with self._lock:
            self._files[name] = data

    def open_gate(self) -> None:
        self.gate.set()

    def _enter_gate(self) -> bool:
        with self._lock:
            first = not self._gated_once
            self._gated_once = True
        if first:
            self.gate_entered.set()
        return first

    def _next_status(self, name: str) -> int:
        with self._lock:
            script = self._scripts.get(name)
            return script.pop(0) if script else 200

    def _file(self, name: str) -> bytes | None:
        with self._lock:
            if name in self._files:
                return self._files[name]
        path = AUDIO / name
        return path.read_bytes() if name and path.is_file() else None

    # --- reading ------------------------------------------------------------------------
    def received(self, name: str | None = None) -> list[Callback]:
        with self._lock:
            return [c for c in self.callbacks if name is None or c.name == name]

    def delivered_ids(self) -> set[str]:
        """Call ids of callbacks answered 2xx."""
        return {c.call_id for c in self.received() if 200 <= c.status < 300}


# --- processes ----------------------------------------------------------------------------
class Processes:
    """Starts whisperd (and Redis) processes; :meth:`close` stops every one, whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._pidfiles: list[Path] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}-{len(self._procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._procs.append((proc, log))
        return proc

    def whisperd(self, name: str, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "whisperd", command], env)

    def redis(self, port: int, directory: Path) -> subprocess.Popen[bytes]:
        """A standalone redis-server on 127.0.0.1:``port`` (append-only, fsync always), ready."""
        server = self.start(
            "redis",
            [
                str(redis_server_binary()),
                *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)),
            ],
            {},
        )
        with redis.Redis(port=port) as probe:
            poll(lambda: _pings(probe), timeout=20, what="redis-server")
        return server

    def watch_pidfile(self, path: Path) -> None:
        """Kill the process named in ``path`` at close (an embedded Redis left behind)."""
        self._pidfiles.append(path)

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for candidate, log in self._procs:
            if candidate is proc:
                return log.read_text(errors="replace")[-6000:]
        return ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}"
            for _, log in self._procs
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        """SIGTERM, and the exit status (SIGKILL if it does not stop in time)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"process {proc.args} did not stop on SIGTERM") from None

    def close(self) -> None:
        for proc, _ in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for path in self._pidfiles:
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text().strip())
                if Path(f"/proc/{pid}/comm").read_text().startswith("redis-server"):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def processes(tmp: Path) -> Iterator[Processes]:
    procs = Processes(tmp)
    try:
        yield procs
    except BaseException:
        sys.stderr.write(procs.logs())
        raise
    finally:
        procs.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def whisperd_env(tmp_path: Path, model_cache: Path) -> dict[str, str]:
    """The environment of whisperd processes in a test: fast heartbeats and retries."""
    return {
        "WHISPERD_HOST": "127.0.0.1",
        "WHISPERD_DATA_DIR": str(tmp_path / "data"),
        "WHISPERD_TMP_DIR": str(tmp_path / "tmp"),
        "WHISPERD_MODEL_CACHE_DIR": str(model_cache),
        "WHISPERD_OFFLINE": "true",
        "WHISPERD_JOB_WORKERS": "1",
        "WHISPERD_JOB_POLL_INTERVAL": "0.1",
        "WHISPERD_JOB_HEARTBEAT_TIMEOUT": "1.5",
        "WHISPERD_JOB_RETRY_BACKOFF": "0.2",
        "WHISPERD_CALLBACK_RETRY_BACKOFF": "0.1",
        "WHISPERD_CALLBACK_SECRET": SECRET,
        "WHISPERD_FETCH_ALLOW_HOSTS": "127.0.0.1",
        "WHISPERD_DRAIN_TIMEOUT": "5",
        "WHISPERD_LOG_LEVEL": "info",
        "HF_HUB_OFFLINE": "1",
    }


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Poll /readyz until the server answers 200 (fail early if the process exits)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before it was ready")
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    poll(ready, timeout=timeout, interval=0.1, what="the server to be ready")


def final_jobs(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every job has ended; their bodies by id."""
    done: dict[str, dict[str, Any]] = {}

    def all_final() -> bool:
        for job_id in ids:
            if job_id in done:
                continue
            try:
                response = client.get(f"/v1/jobs/{job_id}")
            except httpx.TransportError:
                return False
            body = response.json()
            if body.get("status") in ("succeeded", "failed", "cancelled"):
                done[job_id] = body
        return len(done) == len(ids)

    poll(all_final, timeout=timeout, interval=0.2, what=f"{len(ids)} jobs to end")
    return done


# --- long recordings with a known text ----------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    """One recording placed in a long file: which, and where (seconds)."""

    name: str
    start: float
    end: float


def speech_and_silence(
    out: Path, *, seconds: float, blocks: int, per_block: int = 4, seed: int = 9
) -> list[Utterance]:
    """Write ``seconds`` of audio to ``out`` as FLAC: mostly silence, with ``blocks`` runs of
    speech spread through it, each ``per_block`` recordings, jfk.flac and hotwords.mp3 in
    turn, 1-2 s apart (one sentence looped alone sends tiny.en into its temperature fallback).
    Written a block at a time (an hour never sits in memory); FLAC keeps silence to a few
    bytes a second. Returns where each recording is, in order.
    """
    rng = np.random.default_rng(seed)
    voices = [audio.decode(JFK), audio.decode(HOTWORDS)]
    names = [JFK.name, HOTWORDS.name]
    rate = audio.SAMPLE_RATE
    period = seconds / blocks
    placed: list[Utterance] = []
    with av.open(str(out), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")

        def write(samples: np.ndarray) -> None:
            for start in range(0, samples.size, 30 * rate):
                pcm = (np.clip(samples[start : start + 30 * rate], -1, 1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    container.mux(packet)

        position = 0  # samples written
        for block in range(blocks):
            parts: list[np.ndarray] = []
            for turn in range(per_block):
                voice = len(placed) % 2
                if turn:
                    parts.append(np.zeros(int(rng.uniform(1.0, 2.0) * rate), np.float32))
                begin = position + sum(p.size for p in parts)
                parts.append(voices[voice])
                end = begin + voices[voice].size
                placed.append(Utterance(names[voice], begin / rate, end / rate))
            speech = np.concatenate(parts)
            # the block somewhere in its period, never at its very edges
            lead = int(rng.uniform(0.1, 0.9) * (period * rate - speech.size))
            for index in range(per_block * block, len(placed)):
                u = placed[index]
                placed[index] = Utterance(u.name, u.start + lead / rate, u.end + lead / rate)
            end_of_period = int((block + 1) * period * rate)
            write(np.zeros(lead, np.float32))
            write(speech)
            position += lead + speech.size
            write(np.zeros(end_of_period - position, np.float32))
            position = end_of_period
        for packet in stream.encode(None):
            container.mux(packet)
    return placed


def reference_text(utterances: list[Utterance]) -> str:
    return " ".join(SAID[u.name] for u in utterances)


def job_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for jobs in one test: its own Redis and files, short waits and backoffs."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "tmp_dir": tmp_path / "tmp",
        "job_workers": 2,
        "job_poll_interval": 0.1,
        "job_heartbeat_timeout": 1.5,
        "job_retry_backoff": 0.2,
        "callback_retry_backoff": 0.1,
        "callback_secret": SECRET,
        "fetch_allow_hosts": ("127.0.0.1",),
        "job_ttl": 120,
    }
    values.update(overrides)
    return Settings(**values)
