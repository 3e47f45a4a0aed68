"""The speaker model's input: 16 kHz audio at a set loudness, as a power mel spectrogram.

The spectrogram is the one the model was trained on: 25 ms Hann windows every 10 ms,
centred (the signal padded with zeros by half a window at each end), the squared
magnitude of each window's spectrum, then 40 triangular filters on Slaney's mel scale,
each scaled to unit area.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from whisperd.audio import SAMPLE_RATE, Audio

N_FFT = 400
"""Samples in one analysis window (25 ms)."""
HOP = 160
"""Samples between the starts of two windows (10 ms): one spectrogram frame."""
N_MELS = 40
"""Mel bands in one frame."""
TARGET_DBFS = -30.0
"""The loudness (mean power, in dB below full scale) quieter audio is raised to."""

Mel = npt.NDArray[np.float32]
# Frames transformed at a time: bounds the memory a long signal's transform takes.
_BLOCK_FRAMES = 4096
# Slaney's scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above it.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0


def normalize_volume(samples: Audio, target_dbfs: float = TARGET_DBFS) -> Audio:
    """``samples`` raised to a mean power of ``target_dbfs``; louder or silent audio as is."""
    power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    if power <= 0.0:
        return samples
    gain_db = target_dbfs - 10.0 * math.log10(power)
    if gain_db <= 0.0:
        return samples
    return (samples * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    above = hz >= _BREAK_HZ
    mel = hz / _LINEAR_HZ_PER_MEL
    mel[above] = _BREAK_MEL + np.log(hz[above] / _BREAK_HZ) / _LOG_STEP
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    above = mel >= _BREAK_MEL
    hz = mel * _LINEAR_HZ_PER_MEL
    hz[above] = _BREAK_HZ * np.exp(_LOG_STEP * (mel[above] - _BREAK_MEL))
    return hz


@functools.cache
def mel_filters() -> npt.NDArray[np.float64]:
    """The (N_MELS, N_FFT // 2 + 1) filter bank: triangles from 0 Hz to half the sample rate,
    evenly spaced in mels, each of unit area in Hz."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_mel = np.linspace(0.0, _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], N_MELS + 2)
    edges = _mel_to_hz(edges_mel)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - low) / (centre - low)
    falling = (high - bins) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    filters: npt.NDArray[np.float64] = triangles * (2.0 / (high - low))
    return filters


@functools.cache
def _window() -> npt.NDArray[np.float64]:
    """The periodic Hann window of N_FFT samples."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


def frame_count(n_samples: int) -> int:
    """Spectrogram frames of ``n_samples`` of audio: one every HOP samples, from the first."""
    return 1 + n_samples // HOP


def mel_spectrogram(samples: Audio) -> Mel:
    """The (frames, N_MELS) float32 power mel spectrogram of 16 kHz mono ``samples``."""
    padded = np.pad(samples.astype(np.float64), N_FFT // 2)
    windows = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    out = np.empty((windows.shape[0], N_MELS), dtype=np.float32)
    filters_t = mel_filters().T
    for start in range(0, windows.shape[0], _BLOCK_FRAMES):
        spectrum = np.fft.rfft(windows[start : start + _BLOCK_FRAMES] * _window(), axis=1)
        power = np.square(spectrum.real) + np.square(spectrum.imag)
        out[start : start + _BLOCK_FRAMES] = power @ filters_t
    return out
