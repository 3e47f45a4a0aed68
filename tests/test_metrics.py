"""/metrics, Server-Timing and the access log, through real servers and the real tiny.en."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from whisperd.api import create_app
from whisperd.api.services import app_services, services_of
from whisperd.engine import Transcriber
from whisperd.settings import Settings

from support import JFK, assert_jfk, poll, running_app, server_process

pytestmark = [pytest.mark.slow, pytest.mark.server]

TRANSCRIPTIONS = "/v1/audio/transcriptions"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **kw: Any) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=30, **kw)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


def server_timing(response: httpx.Response) -> dict[str, float]:
    """``Server-Timing: receive;dur=1.2, decode;dur=3.4`` as {stage: milliseconds}."""
    stages = {}
    for entry in response.headers["server-timing"].split(","):
        name, _, param = entry.strip().partition(";")
        key, _, duration = param.partition("=")
        assert key == "dur", entry
        stages[name] = float(duration)
    assert all(ms >= 0 for ms in stages.values()), stages
    return stages


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, engine: Transcriber
) -> Iterator[tuple[str, Any]]:
    """The real app (jobs on, with an embedded Redis) on a real server, sharing tiny.en."""
    root = tmp_path_factory.mktemp("metrics")
    settings = Settings(
        model_cache_dir=engine.settings.model_cache_dir,
        tmp_dir=root / "tmp",
        data_dir=root / "data",
        offline=True,
        job_poll_interval=0.1,
        job_heartbeat_timeout=1.5,
    )
    app = create_app(settings, engine=engine)
    with running_app(app) as url:
        yield url, app


def _post(url: str, path: str = TRANSCRIPTIONS, **kw: Any) -> httpx.Response:
    kw.setdefault("files", {"file": ("jfk.flac", JFK.read_bytes())})
    return httpx.post(f"{url}{path}", timeout=120, **kw)


def test_server_timing_on_every_transcription_route(served: tuple[str, Any]) -> None:
    url, _ = served
    full = {"receive", "queue", "decode", "inference", "format"}
    jfk = JFK.read_bytes()

    r = _post(url)
    assert r.status_code == 200
    assert full <= set(server_timing(r))

    r = _post(url, data={"response_format": "verbose_json"})
    assert r.status_code == 200
    assert {"receive", "queue", "decode", "inference"} <= set(r.json()["timings"])
    assert full <= set(server_timing(r))

    # streamed: the header goes out with the first event, before inference has run
    r = _post(url, data={"stream": "true"})
    assert r.status_code == 200 and "transcript.text.done" in r.text
    assert {"receive", "queue", "decode"} <= set(server_timing(r))

    # the function's text answer streams too: its header also leaves before inference
    for path in ("/function/whisper", "/"):
        r = httpx.post(
            f"{url}{path}", content=jfk, headers={"content-type": "audio/flac"}, timeout=120
        )
        assert r.status_code == 200
        assert_jfk(r.text)
        assert {"receive", "queue", "decode"} <= set(server_timing(r))

    r = httpx.post(
        f"{url}/function/whisper",
        params={"format": "verbose_json"},
        content=jfk,
        headers={"content-type": "audio/flac"},
        timeout=120,
    )
    assert {"receive", "decode", "inference"} <= set(r.json()["timings"])

    r = _post(url, "/translate/")
    assert r.status_code == 200
    assert_jfk(r.json()["text"])
    assert {"receive", "queue", "decode", "inference"} <= set(server_timing(r))

    # tiny.en cannot translate: refused before decoding, the header still says what was spent
    r = _post(url, "/v1/audio/translations")
    assert r.status_code == 400
    assert "receive" in server_timing(r)


def test_metrics_count_what_was_served(served: tuple[str, Any]) -> None:
    url, app = served
    before = scrape(url)
    for _ in range(2):
        assert _post(url).status_code == 200
    assert _post(url, files={"file": ("a.flac", b"not audio at all")}).status_code == 415
    assert httpx.get(f"{url}/v1/no-such-route/12345").status_code == 404
    assert httpx.get(f"{url}/v1/jobs/no-such-job-6789").status_code == 404
    assert httpx.request("PROPFIND", f"{url}/healthz").status_code == 405
    docs = httpx.get(f"{url}/docs")
    asset = next(p for p in docs.text.split('"') if p.startswith("/static-offline-docs/"))
    assert httpx.get(f"{url}{asset}").status_code == 200
    admission = services_of(app).admission
    poll(lambda: admission.active == 0 and admission.waiting == 0, timeout=10)
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "POST", "route": TRANSCRIPTIONS}
    assert delta("whisperd_http_requests_total", **ok, status="200") == 2
    assert delta("whisperd_http_requests_total", **ok, status="415") == 1
    # labels are route templates: unknown paths and ids never become labels
    assert delta("whisperd_http_requests_total", route="unmatched", status="404") == 1
    assert delta("whisperd_http_requests_total", route="/v1/jobs/{job_id}", status="404") == 1
    assert delta("whisperd_http_requests_total", method="other", status="405") == 1
    # the docs page and its files, which the app serves itself, are routes too
    assert delta("whisperd_http_requests_total", route="/docs", status="200") == 1
    assert delta("whisperd_http_requests_total", route="/static-offline-docs/{path:path}") == 1
    assert not any(s in v for _, ls in after for _, v in ls for s in ("12345", "6789", "PROPFIND"))
    assert delta("whisperd_http_request_duration_seconds_count", **ok) == 3
    assert delta("whisperd_http_request_duration_seconds_sum", **ok) > 0
    # each stage's histogram saw the requests that went through it
    assert delta("whisperd_request_stage_seconds_count", stage="receive") == 3
    assert delta("whisperd_request_stage_seconds_count", stage="inference") == 2
    assert delta("whisperd_request_stage_seconds_count", stage="format") == 2
    assert delta("whisperd_request_stage_seconds_sum", stage="inference") > 0
    # jfk.flac is 11.0 s long
    assert delta("whisperd_audio_seconds_total") == pytest.approx(22.0, abs=0.1)
    assert delta("whisperd_engine_transcriptions_total") == 2
    assert delta("whisperd_engine_audio_seconds_total") == pytest.approx(22.0, abs=0.1)
    assert 0 < delta("whisperd_engine_busy_seconds_total") < 2 * 11
    assert delta("whisperd_real_time_factor_count") == 2
    assert 0 < delta("whisperd_real_time_factor_sum") < 2 * 5
    assert value(after, "whisperd_requests_active") == 0
    assert value(after, "whisperd_requests_queued") == 0
    assert value(after, "whisperd_requests_queued_limit") == app_services(app).settings.max_queue
    assert value(after, "whisperd_ready") == 1
    assert value(after, "whisperd_engine_speed") > 0
    assert value(after, "whisperd_model_load_seconds", model="tiny.en", device="cpu") > 0
    assert value(after, "process_resident_memory_bytes") > 50 * 2**20
    assert value(after, "whisperd_build_info") == 1
    assert not has(after, "whisperd_gpu_memory_used_bytes")  # CPU: no GPU figures


def test_job_counts_by_state(served: tuple[str, Any]) -> None:
    url, _ = served
    before = scrape(url)
    assert value(before, "whisperd_jobs_queue_up") == 1
    assert {"queued", "running", "succeeded", "failed", "cancelled"} == {
        dict(ls)["state"] for n, ls in before if n == "whisperd_jobs"
    }
    created = _post(url, "/v1/jobs")
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    poll(
        lambda: httpx.get(f"{url}/v1/jobs/{job_id}").json()["status"] == "succeeded",
        timeout=60,
        interval=0.1,
    )
    after = scrape(url)
    succeeded = value(after, "whisperd_jobs", state="succeeded")
    assert succeeded == value(before, "whisperd_jobs", state="succeeded") + 1
    # the job ran on this server's engine: counted there, though no request transcribed it
    for name, added in (("transcriptions", 1), ("audio_seconds", 11.0)):
        total = f"whisperd_engine_{name}_total"
        assert value(after, total) - value(before, total) == pytest.approx(added, abs=0.1)
    assert value(after, "whisperd_audio_seconds_total") == value(
        before, "whisperd_audio_seconds_total"
    )
    assert value(after, "whisperd_jobs_queue_depth") == 0
    assert value(after, "whisperd_jobs_running") == 0


def test_metrics_need_the_key_unless_public(tmp_path: Path, engine: Transcriber) -> None:
    common = {
        "model_cache_dir": engine.settings.model_cache_dir,
        "tmp_dir": tmp_path / "tmp",
        "data_dir": tmp_path / "data",
        "jobs_enabled": False,
        "api_keys": ("sesame",),
    }
    key = {"Authorization": "Bearer sesame"}
    app = create_app(Settings(**common), engine=engine)
    with running_app(app) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert _post(url).status_code == 401
        samples = scrape(url, headers=key)
        # refused before routing, still labelled by its route
        labels = {"route": TRANSCRIPTIONS, "status": "401"}
        assert value(samples, "whisperd_http_requests_total", **labels) == 1
    # from the routes themselves: building the OpenAPI schema after a response had been sent
    # swapped the process's warning filters under another thread's feet
    assert app.openapi_schema is None
    with running_app(create_app(Settings(**common, metrics_public=True), engine=engine)) as url:
        assert value(scrape(url), "whisperd_ready") == 1
        assert _post(url).status_code == 401


def test_json_access_log_and_multiprocess_metrics(tmp_path: Path) -> None:
    """Two `whisperd serve --log-format json` processes share PROMETHEUS_MULTIPROC_DIR:
    each logs one JSON line per request, and /metrics on either counts both."""
    shared = tmp_path / "prometheus"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "WHISPERD_JOBS_ENABLED": "false"}
    args = ("serve", "--log-format", "json")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        server_process(tmp_path / "a", env, args) as a,
        server_process(tmp_path / "b", env, args) as b,
    ):
        r = _post(a.url, headers={"X-Request-Id": "metrics-test-1"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "metrics-test-1"
        assert _post(b.url).status_code == 200
        samples = scrape(b.url)
        line = poll(lambda: _log_line(a.output(), "metrics-test-1"), timeout=10)
    labels = {"route": TRANSCRIPTIONS, "status": "200"}
    assert value(samples, "whisperd_http_requests_total", **labels) == 2
    assert value(samples, "whisperd_audio_seconds_total") == pytest.approx(22.0, abs=0.1)
    assert any(shared.glob("*.db"))
    assert line["logger"] == "whisperd.access"
    assert line["route"] == TRANSCRIPTIONS
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert line["audio_s"] == pytest.approx(11.0, abs=0.1)
    assert line["duration_s"] > 0
    assert {"receive", "queue", "decode", "inference", "format"} <= set(line["stages"])


def _log_line(output: str, request_id: str) -> dict[str, Any] | None:
    for text in output.splitlines():
        if text.startswith("{"):
            record: dict[str, Any] = json.loads(text)
            if record.get("request_id") == request_id:
                return record
    return None


def test_gpu_memory_from_nvidia_smi_rows() -> None:
    """The CSV rows of `nvidia-smi --query-gpu` / `--query-compute-apps` (no GPU here)."""
    from whisperd.metrics import gpu_metrics

    gpus = [
        ["0", "GPU-aaa", "NVIDIA H100 80GB HBM3", "1200", "81559"],
        ["1", "GPU-bbb", "X", "[N/A]", "[N/A]"],
    ]
    apps = [["4242", "GPU-aaa", "900"], ["777", "GPU-aaa", "300"]]
    used, total, mine = gpu_metrics(gpus, apps, pid=4242)
    assert [(s.labels, s.value) for s in used.samples] == [
        ({"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}, 1200 * 2**20)
    ]
    assert total.samples[0].value == 81559 * 2**20
    assert [(s.labels, s.value) for s in mine.samples] == [({"gpu": "0"}, 900 * 2**20)]
