"""Hostile input through a real server and the real tiny.en model.

Every answer is a clear 4xx in OpenAI's error shape or a correct result: never a 500, a
hang, or a spooled upload left behind (on disk, or unlinked but still open). Every file is
generated here, with PyAV and numpy.
"""

from __future__ import annotations

import io
import logging
import os
import select
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from whisperd import audio, errors, models
from whisperd.api import create_app
from whisperd.engine import Transcriber
from whisperd.server import spool_in
from whisperd.settings import Settings

from support import (
    JFK,
    Misbehaving,
    UnseekableSink,
    assert_jfk,
    make_settings,
    misbehaving_server,
    normalise,
    running_app,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

RATE = audio.SAMPLE_RATE
# The largest FLAC block: a block of digital silence is a few bytes, so a day is ~160 kB.
FLAC_MAX_BLOCK = 65535
SMALL_CAP_SECONDS = 60.0
SMALL_UPLOAD_BYTES = 1 << 20
TIMEOUT = 120.0  # per request: a hang fails the test instead of stalling the run
CHUNK = 1 << 16
ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "server_error",
    504: "timeout_error",
}


# --- generated media ------------------------------------------------------------------------
def _sink(streamed: bool) -> io.BytesIO | UnseekableSink:
    return UnseekableSink() if streamed else io.BytesIO()


def _bytes(sink: io.BytesIO | UnseekableSink) -> bytes:
    return bytes(sink.data) if isinstance(sink, UnseekableSink) else sink.getvalue()


def _require(*codecs: str) -> None:
    for codec in codecs:
        if codec not in av.codecs_available:
            pytest.skip(f"this PyAV build has no {codec} encoder")


def encode(
    fmt: str,
    codec: str,
    channels: np.ndarray,
    rate: int,
    *,
    layout: str = "mono",
    streamed: bool = False,
    options: dict[str, str] | None = None,
) -> bytes:
    """``channels`` (float32 in [-1, 1], shaped (channels, samples)) encoded by FFmpeg."""
    _require(codec)
    sink = _sink(streamed)
    interleaved = np.ascontiguousarray(channels.T, dtype=np.float32).reshape(1, -1)
    width = channels.shape[0]
    block = 1 << 16
    with av.open(sink, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout, options=options or {})
        for start in range(0, channels.shape[1], block):
            piece = interleaved[:, start * width : (start + block) * width]
            frame = av.AudioFrame.from_ndarray(piece, format="flt", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return _bytes(sink)


def silence(fmt: str, codec: str, seconds: float, rate: int, *, streamed: bool = False) -> bytes:
    """Digital silence, block by block (days of it never sit in memory)."""
    _require(codec)
    sink = _sink(streamed)
    options = {"frame_size": str(FLAC_MAX_BLOCK)} if codec == "flac" else {}
    zeros = np.zeros((1, FLAC_MAX_BLOCK), dtype=np.int16)
    total = int(seconds * rate)
    with av.open(sink, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono", options=options)
        for start in range(0, total, FLAC_MAX_BLOCK):
            frame = av.AudioFrame.from_ndarray(
                zeros[:, : min(FLAC_MAX_BLOCK, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return _bytes(sink)


def video_only(fmt: str, codec: str) -> bytes:
    """Two seconds of grey frames and no audio stream at all."""
    _require(codec)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(20):
            image = np.full((48, 64, 3), index * 10, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz mono ``samples`` at ``rate``, by FFmpeg's resampler."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = RATE
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out])


def wav(samples: np.ndarray, rate: int, *, layout: str = "mono") -> bytes:
    """PCM 16-bit WAV with ``samples`` on every channel of ``layout``."""
    width = av.AudioLayout(layout).nb_channels
    return encode("wav", "pcm_s16le", np.tile(samples, (width, 1)), rate, layout=layout)


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def wav_claiming(data: bytes, data_bytes: int) -> bytes:
    """A WAV whose RIFF and data chunk sizes claim ``data_bytes`` of samples."""
    at = data.index(b"data") + 4
    return patched(patched(data, at, "<I", data_bytes), 4, "<I", min(data_bytes + 36, 2**32 - 1))


def flac_claiming(data: bytes, samples: int) -> bytes:
    """A FLAC whose STREAMINFO claims ``samples`` samples (the low 36 bits of bytes 18-25)."""
    assert data[:4] == b"fLaC"
    (word,) = struct.unpack_from(">Q", data, 18)
    return patched(data, 18, ">Q", (word & ~((1 << 36) - 1)) | samples)


@pytest.fixture(scope="session")
def jfk_samples() -> np.ndarray:
    return audio.decode(JFK)


@pytest.fixture(scope="session")
def day_of_silence() -> bytes:
    """The decompression bomb: 24 h of 8 kHz FLAC silence (~160 kB, 691 M samples)."""
    return silence("flac", "flac", 24 * 3600, 8000)


@pytest.fixture(scope="session")
def hour_of_silence() -> bytes:
    return silence("flac", "flac", 3600, RATE)


@pytest.fixture(scope="session")
def jfk_wav(jfk_samples: np.ndarray) -> bytes:
    return wav(jfk_samples, RATE)


@pytest.fixture(scope="session")
def jfk_mp3(jfk_samples: np.ndarray) -> bytes:
    return encode("mp3", "libmp3lame", jfk_samples.reshape(1, -1), RATE)


@pytest.fixture(scope="session")
def jfk_flac(jfk_samples: np.ndarray) -> bytes:
    return encode("flac", "flac", jfk_samples.reshape(1, -1), RATE)


@pytest.fixture(scope="session")
def hostile(
    jfk_samples: np.ndarray, jfk_wav: bytes, jfk_mp3: bytes, jfk_flac: bytes, day_of_silence: bytes
) -> dict[str, bytes]:
    """Inputs that must be refused, by name."""
    mp4 = encode("mp4", "aac", jfk_samples.reshape(1, -1), RATE)
    return {
        "zero-bytes": b"",
        "random-bytes": np.random.default_rng(20240501).bytes(2_000_000),
        "mp3-cut-after-300-bytes": jfk_mp3[:300],
        "mp4-cut-before-its-index": mp4[: len(mp4) // 2],
        "wav-at-0-hz": patched(jfk_wav, 24, "<I", 0),
        "wav-at-2-ghz": patched(jfk_wav, 24, "<I", 2**31 - 1),
        "wav-with-0-channels": patched(jfk_wav, 22, "<H", 0),
        "mp4-video-only": video_only("mp4", "mpeg4"),
        "webm-video-only": video_only("webm", "libvpx"),
        "flac-24-h-of-silence": day_of_silence,
        "flac-header-claiming-10-h": flac_claiming(jfk_flac, 10 * 3600 * RATE),
    }


REFUSALS = {
    "zero-bytes": (400, "empty_audio"),
    "random-bytes": (415, "unsupported_audio"),
    "mp3-cut-after-300-bytes": (415, "unsupported_audio"),
    "mp4-cut-before-its-index": (415, "unsupported_audio"),
    "wav-at-0-hz": (415, "unsupported_audio"),
    "wav-at-2-ghz": (415, "unsupported_audio"),
    "wav-with-0-channels": (415, "unsupported_audio"),
    "mp4-video-only": (415, "no_audio_stream"),
    "webm-video-only": (415, "no_audio_stream"),
    "flac-24-h-of-silence": (413, "audio_too_long"),
    "flac-header-claiming-10-h": (413, "audio_too_long"),
}


# --- the servers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("hostile")
    configured = make_settings(root, model_cache, tmp_dir=root / "spool", jobs_enabled=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", tempfile.tempdir)  # put back after the module
        spool_in(configured.tmp_dir)  # what `whisperd serve` does at start
        yield configured


@pytest.fixture(scope="module")
def client(settings: Settings, engine: Transcriber) -> Iterator[httpx.Client]:
    """The server with the default limits (4 h of audio, 200 MiB uploads)."""
    app = create_app(settings, engine=engine)
    with running_app(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def small(settings: Settings) -> Iterator[httpx.Client]:
    """A server with small limits (60 s of audio, 1 MiB uploads), spooling to the same dir;
    its own engine, because the engine (not the app) enforces max_audio_seconds."""
    limited = settings.model_copy(
        update={"max_audio_seconds": SMALL_CAP_SECONDS, "max_upload_bytes": SMALL_UPLOAD_BYTES}
    )
    with (
        Transcriber(limited) as engine,
        running_app(create_app(limited, engine=engine)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as c,
    ):
        yield c


def leftovers(spool: Path) -> list[str]:
    """Files in the spool dir, and files open in it (spooled uploads are unlinked at once)."""
    found = [str(p) for p in spool.iterdir()] if spool.is_dir() else []
    fds = Path("/proc/self/fd")
    if fds.is_dir():
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(f"{spool}{os.sep}"):
                found.append(target)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return value


@pytest.fixture(autouse=True)
def no_spool_left(settings: Settings) -> Iterator[None]:
    """After every test: no spooled upload on disk or open (closed just after the response)."""
    yield
    spool = settings.tmp_dir
    deadline = time.monotonic() + 10
    while left := leftovers(spool):
        if time.monotonic() > deadline:
            pytest.fail(f"spooled uploads left behind: {left}")
        time.sleep(0.01)


# --- requests -------------------------------------------------------------------------------
def post(
    client: httpx.Client, route: str, data: bytes, name: str = "audio", **fields: Any
) -> httpx.Response:
    """Send ``data`` the way ``route`` takes it: a multipart upload, or the raw function body."""
    if route == "function":
        headers = {"Content-Type": "application/octet-stream"}
        return client.post("/function/whisper", content=data, headers=headers)
    path = "/v1/audio/transcriptions" if route == "openai" else "/translate/"
    return client.post(path, files={"file": (name, data)}, data=fields)


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error body, after checking the status, the content type and the shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == ERROR_TYPES.get(status, "invalid_request_error")
    if code is not None:
        assert error["code"] == code
    return error


def transcript(client: httpx.Client, data: bytes, name: str = "audio", **fields: Any) -> Any:
    response = post(client, "openai", data, name, response_format="verbose_json", **fields)
    assert response.status_code == 200, response.text
    return response.json()


def multipart(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte by byte, from (headers, body) pairs: nothing is escaped."""
    boundary = b"hostile-boundary"
    out = bytearray()
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def field(name: str, value: bytes) -> tuple[bytes, bytes]:
    return f'Content-Disposition: form-data; name="{name}"'.encode(), value


def file_part(filename: bytes, data: bytes, name: str = "file") -> tuple[bytes, bytes]:
    disposition = f'Content-Disposition: form-data; name="{name}"; filename="'.encode()
    return disposition + filename + b'"\r\nContent-Type: application/octet-stream', data


# --- refused: a 4xx in OpenAI's shape, on every route that takes audio ----------------------
@pytest.mark.parametrize("route", ["openai", "upload", "function"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_unusable_audio_is_refused_with_a_clear_4xx(
    client: httpx.Client, hostile: dict[str, bytes], route: str, case: str
) -> None:
    status, code = REFUSALS[case]
    error = error_of(post(client, route, hostile[case]), status, code)
    assert error["param"] == "file"


def test_the_bomb_is_refused_on_its_declared_length_before_decoding(
    client: httpx.Client, day_of_silence: bytes
) -> None:
    response = post(client, "openai", day_of_silence)
    error = error_of(response, 413, "audio_too_long")
    assert "86400 s" in error["message"]
    assert "WHISPERD_MAX_AUDIO_SECONDS" in error["message"]
    # nothing was queued or decoded: the request's own stage timings say so
    stages = response.headers["server-timing"]
    assert "decode" not in stages
    assert "inference" not in stages


def test_refusals_also_come_before_an_event_stream(
    client: httpx.Client, hostile: dict[str, bytes]
) -> None:
    for case in ("random-bytes", "flac-24-h-of-silence"):
        status, code = REFUSALS[case]
        response = post(client, "openai", hostile[case], stream="true")
        error_of(response, status, code)


# --- a bomb whose header does not say how long it is ------------------------------------------
@pytest.fixture(scope="session")
def undeclared_bombs() -> dict[str, bytes]:
    """Ten minutes of silence written as streams: no length anywhere in their headers."""
    return {
        "flac-stream": silence("flac", "flac", 600, 8000, streamed=True),
        "webm-stream": silence("webm", "libopus", 600, 16000, streamed=True),
    }


@pytest.mark.parametrize("kind", ["flac-stream", "webm-stream"])
def test_an_undeclared_bomb_is_stopped_by_the_decoders_cap(
    undeclared_bombs: dict[str, bytes], kind: str
) -> None:
    bomb = undeclared_bombs[kind]
    assert audio.probe_duration(bomb) is None  # the precondition: nothing to refuse it on
    decoded = 0
    with pytest.raises(errors.AudioTooLongError):
        for chunk in audio.iter_frames(bomb, max_seconds=SMALL_CAP_SECONDS):
            decoded += chunk.size
    # memory stays bounded by the cap: decoding stopped as soon as it was passed
    assert decoded <= SMALL_CAP_SECONDS * RATE


@pytest.mark.parametrize("stream", ["false", "true"])
@pytest.mark.parametrize("kind", ["flac-stream", "webm-stream"])
def test_the_server_refuses_an_undeclared_bomb(
    small: httpx.Client, undeclared_bombs: dict[str, bytes], kind: str, stream: str
) -> None:
    response = post(small, "openai", undeclared_bombs[kind], stream=stream)
    error = error_of(response, 413, "audio_too_long")
    assert f"{SMALL_CAP_SECONDS:.0f} s" in error["message"]


def test_an_undeclared_bomb_on_the_function_route(
    small: httpx.Client, undeclared_bombs: dict[str, bytes]
) -> None:
    error_of(post(small, "function", undeclared_bombs["flac-stream"]), 413, "audio_too_long")


def test_a_body_over_the_upload_limit_is_a_413(small: httpx.Client) -> None:
    noise = np.random.default_rng(7).bytes(3 * SMALL_UPLOAD_BYTES)

    # one declares its length (refused before it is read), one is sent chunked (cut off)
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(noise), CHUNK):
            yield noise[start : start + CHUNK]

    body, headers = multipart(file_part(b"big.wav", noise))
    for response in (
        small.post("/v1/audio/transcriptions", content=body, headers=headers),
        small.post(
            "/function/whisper",
            content=chunks(),
            headers={"Content-Type": "application/octet-stream"},
        ),
    ):
        error = error_of(response, 413)
        assert "WHISPERD_MAX_UPLOAD_BYTES" in error["message"]


@pytest.mark.parametrize("route", ["openai", "upload"])
def test_the_upload_limit_is_exact_for_a_multipart_file(small: httpx.Client, route: str) -> None:
    """The form's envelope has an allowance of its own; the file itself may not pass the
    limit by a byte, and the 413 quotes the limit as configured."""
    noise = np.random.default_rng(8).bytes(SMALL_UPLOAD_BYTES + 1)
    error = error_of(post(small, route, noise), 413, "payload_too_large")
    assert f"limit of {SMALL_UPLOAD_BYTES} bytes" in error["message"]
    error_of(post(small, route, noise[:SMALL_UPLOAD_BYTES]), 415, "unsupported_audio")


# --- odd but valid audio: the right transcript ----------------------------------------------
def test_a_truncated_mp3_gives_the_part_that_is_there(client: httpx.Client, jfk_mp3: bytes) -> None:
    result = transcript(client, jfk_mp3[: int(len(jfk_mp3) * 0.4)])
    said = normalise(result["text"])
    assert "my fellow americans" in said
    assert "for your country" not in said
    assert 3.0 < result["duration"] < 6.0


@pytest.mark.parametrize("claimed_hours", [2, 37])
def test_a_wav_header_claiming_hours_gives_the_real_audio(
    client: httpx.Client, jfk_wav: bytes, claimed_hours: int
) -> None:
    data = wav_claiming(jfk_wav, min(claimed_hours * 3600 * RATE * 2, 2**32 - 16))
    result = transcript(client, data)
    assert_jfk(result["text"])
    assert result["duration"] == pytest.approx(11.0, abs=0.1)


def test_a_flac_header_claiming_hours_under_the_cap_gives_the_real_audio(
    client: httpx.Client, jfk_flac: bytes
) -> None:
    result = transcript(client, flac_claiming(jfk_flac, 2 * 3600 * RATE))
    assert_jfk(result["text"])
    assert result["duration"] == pytest.approx(11.0, abs=0.1)


@pytest.mark.parametrize("rate", [8000, 384_000])
def test_extreme_sample_rates(client: httpx.Client, jfk_samples: np.ndarray, rate: int) -> None:
    result = transcript(client, wav(resample(jfk_samples, rate), rate))
    assert_jfk(result["text"])
    assert result["duration"] == pytest.approx(11.0, abs=0.1)


def test_a_1_khz_file_is_resampled_not_refused(client: httpx.Client) -> None:
    # nothing intelligible survives 1 kHz sampling; a two-second hum keeps the test quick
    t = np.arange(2 * 1000) / 1000
    hum = (0.3 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    result = transcript(client, wav(hum, 1000))
    assert result["duration"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("mask", [None, 0], ids=["7.1-layout", "no-layout"])
def test_eight_channels_are_mixed_down(
    client: httpx.Client, jfk_samples: np.ndarray, mask: int | None
) -> None:
    data = wav(jfk_samples, RATE, layout="7.1")
    assert struct.unpack_from("<HH", data, 20) == (0xFFFE, 8)  # WAVE_FORMAT_EXTENSIBLE, 8 ch
    if mask is not None:
        data = patched(data, 40, "<I", mask)  # dwChannelMask: which speakers; 0 = unknown
    result = transcript(client, data)
    assert_jfk(result["text"])


def test_an_hour_of_silence_is_quick_and_says_nothing(
    client: httpx.Client, hour_of_silence: bytes
) -> None:
    assert len(hour_of_silence) < 100_000  # the upload is small; the audio is not
    started = time.monotonic()
    result = transcript(client, hour_of_silence)
    elapsed = time.monotonic() - started
    assert result["text"] == ""
    assert result["segments"] == []
    assert result["duration"] == pytest.approx(3600.0)
    # the VAD skips it: Whisper itself would take minutes (and invent "You You You ...")
    assert elapsed < 60, f"took {elapsed:.1f} s"


# --- filenames and form fields ----------------------------------------------------------------
@pytest.mark.parametrize(
    "filename",
    [
        b"../../etc/passwd",
        b"/etc/passwd",
        b"..\\..\\windows\\win.ini",
        b"a\x00b.flac",
        b"a\r\nX-Injected: 1.flac",
        "\u202egalf.mp3".encode(),
    ],
    ids=["relative", "absolute", "windows", "nul", "crlf", "bidi"],
)
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/translate/"])
def test_a_hostile_filename_is_only_a_name(
    client: httpx.Client, settings: Settings, filename: bytes, path: str
) -> None:
    before = sorted(settings.tmp_dir.parent.rglob("*"))
    body, headers = multipart(file_part(filename, JFK.read_bytes()))
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert_jfk(response.json()["text"])
    assert sorted(settings.tmp_dir.parent.rglob("*")) == before


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([file_part(b"a.flac", b"x"), field("prompt", b"word " * 1_000_000)], "maximum size"),
        ([file_part(b"a.flac", b"x")] + [field(f"f{i}", b"x") for i in range(10_000)], "fields"),
        ([file_part(b"a.flac", b"x", name=f"f{i}") for i in range(2000)], "files"),
        ([file_part(b"x" * 100_000, b"x")], "multipart"),
        (
            [(b'Content-Disposition: form-data; name="file"\r\nX-Pad: ' + b"p" * 2_000_000, b"x")],
            "",
        ),
    ],
    ids=["5-MB-prompt", "10000-fields", "2000-files", "100-kB-filename", "2-MB-part-header"],
)
def test_an_abusive_form_is_a_400(
    client: httpx.Client, parts: list[tuple[bytes, bytes]], message: str
) -> None:
    body, headers = multipart(*parts)
    error = error_of(client.post("/v1/audio/transcriptions", content=body, headers=headers), 400)
    assert message in error["message"]


def test_a_long_prompt_under_the_part_limit_still_transcribes(client: httpx.Client) -> None:
    # 900 kB of prompt: Whisper keeps only its last 223 tokens
    result = transcript(client, JFK.read_bytes(), prompt="Kennedy speaks. " * 56_000)
    assert_jfk(result["text"])


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": "../../../etc"}, 404, "model"),
        ({"model": "/etc"}, 404, "model"),
        ({"model": "tiny.en\x00"}, 404, "model"),
        ({"model": "m" * 300}, 404, "model"),
        ({"language": "\x00"}, 422, "language"),
        ({"response_format": "../../etc/passwd"}, 422, "response_format"),
        ({"url": "file:///etc/passwd"}, 400, "url"),
    ],
    ids=[
        "model-relative",
        "model-absolute",
        "model-nul",
        "model-300-chars",
        "language-nul",
        "format",
        "file-url",
    ],
)
def test_hostile_field_values(
    client: httpx.Client, fields: dict[str, str], status: int, param: str
) -> None:
    files = None if "url" in fields else {"file": ("a.flac", JFK.read_bytes())}
    response = client.post("/v1/audio/transcriptions", files=files, data=fields)
    assert error_of(response, status)["param"] == param


@pytest.mark.parametrize("where", ["language", "X-Timeout"])
def test_an_error_quotes_only_a_prefix_of_a_long_value(client: httpx.Client, where: str) -> None:
    value = "q" * (900_000 if where == "language" else 10_000)
    files = {"file": ("a.flac", JFK.read_bytes())}
    if where == "language":
        response = client.post("/v1/audio/transcriptions", files=files, data={"language": value})
    else:
        response = client.post("/v1/audio/transcriptions", files=files, headers={where: value})
    error = error_of(response, 422)
    assert error["param"] == where
    assert "qqqqqqqqqq" in error["message"]
    assert len(error["message"]) < 300


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": "true", "response_format": "srt"}, "response_format"),
        ({"stream": "true", "response_format": "verbose_json"}, "response_format"),
        (
            {"timestamp_granularities[]": "word", "response_format": "json"},
            "timestamp_granularities",
        ),
        ({"timestamp_granularities[]": "segment"}, "timestamp_granularities"),
    ],
    ids=["stream-srt", "stream-verbose", "words-in-json", "segments-by-default"],
)
def test_options_the_format_cannot_carry_are_a_400(
    client: httpx.Client, fields: dict[str, str], param: str
) -> None:
    """As OpenAI answers them, rather than silently ignored."""
    files = {"file": ("a.flac", JFK.read_bytes())}
    response = client.post("/v1/audio/transcriptions", files=files, data=fields)
    assert error_of(response, 400)["param"] == param


def test_a_second_recording_in_one_form_is_a_400(client: httpx.Client) -> None:
    """Rather than one of them transcribed and the other left out unheard."""
    flac = JFK.read_bytes()
    two_files = [("file", ("a.flac", flac)), ("file", ("b.flac", flac))]
    response = client.post("/v1/audio/transcriptions", files=two_files)
    assert error_of(response, 400)["param"] == "file"
    two_urls = {"url": ["https://example.com/a.mp3", "https://example.com/b.mp3"]}
    response = client.post("/v1/audio/translations", data=two_urls, files={"model": (None, "x")})
    assert error_of(response, 400)["param"] == "url"


def test_a_model_is_never_loaded_from_a_path_a_client_sends(
    client: httpx.Client, engine: Transcriber, model_cache: Path
) -> None:
    base = models.resolve("base", model_cache, offline=True).path  # in the server's cache
    tiny = models.resolve("tiny.en", model_cache, offline=True).path  # in site-packages
    spellings = [
        str(base),
        f"{base}/",
        str(base).replace("/bundled/", "/bundled//"),
        os.path.relpath(base),
        f"{model_cache}/./bundled/base",
        str(tiny),
    ]
    loaded = set(engine.loaded)
    for name in spellings:
        response = client.post(
            "/v1/audio/transcriptions", files={"file": JFK.read_bytes()}, data={"model": name}
        )
        assert error_of(response, 404)["code"] == "model_not_found"
    assert set(engine.loaded) == loaded
    # nothing the server answers shows where it keeps its models or its code
    server_paths = (str(model_cache), str(tiny.parent))
    unknown = client.post(
        "/v1/audio/transcriptions", files={"file": JFK.read_bytes()}, data={"model": "x"}
    )
    answers = [
        error_of(unknown, 404)["message"],
        client.get("/v1/models").text,
        client.get("/check-model-in-memory/").text,
    ]
    for answer in answers:
        assert not [p for p in server_paths if p in answer], answer


def test_text_where_the_file_belongs_is_a_422(client: httpx.Client) -> None:
    body, headers = multipart(field("file", b"../../etc/passwd"))
    response = client.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert error_of(response, 422)["param"] == "file"


def test_a_path_cannot_forge_a_log_line(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="whisperd.access")
    forged = "/v1/jobs%0a2026-12-03 00:00:00,000 INFO whisperd.access: POST /v1/jobs 202%1b[2J"
    response = client.get(forged, headers={"X-Request-Id": "forger"})
    assert response.status_code == 404

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "request_id", "") == "forger"]

    (record,) = wait_for(logged, 30, "the request to be logged")
    line = record.getMessage()
    assert "\n" not in line and "\x1b" not in line, line
    assert "/v1/jobs\\n2026-12-03" in line and "\\x1b[2J" in line, line


# --- a client that leaves mid-upload --------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/function/whisper"])
def test_a_client_leaving_mid_upload_leaves_nothing_behind(
    client: httpx.Client, settings: Settings, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.INFO, logger="whisperd.access")
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    if path == "/function/whisper":
        content_type, preamble = "application/octet-stream", b""
    else:
        content_type = "multipart/form-data; boundary=B"
        preamble = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {50_000_000}\r\nX-Request-Id: leaving-{path}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode() + preamble + bytes(3_000_000))
        if path != "/function/whisper":
            # the upload is spooling to disk in the configured dir (what the autouse check watches)
            wait_for(lambda: leftovers(settings.tmp_dir), 30, "the upload to spool to disk")

    def logged() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "whisperd.access" and getattr(r, "request_id", "") == f"leaving-{path}"
        ]

    (record,) = wait_for(logged, 30, "the request to end")
    assert getattr(record, "status", None) in (400, 499)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert client.get("/healthz").status_code == 200


# --- audio URLs: slow, failing and malformed ----------------------------------------------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[Misbehaving]:
    with misbehaving_server() as server:
        yield server


FETCHES = 2


@pytest.fixture(scope="module")
def fetching(settings: Settings, engine: Transcriber) -> Iterator[httpx.Client]:
    """The server fetching from 127.0.0.1, at most FETCHES URLs at once."""
    local = settings.model_copy(
        update={
            "fetch_allow_hosts": ("127.0.0.1",),
            "fetch_concurrency": FETCHES,
            "fetch_timeout": 2.0,
            "fetch_total_timeout": 60.0,
        }
    )
    with (
        running_app(create_app(local, engine=engine)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as c,
    ):
        yield c


def test_slow_urls_cannot_starve_the_server(
    fetching: httpx.Client, upstream: Misbehaving, jfk_flac: bytes
) -> None:
    """While FETCHES trickling URLs are being fetched, more URLs get 429 at once, and the
    server still answers everything else. The fetches stop when their clients leave."""
    host, port = fetching.base_url.host, fetching.base_url.port
    assert port is not None
    slow = upstream.url("/trickle").encode()
    head = (
        f"POST /function/whisper HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(slow)}\r\n\r\n"
    ).encode()
    held = [socket.create_connection((host, port), timeout=TIMEOUT) for _ in range(FETCHES)]
    try:
        for sock in held:
            sock.sendall(head + slow)
        wait_for(lambda: upstream.serving == FETCHES, 30, "the fetches to start")
        for _ in range(3):
            error_of(fetching.post("/function/whisper", content=slow), 429)
            error_of(fetching.post("/v1/audio/transcriptions", data={"url": slow}), 429)
        ready = fetching.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "saturated"
        assert fetching.get("/v1/models").status_code == 200
        assert_jfk(transcript(fetching, jfk_flac)["text"])
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: upstream.serving == 0, 30, "the abandoned fetches to stop")
    wait_for(lambda: fetching.get("/readyz").status_code == 200, 30, "readiness to return")


def test_a_fetch_ends_with_the_requests_deadline(
    fetching: httpx.Client, upstream: Misbehaving
) -> None:
    url = upstream.url("/trickle")
    for response in (
        fetching.post("/v1/audio/transcriptions", data={"url": url}, headers={"X-Timeout": "1"}),
        fetching.post("/function/whisper", content=url, headers={"X-Timeout": "1"}),
    ):
        error_of(response, 504, "deadline_exceeded")
    wait_for(lambda: upstream.serving == 0, 30, "the fetches to stop")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/fail", 502, "upstream_error"), ("/stall", 504, "upstream_timeout")],
)
def test_an_upstream_failure_is_not_the_clients_fault(
    fetching: httpx.Client, upstream: Misbehaving, path: str, status: int, code: str
) -> None:
    url = upstream.url(path)
    error_of(fetching.post("/v1/audio/transcriptions", data={"url": url}), status, code)
    error_of(fetching.post("/function/whisper", content=url), status, code)


@pytest.mark.parametrize("url", ["http://xn--/", "http://xn--zz/a.mp3"])
def test_a_malformed_international_hostname_is_a_400(fetching: httpx.Client, url: str) -> None:
    error_of(fetching.post("/v1/audio/transcriptions", data={"url": url}), 400, "forbidden_url")
    error_of(fetching.post("/function/whisper", content=url), 400, "forbidden_url")


# --- request heads and forms past their limits ------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{"X-Big": "a" * 20_000}, {f"X-Many-{i}": "1" for i in range(150)}],
    ids=["20-kB-header", "150-headers"],
)
def test_an_oversized_head_is_a_431(client: httpx.Client, headers: dict[str, str]) -> None:
    error_of(client.get("/v1/models", headers=headers), 431, "headers_too_large")
    assert client.get("/healthz").status_code == 200


def test_a_10_mb_header_is_refused_before_it_is_read(client: httpx.Client) -> None:
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode())
        for _ in range(160):  # until the server answers (stops reading): that is the point
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"a" * CHUNK)
        answer = sock.recv(CHUNK)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b'"headers_too_large"' in answer
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("parts", ["fields", "files"])
def test_a_form_with_too_many_parts_is_a_400(
    client: httpx.Client, jfk_flac: bytes, parts: str
) -> None:
    if parts == "fields":
        files: Any = {"file": ("a.flac", jfk_flac)}
        data: dict[str, Any] = {"model": "whisper-1", "extra": ["x"] * 100}
    else:
        files, data = [("file", (f"{n}.flac", jfk_flac)) for n in range(5)], {}
    error_of(client.post("/v1/audio/transcriptions", files=files, data=data), 400)


@pytest.fixture(scope="module")
def impatient(settings: Settings, engine: Transcriber) -> Iterator[httpx.Client]:
    """The server giving a request line and headers one second."""
    local = settings.model_copy(update={"header_timeout": 1.0})
    with (
        running_app(create_app(local, engine=engine)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as c,
    ):
        yield c


def _raw(client: httpx.Client, data: bytes) -> bytes:
    """What the server answers ``data`` sent on a connection of its own, until it closes."""
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(CHUNK):
            answer += chunk
    return answer


@pytest.mark.parametrize("sent", [b"", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: 1"])
def test_a_head_sent_too_slowly_is_a_408(impatient: httpx.Client, sent: bytes) -> None:
    """Nothing, or a head left unfinished: the connection is answered and closed, not held."""
    answer = _raw(impatient, sent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"request_timeout"' in answer
    assert impatient.get("/healthz").status_code == 200


def test_a_body_sent_too_slowly_is_a_408(impatient: httpx.Client) -> None:
    """A body that trickles in (here: none of it after the head) is answered and closed."""
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    )
    answer = _raw(impatient, head + b"--b\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"request_timeout"' in answer and b"bytes a second" in answer
    assert impatient.get("/healthz").status_code == 200


def test_a_request_that_is_not_http_gets_a_json_400(client: httpx.Client) -> None:
    answer = _raw(client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.split(b"\r\n\r\n", 1)[1].startswith(b'{"error": {')


def test_odd_paths_get_a_short_404(client: httpx.Client) -> None:
    for path in (f"/v1/{'a' * 5000}", f"/ui/{'a' * 300}.css"):
        error = error_of(client.get(path), 404)
        assert len(error["message"]) < 300


def test_a_chunked_body_over_the_limit_has_the_413_code(small: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3 * SMALL_UPLOAD_BYTES // CHUNK):
            yield bytes(CHUNK)

    response = small.post(
        "/function/whisper", content=chunks(), headers={"Content-Type": "application/octet-stream"}
    )
    error_of(response, 413, "payload_too_large")


# --- the decoder on its own -------------------------------------------------------------------
def test_the_decoder_names_each_failure() -> None:
    with pytest.raises(errors.EmptyAudioError):
        audio.decode(io.BytesIO(b""))
    with pytest.raises(errors.UndecodableAudioError):
        audio.decode(np.random.default_rng(1).bytes(100_000))
    with pytest.raises(errors.NoAudioStreamError):
        audio.decode(video_only("mp4", "mpeg4"))


def test_the_decoder_mixes_eight_unnamed_channels_to_mono(jfk_samples: np.ndarray) -> None:
    data = patched(wav(jfk_samples, RATE, layout="7.1"), 40, "<I", 0)
    decoded = audio.decode(data)
    assert decoded.ndim == 1
    assert audio.duration(decoded) == pytest.approx(11.0, abs=0.01)
    assert np.corrcoef(decoded[: jfk_samples.size], jfk_samples)[0, 1] > 0.99


def test_probing_reads_the_declared_length_without_decoding(
    day_of_silence: bytes, hour_of_silence: bytes
) -> None:
    assert len(day_of_silence) < 1_000_000
    assert audio.probe_duration(day_of_silence) == pytest.approx(24 * 3600)
    assert audio.probe_duration(hour_of_silence) == pytest.approx(3600)
