"""Fairness and responsiveness, the BENCHMARKS.md way, on a real whisperd and real speech.

1. Interleaving: a ~315 s file of real speech (jfk.flac and
   hotwords.mp3 alternated with 1-1.5 s gaps; jfk alone, looped, sends Whisper into its
   temperature fallback on every window) is sent, and 1 s later a 4.5 s clip (the start of
   jfk.flac). Prints the short clip's latency (target <= 1.5 s) and the long file's time
   (target <= 5 s).
2. A cheap GET during the 16-client run: 16 clients send jfk.flac back to back while
   ``GET /healthz`` is timed every 0.1 s; prints its median (target <= 0.010 s) and the
   run's throughput (target >= 27 audio s per wall s on 2 cores).

Without ``--url`` it starts the servers itself (``whisperd serve`` with ``--fair-args`` for the
first measure, ``--load-args`` for the second; both empty by default).

    python bench/fairness.py --runs 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import anyio
import httpx

import whisperd_bench as b

OUT = Path(__file__).resolve().parent / "out"


async def interleave(
    server: b.Server, long: b.Clip, short: b.Clip, delay: float
) -> tuple[b.Outcome, b.Outcome]:
    results: dict[str, b.Outcome] = {}
    async with b.Client(server.url, timeout=900) as client:
        origin = time.perf_counter()

        async def send(name: str, clip: b.Clip, after: float) -> None:
            await anyio.sleep(after)
            results[name] = await client.send(clip, origin)

        async with anyio.create_task_group() as group:
            group.start_soon(send, "long", long, 0.0)
            group.start_soon(send, "short", short, delay)
    return results["long"], results["short"]


async def get_during_load(
    server: b.Server, clip: b.Clip, clients: int, requests: int, interval: float
) -> tuple[list[float], b.Level]:
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def poll(stop: anyio.Event) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                response = await http.get(f"{server.url}/healthz")
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                await anyio.sleep(interval)

        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            level_box: list[b.Level] = []

            async def load() -> None:
                # the GETs start once every client has sent its first request
                level_box.append(
                    await b.run_level(server, [clip], concurrency=clients, requests=requests)
                )
                stop.set()

            group.start_soon(load)
            await anyio.sleep(1.0)
            group.start_soon(poll, stop)
    return latencies, level_box[0]


def measure_interleave(args: argparse.Namespace, audio_dir: Path) -> None:
    jfk = audio_dir / "jfk.flac"
    long = b.Clip.from_bytes(
        f"speech-{args.long_seconds:.0f}s.flac",
        b.looped_speech([jfk, audio_dir / "hotwords.mp3"], args.long_seconds),
    )
    short = b.Clip.from_bytes(
        f"jfk-first-{args.short_seconds}s.flac", b.first_seconds(jfk, args.short_seconds)
    )
    print(
        f"\n== interleaving: {short.seconds:.1f} s clip sent {args.delay:g} s after a "
        f"{long.seconds:.0f} s file =="
    )
    with contextlib.ExitStack() as stack:
        server = _server(stack, args, "interleave", args.fair_args)
        anyio.run(b.warm_up, server, short)
        shorts, longs = [], []
        for run in range(1, args.runs + 1):
            lo, sh = anyio.run(interleave, server, long, short, args.delay)
            if not (lo.ok and sh.ok):
                print(
                    f"run {run}: failed: long {lo.status} {lo.error[:100]}, "
                    f"short {sh.status} {sh.error[:100]}"
                )
                continue
            shorts.append(sh.latency)
            longs.append(lo.latency)
            print(
                f"run {run}: short clip {sh.latency:.2f} s, long file {lo.latency:.2f} s "
                f"(RTF {lo.latency / long.seconds:.3f})"
            )
    if shorts:
        print(
            f"median: short clip {statistics.median(shorts):.2f} s (target <= 1.5), "
            f"long file {statistics.median(longs):.2f} s (target <= 5)"
        )


def measure_get(args: argparse.Namespace, audio_dir: Path) -> None:
    clip = b.Clip.from_path(audio_dir / "jfk.flac")
    print(
        f"\n== GET /healthz every {args.get_interval:g} s while {args.clients} clients "
        "send jfk.flac =="
    )
    with contextlib.ExitStack() as stack:
        server = _server(stack, args, "default", args.load_args)
        anyio.run(b.warm_up, server, clip)
        latencies, level = anyio.run(
            get_during_load, server, clip, args.clients, args.requests, args.get_interval
        )
    s = level.summary()
    print(
        f"GET /healthz: n={len(latencies)} median {statistics.median(latencies) * 1000:.1f} ms "
        f"(target <= 10), p95 {(b.percentile(latencies, 95) or 0) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    print(
        f"the {args.clients}-client run: {s['throughput']:.1f} audio s per wall s (target >= 30), "
        f"p50 {s['latency_p50']:.2f} s, statuses {s['errors']}, "
        f"server RSS peak {(level.rss_peak or 0) / 2**20:.0f} MiB"
    )


def _server(
    stack: contextlib.ExitStack, args: argparse.Namespace, name: str, serve_args: str
) -> b.Server:
    if args.url:
        return b.Server(name, args.url, b.local_pid(args.url))
    server = stack.enter_context(
        b.started_server(name, serve_args.split(), log=OUT / f"fairness-{name}.log")
    )
    print(f"started: whisperd serve {serve_args} (pid {server.pid})")
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server for both measures (default: start them)")
    parser.add_argument("--fair-args", default="", help="serve args for measure 1")
    parser.add_argument("--load-args", default="", help="serve args for measure 2")
    parser.add_argument("--long-seconds", type=float, default=315.0)
    parser.add_argument("--short-seconds", type=float, default=4.5)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between the two")
    parser.add_argument("--runs", type=int, default=2, help="runs of measure 1")
    parser.add_argument("--clients", type=int, default=16, help="clients of measure 2")
    parser.add_argument("--requests", type=int, default=48, help="requests of measure 2")
    parser.add_argument("--get-interval", type=float, default=0.1)
    parser.add_argument("--only", choices=("interleave", "get"), help="run one measure")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    info = b.machine()
    print(f"machine: {b.describe(info)}; load average {b.load_average()}")
    if args.only in (None, "interleave"):
        measure_interleave(args, args.audio_dir)
    if args.only in (None, "get"):
        measure_get(args, args.audio_dir)
    print(f"\nload average after: {b.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
