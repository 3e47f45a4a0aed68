"""``POST /v1/audio/language`` through a real server: the bundled base model on real speech."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from whisperd import audio
from whisperd.api import create_app
from whisperd.api.services import services_of
from whisperd.engine import Transcriber

from support import JFK, file_server, make_settings, poll, running_app, speech_flac

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[tuple[str, Any]]:
    """tiny.en by default (base loads when asked for); one active place and one queued.

    Its own engine: admission takes the active places from the engine's plan (max_active).
    """
    settings = make_settings(
        tmp_path_factory.mktemp("language"),
        model_cache,
        jobs_enabled=False,
        fetch_allow_hosts=("127.0.0.1",),
        max_active=1,
        max_queue=1,
    )
    with Transcriber(settings) as engine:
        app = create_app(settings, engine=engine)
        with running_app(app) as url:
            yield url, app


def _detect(url: str, content: bytes, name: str = "a.wav", **kw: Any) -> httpx.Response:
    data = kw.pop("data", {"model": "base"})
    return httpx.post(
        f"{url}/v1/audio/language", files={"file": (name, content)}, data=data, timeout=120, **kw
    )


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


NEWS = (
    "Die Bundesregierung hat am Mittwoch neue Pläne für den Ausbau der Bahn vorgestellt. Bis "
    "zum Jahr dreißig sollen viele Strecken modernisiert werden, damit die Züge pünktlicher "
    "fahren."
)


@pytest.fixture(scope="module")
def german_news(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A news sentence in espeak-ng's male German voice (more natural than its default one,
    of which base is only about 0.7 sure), as a WAV file."""
    out = tmp_path_factory.mktemp("news") / "news.wav"
    espeak = ["espeak-ng", "-v", "de+m3", "-s", "140", "-w", str(out), NEWS]
    subprocess.run(espeak, check=True, timeout=60)
    return out


def test_german_speech_is_german(server: tuple[str, Any], german_news: Path) -> None:
    url, _ = server
    r = _detect(url, german_news.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "de"
    ranked = body["languages"]
    assert len(ranked) == 5
    assert ranked[0] == {"language": "de", "probability": body["probability"]}
    probabilities = [entry["probability"] for entry in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["probability"] > 0.8
    assert 5 < body["duration"] < audio.duration(audio.decode(german_news))
    assert {"queue", "inference"} <= {
        t.split(";")[0] for t in r.headers["server-timing"].split(", ")
    }


def test_english_speech_from_a_url_is_english(server: tuple[str, Any]) -> None:
    url, _ = server
    with file_server({"/jfk.flac": (200, {"Content-Type": "audio/flac"}, JFK.read_bytes())}) as at:
        r = httpx.post(
            f"{url}/v1/audio/language", data={"url": f"{at}/jfk.flac", "model": "base"}, timeout=120
        )
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "en"
    assert r.json()["probability"] > 0.8


def test_english_only_model_is_a_400_naming_a_multilingual_one(server: tuple[str, Any]) -> None:
    url, _ = server
    error = _error(_detect(url, JFK.read_bytes(), "jfk.flac", data={}), 400)
    assert (error["code"], error["param"]) == ("unsupported_task", "model")
    assert "English-only" in error["message"] and "'base'" in error["message"]


def test_silence_is_no_speech_not_a_language(server: tuple[str, Any]) -> None:
    url, _ = server
    silence = audio.encode_flac(np.zeros(20 * audio.SAMPLE_RATE, dtype=np.float32))
    error = _error(_detect(url, silence, "silence.flac"), 400)
    assert (error["code"], error["param"]) == ("no_speech", "file")


@contextlib.contextmanager
def _occupied(url: str, app: Any) -> Iterator[None]:
    """The server's one active place taken by a long transcription, until its client leaves
    (a raw socket, closed at the end: the server stops the work when it sees that)."""
    request = httpx.Request(
        "POST", f"{url}/v1/audio/transcriptions", files={"file": ("long.flac", speech_flac(480))}
    )
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port)) as conn:
        conn.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\n{head}\r\n".encode() + body)
        poll(
            lambda: services_of(app).admission.active == 1,
            timeout=60,
            what="the long transcription",
        )
        yield
    poll(lambda: services_of(app).admission.active == 0, timeout=30, what="the engine to be freed")


def test_detection_is_admitted_like_a_transcription(
    server: tuple[str, Any], german_wav: Path
) -> None:
    """Behind a full server a detection waits in the queue until its deadline (504); beyond
    the queue it gets 429 at once."""
    url, app = server
    german = german_wav.read_bytes()
    # base loaded first: the queued request's deadline is then all spent waiting in the queue
    assert _detect(url, german).json()["language"] == "de"
    with _occupied(url, app), concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(_detect, url, german, headers={"X-Timeout": "10"})
        poll(lambda: services_of(app).admission.waiting == 1, timeout=30, what="a queued detection")
        refused = _detect(url, german)
        assert _error(refused, 429)["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
        assert _error(queued.result(), 504)["type"] == "timeout_error"
