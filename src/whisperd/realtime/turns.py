"""Turns in a live stream: Silero VAD's speech probabilities over audio as it arrives, and the
server-VAD state machine that finds where each turn of speech starts, pauses and stops."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from whisperd.audio import SAMPLE_RATE, Audio

CHUNK = 512
"""Samples per probability (32 ms at 16 kHz), as Silero VAD takes them."""
_CONTEXT = 64
_STATE = (1, 1, 128)


class SpeechProbabilities:
    """Silero VAD (the model faster-whisper ships) over one stream: the probability of speech
    in each whole ``CHUNK`` of the samples fed so far, the model's state carried across."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session: Any = get_vad_model().session
        self._h = np.zeros(_STATE, dtype=np.float32)
        self._c = np.zeros(_STATE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    def feed(self, samples: Audio) -> np.ndarray:
        samples = np.concatenate([self._rest, samples])
        whole = samples.size - samples.size % CHUNK
        self._rest = samples[whole:]
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        chunks = samples[:whole].reshape(-1, CHUNK)
        contexts = np.concatenate([self._context[None, :], chunks[:-1, -_CONTEXT:]])
        self._context = chunks[-1, -_CONTEXT:].copy()
        probabilities, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([contexts, chunks], axis=1), "h": self._h, "c": self._c}
        )
        return np.asarray(probabilities, dtype=np.float32).reshape(-1)


@dataclass(frozen=True, slots=True)
class Change:
    """``started``: speech began at ``sample``; ``paused``: it went quiet at ``sample``;
    ``resumed``: it began again before the pause became the end; ``stopped``: the pause lasted
    the silence duration (``sample`` is where that was reached)."""

    kind: Literal["started", "paused", "resumed", "stopped"]
    sample: int


class TurnDetector:
    """Server VAD: speech starts at a probability of ``threshold`` or more, and ends once it
    has stayed under ``threshold - 0.15`` (its hysteresis) for ``silence_ms``."""

    def __init__(self, threshold: float, silence_ms: int) -> None:
        self.threshold = threshold
        self.quiet = max(threshold - 0.15, 0.01)
        self.silence_chunks = max(1, math.ceil(silence_ms * SAMPLE_RATE / 1000 / CHUNK))
        self.speaking = False
        self.position = 0
        """Samples judged so far."""
        self._silent = 0

    def update(self, probabilities: np.ndarray) -> list[Change]:
        changes: list[Change] = []
        for probability in probabilities.tolist():
            start = self.position
            self.position += CHUNK
            if not self.speaking:
                if probability >= self.threshold:
                    self.speaking = True
                    self._silent = 0
                    changes.append(Change("started", start))
            elif probability >= self.threshold:
                if self._silent:
                    self._silent = 0
                    changes.append(Change("resumed", start))
            elif probability < self.quiet or self._silent:
                if not self._silent:
                    changes.append(Change("paused", start))
                self._silent += 1
                if self._silent >= self.silence_chunks:
                    self.speaking = False
                    self._silent = 0
                    changes.append(Change("stopped", self.position))
        return changes

    def reset(self) -> None:
        """Forget the turn in progress (its audio was committed or cleared)."""
        self.speaking = False
        self._silent = 0
