"""The batching engine against bare faster-whisper, in one run on one machine.

It builds a long file of real speech with a known text (recorded prompts, see
``whisperd_bench.speech.prompt_speech``; ``apt-get install asterisk-core-sounds-en-g722
asterisk-core-sounds-en``), starts ``whisperd serve`` with its defaults on 127.0.0.1, and
measures, runs alternating so a neighbour's load hits all alike:

1. the long file: time and word error rate of bare faster-whisper decoding it sequentially
   (every core, beam 5, in this process), of faster-whisper's ``BatchedInferencePipeline``
   (batch 8, beam 5), and of whisperd over HTTP;
2. a solo 11 s clip (jfk.flac): whisperd over HTTP against bare faster-whisper on every core;
3. a short clip sent 1 s after the long file: its latency;
4. 16 clients sending jfk.flac: throughput in audio seconds per wall second, errors, the
   server's peak memory, and the median of a cheap GET meanwhile.

It prints each figure beside its target, and writes the figures as JSON and a plot to
``bench/out``. The ratios are what to read: the machine is shared and its speed drifts.

    python bench/batching.py --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

import whisperd_bench as b
from fairness import get_during_load, interleave
from whisperd import audio, models
from whisperd.engine import DEFAULT_TEMPERATURES, available_cores
from whisperd.settings import Settings

OUT = Path(__file__).resolve().parent / "out"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def bare_engines(model: str, threads: int) -> dict[str, Callable[[bytes], str]]:
    """faster-whisper as people use it, given the file (which it decodes itself): sequential,
    and its batched pipeline (batch 8)."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    path = models.resolve(model, Settings().model_cache_dir, offline=True).path
    whisper = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
    pipeline = BatchedInferencePipeline(whisper)
    language = None if whisper.model.is_multilingual else "en"

    def sequential(data: bytes) -> str:
        segments, _ = whisper.transcribe(
            io.BytesIO(data), language=language, beam_size=5, temperature=list(DEFAULT_TEMPERATURES)
        )
        return "".join(s.text for s in segments)

    def batched(data: bytes) -> str:
        segments, _ = pipeline.transcribe(
            io.BytesIO(data), language=language, beam_size=5, batch_size=8
        )
        return "".join(s.text for s in segments)

    return {"sequential": sequential, "batched pipeline": batched}


def over_http(url: str, data: bytes, name: str) -> str:
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": (name, data)},
        data={"response_format": "json"},
        timeout=900,
    )
    response.raise_for_status()
    return str(response.json()["text"])


def timed(run: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = run()
    return time.perf_counter() - started, text


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed measure")
    parser.add_argument("--long-seconds", type=float, default=315.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--serve-args", default="", help="extra `whisperd serve` arguments")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="requests of the load run")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    threads = available_cores()
    long_data, reference = b.prompt_speech(args.long_seconds)
    long_samples = audio.decode(long_data)
    jfk_data = (args.audio_dir / "jfk.flac").read_bytes()
    print(
        f"machine: {b.describe(b.machine())}; load average {b.load_average()}\n"
        f"model {args.model}, int8, {threads} thread(s); long file: "
        f"{audio.duration(long_samples):.0f} s of real speech, {len(b.words(reference))} words",
        flush=True,
    )
    engines = bare_engines(args.model, threads)
    figures: dict[str, Any] = {"machine": b.machine(), "runs": args.runs}
    with b.started_server(
        "whisperd", args.serve_args.split(), log=OUT / "batching-server.log"
    ) as server:
        # warm everything up once (first-call allocations, caches)
        for engine in engines.values():
            engine(jfk_data)
        over_http(server.url, jfk_data, "jfk.flac")

        print("\n== 1. the long file ==", flush=True)
        runners: dict[str, Callable[[], str]] = {
            name: (lambda e=engine: e(long_data)) for name, engine in engines.items()
        }
        runners["whisperd"] = lambda: over_http(server.url, long_data, "long.flac")
        times: dict[str, list[float]] = {name: [] for name in runners}
        wers: dict[str, list[float]] = {name: [] for name in runners}
        for run in range(args.runs):
            order = list(runners) if run % 2 == 0 else list(reversed(runners))
            for name in order:
                seconds, text = timed(runners[name])
                times[name].append(seconds)
                wers[name].append(b.word_error_rate(text, reference))
                print(f"  run {run + 1} {name}: {seconds:.2f} s, WER {wers[name][-1]:.4f}")
        base = statistics.median(times["sequential"])
        for name in runners:
            ratio = statistics.median(times[name]) / base
            print(
                f"{name:>18}: {spread(times[name])}, {ratio:.2f}x sequential, "
                f"WER {statistics.median(wers[name]):.4f}"
            )
        ratios = [w / s for w, s in zip(times["whisperd"], times["sequential"], strict=True)]
        wer_gap = statistics.median(wers["whisperd"]) - statistics.median(wers["sequential"])
        print(
            f"whisperd / sequential per run: {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(target <= 0.45); WER gap {wer_gap:+.4f} (target <= +0.005)"
        )
        figures["long"] = {"seconds": times, "wer": wers, "ratios": ratios}

        print("\n== 2. a solo 11 s clip ==", flush=True)
        solo: dict[str, list[float]] = {"whisperd": [], "bare": []}
        for run in range(max(5, args.runs)):
            pair = [
                ("whisperd", lambda: over_http(server.url, jfk_data, "jfk.flac")),
                ("bare", lambda: engines["sequential"](jfk_data)),
            ]
            for name, runner in pair if run % 2 == 0 else reversed(pair):
                solo[name].append(timed(runner)[0])
        solo_ratio = statistics.median(solo["whisperd"]) / statistics.median(solo["bare"])
        print(
            f"whisperd over HTTP {spread(solo['whisperd'])}, bare {spread(solo['bare'])}: "
            f"{solo_ratio:.2f}x (target <= 1.05)"
        )
        figures["solo"] = solo

        print("\n== 3. a short clip 1 s after the long file ==", flush=True)
        long_clip = b.Clip.from_bytes("long.flac", long_data)
        short_clip = b.Clip.from_bytes(
            "jfk-4s.flac", b.first_seconds(args.audio_dir / "jfk.flac", 4)
        )
        shorts: list[float] = []
        for _ in range(args.runs):
            lo, sh = anyio.run(interleave, server, long_clip, short_clip, 1.0)
            if lo.ok and sh.ok:
                shorts.append(sh.latency)
                print(f"  short clip {sh.latency:.2f} s, long file {lo.latency:.2f} s")
        if shorts:
            print(f"short clip: {spread(shorts)} (target <= 1.5 s)")
        figures["short_behind_long"] = shorts

        print(f"\n== 4. {args.clients} clients sending jfk.flac ==", flush=True)
        jfk_clip = b.Clip.from_bytes("jfk.flac", jfk_data)
        latencies, level = anyio.run(
            get_during_load, server, jfk_clip, args.clients, args.requests, 0.1
        )
        summary = level.summary()
        print(
            f"throughput {summary['throughput']:.1f} audio s/s (target >= 30), statuses "
            f"{summary['errors']}, GET median {statistics.median(latencies) * 1000:.1f} ms "
            f"(target <= 10), server RSS peak {(level.rss_peak or 0) / 2**20:.0f} MiB "
            "(target <= 600)"
        )
        figures["load"] = summary | {"get_median": statistics.median(latencies)}
    print(f"\nload average after: {b.load_average()}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "batching.json").write_text(json.dumps(figures, indent=2, default=str))
    plot(times, wers, OUT / "batching.png")
    print(f"wrote {OUT / 'batching.json'} and {OUT / 'batching.png'}")
    return 0


def plot(times: dict[str, list[float]], wers: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(times)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(names, [statistics.median(times[n]) for n in names], color="#4a7")
    left.set_ylabel("seconds (median)")
    left.set_title("the long file: time")
    right.bar(names, [statistics.median(wers[n]) for n in names], color="#a74")
    right.set_ylabel("word error rate")
    right.set_title("the long file: accuracy")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
