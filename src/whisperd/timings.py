"""Per-stage timings of one request: receive/fetch, decode, queue, inference, format."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("receive", "fetch", "decode", "queue", "inference", "format")


@dataclass(slots=True)
class Timings:
    """Seconds spent in each stage, in the order they happened."""

    stages: dict[str, float] = field(default_factory=dict)
    audio_seconds: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def rounded(self) -> dict[str, float]:
        """Stage seconds rounded to the millisecond (for JSON bodies and logs)."""
        return {name: round(seconds, 4) for name, seconds in self.stages.items()}

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value (durations in milliseconds)."""
        return ", ".join(
            f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items()
        )

    def summary(self) -> str:
        return " ".join(f"{name}={seconds:.3f}s" for name, seconds in self.stages.items())
