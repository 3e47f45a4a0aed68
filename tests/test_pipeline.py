"""Admission, fair scheduling, deadlines and disconnects, through a real server and model."""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from whisperd.api import create_app
from whisperd.api.services import services_of
from whisperd.engine import Transcriber

from support import (
    HOTWORDS,
    JFK,
    assert_jfk,
    make_settings,
    normalise,
    poll,
    running_app,
    speech_flac,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def long_speech() -> bytes:
    return speech_flac(240)


@pytest.fixture(scope="module")
def small_server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[tuple[str, Any]]:
    """A server on two threads, with four active places and a queue of two.

    Its own engine: the engine reads cpu_threads and max_active (admission takes its active
    places from the engine's plan).
    """
    settings = make_settings(
        tmp_path_factory.mktemp("small-server"),
        model_cache,
        cpu_threads=2,
        max_active=4,
        max_queue=2,
    )
    app = create_app(settings, engine=Transcriber(settings).start())
    with running_app(app) as url:
        yield url, app
    services_of(app).engine.close()


def _post(url: str, content: bytes, name: str = "a.flac", **kw: Any) -> httpx.Response:
    kw.setdefault("timeout", 120)
    return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (name, content)}, **kw)


def _idle(app: Any) -> bool:
    admission = services_of(app).admission
    return bool(admission.active == 0 and admission.waiting == 0)


def test_beyond_active_and_queue_only_200_and_429(small_server: tuple[str, Any]) -> None:
    url, app = small_server
    jfk = JFK.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: _post(url, jfk), range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 6  # four active and two queued were admitted
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert_jfk(r.json()["text"])
    poll(lambda: _idle(app), timeout=10)


def test_short_clip_behind_a_long_file_finishes_first(
    small_server: tuple[str, Any], long_speech: bytes
) -> None:
    url, app = small_server
    finished: dict[str, float] = {}

    def run(name: str, content: bytes) -> httpx.Response:
        response = _post(url, content, name)
        finished[name] = time.monotonic()
        return response

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        long_job = pool.submit(run, "long.flac", long_speech)
        poll(lambda: services_of(app).admission.active == 1, timeout=10)
        time.sleep(1.0)  # let the long file get going: the point is to arrive mid-way
        started = time.monotonic()
        short = pool.submit(run, "short.mp3", HOTWORDS.read_bytes()).result()
        short_latency = finished["short.mp3"] - started
        assert short.status_code == 200
        assert "long.flac" not in finished, "the long file was done before the clip"
        assert long_job.result().status_code == 200
    long_latency = finished["long.flac"] - started
    # served between the long file's windows: a few of them, not the whole file
    assert short_latency < long_latency / 3, (short_latency, long_latency)


def test_deadline_gives_504_and_frees_the_engine(small_server: tuple[str, Any]) -> None:
    url, app = small_server
    very_long = speech_flac(480)  # a minute or more of work, even on fast cores
    started = time.monotonic()
    r = _post(url, very_long, headers={"X-Timeout": "1.5"})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout_error"
    # stopped at a window boundary soon after the deadline, not at the end of the file
    assert time.monotonic() - started < 20
    poll(lambda: _idle(app), timeout=10)
    follow = _post(url, JFK.read_bytes())
    assert follow.status_code == 200


def test_bad_x_timeout_is_422(small_server: tuple[str, Any]) -> None:
    url, _ = small_server
    r = _post(url, JFK.read_bytes(), headers={"X-Timeout": "soon"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "X-Timeout"


def test_client_that_disconnects_stops_its_work(small_server: tuple[str, Any]) -> None:
    url, app = small_server
    very_long = speech_flac(480)  # far more work than the wait below allows
    gone = threading.Event()

    def leave_early() -> None:
        with pytest.raises(httpx.ReadTimeout):
            _post(url, very_long, timeout=httpx.Timeout(60, read=2))
        gone.set()

    thread = threading.Thread(target=leave_early)
    thread.start()
    thread.join(60)
    assert gone.is_set()
    # 480 s of speech takes far longer than this: it was stopped
    poll(lambda: _idle(app), timeout=20)


def test_api_keys(tmp_path: Path, model_cache: Path, engine: Transcriber) -> None:
    import openai

    keys_file = tmp_path / "keys"
    keys_file.write_text("# one per line\nfrom-file\n\n")
    settings = make_settings(tmp_path, model_cache, api_keys=("k1", "k2"), api_keys_file=keys_file)
    with running_app(create_app(settings, engine=engine)) as url:
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": "Basic k1"},
            {"Authorization": "Bearer"},  # what `Bearer $KEY` sends with KEY unset
            {"Authorization": ""},
        ):
            r = httpx.get(f"{url}/v1/models", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
        for path in ("/healthz", "/readyz", "/_/health", "/_/ready"):
            assert httpx.get(f"{url}{path}").status_code == 200
        r = httpx.post(f"{url}/function/whisper", content="http://x/a.mp3")
        assert r.status_code == 401
        for key in ("k2", "from-file"):
            with (
                openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client,
                JFK.open("rb") as f,
            ):
                assert_jfk(client.audio.transcriptions.create(model="whisper-1", file=f).text)
        with (
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.models.list()


def test_long_audio_runs_in_pieces_streamed_and_not(tmp_path: Path, model_cache: Path) -> None:
    """Audio longer than section_seconds is decoded section by section, also while it streams."""
    import json

    # its own engine: the engine cuts the sections (section_seconds)
    settings = make_settings(tmp_path, model_cache, section_seconds=30)
    speech = speech_flac(70)  # five sentences in three sections
    with Transcriber(settings) as engine, running_app(create_app(settings, engine=engine)) as url:
        whole = _post(url, speech, data={"response_format": "verbose_json"}).json()
        assert whole["duration"] == pytest.approx(70, abs=1)
        ids = [s["id"] for s in whole["segments"]]
        assert ids == list(range(len(ids)))
        ends = [s["end"] for s in whole["segments"]]
        assert ends == sorted(ends)
        assert 0 < ends[-1] <= whole["duration"]
        assert normalise(whole["text"]).count("ask not what your country can do for you") >= 4

        with httpx.stream(
            "POST",
            f"{url}/v1/audio/transcriptions",
            files={"file": ("a.flac", speech)},
            data={"stream": "true"},
            timeout=120,
        ) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line]
        assert events[-1]["type"] == "transcript.text.done", events[-1]
        assert events[-1]["usage"]["seconds"] == math.ceil(whole["duration"])
        deltas = [e for e in events if e["type"] == "transcript.text.delta"]
        assert [e["segment_id"] for e in deltas] == [f"seg_{i}" for i in range(len(deltas))]
