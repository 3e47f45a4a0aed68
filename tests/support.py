"""Helpers for tests that run real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import av
import httpx
import numpy as np
import trustme
import uvicorn

from whisperd import audio
from whisperd.api.services import app_services
from whisperd.server import uvicorn_config
from whisperd.settings import Settings

from browser import require

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
JFK = AUDIO / "jfk.flac"
HOTWORDS = AUDIO / "hotwords.mp3"
JFK_WORDS = ("ask not what your country can do for you", "ask what you can do for your country")
T = TypeVar("T")


def make_settings(root: Path, model_cache: Path | None = None, **overrides: Any) -> Settings:
    """A test's settings: models from ``model_cache`` (the session's ``model_cache`` fixture,
    see tests/conftest.py; without it an empty cache under ``root``, for tests that load no
    model), never a model hub, and its temporary and data dirs under ``root``. ``overrides``
    win."""
    values: dict[str, Any] = {
        "model_cache_dir": root / "cache" if model_cache is None else model_cache,
        "offline": True,
        "tmp_dir": root / "tmp",
        "data_dir": root / "data",
        **overrides,
    }
    return Settings(**values)


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces: for comparing transcripts."""
    kept = "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text)
    return " ".join(kept.split())


def assert_jfk(text: str) -> None:
    said = normalise(text)
    for phrase in JFK_WORDS:
        assert phrase in said, f"{phrase!r} not in {said!r}"


# Words of the mixed recording (tests/conftest.py ``mixed_flac``) that only one of its two
# languages has: JFK's English and its German translation, and the German sentences and their
# English translation ("in", "park" and "so" are both, and left out).
ENGLISH_ONLY = {"and", "my", "ask", "not", "what", "your", "country", "can", "do", "for", "you"}
ENGLISH_ONLY |= {"good", "morning", "today", "is", "the", "weather", "we", "with", "children"}
GERMAN_ONLY = {"und", "mein", "nicht", "dein", "ihr", "euer", "land", "kann", "für", "fragt"}
GERMAN_ONLY |= {"guten", "morgen", "heute", "ist", "ein", "die", "wir", "mit", "den", "kindern"}


def assert_english_then_german(segments: list[dict[str, Any]]) -> None:
    """verbose_json segments of the mixed recording: labelled english, then german, and each
    half's text in its own language (not an English paraphrase of the German)."""
    labels = [s.get("language") for s in segments]
    english = [s for s in segments if s.get("language") == "english"]
    german = [s for s in segments if s.get("language") == "german"]
    assert english and german, labels
    assert labels == ["english"] * len(english) + ["german"] * len(german), labels
    assert english[-1]["end"] <= 12.5 and german[0]["start"] >= 10.5, segments  # the pause
    english_text = " ".join(s["text"] for s in english)
    german_words = set(normalise(" ".join(s["text"] for s in german)).split())
    assert_jfk(english_text)
    assert not set(normalise(english_text).split()) & GERMAN_ONLY, english_text
    assert len(german_words & GERMAN_ONLY) >= 4, german_words
    assert not german_words & ENGLISH_ONLY, german_words


class UnseekableSink(io.RawIOBase):
    """A write-only sink that cannot seek, like a pipe: a muxer cannot go back to write the
    length into the header."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(
    fn: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout:g} s waiting for {what or fn}; last: {last!r}")


@dataclass(frozen=True)
class LocalCertificate:
    """A certificate for 127.0.0.1 and its key, as PEM files, and a client context that
    trusts the authority that signed it."""

    certfile: Path
    keyfile: Path
    trusted: ssl.SSLContext


def local_certificate(directory: Path) -> LocalCertificate:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    keyfile.write_bytes(issued.private_key_pem.bytes())
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    return LocalCertificate(certfile, keyfile, trusted)


@contextlib.contextmanager
def running_app(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn_config(app, app_services(app).settings, host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started or not thread.is_alive(), timeout=60)
        assert server.started, "server failed to start"
        scheme = "https" if config.ssl_certfile else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"server exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def server_process(
    tmp_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ("serve",)
) -> Iterator[ServerProcess]:
    """``whisperd serve`` as a real process on a free port; killed at the end whatever happens."""
    port = free_port()
    full_env = {
        **os.environ,
        "WHISPERD_HOST": "127.0.0.1",
        "WHISPERD_PORT": str(port),
        "WHISPERD_DATA_DIR": str(tmp_path / "data"),
        "WHISPERD_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "WHISPERD_TMP_DIR": str(tmp_path / "tmp"),
        **(env or {}),
    }
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "whisperd", *args], env=full_env, stdout=sink, stderr=sink
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            poll(lambda: _ready(url, process), timeout=90, interval=0.1)
        except AssertionError:
            raise AssertionError(f"server did not become ready:\n{log.read_text()}") from None
        yield ServerProcess(process, url, log)
    finally:
        # SIGTERM first, so the server stops what it started (an embedded Redis) itself
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        process.wait(30)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test server's request handler that logs nothing and answers with :meth:`reply`."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer with ``status``, ``headers`` and ``body`` (its Content-Length added)."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _AudioHandler(QuietHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.reply(status, body, headers)


@contextlib.contextmanager
def file_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    """A local HTTP server answering GETs from ``routes``: path -> (status, headers, body)."""
    handler = type("Handler", (_AudioHandler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def speech_flac(seconds: float) -> bytes:
    """Real speech of about ``seconds``, as FLAC: jfk.flac (11 s) looped with 3 s gaps, a
    sentence every 14 s.

    The gaps keep a 30 s window to about two sentences: with the sentence back to back,
    Whisper's text repeats enough to fail the compression-ratio check, and decoding falls
    back to sampling (slower, and not the same words twice)."""
    import numpy as np

    from whisperd import audio

    jfk = audio.decode(JFK)
    gap = np.zeros(3 * audio.SAMPLE_RATE, dtype=np.float32)
    unit = np.concatenate([jfk, gap])
    repeats = max(1, round(seconds / audio.duration(unit)))
    return audio.encode_flac(np.tile(unit, repeats))


class _Misbehaving(http.server.ThreadingHTTPServer):
    daemon_threads = True
    serving = 0
    lock: threading.Lock
    stop: threading.Event


class _MisbehavingHandler(QuietHandler):
    server: _Misbehaving

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.serving += 1
        try:
            self._answer(self.path.split("?")[0])
        except OSError:
            pass  # the fetch stopped reading
        finally:
            with server.lock:
                server.serving -= 1

    def _answer(self, path: str) -> None:
        if path == "/ok":
            self.reply(200, JFK.read_bytes(), {"Content-Type": "audio/flac"})
        elif path == "/fail":
            self.reply(503, b"down")
        elif path == "/close":
            self.connection.close()  # no answer at all
        elif path == "/redirect":
            self.reply(302, headers={"Location": "/close"})
        elif path == "/loop":
            self.reply(302, headers={"Location": "/loop"})
        elif path == "/garbage":
            self.reply(200, bytes(range(256)) * 200)
        else:
            self.send_response(200)
            self.end_headers()
            if path == "/trickle":  # a byte every 0.2 s, for as long as it is read
                while not self.server.stop.wait(0.2):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            else:  # /stall: the headers, then nothing
                self.server.stop.wait(60)


@dataclass
class Misbehaving:
    """An audio host on 127.0.0.1 that answers (``/ok``), fails (``/fail``: 503), closes
    (``/close``), stalls (``/stall``), trickles (``/trickle``), redirects (``/redirect`` to a
    close, ``/loop``) or sends garbage (``/garbage``)."""

    server: _Misbehaving

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    @property
    def serving(self) -> int:
        """Requests it is answering now."""
        return self.server.serving


@contextlib.contextmanager
def misbehaving_server() -> Iterator[Misbehaving]:
    server = _Misbehaving(("127.0.0.1", 0), _MisbehavingHandler)
    server.lock, server.stop = threading.Lock(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Misbehaving(server)
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def wav(*channels: audio.Audio) -> bytes:
    """16 kHz 16-bit WAV of equally long ``channels`` (one: mono, two: stereo)."""
    buffer = io.BytesIO()
    layout = "mono" if len(channels) == 1 else "stereo"
    with av.open(buffer, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=audio.SAMPLE_RATE, layout=layout)
        pcm = (np.clip(np.stack(channels), -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate = audio.SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def spoken_german(text: str, out: Path, words_per_minute: int = 150) -> Path:
    """``text`` spoken by espeak-ng's German voice (robotic, but base understands it)."""
    return spoken(text, out, "de", words_per_minute)


def spoken(text: str, out: Path, voice: str, words_per_minute: int = 150) -> Path:
    """``text`` spoken by one of espeak-ng's voices, as a WAV file."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        require("espeak-ng")
    command = [str(espeak), "-v", voice, "-s", str(words_per_minute), "-w", str(out), text]
    subprocess.run(command, check=True, timeout=60)
    return out
