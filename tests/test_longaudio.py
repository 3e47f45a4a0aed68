"""Hours of audio: a long job fans out in chunks across worker processes and merges, in
bounded memory, and survives a killed worker; the OpenFaaS function streams its transcript.

Real Redis, real ``whisperd serve`` / ``whisperd worker`` processes, the real tiny.en, and a
generated hour of real speech and silence with a known text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import av
import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from job_helpers import (
    FREE_WORDS,
    JFK,
    Utterance,
    final_jobs,
    job_settings,
    processes,
    reference_text,
    speech_and_silence,
    wait_ready,
    whisperd_env,
)
from whisperd import audio
from whisperd.api import create_app
from whisperd.api.services import services_of
from whisperd.engine import Segment, Transcriber, Transcription, TranscriptionInfo
from whisperd.render import render, text_stream
from whisperd.settings import Settings
from whisperd.subtitles import DEFAULT_CUES, SubtitleOptions
from whisperd_bench.wer import word_error_rate, words

from support import UnseekableSink, free_port, poll, running_app, spoken_german

pytestmark = [pytest.mark.slow, pytest.mark.server]

HOUR = 3600.0
MIB = 1 << 20
# Decoding the hour whole would take 3600 s x 16 kHz x 4 bytes = 220 MiB on its own.
WHOLE_HOUR_BYTES = int(HOUR * audio.SAMPLE_RATE * 4)
# What a 300 s chunk may add to a worker's peak over its peak on a minute: mostly the voice
# detector's transforms of the chunk (about 0.4 MB a second), so 97-159 MiB measured.
MEMORY_BOUND = 190 * MIB
COFFEE = "Guten Morgen. Ich trinke jeden Morgen eine Tasse Kaffee mit Milch."


@pytest.fixture(scope="session")
def hour(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Utterance]]:
    """An hour, mostly silence, with twelve runs of real speech spread through it (FLAC, 3 MB)."""
    path = tmp_path_factory.mktemp("long") / "hour.flac"
    return path, speech_and_silence(path, seconds=HOUR, blocks=12, per_block=2)


def vm_hwm(pid: int) -> int:
    """The peak resident memory of process ``pid`` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def check_transcript(body: dict[str, Any], utterances: list[Utterance], duration: float) -> None:
    """The merged verbose_json: ids run on, times in order and inside the audio, every
    recording heard once and nothing heard in the silences, the text close to what was said."""
    segments = body["segments"]
    assert body["duration"] == pytest.approx(duration)
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts), "segment times go back: a chunk merged out of order"
    for s in segments:
        assert 0 <= s["start"] <= s["end"] <= duration
        # every segment is speech: none invented in a silence, none out of place
        assert any(u.start - 2 <= s["end"] and s["start"] <= u.end + 2 for u in utterances), s
    for u in utterances:
        assert any(s["start"] <= u.end and u.start <= s["end"] for s in segments), u
    timed = body["words"]
    assert timed, "word timestamps were asked for"
    word_starts = [w["start"] for w in timed]
    assert word_starts == sorted(word_starts)
    assert all(0 <= w["start"] <= w["end"] <= duration for w in timed)
    spoken = " ".join(body["text"].lower().split())
    assert spoken.count("fellow americans") <= sum(u.name == JFK.name for u in utterances)
    error_rate = word_error_rate(body["text"], reference_text(utterances), FREE_WORDS)
    assert error_rate <= 0.05, f"WER {error_rate:.3f}: {body['text']}"


def submit(client: httpx.Client, path: Path) -> str:
    response = client.post(
        "/v1/jobs",
        files={"file": (path.name, path.read_bytes())},
        data={
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def chunk_leases(client: redis.Redis, job_id: str) -> dict[int, str]:
    """Chunks being transcribed now, and by which worker."""
    found = {}
    for key in client.scan_iter(match=f"whisperd:job:{job_id}:chunk:*:lease"):
        owner = client.get(key)
        if owner is not None:
            found[int(key.decode().split(":")[-2])] = owner.decode()
    return found


def test_an_hour_fans_out_across_workers_in_bounded_memory_and_survives_a_killed_worker(
    tmp_path: Path, model_cache: Path, hour: tuple[Path, list[Utterance]]
) -> None:
    path, utterances = hour
    redis_port, api_port = free_port(), free_port()
    (tmp_path / "redis").mkdir()
    env = {
        **whisperd_env(tmp_path, model_cache),
        "WHISPERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "WHISPERD_JOB_CHUNK_SECONDS": "300",
    }
    # One job (or chunk) at a time per worker, so each one's peak memory is one piece of work's.
    worker_env = {**env, "WHISPERD_JOB_WORKERS": "1", "WHISPERD_CPU_THREADS": "2"}
    minute = tmp_path / "minute.flac"
    speech_and_silence(minute, seconds=60, blocks=1)
    with (
        processes(tmp_path) as procs,
        httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client,
        redis.Redis(port=redis_port) as store,
    ):
        procs.redis(redis_port, tmp_path / "redis")
        api = procs.whisperd(
            "api",
            "serve",
            {**env, "WHISPERD_PORT": str(api_port), "WHISPERD_QUEUE_CONSUMERS": "false"},
        )
        workers = [procs.whisperd(f"worker{i}", "worker", worker_env) for i in range(2)]
        wait_ready(client, api)

        # What a minute of audio needs, on each worker: the baseline of the memory bound.
        ran: set[str] = set()
        while len(ran) < len(workers):
            ids = [submit(client, minute) for _ in workers]
            for done in final_jobs(client, ids, timeout=60).values():
                assert done["status"] == "succeeded", done
                ran.add(done["worker"].split("-")[-2])
        minute_peak = {w.pid: vm_hwm(w.pid) for w in workers}

        job_id = submit(client, path)

        def transcribing() -> tuple[int, str] | None:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["progress"]["chunks"] is None:  # the split is still going
                return None
            leases = chunk_leases(store, job_id)
            return next(iter(leases.items()), None)

        chunk, holder = poll(transcribing, timeout=60, what="a chunk being transcribed")
        victim = next(w for w in workers if f"-{w.pid}-" in holder)
        survivor = next(w for w in workers if w is not victim)
        victim_peak = vm_hwm(victim.pid) - minute_peak[victim.pid]
        victim.kill()  # kill -9, in the middle of the chunk
        victim.wait()

        job = final_jobs(client, [job_id], timeout=150)[job_id]
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, "the split ran once: only the lost chunk ran again"
        assert job["progress"] == {
            "seconds": HOUR,
            "duration": HOUR,
            "chunks": 12,
            "chunks_done": 12,
        }
        check_transcript(job["result"], utterances, HOUR)
        assert "running it again" in procs.log_of(survivor), f"chunk {chunk} was not re-run"

        # memory: a chunk at a time, never the hour (which alone would be 220 MiB)
        survivor_peak = vm_hwm(survivor.pid) - minute_peak[survivor.pid]
        assert max(victim_peak, survivor_peak) < MEMORY_BOUND < WHOLE_HOUR_BYTES, (
            f"peak growth {victim_peak / MIB:.0f} / {survivor_peak / MIB:.0f} MiB"
        )
        # the job's chunks and audio went with it
        assert not list(store.scan_iter(match=f"whisperd:job:{job_id}:*audio*"))
        assert not list(store.scan_iter(match=f"whisperd:job:{job_id}:chunk*"))
        assert procs.stop(survivor) == 0
        assert procs.stop(api) == 0


# --- in one process: cancel, duplicates -------------------------------------------------------
def _speech(seconds: float, tmp_path: Path) -> bytes:
    path = tmp_path / "speech.flac"
    speech_and_silence(path, seconds=seconds, blocks=max(1, round(seconds / 40)), per_block=3)
    return path.read_bytes()


def test_a_redelivered_chunk_does_nothing_and_a_cancel_stops_the_rest(
    tmp_path: Path, engine: Transcriber
) -> None:
    settings = job_settings(tmp_path, job_chunk_seconds=60)
    with TestClient(create_app(settings, engine=engine)) as client:
        runner = services_of(client.app).jobs.runner  # type: ignore[union-attr]
        response = client.post("/v1/jobs", files={"file": ("a.flac", _speech(600, tmp_path))})
        job_id = response.json()["id"]

        def some_done() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["progress"]["chunks_done"] >= 1 else None

        before = poll(some_done, timeout=60, what="a chunk to finish")
        assert before["status"] == "running"
        store = services_of(client.app).jobs.store  # type: ignore[union-attr]
        done = next(
            r.index
            for r in store.chunks(job_id, before["progress"]["chunks"] or 10)
            if r is not None and r.state == "done"
        )
        runner.run_chunk(job_id, done)  # the message of a finished chunk, again
        again = store.get_chunk(job_id, done)
        assert (again.state, again.attempts) == ("done", 1), "it was not run again"

        poll(lambda: chunk_leases(store.client, job_id), timeout=30, what="a chunk running")

        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled", "a job in chunks ends at once"
        progress = cancelled.json()["progress"]
        assert progress["chunks_done"] < (progress["chunks"] or 99)
        with redis.Redis(unix_socket_path=str(settings.data_dir / "redis" / "redis.sock")) as r:
            poll(
                lambda: not list(r.scan_iter(match=f"whisperd:job:{job_id}:*")),
                timeout=10,
                what="the job's chunks and audio to be deleted",
            )
            # the chunks running when it was cancelled stop, and leave nothing behind
            poll(lambda: runner.running == 0, timeout=10, what="the chunks to stop")
            assert not list(r.scan_iter(match=f"whisperd:job:{job_id}:*"))
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


# --- the OpenFaaS function streams ------------------------------------------------------------
def streamed_flac(samples: np.ndarray) -> bytes:
    """FLAC written as a stream, with no length in its header."""
    sink = UnseekableSink()
    with av.open(sink, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=audio.SAMPLE_RATE, layout="mono")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = audio.SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return bytes(sink.data)


@pytest.fixture(scope="module")
def spaced_speech() -> np.ndarray:
    """180 s: six 30-second windows, each jfk.flac then silence (Whisper decodes each cleanly)."""
    jfk = audio.decode(JFK)
    gap = np.zeros(30 * audio.SAMPLE_RATE - jfk.size, np.float32)
    return np.concatenate([jfk, gap] * 6)


@pytest.fixture(scope="module")
def function_url(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[str]:
    """A server that decodes in 30-second pieces and takes at most 150 s of audio, with no VAD,
    and one batch of one window at a time (so the pieces finish one after another, and a
    cue's arrival shows when it was transcribed)."""
    root = tmp_path_factory.mktemp("function")
    settings = Settings(
        model_cache_dir=model_cache,
        tmp_dir=root / "tmp",
        data_dir=root / "data",
        jobs_enabled=False,
        section_seconds=30,
        max_audio_seconds=150,
        vad_filter=False,
        batch_size=1,
        cpu_workers=1,
    )
    with Transcriber(settings) as engine, running_app(create_app(settings, engine=engine)) as url:
        yield url


def test_a_long_translation_job_is_english_in_every_chunk(
    tmp_path: Path, base_engine: Transcriber
) -> None:
    """Three German sentences a minute apart: three chunks, each translated, merged.

    The sentence, its pace and its lead-in are ones base translates at temperature 0 wherever
    a chunk's cut puts it in the window (average log-probabilities of -0.75 to -0.82, clear of
    the -1 that would send the window to sampled decoding).
    """
    said = audio.decode(spoken_german(COFFEE, tmp_path / "coffee.wav", words_per_minute=120))
    lead = np.zeros(audio.SAMPLE_RATE, np.float32)
    gap = np.zeros(60 * audio.SAMPLE_RATE - lead.size - said.size, np.float32)  # a minute each
    speech = audio.encode_flac(np.concatenate([lead, said, gap] * 3))
    with TestClient(
        create_app(job_settings(tmp_path, job_chunk_seconds=60), engine=base_engine)
    ) as client:
        response = client.post(
            "/v1/jobs",
            files={"file": ("de.flac", speech)},
            data={"task": "translate", "response_format": "verbose_json"},
        )
        assert response.status_code == 202, response.text
        assert response.json()["task"] == "translate"
        job_id = response.json()["id"]
        job = final_jobs(client, [job_id], timeout=180)[job_id]
    assert job["status"] == "succeeded", job
    assert job["progress"]["chunks"] == 3
    result = job["result"]
    assert result["task"] == "translate"
    for start in (0, 60, 120):  # each sentence, its segments starting near it
        said = " ".join(s["text"] for s in result["segments"] if -5 < s["start"] - start < 55)
        english = set(words(said))
        assert {"good", "morning"} <= english, said
        assert not {"guten", "morgen", "kaffee", "milch"} & english, said


def test_the_function_streams_cues_as_they_are_transcribed(
    function_url: str, spaced_speech: np.ndarray
) -> None:
    speech = spaced_speech[: 150 * audio.SAMPLE_RATE]
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{function_url}/function/whisper?format=srt",
        content=streamed_flac(speech),
        headers={"Content-Type": "audio/flac"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-subrip")
        assert "content-length" not in response.headers
        for part in response.iter_raw():
            arrivals.append((time.monotonic() - started, part))
    total = time.monotonic() - started
    body = b"".join(part for _, part in arrivals).decode()
    cues = body.strip("\n").split("\n\n")
    assert [cue.split("\n")[0] for cue in cues] == [str(n) for n in range(1, len(cues) + 1)]
    said = " ".join(line for cue in cues for line in cue.split("\n")[2:])
    assert said.lower().count("ask what you can do for your country") == 5, said
    # the first cue came while the rest was still being decoded and transcribed
    assert arrivals[0][0] < total * 0.5, (arrivals[0][0], total)


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt", "tsv"])
def test_the_streamed_formats_add_up_to_the_whole_transcript(fmt: str) -> None:
    texts = [" ", "  And so,", " my fellow Americans  ", "   ", " ask not. ", "  "]
    segments = tuple(
        Segment(i, 0, 2.0 * i, 2.0 * i + 1.5, t, (), 0.0, -0.1, 1.0, 0.1)
        for i, t in enumerate(texts)
    )
    info = TranscriptionInfo("en", 1.0, 12.0, "transcribe")

    async def items() -> AsyncIterator[TranscriptionInfo | Segment]:
        yield info
        for segment in segments:
            yield segment

    async def streamed(subtitles: SubtitleOptions) -> str:
        parts = [part async for part in text_stream(items(), fmt, subtitles)]
        return b"".join(parts).decode()

    whole = Transcription.from_parts(info, segments)
    for subtitles in (DEFAULT_CUES, SubtitleOptions(max_line_width=10)):
        if subtitles.active and fmt not in ("srt", "vtt"):
            continue
        assert anyio.run(streamed, subtitles) == render(whole, fmt, subtitles=subtitles).text


def test_an_error_after_the_stream_started_breaks_the_response(
    function_url: str, spaced_speech: np.ndarray
) -> None:
    # Past the 150 s limit, with no length in the header: found out only while decoding, after
    # the first piece was answered. A short transcript would pass for the whole one.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{function_url}/function/whisper?format=vtt",
            content=streamed_flac(spaced_speech),
            headers={"Content-Type": "audio/flac"},
            timeout=120,
        ) as response,
    ):
        assert response.status_code == 200
        response.read()
    # before the first piece, it is still a proper 4xx
    refused = httpx.post(
        f"{function_url}/function/whisper?format=vtt",
        content=b"not audio at all" * 100,
        headers={"Content-Type": "audio/flac"},
        timeout=60,
    )
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_audio"
    assert httpx.get(f"{function_url}/healthz").status_code == 200
