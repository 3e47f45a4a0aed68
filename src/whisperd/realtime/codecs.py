"""Live input audio as the engine takes it: 24 kHz 16-bit PCM, or 8 kHz G.711 (mu-law, A-law)
from telephony, to 16 kHz mono float32, one appended piece at a time."""

from __future__ import annotations

import av
import numpy as np

from whisperd.audio import SAMPLE_RATE, Audio


def _mu_law_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _a_law_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


G711 = {"audio/pcmu": _mu_law_table(), "audio/pcma": _a_law_table()}
"""Each G.711 byte's 16-bit linear sample (ITU-T G.711)."""


class InputAudio:
    """Turns one session's appended bytes, in ``kind`` (``audio/pcm``, ``audio/pcmu`` or
    ``audio/pcma``), into 16 kHz samples; a sample split across two appends is kept whole."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rate = 24000 if kind == "audio/pcm" else 8000
        self._width = 2 if kind == "audio/pcm" else 1
        self._rest = b""
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0

    def convert(self, data: bytes) -> Audio:
        data = self._rest + data
        whole = len(data) - len(data) % self._width
        data, self._rest = data[:whole], data[whole:]
        if not data:
            return np.zeros(0, dtype=np.float32)
        if self._width == 2:
            linear = np.frombuffer(data, dtype="<i2")
        else:
            linear = G711[self.kind][np.frombuffer(data, dtype=np.uint8)]
        linear = np.ascontiguousarray(linear, dtype=np.int16)
        pieces = []
        # a second at a time: the resampler's own buffers for a whole 15 MiB event would be
        # many times its size
        for start in range(0, linear.size, self.rate):
            piece = linear[start : start + self.rate]
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self._pts
            self._pts += piece.size
            pieces += [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(np.concatenate(pieces), dtype=np.float32)


def pcm16(samples: Audio, rate: int = 24000) -> bytes:
    """16 kHz samples as a client sends them: 16-bit little-endian PCM at ``rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    linear = np.clip(samples * 32768.0, -32768, 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(linear, format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(out.to_ndarray().astype("<i2").tobytes() for out in frames)
