"""Async jobs through the API, in-process: the real tiny.en model, a real embedded Redis per
test (in tmp_path), and a real HTTP server on 127.0.0.1 as audio host and callback receiver.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from job_helpers import (
    JFK,
    JFK_WORDS,
    LocalServer,
    job_settings,
    process_running,
    processes,
    signature,
    spaced_wav,
)
from whisperd import audio
from whisperd.api import create_app
from whisperd.engine import Segment, Transcriber
from whisperd.errors import InvalidTransitionError, RateLimitError, ServiceUnavailableError
from whisperd.jobs.chunks import merge
from whisperd.jobs.embedded import EmbeddedRedis
from whisperd.jobs.owners import Owner
from whisperd.jobs.records import ChunkRecord, segments_to_json
from whisperd.jobs.service import JobsService
from whisperd.jobs.states import TRANSITIONS, ChunkState, JobState, check_transition
from whisperd.settings import Settings
from whisperd.spec import Spec

from support import assert_english_then_german, free_port, misbehaving_server, poll

pytestmark = pytest.mark.slow

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def local() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


@contextmanager
def api(settings: Settings, engine: Transcriber) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client


def submit(
    client: TestClient,
    *,
    upload: bytes | None = None,
    headers: dict[str, str] | None = None,
    **form: Any,
) -> dict[str, Any]:
    files = {"file": ("audio.flac", upload)} if upload is not None else None
    response = client.post("/v1/jobs", files=files, data=form, headers=headers)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["x-call-id"] == body["id"]
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] == "queued"
    return body


def wait_job(
    client: TestClient,
    job_id: str,
    statuses: tuple[str, ...] = FINAL,
    timeout: float = 60,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return body if body["status"] in statuses else None

    return poll(check, timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}")


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- states -------------------------------------------------------------------------------
def test_job_states_allow_only_the_written_transitions() -> None:
    legal = {
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.CANCELLED),
        (JobState.RUNNING, JobState.QUEUED),
    }
    for old in JobState:
        for new in JobState:
            if (old, new) in legal:
                check_transition(old, new)
            else:
                with pytest.raises(InvalidTransitionError):
                    check_transition(old, new)
    assert {s for s in JobState if s.final} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }
    assert all(not TRANSITIONS[s] for s in JobState if s.final)


# --- the happy path -----------------------------------------------------------------------
def test_jobs_run_and_are_listed_newest_first(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    with api(job_settings(tmp_path), engine) as client:
        upload = submit(
            client,
            upload=JFK.read_bytes(),
            response_format="verbose_json",
            **{"timestamp_granularities[]": "word"},
        )
        fetched = submit(client, url=f"{local.base}/audio/jfk.flac", response_format="srt")

        first = wait_job(client, upload["id"])
        assert first["status"] == "succeeded", first
        assert first["attempts"] == 1
        assert first["error"] is None
        assert first["progress"] == {
            "seconds": 11.0,
            "duration": 11.0,
            "chunks": 1,
            "chunks_done": 1,
        }
        assert first["input"] == {
            "type": "upload",
            "url": None,
            "filename": "audio.flac",
            "bytes": JFK.stat().st_size,
        }
        assert JFK_WORDS in first["result"]["text"].lower()
        assert first["result"]["words"], "word timestamps were asked for"
        assert first["started_at"] <= first["finished_at"]

        second = wait_job(client, fetched["id"])
        assert second["status"] == "succeeded", second
        assert second["result"].startswith("1\n00:00:00,000 --> ")
        raw = client.get(f"/v1/jobs/{fetched['id']}/result")
        assert raw.headers["content-type"].startswith("application/x-subrip")
        assert raw.text == second["result"]

        listed = client.get("/v1/jobs").json()
        assert [job["id"] for job in listed["data"]] == [fetched["id"], upload["id"]]
        assert "result" not in listed["data"][0]
        assert listed["queue"]["succeeded"] == 2
        assert listed["queue"]["queued"] == listed["queue"]["waiting_messages"] == 0

        page = client.get("/v1/jobs", params={"limit": 1}).json()
        assert [job["id"] for job in page["data"]] == [fetched["id"]]
        assert page["has_more"] is True
        rest = client.get("/v1/jobs", params={"limit": 1, "after": page["last_id"]}).json()
        assert [job["id"] for job in rest["data"]] == [upload["id"]]
        assert rest["has_more"] is False
        assert client.get("/v1/jobs", params={"status": "queued"}).json()["data"] == []
        done = client.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
        assert len(done) == 2


def test_a_multilingual_job_labels_each_language(
    tmp_path: Path, base_engine: Transcriber, mixed_flac: bytes
) -> None:
    with api(job_settings(tmp_path), base_engine) as client:
        job = submit(client, upload=mixed_flac, response_format="verbose_json", multilingual="true")
        done = wait_job(client, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert_english_then_german(done["result"]["segments"])
    assert done["result"]["language"] == "english"


def test_a_long_job_merged_is_in_the_language_spoken_longest() -> None:
    def chunk(index: int, language: str, *said: tuple[str | None, float, float]) -> ChunkRecord:
        segments = [
            Segment(0, 0, start, end, "text", (1,), 0.0, -0.2, 1.2, 0.01, language=spoken)
            for spoken, start, end in said
        ]
        return ChunkRecord(
            "job",
            index,
            ChunkState.DONE,
            offset=10.0 * index,
            seconds=10.0,
            segments=segments_to_json(segments),
            language=language,
            language_probability=0.5 + index / 10,
        )

    # the first chunk is mostly English, but German is spoken longer in all
    mixed = merge(
        [chunk(0, "en", ("en", 0, 6), ("de", 6, 9)), chunk(1, "de", ("de", 10, 15))],
        duration=20.0,
        task="transcribe",
    )
    assert (mixed.language, mixed.language_probability) == ("de", 0.6)
    assert [s.language for s in mixed.segments] == ["en", "de", "de"]
    # without multilingual: the first chunk's language, and the segments stored as before
    plain = [chunk(0, "en", (None, 0, 3)), chunk(1, "de", (None, 10, 19))]
    assert "language" not in (plain[0].segments or "")
    assert merge(plain, duration=20.0, task="transcribe").language == "en"


# --- callbacks ----------------------------------------------------------------------------
def test_async_function_callback_is_retried_until_the_receiver_takes_it(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    local.script("flaky", [503, 503, 503])
    with api(job_settings(tmp_path), engine) as client:
        response = client.post(
            "/async-function/whisper",
            content=f"{local.base}/audio/jfk.flac",
            headers={"X-Callback-Url": f"{local.base}/callback/flaky"},
        )
        assert response.status_code == 202, response.text
        call_id = response.headers["x-call-id"]
        assert response.content == b""

        poll(lambda: local.delivered_ids(), timeout=60, what="the callback")
        tries = local.received("flaky")
        assert [c.status for c in tries] == [503, 503, 503, 200]
        assert {c.call_id for c in tries} == {call_id}
        last = tries[-1]
        assert JFK_WORDS in last.body.decode().lower()
        assert last.headers["x-function-status"] == "200"
        assert last.headers["x-function-name"] == "whisper"
        assert float(last.headers["x-duration-seconds"]) > 0
        assert last.headers["content-type"].startswith("text/plain")
        assert last.headers["x-whisperd-signature"] == signature(last.body)

        job = client.get(f"/v1/jobs/{call_id}").json()
        assert job["callback"]["status"] == "delivered"
        assert job["callback"]["attempts"] == 4
        assert job["attempts"] == 1, "a failing callback never re-runs the transcription"


# --- failures and retries -----------------------------------------------------------------
def test_permanent_failures_fail_at_once_with_the_error(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    local.add_audio("long.flac", audio.encode_flac(np.zeros(200 * audio.SAMPLE_RATE, np.float32)))
    settings = job_settings(tmp_path, max_audio_seconds=100, job_chunk_seconds=60)
    with api(settings, engine) as client:
        garbage = submit(
            client, upload=b"this is not audio " * 64, callback_url=f"{local.base}/callback/bad"
        )
        missing = submit(client, url=f"{local.base}/audio/missing.flac")
        too_long = submit(client, url=f"{local.base}/audio/long.flac")

        # refused from what its header declares, before any of it is split or decoded
        long_ = wait_job(client, too_long["id"])
        assert (long_["status"], long_["attempts"]) == ("failed", 1)
        assert long_["error"]["code"] == "audio_too_long"
        assert "lasts 200 s" in long_["error"]["message"]

        bad = wait_job(client, garbage["id"])
        assert bad["status"] == "failed"
        assert bad["attempts"] == 1
        assert bad["error"]["type"] == "invalid_request_error"
        assert bad["error"]["code"] == "unsupported_audio"
        assert bad["result"] is None

        gone = wait_job(client, missing["id"])
        assert gone["status"] == "failed"
        assert gone["attempts"] == 1
        assert gone["error"]["code"] == "fetch_failed"
        assert "404" in gone["error"]["message"]
        conflict = client.get(f"/v1/jobs/{missing['id']}/result")
        assert conflict.status_code == 409
        assert error_of(conflict)["code"] == "job_failed"
        ended = client.delete(f"/v1/jobs/{missing['id']}")
        assert ended.status_code == 409
        assert error_of(ended)["code"] == "job_finished"

        callback = poll(lambda: local.received("bad"), timeout=30, what="the callback")[0]
        assert callback.headers["x-function-status"] == "415"
        assert callback.headers["x-whisperd-job-status"] == "failed"
        assert callback.headers["x-whisperd-signature"] == signature(callback.body)
        assert b"unsupported_audio" in callback.body


def test_transient_fetch_failures_are_retried_with_backoff(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    with api(job_settings(tmp_path, job_max_retries=2), engine) as client:
        recovers = submit(client, url=f"{local.base}/audio/flaky/2/jfk.flac")
        never = submit(client, url=f"{local.base}/audio/flaky/9/jfk.flac")

        ok = wait_job(client, recovers["id"])
        assert ok["status"] == "succeeded", ok
        assert ok["attempts"] == 3
        assert ok["error"] is None

        failed = wait_job(client, never["id"])
        assert failed["status"] == "failed"
        assert failed["attempts"] == 3, "1 try + job_max_retries"
        assert "503" in failed["error"]["message"]


# --- cancel -------------------------------------------------------------------------------
def test_cancel_a_queued_job_and_it_never_runs(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    with api(job_settings(tmp_path, job_workers=1), engine) as client:
        blocker = submit(client, url=f"{local.base}/audio/gated/jfk.flac")
        assert local.gate_entered.wait(30), "the only consumer should be fetching"
        waiting = submit(
            client, upload=JFK.read_bytes(), callback_url=f"{local.base}/callback/cancelled"
        )

        cancelled = client.delete(f"/v1/jobs/{waiting['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        again = client.delete(f"/v1/jobs/{waiting['id']}")
        assert again.status_code == 409, "a cancelled job has ended: nothing to cancel"
        assert error_of(again)["code"] == "job_finished"

        callback = poll(lambda: local.received("cancelled"), timeout=30, what="the callback")[0]
        assert callback.headers["x-function-status"] == "499"
        assert callback.headers["x-call-id"] == waiting["id"]

        local.open_gate()
        assert wait_job(client, blocker["id"])["status"] == "succeeded"
        after = client.get(f"/v1/jobs/{waiting['id']}").json()
        assert after["status"] == "cancelled"
        assert after["attempts"] == 0
        assert after["started_at"] is None
        assert after["error"]["code"] == "cancelled"

        finished = client.delete(f"/v1/jobs/{blocker['id']}")
        assert finished.status_code == 409
        assert error_of(finished)["code"] == "job_finished"


def test_cancel_a_job_while_its_url_is_fetched_stops_the_fetch(
    tmp_path: Path, engine: Transcriber
) -> None:
    with (
        misbehaving_server() as upstream,
        api(job_settings(tmp_path, job_workers=1), engine) as client,
    ):
        job = submit(client, url=upstream.url("/trickle"))
        poll(lambda: upstream.serving == 1, timeout=30, what="the fetch to start")
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
        poll(lambda: upstream.serving == 0, timeout=30, what="the fetch to stop")
        assert wait_job(client, job["id"])["status"] == "cancelled"


def test_cancel_a_running_job_stops_it_at_the_next_window(
    tmp_path: Path, engine: Transcriber
) -> None:
    long_audio = spaced_wav(JFK, 5)  # 150 s: five 30-second windows
    with api(job_settings(tmp_path), engine) as client:
        job = submit(client, upload=long_audio, vad_filter="false")

        def inferring() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}").json()
            return body if body["progress"]["duration"] else None

        running = poll(inferring, timeout=30, what="the job to be transcribing")
        assert running["status"] == "running"
        response = client.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 200
        assert response.json()["status"] in ("running", "cancelled")

        stopped = wait_job(client, job["id"], timeout=20)
        assert stopped["status"] == "cancelled"
        assert stopped["attempts"] == 1
        assert stopped["error"]["code"] == "cancelled"
        assert stopped["progress"]["seconds"] < stopped["progress"]["duration"] == 150.0


# --- keys: whose jobs, and how many --------------------------------------------------------
ALICE, BOB, ROOT = "alice-key-4b1f", "bob-key-93ce", "root-key-07da"
UNKNOWN_JOB = "0b9a7f2e-5d43-4b8e-9d3c-1f0e2a6b7c8d"


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def redis_values(settings: Settings) -> Iterator[bytes]:
    """Every name and value in the embedded Redis of ``settings``."""
    with redis.Redis(unix_socket_path=str(settings.data_dir / "redis" / "redis.sock")) as store:
        for name in store.scan_iter():
            yield name
            kind = store.type(name)
            if kind == b"hash":
                yield from (b"%s=%s" % pair for pair in store.hgetall(name).items())
            elif kind == b"string":
                yield store.get(name) or b""
            elif kind == b"zset":
                yield from store.zrange(name, 0, -1)
            elif kind == b"list":
                yield from store.lrange(name, 0, -1)
            elif kind == b"set":
                yield from store.smembers(name)


def test_jobs_belong_to_the_key_that_made_them(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    settings = job_settings(tmp_path, api_keys=(ALICE, BOB), admin_api_keys=(ROOT,))
    alice, bob, root = key(ALICE), key(BOB), key(ROOT)
    with api(settings, engine) as client:
        upload = client.post(
            "/v1/jobs", files={"file": ("board-call.flac", JFK.read_bytes())}, headers=alice
        )
        assert upload.status_code == 202, upload.text
        function = client.post(
            "/async-function/whisper", content=f"{local.base}/audio/jfk.flac", headers=alice
        )
        assert function.status_code == 202, function.text
        alices = [function.headers["x-call-id"], upload.json()["id"]]  # newest first
        bobs = submit(client, headers=bob, url=f"{local.base}/audio/jfk.flac")["id"]
        for job_id in alices:
            assert wait_job(client, job_id, headers=alice)["status"] == "succeeded"
        assert wait_job(client, bobs, headers=bob)["status"] == "succeeded"

        # Another key's job looks exactly like one that does not exist, on every route.
        for job_id in alices:
            for method, path in (
                ("GET", "/v1/jobs/{}"),
                ("GET", "/v1/jobs/{}/result"),
                ("DELETE", "/v1/jobs/{}"),
            ):
                theirs = client.request(method, path.format(job_id), headers=bob)
                missing = client.request(method, path.format(UNKNOWN_JOB), headers=bob)
                assert theirs.status_code == missing.status_code == 404
                expected = error_of(missing)
                expected["message"] = expected["message"].replace(UNKNOWN_JOB, job_id)
                assert error_of(theirs) == expected
        cursor = client.get("/v1/jobs", params={"after": alices[0]}, headers=bob)
        unknown = client.get("/v1/jobs", params={"after": UNKNOWN_JOB}, headers=bob)
        assert cursor.status_code == unknown.status_code == 422
        assert error_of(cursor)["message"] == error_of(unknown)["message"].replace(
            UNKNOWN_JOB, alices[0]
        )

        # Each key lists its own jobs, and counts only those; the admin key sees them all.
        def listed(headers: dict[str, str], **params: str) -> tuple[list[str], int]:
            body = client.get("/v1/jobs", params=params, headers=headers).json()
            return [job["id"] for job in body["data"]], body["queue"]["succeeded"]

        assert listed(bob) == ([bobs], 1)
        assert listed(bob, status="succeeded") == ([bobs], 1)
        assert listed(alice) == (alices, 2)
        assert listed(alice, limit="1", after=alices[0]) == (alices[1:], 2)
        assert listed(root) == ([bobs, *alices], 3)
        seen = client.get(f"/v1/jobs/{alices[1]}", headers=root).json()
        assert seen["input"]["filename"] == "board-call.flac"
        assert JFK_WORDS in seen["result"]["text"].lower()
        assert client.get(f"/v1/jobs/{alices[1]}/result", headers=alice).status_code == 200
        assert client.delete(f"/v1/jobs/{bobs}", headers=root).status_code == 409

        # The owner is kept as a fingerprint: no key is stored in Redis.
        stored = b"\n".join(redis_values(settings))
        assert alices[1].encode() in stored
        for secret in (ALICE, BOB, ROOT):
            assert secret.encode() not in stored


def rate_limited(response: Any, setting: str) -> None:
    """A 429 in OpenAI's shape, with Retry-After, that names the setting reached."""
    assert response.status_code == 429, response.text
    error = error_of(response)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert f"({setting})" in error["message"], error["message"]
    assert int(response.headers["retry-after"]) > 0


def test_jobs_not_yet_ended_are_capped_per_key_and_in_total(
    tmp_path: Path, engine: Transcriber
) -> None:
    settings = job_settings(
        tmp_path,
        api_keys=(ALICE, BOB),
        queue_consumers=False,  # nothing runs: the jobs stay queued
        job_max_queued_per_key=2,
        job_max_queued=3,
    )
    alice, bob = key(ALICE), key(BOB)
    url = "http://127.0.0.1:9/audio.flac"
    with api(settings, engine) as client:
        first = [submit(client, headers=alice, url=url)["id"] for _ in range(2)]
        rate_limited(
            client.post("/v1/jobs", data={"url": url}, headers=alice),
            "WHISPERD_JOB_MAX_QUEUED_PER_KEY",
        )
        rate_limited(
            client.post("/async-function/whisper", content=url, headers=alice),
            "WHISPERD_JOB_MAX_QUEUED_PER_KEY",
        )
        submit(client, headers=bob, url=url)
        rate_limited(
            client.post("/v1/jobs", data={"url": url}, headers=bob), "WHISPERD_JOB_MAX_QUEUED"
        )

        # A job that ends (here: cancelled) gives its place back.
        assert client.delete(f"/v1/jobs/{first[0]}", headers=alice).status_code == 200
        submit(client, headers=bob, url=url)
        rate_limited(
            client.post("/v1/jobs", data={"url": url}, headers=alice), "WHISPERD_JOB_MAX_QUEUED"
        )
        assert client.get("/v1/jobs", headers=alice).json()["queue"]["queued"] == 1
        assert client.get("/v1/jobs", headers=bob).json()["queue"]["queued"] == 2


def test_queued_uploads_are_capped_in_bytes_until_their_jobs_end(
    tmp_path: Path, engine: Transcriber, local: LocalServer
) -> None:
    size = JFK.stat().st_size
    with pytest.raises(ValueError, match="WHISPERD_JOB_MAX_QUEUED_BYTES_PER_KEY"):
        job_settings(tmp_path, job_max_upload_bytes=size, job_max_queued_bytes_per_key=size - 1)
    settings = job_settings(
        tmp_path,
        api_keys=(ALICE, BOB),
        job_workers=1,
        job_max_upload_bytes=size,
        job_max_queued_bytes_per_key=2 * size,
        job_max_queued_bytes=2 * size + size // 2,
    )
    alice, bob = key(ALICE), key(BOB)
    data = JFK.read_bytes()
    with api(settings, engine) as client:
        blocker = submit(client, headers=alice, url=f"{local.base}/audio/gated/jfk.flac")
        assert local.gate_entered.wait(30), "the only consumer should be fetching"
        uploads = [submit(client, headers=alice, upload=data)["id"] for _ in range(2)]
        rate_limited(
            client.post("/v1/jobs", files={"file": ("a.flac", data)}, headers=alice),
            "WHISPERD_JOB_MAX_QUEUED_BYTES_PER_KEY",
        )
        rate_limited(
            client.post(
                "/async-function/whisper",
                content=data,
                headers={**alice, "Content-Type": "audio/flac"},
            ),
            "WHISPERD_JOB_MAX_QUEUED_BYTES_PER_KEY",
        )
        fetched = submit(client, headers=alice, url=f"{local.base}/audio/jfk.flac")["id"]
        rate_limited(
            client.post("/v1/jobs", files={"file": ("b.flac", data)}, headers=bob),
            "WHISPERD_JOB_MAX_QUEUED_BYTES",
        )

        # Once the jobs have run, their bytes are free again: for both keys.
        local.open_gate()
        for job_id in (blocker["id"], *uploads, fetched):
            assert wait_job(client, job_id, headers=alice)["status"] == "succeeded"
        submit(client, headers=bob, upload=data)
        submit(client, headers=alice, upload=data)


def test_two_api_processes_racing_never_go_past_the_caps(tmp_path: Path) -> None:
    settings = job_settings(
        tmp_path,
        api_keys=(ALICE, BOB),
        job_max_queued_per_key=5,
        job_max_upload_bytes=1000,
        job_max_queued_bytes_per_key=3000,
    )
    first = JobsService(settings, consumers=False).start()
    try:
        assert first.embedded is not None
        # another API process on the same Redis
        other = settings.model_copy(update={"redis_url": first.embedded.url})
        second = JobsService(other, consumers=False).start()
        try:
            racers = 32
            barrier = threading.Barrier(racers)

            def race(index: int) -> str | None:
                service = (first, second)[index % 2]
                barrier.wait(30)
                try:
                    if index % 4 < 2:  # Alice's jobs are URLs: her cap is 5 jobs
                        owner = Owner.of(ALICE, settings)
                        job = service.submit(
                            Spec(), source="url", url="http://a.test/", owner=owner
                        )
                    else:  # Bob uploads 1000 bytes a job: his cap is 3000 bytes
                        owner = Owner.of(BOB, settings)
                        job = service.submit(
                            Spec(), source="upload", audio=b"x" * 1000, owner=owner
                        )
                except RateLimitError:
                    return None
                return job.id

            with ThreadPoolExecutor(racers) as pool:
                accepted = [job_id for job_id in pool.map(race, range(racers)) if job_id]
            assert len(accepted) == 5 + 3
            for name, count in ((ALICE, 5), (BOB, 3)):
                jobs, _ = second.list_jobs(
                    None, owner=Owner.of(name, settings), limit=100, after=None
                )
                assert len(jobs) == count
        finally:
            second.stop()
    finally:
        first.stop()


# --- sharing the engine -------------------------------------------------------------------
def test_a_job_backlog_does_not_starve_synchronous_requests(
    tmp_path: Path, engine: Transcriber
) -> None:
    long_audio = spaced_wav(JFK, 5)
    with api(job_settings(tmp_path), engine) as client:
        backlog = [submit(client, upload=long_audio, vad_filter="false") for _ in range(4)]

        def running() -> list[dict[str, Any]]:
            jobs: list[dict[str, Any]] = client.get(
                "/v1/jobs", params={"status": "running"}
            ).json()["data"]
            return jobs

        poll(lambda: len(running()) == 2, timeout=30, what="both job consumers to be busy")
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("jfk.flac", JFK.read_bytes())},
            data={"response_format": "text"},
        )
        assert response.status_code == 200
        assert JFK_WORDS in response.text.lower()
        assert len(running()) == 2, "the request was served while the jobs still ran"
        assert client.get("/v1/jobs").json()["queue"]["queued"] == 2

        for job in backlog:
            assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
        for job in backlog:
            assert wait_job(client, job["id"], timeout=20)["status"] == "cancelled"


# --- expiry -------------------------------------------------------------------------------
def test_results_expire_after_the_ttl_with_their_audio(tmp_path: Path, engine: Transcriber) -> None:
    settings = job_settings(tmp_path, job_ttl=1.0, api_keys=(ALICE,))
    with api(settings, engine) as client:
        client.headers.update(key(ALICE))
        job = submit(client, upload=JFK.read_bytes())
        assert wait_job(client, job["id"])["status"] == "succeeded"

        poll(
            lambda: client.get(f"/v1/jobs/{job['id']}").status_code == 404,
            timeout=15,
            what="the job to expire",
        )
        expired = client.get(f"/v1/jobs/{job['id']}")
        assert error_of(expired)["code"] == "job_not_found"
        poll(lambda: client.get("/v1/jobs").json()["data"] == [], timeout=15, what="the purge")

        store = redis.Redis(unix_socket_path=str(settings.data_dir / "redis" / "redis.sock"))
        with store:

            def purged() -> bool:
                owners = store.keys("whisperd:owner:*:index:*")
                return not (
                    store.keys("whisperd:job:*")
                    or store.zcard("whisperd:index:all")
                    or any(store.zcard(index) for index in owners)
                    or store.hlen("whisperd:owners")
                )

            poll(purged, timeout=15, what="the record, its audio and its index entries to go")
            for held in (b"whisperd:queued_bytes", *store.keys("whisperd:owner:*:queued_bytes")):
                assert int(store.get(held) or 0) == 0, "the upload's bytes were given back"


# --- the API's refusals -------------------------------------------------------------------
def test_client_mistakes_are_openai_shaped_4xx(tmp_path: Path, engine: Transcriber) -> None:
    settings = job_settings(tmp_path, job_max_upload_bytes=1000)
    with api(settings, engine) as client:
        too_big = client.post("/v1/jobs", files={"file": ("a.flac", b"x" * 1001)})
        assert too_big.status_code == 413
        assert "WHISPERD_JOB_MAX_UPLOAD_BYTES" in error_of(too_big)["message"]

        both = client.post(
            "/v1/jobs", files={"file": ("a.flac", b"x")}, data={"url": "http://a.test/"}
        )
        assert both.status_code == 400
        neither = client.post("/v1/jobs", data={"model": "whisper-1"})
        assert neither.status_code == 400
        assert error_of(neither)["code"] == "missing_field"

        forbidden = client.post(
            "/v1/jobs",
            data={"url": "http://127.0.0.1/a.flac", "callback_url": "http://10.1.2.3/hook"},
        )
        assert forbidden.status_code == 400
        assert error_of(forbidden)["param"] == "callback_url"
        assert error_of(forbidden)["code"] == "forbidden_url"
        metadata = client.post("/v1/jobs", data={"url": "http://169.254.169.254/latest"})
        assert metadata.status_code == 400
        assert error_of(metadata)["param"] == "url"

        english_only = client.post(
            "/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "language": "de"}
        )
        assert english_only.status_code == 400
        assert error_of(english_only)["code"] == "unsupported_task"
        one_language = client.post(
            "/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "multilingual": "true"}
        )
        assert one_language.status_code == 400
        assert error_of(one_language)["param"] == "multilingual"
        no_translation = client.post(
            "/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "task": "translate"}
        )
        assert no_translation.status_code == 400
        assert error_of(no_translation)["param"] == "model"
        words_in_json = client.post(
            "/v1/jobs",
            data={"url": "http://127.0.0.1/a.flac", "timestamp_granularities[]": "word"},
        )
        assert words_in_json.status_code == 400
        assert error_of(words_in_json)["param"] == "timestamp_granularities"
        unknown_task = client.post(
            "/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "task": "summarise"}
        )
        assert unknown_task.status_code == 422
        assert error_of(unknown_task)["param"] == "task"
        bad_format = client.post(
            "/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "response_format": "mp3"}
        )
        assert bad_format.status_code == 422

        for path in ("/v1/jobs/0b9a7f2e-5d43-4b8e-9d3c-1f0e2a6b7c8d", "/v1/jobs/nope"):
            missing = client.get(path)
            assert missing.status_code == 404
            assert error_of(missing)["type"] == "not_found_error"
        assert client.delete("/v1/jobs/nope").status_code == 404
        assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
        cursor = client.get("/v1/jobs", params={"after": "0b9a7f2e-5d43-4b8e-9d3c-1f0e2a6b7c8d"})
        assert cursor.status_code == 422
        assert error_of(cursor)["param"] == "after"
        assert client.get("/v1/jobs", params={"status": "lost"}).status_code == 422

        not_a_url = client.post("/async-function/whisper", content="hello")
        assert not_a_url.status_code == 400
        assert error_of(not_a_url)["param"] == "body"


def test_jobs_can_be_switched_off(tmp_path: Path, engine: Transcriber) -> None:
    with api(job_settings(tmp_path, jobs_enabled=False), engine) as client:
        response = client.get("/v1/jobs")
        assert response.status_code == 503
        assert "WHISPERD_JOBS_ENABLED" in error_of(response)["message"]
        assert error_of(response)["code"] == "jobs_disabled"
    assert not (tmp_path / "data" / "redis").exists(), "no Redis when jobs are off"


def test_with_redis_down_only_jobs_wait_and_they_come_back_with_it(
    tmp_path: Path, engine: Transcriber
) -> None:
    port = free_port()
    settings = job_settings(tmp_path, redis_url=f"redis://127.0.0.1:{port}/0")
    upload = {"file": ("jfk.flac", JFK.read_bytes())}
    with processes(tmp_path) as procs, api(settings, engine) as client:
        refused = client.post("/v1/jobs", files=upload)
        assert refused.status_code == 503
        assert error_of(refused)["code"] == "jobs_unavailable"
        assert client.get("/v1/jobs").status_code == 503
        # everything but the jobs works meanwhile
        for probe in ("/healthz", "/readyz", "/"):
            assert client.get(probe).status_code == 200, probe
        sync = client.post("/v1/audio/transcriptions", files=upload)
        assert sync.status_code == 200
        assert JFK_WORDS in sync.json()["text"].lower()

        (tmp_path / "redis").mkdir()
        server = procs.redis(port, tmp_path / "redis")

        def accepted() -> Any:
            response = client.post("/v1/jobs", files=upload)
            assert response.status_code in (202, 503), response.text
            return response.json() if response.status_code == 202 else None

        job = poll(accepted, timeout=30, interval=0.1, what="a job to be accepted")
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded", done
        assert JFK_WORDS in done["result"]["text"].lower()

        # Lost while running: the job routes answer 503 again, the rest keeps working, and
        # when the same Redis is back its jobs are there and new ones run.
        assert procs.stop(server) == 0
        lost = client.get(f"/v1/jobs/{job['id']}")
        assert lost.status_code == 503, lost.text
        assert error_of(lost)["code"] == "jobs_unavailable"
        assert client.post("/v1/audio/transcriptions", files=upload).status_code == 200
        assert client.get("/readyz").status_code == 200
        procs.redis(port, tmp_path / "redis")
        again = poll(accepted, timeout=30, interval=0.1, what="a job to be accepted again")
        assert wait_job(client, again["id"])["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"


@pytest.mark.parametrize("model", ["m" * 300, "/etc", "../../tiny.en"])
def test_a_job_naming_no_model_here_is_refused_before_it_is_queued(
    tmp_path: Path, engine: Transcriber, model: str
) -> None:
    with api(job_settings(tmp_path), engine) as client:
        refused = client.post("/v1/jobs", data={"url": "http://127.0.0.1/a.flac", "model": model})
        assert refused.status_code == 404
        assert error_of(refused)["code"] == "model_not_found"
        assert client.get("/v1/jobs").json()["data"] == []


# --- drain and the embedded Redis ---------------------------------------------------------
def test_a_job_running_at_shutdown_goes_back_to_the_queue(
    tmp_path: Path, engine: Transcriber
) -> None:
    settings = job_settings(tmp_path)
    with api(settings, engine) as client:
        job = submit(client, upload=spaced_wav(JFK, 2), vad_filter="false")  # two windows

        def inferring() -> bool:
            return bool(client.get(f"/v1/jobs/{job['id']}").json()["progress"]["duration"])

        poll(inferring, timeout=30, what="the job to be transcribing")
    # The server stopped mid-job; the next one finishes it, and the interrupted try is free.
    with api(settings, engine) as client:
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
        assert JFK_WORDS in done["result"]["text"].lower()


_OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import redis
    from whisperd.jobs.embedded import EmbeddedRedis
    embedded = EmbeddedRedis(Path(sys.argv[1]))
    embedded.start()
    redis.Redis.from_url(embedded.url).set("kept", "yes")
    print(embedded.pid, flush=True)
    time.sleep(120)
    """
)


def test_an_orphaned_embedded_redis_is_stopped_and_its_data_kept(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    orphan_pid = 0
    try:
        assert owner.stdout is not None
        orphan_pid = int(owner.stdout.readline())
        with pytest.raises(ServiceUnavailableError, match="in use by another whisperd"):
            EmbeddedRedis(tmp_path).start()
        owner.kill()  # kill -9: its Redis lives on, an orphan
        owner.wait()
        assert Path(f"/proc/{orphan_pid}").exists()

        successor = EmbeddedRedis(tmp_path)
        successor.start()
        successor_pid = successor.pid or 0
        try:
            assert successor_pid != orphan_pid
            assert not process_running(orphan_pid), "the orphan was stopped"
            with redis.Redis.from_url(successor.url) as client:
                assert client.get("kept") == b"yes"
        finally:
            successor.stop()
        assert not process_running(successor_pid)
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
        if orphan_pid and process_running(orphan_pid):
            subprocess.run(["kill", "-9", str(orphan_pid)], check=False)
