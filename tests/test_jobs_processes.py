"""Durability with real processes: ``whisperd serve`` and ``whisperd worker`` killed with -9.

Every process (and Redis) a test starts is stopped when it ends, whatever happens; their
logs are printed when a test fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from job_helpers import (
    JFK,
    JFK_WORDS,
    LocalServer,
    final_jobs,
    process_running,
    processes,
    signature,
    wait_ready,
    whisperd_env,
)

from support import free_port, poll

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture
def local() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


def submit_upload(client: httpx.Client, callback_url: str) -> str:
    response = client.post(
        "/v1/jobs",
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"callback_url": callback_url},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def submit_gated(client: httpx.Client, local: LocalServer, callback_url: str) -> str:
    """A URL job whose download hangs until the gate opens: it is surely running when killed."""
    response = client.post(
        "/v1/jobs",
        data={"url": f"{local.base}/audio/gated/jfk.flac", "callback_url": callback_url},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in the metrics")


def check_succeeded(jobs: dict[str, dict[str, Any]]) -> None:
    failed = {job_id: job for job_id, job in jobs.items() if job["status"] != "succeeded"}
    assert not failed, failed
    for job in jobs.values():
        assert JFK_WORDS in job["result"]["text"].lower()


def check_callbacks(local: LocalServer, name: str, ids: list[str]) -> None:
    """Every job's callback arrived (duplicates allowed), signed, with OpenFaaS's headers."""
    poll(
        lambda: local.delivered_ids() >= set(ids),
        timeout=60,
        what="a callback for every job",
    )
    received = local.received(name)
    assert {c.call_id for c in received} == set(ids)
    for callback in received:
        assert callback.headers["x-function-status"] == "200"
        assert callback.headers["x-function-name"] == "whisper"
        assert float(callback.headers["x-duration-seconds"]) >= 0
        assert callback.headers["x-whisperd-signature"] == signature(callback.body)
        assert JFK_WORDS in json.loads(callback.body)["text"].lower()


def test_embedded_server_killed_mid_job_loses_nothing(
    tmp_path: Path, model_cache: Path, local: LocalServer
) -> None:
    port = free_port()
    env = {**whisperd_env(tmp_path, model_cache), "WHISPERD_PORT": str(port)}
    env["WHISPERD_JOB_WORKERS"] = "2"
    callback_url = f"{local.base}/callback/embedded"
    redis_pidfile = tmp_path / "data" / "redis" / "redis.pid"
    with (
        processes(tmp_path) as procs,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        procs.watch_pidfile(redis_pidfile)
        server = procs.whisperd("serve", "serve", env)
        wait_ready(client, server)
        ids = [submit_gated(client, local, callback_url)]
        assert local.gate_entered.wait(30), "the first job should be downloading"
        ids += [submit_upload(client, callback_url) for _ in range(5)]
        assert client.get(f"/v1/jobs/{ids[0]}").json()["status"] == "running"

        server.kill()  # kill -9, mid-job; the embedded Redis lives on as an orphan
        server.wait()
        local.open_gate()

        restarted = procs.whisperd("serve-again", "serve", env)
        wait_ready(client, restarted)
        jobs = final_jobs(client, ids, timeout=120)
        check_succeeded(jobs)
        assert jobs[ids[0]]["attempts"] == 2, "the killed try counts, then it ran again"
        check_callbacks(local, "embedded", ids)

        redis_pid = int(redis_pidfile.read_text())
        assert procs.stop(restarted) == 0
        assert not process_running(redis_pid), "the embedded Redis stops with the server"


def test_distributed_worker_killed_mid_job_loses_nothing(
    tmp_path: Path, model_cache: Path, local: LocalServer
) -> None:
    redis_port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    api_port = free_port()
    env = {
        **whisperd_env(tmp_path, model_cache),
        "WHISPERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    callback_url = f"{local.base}/callback/distributed"
    with (
        processes(tmp_path) as procs,
        httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client,
    ):
        redis_server = procs.redis(redis_port, redis_dir)
        api = procs.whisperd(
            "api",
            "serve",
            {**env, "WHISPERD_PORT": str(api_port), "WHISPERD_QUEUE_CONSUMERS": "false"},
        )
        worker_env = {**env, "WHISPERD_JOB_WORKERS": "2", "WHISPERD_CPU_THREADS": "1"}
        metrics_ports = [free_port() for _ in range(2)]
        workers = [
            procs.whisperd(
                f"worker{i}", "worker", {**worker_env, "WHISPERD_METRICS_PORT": str(port)}
            )
            for i, port in enumerate(metrics_ports)
        ]
        wait_ready(client, api)
        ids = [submit_gated(client, local, callback_url)]
        ids += [submit_upload(client, callback_url) for _ in range(9)]
        assert local.gate_entered.wait(90), "a worker should take the first job"

        holder: str = poll(
            lambda: client.get(f"/v1/jobs/{ids[0]}").json()["worker"], timeout=10, what="worker"
        )
        victim = next(w for w in workers if f"-{w.pid}-" in holder)
        survivor = next(w for w in workers if w is not victim)
        victim.kill()  # kill -9, mid-job
        victim.wait()
        local.open_gate()

        jobs = final_jobs(client, ids, timeout=150)
        check_succeeded(jobs)
        assert jobs[ids[0]]["attempts"] == 2
        assert f"-{survivor.pid}-" in jobs[ids[0]]["worker"]
        check_callbacks(local, "distributed", ids)

        # the survivor's own metrics count what its engine transcribed; the API's engine idles
        port = metrics_ports[workers.index(survivor)]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        done = sum(1 for job in jobs.values() if f"-{survivor.pid}-" in job["worker"])
        assert metric(metrics, "whisperd_engine_transcriptions_total") >= done > 0
        assert metric(metrics, "whisperd_engine_audio_seconds_total") >= 11.0 * done - 0.1
        assert metric(metrics, "whisperd_jobs_queue_depth") == 0
        assert metric(metrics, "whisperd_ready") == 1
        api_metrics = client.get("/metrics").text
        assert metric(api_metrics, "whisperd_engine_transcriptions_total") == 0

        assert procs.stop(survivor) == 0
        assert procs.stop(api) == 0
        assert procs.stop(redis_server) == 0
