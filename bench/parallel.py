"""Bare faster-whisper throughput with two single-threaded decoders: threads or processes.

whisperd's slots are threads in one process. This measures what the bare engine does the
same way (one ``WhisperModel`` with ``num_workers=2`` and two Python threads) and with two
processes of one model each, every decoder on one CTranslate2 thread, on jfk.flac decoded
once. The difference is what the Python interpreter lock costs two slots in one process,
the ceiling for the 16-client throughput of one ``whisperd serve``.

    python bench/parallel.py --requests 24
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

from whisperd import models
from whisperd.engine import available_cores
from whisperd.settings import Settings

JFK = Path(__file__).resolve().parents[2] / "shared" / "audio" / "jfk.flac"


def _model(workers: int) -> tuple[Any, Any]:
    from faster_whisper import WhisperModel, decode_audio

    path = models.resolve("tiny.en", Settings().model_cache_dir).path
    model = WhisperModel(
        str(path), device="cpu", compute_type="int8", cpu_threads=1, num_workers=workers
    )
    samples = decode_audio(str(JFK))
    list(model.transcribe(samples, beam_size=5)[0])  # warm up
    return model, samples


def _run(model: Any, samples: Any, requests: int) -> None:
    for _ in range(requests):
        list(model.transcribe(samples, beam_size=5)[0])


def _process(barrier: Any, requests: int) -> None:
    model, samples = _model(1)
    barrier.wait()
    _run(model, samples, requests)


def in_threads(decoders: int, requests: int) -> float:
    model, samples = _model(decoders)
    threads = [
        threading.Thread(target=_run, args=(model, samples, requests)) for _ in range(decoders)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def in_processes(decoders: int, requests: int) -> float:
    barrier = multiprocessing.Barrier(decoders + 1)
    procs = [
        multiprocessing.Process(target=_process, args=(barrier, requests)) for _ in range(decoders)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="per decoder")
    parser.add_argument("--decoders", type=int, default=available_cores())
    args = parser.parse_args()
    audio_seconds = 11.0 * args.requests * args.decoders
    print(f"{args.decoders} decoders x {args.requests} transcriptions of jfk.flac (11 s), beam 5")
    for name, measure in (("threads", in_threads), ("processes", in_processes)):
        wall = measure(args.decoders, args.requests)
        print(f"{name:>9}: {wall:.1f} s, {audio_seconds / wall:.1f} audio s per wall s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
