"""The seeds' endpoints (OpenFaaS function, upload contract, checks) and health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from whisperd.api import create_app
from whisperd.engine import Transcriber

from support import JFK, assert_jfk, file_server, make_settings, running_app

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    routes = {
        "/jfk.flac": (200, {"Content-Type": "audio/flac"}, JFK.read_bytes()),
        "/missing.mp3": (404, {}, b"no"),
    }
    with file_server(routes) as url:
        yield url


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, engine: Transcriber
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("compat")
    settings = make_settings(root, model_cache, fetch_allow_hosts=("127.0.0.1",))
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


def test_function_takes_a_url_and_returns_text(base_url: str, files: str) -> None:
    for path in ("/function/whisper", "/"):
        r = httpx.post(f"{base_url}{path}", content=f"{files}/jfk.flac\n", timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert_jfk(r.text)


@pytest.mark.parametrize(
    ("fmt", "start"), [("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT"), ("json", "{")]
)
def test_function_formats(base_url: str, files: str, fmt: str, start: str) -> None:
    r = httpx.post(
        f"{base_url}/function/whisper?format={fmt}", content=f"{files}/jfk.flac", timeout=60
    )
    assert r.status_code == 200
    assert r.text.startswith(start)


def test_function_takes_raw_audio_too(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/function/whisper",
        content=JFK.read_bytes(),
        headers={"Content-Type": "audio/flac"},
        timeout=60,
    )
    assert r.status_code == 200
    assert_jfk(r.text)


@pytest.mark.parametrize(
    "body", ["", "not a url", "ftp://example.com/a.mp3", "http://10.0.0.1/a.mp3"]
)
def test_function_bad_bodies_are_400(base_url: str, body: str) -> None:
    r = httpx.post(f"{base_url}/function/whisper", content=body)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_function_upstream_404_is_400(base_url: str, files: str) -> None:
    r = httpx.post(f"{base_url}/function/whisper", content=f"{files}/missing.mp3")
    assert r.status_code == 400
    assert "404" in r.json()["error"]["message"]


def test_translate_upload(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/translate/", files={"file": ("jfk.flac", JFK.read_bytes())}, timeout=60
    )
    assert r.status_code == 200
    body = r.json()
    assert body["language"] == "en"
    assert_jfk(body["text"])


def test_translate_without_file_is_400(base_url: str) -> None:
    r = httpx.post(f"{base_url}/translate/")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "file"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_checks(base_url: str, method: str) -> None:
    gpu = httpx.request(method, f"{base_url}/check-gpu/")
    assert gpu.status_code == 400  # no GPU on the test machines
    assert gpu.json()["error"]["message"] == "CUDA is not available"
    ffmpeg = httpx.request(method, f"{base_url}/check-ffmpeg/").json()
    assert ffmpeg["ok"] is True
    assert ffmpeg["decoded_seconds"] == pytest.approx(1.0, abs=0.05)
    assert "libavcodec" in ffmpeg["ffmpeg"]
    model = httpx.request(method, f"{base_url}/check-model-in-memory/").json()
    assert model["model"] == "tiny.en"
    assert model["device"] == "cpu"
    assert model["compute_type"] in ("int8", "float32")
    assert model["load_seconds"] > 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/_/health", "/_/ready"])
def test_health(base_url: str, path: str) -> None:
    assert httpx.get(f"{base_url}{path}").status_code == 200


def test_unknown_route_is_openai_404(base_url: str) -> None:
    r = httpx.get(f"{base_url}/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


def test_openapi_documents_every_route_and_errors(base_url: str) -> None:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/models",
        "/function/whisper",
        "/translate/",
        "/check-gpu/",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    post = paths["/v1/audio/transcriptions"]["post"]
    assert {"400", "413", "415", "429", "504"} <= set(post["responses"])
    assert "ErrorResponse" in schema["components"]["schemas"]
