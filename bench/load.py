"""Drive a real whisperd with N concurrent clients on real speech; or soak it and watch memory.

Load (default): a mix of short clips (jfk.flac, 11 s; hotwords.mp3, 4 s) and long files
(the two alternated with 1-1.5 s gaps to ``--long-seconds``), one long in every
``--long-every`` requests, sent by ``--clients`` concurrent clients. Prints latency
percentiles per class (short/long), throughput in audio seconds per wall second, the
counts of 200/429/5xx/other, and the server's resident memory at start, peak and end.

Soak (``--soak N``, N >= 1000 recommended): N requests of short clips; prints the server's
resident memory every 100 requests and its growth from the first checkpoint (warm) to
the end, which should stay flat.

Without ``--url`` it starts ``whisperd serve SERVER_ARGS`` itself on a free port (and stops
it); with ``--url`` the server's memory is read only when it runs on this machine.

    python bench/load.py --clients 16 --requests 64
    python bench/load.py --soak 1000 --clients 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import whisperd_bench as b

OUT = Path(__file__).resolve().parent / "out"


def mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"


def workload(audio_dir: Path, long_seconds: float, long_every: int) -> list[b.Clip]:
    jfk = audio_dir / "jfk.flac"
    shorts = [b.Clip.from_path(jfk, "short"), b.Clip.from_path(audio_dir / "hotwords.mp3", "short")]
    if long_every <= 0:
        return shorts
    long = b.Clip.from_bytes(
        f"speech-{long_seconds:.0f}s.flac",
        b.looped_speech([jfk, audio_dir / "hotwords.mp3"], long_seconds),
        "long",
    )
    return [long] + [shorts[i % len(shorts)] for i in range(long_every - 1)]


def print_level(level: b.Level) -> None:
    print(
        f"{'class':<6} {'n':>4} {'200':>4} {'429':>4} {'5xx':>4} {'other':>5} "
        f"{'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'max s':>7}"
    )
    kinds = sorted({o.kind for o in level.outcomes})
    for kind in [*kinds, None]:
        s = level.summary(kind)
        e = s["errors"]

        def num(x: float | None) -> str:
            return "–" if x is None else f"{x:.2f}"

        print(
            f"{kind or 'all':<6} {s['requests']:>4} {e['200']:>4} {e['429']:>4} {e['5xx']:>4} "
            f"{e['other']:>5} {num(s['latency_p50']):>7} {num(s['latency_p95']):>7} "
            f"{num(s['latency_p99']):>7} {num(s['latency_max']):>7}"
        )
    total = level.summary()
    print(
        f"throughput: {total['throughput']:.2f} audio s per wall s "
        f"({total['audio_seconds']:.0f} s of audio in {level.wall_seconds:.1f} s)"
    )
    print(
        f"server RSS: start {mib(level.rss_start)}, peak {mib(level.rss_peak)}, "
        f"end {mib(level.rss_end)}"
    )
    errors = [o for o in level.outcomes if not o.ok][:3]
    for o in errors:
        print(f"  e.g. {o.status} for {o.clip}: {o.error[:150]}")


async def soak(server: b.Server, clips: list[b.Clip], args: argparse.Namespace) -> b.Level:
    checkpoints: list[tuple[int, int | None]] = []
    started = time.perf_counter()
    statuses: dict[str, int] = {}

    def on_outcome(outcome: b.Outcome, done: int) -> None:
        cls = b.status_class(outcome.status)
        statuses[cls] = statuses.get(cls, 0) + 1
        if done % 100 == 0 or done == args.soak:
            rss = None if server.pid is None else b.rss_bytes(server.pid)
            checkpoints.append((done, rss))
            print(
                f"{done:>6} requests  {time.perf_counter() - started:7.1f} s  "
                f"RSS {mib(rss):>9}  {statuses}",
                flush=True,
            )

    level = await b.run_level(
        server, clips, concurrency=args.clients, requests=args.soak, on_outcome=on_outcome
    )
    known = [(n, r) for n, r in checkpoints if r is not None]
    if len(known) >= 2:
        (n0, first), (n1, last) = known[0], known[-1]
        growth = last - first
        per_k = growth / max(1, n1 - n0) * 1000
        print(
            f"RSS growth from request {n0} to {n1}: {growth / 2**20:+.1f} MiB "
            f"({growth / first:+.1%}; {per_k / 2**20:+.2f} MiB per 1000 requests)"
        )
    return level


async def main_async(server: b.Server, args: argparse.Namespace, audio_dir: Path) -> b.Level:
    clips = workload(audio_dir, args.long_seconds, 0 if args.soak else args.long_every)
    print("workload: " + ", ".join(f"{c.name} ({c.kind}, {c.seconds:.1f} s)" for c in clips))
    await b.warm_up(server, clips[-1])
    if args.soak:
        print(f"soak: {args.soak} requests of short clips from {args.clients} clients")
        return await soak(server, clips, args)
    print(f"load: {args.requests} requests from {args.clients} clients")
    level = await b.run_level(server, clips, concurrency=args.clients, requests=args.requests)
    print_level(level)
    return level


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument(
        "--server-args", default="", help="arguments of the `whisperd serve` started here"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="requests (load mode)")
    parser.add_argument("--long-seconds", type=float, default=120.0, help="long file length")
    parser.add_argument("--long-every", type=int, default=8, help="one long per N requests")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="soak: N short requests")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    parser.add_argument("--json", type=Path, help="write the level (every request) here")
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    if args.soak and args.soak < 1000:
        print(f"note: a soak of {args.soak} requests is short; 1000 or more shows a trend")
    info = b.machine()
    print(f"machine: {b.describe(info)}; load average {b.load_average()}")
    with contextlib.ExitStack() as stack:
        if args.url:
            server = b.Server("server", args.url, b.local_pid(args.url))
        else:
            server = stack.enter_context(
                b.started_server(
                    "whisperd", shlex.split(args.server_args), log=OUT / "load-server.log"
                )
            )
            print(f"started: whisperd serve {args.server_args} at {server.url} (pid {server.pid})")
        level = anyio.run(main_async, server, args, args.audio_dir)
    print(f"load average after: {b.load_average()}")
    if args.json:
        record: dict[str, Any] = {"machine": info, "args": vars(args), **level.to_dict()}
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0 if all(o.status in (200, 429) for o in level.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
