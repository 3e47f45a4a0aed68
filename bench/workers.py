"""Batches side by side or one batch on every core: what each layout of the CPU's threads gets
from bare CTranslate2, the choice behind ``WHISPERD_CPU_WORKERS``.

For each layout (workers x threads per worker, windows per batch) it loads the model as a
CTranslate2 ``Whisper`` with ``inter_threads`` workers of ``intra_threads`` threads, then:

* throughput: as many Python threads as workers each encode and decode (beam 5) batches of the
  same 11 s window (jfk.flac) for ``--rounds`` rounds; audio seconds per wall second;
* solo: one window at a time, the median latency of ``--runs`` runs.

Layouts alternate between runs, so a neighbour's load hits them alike.

    python bench/workers.py --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import whisperd_bench as b
from whisperd import audio, models
from whisperd.engine import available_cores
from whisperd.settings import Settings

SOT = 50257


def window(audio_dir: Path) -> np.ndarray:
    """jfk.flac's log-mel features, padded to one 30 s window."""
    from faster_whisper.feature_extractor import FeatureExtractor

    features = FeatureExtractor()(audio.decode((audio_dir / "jfk.flac").read_bytes()))
    padded = np.zeros((features.shape[0], 3000), np.float32)
    padded[:, : min(3000, features.shape[1])] = features[:, :3000]
    return padded


def decode(model: Any, features: np.ndarray, size: int) -> None:
    import ctranslate2

    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack([features] * size)))
    encoded = model.encode(batch, to_cpu=False)
    model.generate(encoded, [[SOT]] * size, beam_size=5, return_no_speech_prob=True)


def measure(
    path: str, features: np.ndarray, layout: tuple[int, int, int], rounds: int
) -> tuple[float, float]:
    """Throughput (audio s/s) with every worker busy, and one window's latency (s)."""
    import ctranslate2

    workers, threads, size = layout
    model = ctranslate2.models.Whisper(
        path, device="cpu", compute_type="int8", inter_threads=workers, intra_threads=threads
    )
    decode(model, features, size)  # first-call allocations
    started = time.perf_counter()
    running = [
        threading.Thread(target=lambda: [decode(model, features, size) for _ in range(rounds)])
        for _ in range(workers)
    ]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    throughput = workers * rounds * size * 11.0 / (time.perf_counter() - started)
    started = time.perf_counter()
    decode(model, features, 1)
    return throughput, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="batches per worker and run")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    cores = available_cores()
    path = str(models.resolve(args.model, Settings().model_cache_dir, offline=True).path)
    features = window(args.audio_dir)
    # (workers, threads each, windows per batch), the same 8 windows in flight: one batch on
    # every core, a batch per core on one thread each, a batch per core on every core each
    per_core = max(1, 8 // cores)
    layouts = [(1, cores, 8), (cores, 1, per_core), (cores, cores, per_core)]
    print(
        f"machine: {b.describe(b.machine())}; load average {b.load_average()}\n"
        f"model {args.model}, int8, beam 5, 11 s windows (jfk.flac), {cores} core(s)",
        flush=True,
    )
    figures: dict[tuple[int, int, int], list[tuple[float, float]]] = {x: [] for x in layouts}
    for run in range(args.runs):
        for layout in layouts if run % 2 == 0 else list(reversed(layouts)):
            figures[layout].append(measure(path, features, layout, args.rounds))
    print("workers x threads, batch | audio s/s (spread) | one window (spread)")
    for (workers, threads, size), values in figures.items():
        rates = [v[0] for v in values]
        solos = [v[1] for v in values]
        print(
            f"{workers} x {threads}, batch {size:>2} | {statistics.median(rates):5.1f} "
            f"({min(rates):.1f}-{max(rates):.1f}) | {statistics.median(solos):.2f} s "
            f"({min(solos):.2f}-{max(solos):.2f})"
        )
    print(f"load average after: {b.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
