"""What whisperd's engine costs over bare faster-whisper, and what each compute type buys.

For every compute type asked for, this loads the same model twice, once behind
whisperd's ``Transcriber`` (one slot, every core as CTranslate2 threads) and once as a
bare ``faster_whisper.WhisperModel`` with the same path, device, compute type, threads,
beam size and temperatures. It then times both on two clips of real speech:

* ``jfk``: jfk.flac, 11 s;
* ``long``: jfk.flac and hotwords.mp3 alternated with short gaps, built in memory, to
  ``--long-seconds``.

Runs of the two engines alternate (A B A B ...) so a neighbour's load hits both alike.
It prints the median real-time factor (wall seconds per audio second) of each, the
wrapper's overhead, and the word error rate of each compute type against the known
reference texts, so the CPU default can be chosen on speed and accuracy together.

    python bench/engine.py --runs 3 --compute-types int8,float32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import whisperd_bench as b
from whisperd import audio, models
from whisperd.engine import (
    DEFAULT_TEMPERATURES,
    TranscribeOptions,
    Transcriber,
    available_cores,
)
from whisperd.settings import Settings

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
HOTWORDS_TEXT = "Then you go into your ComfyUI folder again in the ComfyUI"


# --- word error rate ----------------------------------------------------------------------


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    name: str
    samples: audio.Audio
    reference: str

    @property
    def seconds(self) -> float:
        return audio.duration(self.samples)


def build_clips(audio_dir: Path, long_seconds: float) -> list[Clip]:
    jfk = audio.decode(audio_dir / "jfk.flac")
    hotwords = audio.decode(audio_dir / "hotwords.mp3")

    def gap(seconds: float) -> audio.Audio:
        return np.zeros(int(seconds * audio.SAMPLE_RATE), dtype=np.float32)

    pieces: list[audio.Audio] = []
    texts: list[str] = []
    total = 0.0
    while total < long_seconds:
        for samples, text, pause in ((jfk, JFK_TEXT, 1.0), (hotwords, HOTWORDS_TEXT, 1.5)):
            pieces += [samples, gap(pause)]
            texts.append(text)
            total += audio.duration(samples) + pause
    return [
        Clip("jfk", jfk, JFK_TEXT),
        Clip("long", np.concatenate(pieces), " ".join(texts)),
    ]


# --- the two engines ----------------------------------------------------------------------


@dataclass
class Row:
    compute_type: str
    clip: str
    audio_seconds: float
    whisperd_seconds: float
    direct_seconds: float
    whisperd_cpu_seconds: float
    direct_cpu_seconds: float
    whisperd_best_seconds: float
    direct_best_seconds: float
    reference_words: int
    whisperd_errors: int
    direct_errors: int
    same_text: bool

    @property
    def overhead(self) -> float:
        """Extra wall time of whisperd over the bare engine (median over median)."""
        return self.whisperd_seconds / self.direct_seconds - 1

    @property
    def best_overhead(self) -> float:
        """Best run against best run: the least disturbed pair on a shared machine."""
        return self.whisperd_best_seconds / self.direct_best_seconds - 1

    @property
    def cpu_overhead(self) -> float:
        """Extra CPU time (all threads of this process): steadier on a shared machine."""
        return self.whisperd_cpu_seconds / self.direct_cpu_seconds - 1

    @property
    def whisperd_wer(self) -> float:
        return self.whisperd_errors / max(self.reference_words, 1)


def bench_compute_type(
    compute_type: str, args: argparse.Namespace, clips: list[Clip], cache_dir: Path
) -> list[Row]:
    from faster_whisper import WhisperModel

    settings = Settings(
        model=args.model,
        device="cpu",
        compute_type=compute_type,
        cpu_threads=args.threads,
        beam_size=args.beam_size,
        model_cache_dir=cache_dir,
        offline=True,
        preload_models=(),
    )
    engine = Transcriber(settings).start()
    loaded = engine.default_model
    direct = WhisperModel(
        str(loaded.path),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=args.threads,
        num_workers=1,
    )
    options = TranscribeOptions(beam_size=args.beam_size)
    language = None if loaded.multilingual else "en"  # what whisperd passes, too

    def run_whisperd(clip: Clip) -> str:
        return engine.transcribe(clip.samples, options).text

    def run_direct(clip: Clip) -> str:
        segments, _ = direct.transcribe(
            clip.samples,
            language=language,
            beam_size=args.beam_size,
            temperature=list(DEFAULT_TEMPERATURES),
        )
        return "".join(s.text for s in segments).strip()

    rows = []
    try:
        run_whisperd(clips[0])  # warm both up (first-call allocations, caches)
        run_direct(clips[0])
        for clip in clips:
            timings: dict[str, list[float]] = {"whisperd": [], "direct": []}
            cpu: dict[str, list[float]] = {"whisperd": [], "direct": []}
            texts: dict[str, str] = {}
            runners: dict[str, Callable[[Clip], str]] = {
                "whisperd": run_whisperd,
                "direct": run_direct,
            }
            for run in range(args.runs):
                order = ("whisperd", "direct") if run % 2 == 0 else ("direct", "whisperd")
                for name in order:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    texts[name] = runners[name](clip)
                    timings[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - cpu_started)
            whisperd_errors, reference_words = b.word_errors(texts["whisperd"], clip.reference)
            rows.append(
                Row(
                    compute_type=compute_type,
                    clip=clip.name,
                    audio_seconds=clip.seconds,
                    whisperd_seconds=statistics.median(timings["whisperd"]),
                    direct_seconds=statistics.median(timings["direct"]),
                    whisperd_best_seconds=min(timings["whisperd"]),
                    direct_best_seconds=min(timings["direct"]),
                    whisperd_cpu_seconds=statistics.median(cpu["whisperd"]),
                    direct_cpu_seconds=statistics.median(cpu["direct"]),
                    reference_words=reference_words,
                    whisperd_errors=whisperd_errors,
                    direct_errors=b.word_errors(texts["direct"], clip.reference)[0],
                    same_text=texts["whisperd"] == texts["direct"],
                )
            )
            print(f"  {compute_type} {clip.name}: done", file=sys.stderr, flush=True)
    finally:
        engine.close()
    return rows


# --- report -------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'compute':<9}{'clip':<6}{'audio s':>8}{'whisperd s':>12}{'direct s':>10}"
        f"{'RTF':>7}{'overhead':>10}{'best ovh':>10}{'cpu ovh':>9}{'WER':>7}{'same text':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.compute_type:<9}{r.clip:<6}{r.audio_seconds:>8.1f}"
            f"{r.whisperd_seconds:>12.3f}{r.direct_seconds:>10.3f}"
            f"{r.whisperd_seconds / r.audio_seconds:>7.3f}"
            f"{r.overhead:>+10.1%}{r.best_overhead:>+10.1%}{r.cpu_overhead:>+9.1%}"
            f"{r.whisperd_wer:>7.1%}{'yes' if r.same_text else 'NO':>11}"
        )
    print(
        "RTF: whisperd's wall seconds per audio second. overhead: whisperd vs bare "
        "faster-whisper in wall time,\nmedian over median (best ovh: best run over best "
        "run; cpu ovh: CPU time of the process).\nWER: word error rate of whisperd's "
        "text. same text: both engines wrote the same words."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine and clip")
    parser.add_argument(
        "--long-seconds", type=float, default=180.0, help="length of the long clip (s)"
    )
    parser.add_argument(
        "--compute-types", default="int8", help="comma-separated, e.g. int8,float32"
    )
    parser.add_argument("--model", default="tiny.en", help="catalog name or model directory")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="CTranslate2 threads"
    )
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="model cache (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    compute_types = [c.strip() for c in args.compute_types.split(",") if c.strip()]
    clips = build_clips(args.audio_dir, args.long_seconds)
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="whisperd-bench-"))
    resolved = models.resolve(args.model, cache_dir, offline=True)
    load_before = os.getloadavg()
    print(
        f"model {resolved.name} ({resolved.source}), cpu, {args.threads} thread(s) of "
        f"{available_cores()} core(s), beam {args.beam_size}, median of {args.runs} run(s); "
        f"clips: " + ", ".join(f"{c.name} {c.seconds:.1f} s" for c in clips),
        flush=True,
    )
    rows = []
    for compute_type in compute_types:
        rows += bench_compute_type(compute_type, args, clips, cache_dir)
    load_after = os.getloadavg()
    print()
    print_table(rows)
    print()
    worst = max(rows, key=lambda r: r.overhead)
    verdict = "within" if worst.overhead < 0.03 else "OVER"
    busy = max(load_before[0], load_after[0]) > available_cores()
    print(
        f"wrapper overhead: worst {worst.overhead:+.1%} wall, {worst.best_overhead:+.1%} "
        f"best-run, {worst.cpu_overhead:+.1%} CPU ({worst.compute_type} {worst.clip}): "
        f"{verdict} the 3% budget"
        + (" (inconclusive: the CPU was shared, see the load below)" if busy else "")
    )
    for compute_type in compute_types:
        mine = [r for r in rows if r.compute_type == compute_type]
        errors = sum(r.whisperd_errors for r in mine)
        words = sum(r.reference_words for r in mine)
        seconds = sum(r.whisperd_seconds for r in mine)
        audio_seconds = sum(r.audio_seconds for r in mine)
        print(
            f"{compute_type}: {errors} word errors in {words} ({errors / words:.1%}), "
            f"{seconds:.2f} s for {audio_seconds:.0f} s of audio "
            f"({audio_seconds / seconds:.1f}x real time)"
        )
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPU(s): above the core count means the timings are noisy"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = [asdict(r) | {"overhead": r.overhead, "wer": r.whisperd_wer} for r in rows]
        args.json.write_text(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
