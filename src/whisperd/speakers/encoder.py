"""The speaker model: a voice's embedding, a 256-dimensional unit vector, from its audio.

The model is the GE2E voice encoder whose weights ship in the ``resemblyzer`` package: a
3-layer LSTM over 40-band power mel frames (hidden size 256), whose last layer's final
hidden state goes through a 256 x 256 linear layer and a ReLU, then is scaled to unit
length. Two embeddings of the same voice have a cosine similarity near 1.

It runs without PyTorch: the checkpoint is read here, the LSTM runs in onnxruntime (see
:mod:`.graph`) and the rest on numpy; nothing of ``resemblyzer`` is imported (its package
imports PyTorch and webrtcvad).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from whisperd.audio import SAMPLE_RATE, Audio
from whisperd.errors import ModelLoadError, SpeakerModelMissingError
from whisperd.speakers import graph
from whisperd.speakers.checkpoint import read_state
from whisperd.speakers.mel import HOP, N_MELS, Mel, frame_count, mel_spectrogram, normalize_volume

HIDDEN = 256
"""Units in each LSTM layer."""
LAYERS = 3
"""Stacked LSTM layers."""
EMBEDDING_SIZE = 256
"""Length of an embedding."""
PARTIAL_FRAMES = 160
"""Frames (1.6 s) in one partial utterance of a reference clip."""
PARTIAL_RATE = 1.3
"""Partial utterances per second of a reference clip (one every 77 frames)."""
MIN_COVERAGE = 0.75
"""Share of its frames a reference clip must fill for its last partial utterance to count."""
INSTALL_HINT = (
    "pip install --no-deps resemblyzer==0.1.4 (the speakers extra, without the PyTorch that "
    "pip would add and whisperd does not use)"
)
"""What installs the speaker model."""

Embeddings = npt.NDArray[np.float32]
# Frames (windows x frames each) run through the LSTM at a time: the batch's input
# projections take 4 x HIDDEN floats a frame (84 MB; 128 windows of 1.6 s).
_BATCH_FRAMES = 128 * 161


def _batch_size(frames: int) -> int:
    return max(1, _BATCH_FRAMES // max(1, frames))


def checkpoint_path(*, param: str | None = "response_format") -> Path:
    """Where the installed ``resemblyzer`` package keeps the model's weights.

    The package is found, not imported. Raises
    :class:`~whisperd.errors.SpeakerModelMissingError` (for request parameter ``param``)
    when it is not installed.
    """
    spec = importlib.util.find_spec("resemblyzer")
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    for folder in folders:
        path = Path(folder) / "pretrained.pt"
        if path.is_file():
            return path
    raise SpeakerModelMissingError(
        f"Speaker labels need the speaker model, which is not installed: {INSTALL_HINT}.",
        param=param,
    )


def _session(model: bytes) -> Any:
    """An onnxruntime session of ``model`` on the CPU, its threads sleeping when idle (not
    spinning beside the decoder's), its memory held only while it runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False  # a batch's buffers go back when it is done
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def unit_length(vectors: npt.NDArray[np.floating]) -> Embeddings:
    """``vectors`` (..., d) scaled to unit length along the last axis, as float32; a zero
    vector stays zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    scaled: Embeddings = (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)
    return scaled


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(LAYERS):
        inputs = N_MELS if i == 0 else HIDDEN
        shapes[f"lstm.weight_ih_l{i}"] = (4 * HIDDEN, inputs)
        shapes[f"lstm.weight_hh_l{i}"] = (4 * HIDDEN, HIDDEN)
        shapes[f"lstm.bias_ih_l{i}"] = (4 * HIDDEN,)
        shapes[f"lstm.bias_hh_l{i}"] = (4 * HIDDEN,)
    shapes["linear.weight"] = (EMBEDDING_SIZE, HIDDEN)
    shapes["linear.bias"] = (EMBEDDING_SIZE,)
    return shapes


def partial_starts(n_samples: int) -> list[int]:
    """The first frames of the partial utterances (PARTIAL_FRAMES each) that cover a clip of
    ``n_samples``: one every 1 / PARTIAL_RATE s, the last kept only if the clip fills
    MIN_COVERAGE of it, and always at least one."""
    step = round(SAMPLE_RATE / PARTIAL_RATE / HOP)
    frames = frame_count(n_samples)
    starts = list(range(0, max(1, frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts


class VoiceEncoder:
    """The speaker model, loaded: embeddings of windows of audio and of reference clips."""

    def __init__(self, state: dict[str, npt.NDArray[np.float32]]) -> None:
        """Build from the checkpoint's tensors (checked against the model's shapes)."""
        for name, shape in _expected_shapes().items():
            if name not in state or state[name].shape != shape:
                found = state[name].shape if name in state else "missing"
                raise ModelLoadError(f"The speaker model's {name} is {found}, not {shape}.")
        self._lstm = _session(graph.lstm_model(state, LAYERS, HIDDEN))
        self._linear_weights = np.ascontiguousarray(state["linear.weight"].T)
        self._linear_bias = state["linear.bias"].copy()
        # one batch at a time: each runs on all the cores, and batches from several streams
        # at once would only fight over the cores the decoder uses
        self._running = threading.Lock()

    @classmethod
    def load(cls, *, param: str | None = "response_format") -> VoiceEncoder:
        """The model as the installed ``resemblyzer`` package ships it.

        Raises :class:`~whisperd.errors.SpeakerModelMissingError` (for request parameter
        ``param``) when it is not installed, and :class:`~whisperd.errors.ModelLoadError`
        when its file is damaged.
        """
        return cls(read_state(checkpoint_path(param=param), "model_state"))

    def embed_frames(self, mels: npt.NDArray[np.float32]) -> Embeddings:
        """Embeddings (batch, EMBEDDING_SIZE) of mel spectrograms (batch, frames, N_MELS)
        of equal length."""
        if mels.ndim != 3 or mels.shape[2] != N_MELS:
            raise ValueError(f"expected (batch, frames, {N_MELS}) mel frames, got {mels.shape}")
        out = np.empty((mels.shape[0], EMBEDDING_SIZE), dtype=np.float32)
        size = _batch_size(mels.shape[1])
        for start in range(0, mels.shape[0], size):
            frames = np.ascontiguousarray(mels[start : start + size].transpose(1, 0, 2))
            with self._running:
                states = self._lstm.run(None, {graph.INPUT: frames})[0][0]
            raw = np.maximum(states @ self._linear_weights + self._linear_bias, 0.0)
            out[start : start + size] = unit_length(raw)
        return out

    def embed(self, windows: Sequence[Audio]) -> Embeddings:
        """Embeddings (len(windows), EMBEDDING_SIZE), float32, of unit length, of 16 kHz mono
        windows of any length (each raised to the model's loudness on its own, then run
        through the model over all its frames). Windows of equal frame count run together."""
        out = np.empty((len(windows), EMBEDDING_SIZE), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            by_length.setdefault(frame_count(window.shape[0]), []).append(i)
        for frames, indices in by_length.items():
            size = _batch_size(frames)
            for start in range(0, len(indices), size):
                batch = indices[start : start + size]
                mels = np.stack([_window_mel(windows[i]) for i in batch])
                out[batch] = self.embed_frames(mels)
        return out

    def embed_utterance(self, samples: Audio) -> npt.NDArray[np.float32]:
        """The embedding (EMBEDDING_SIZE,) of a reference clip of one voice: the unit-length
        mean of the embeddings of its partial utterances (see :func:`partial_starts`), taken
        from the clip's spectrogram after raising the clip to the model's loudness."""
        starts = partial_starts(samples.shape[0])
        needed = (starts[-1] + PARTIAL_FRAMES) * HOP
        clip = normalize_volume(np.asarray(samples, dtype=np.float32))
        if clip.shape[0] < needed:
            clip = np.pad(clip, (0, needed - clip.shape[0]))
        spectrogram = mel_spectrogram(clip)
        partials = np.stack([spectrogram[s : s + PARTIAL_FRAMES] for s in starts])
        mean = self.embed_frames(partials).mean(axis=0, dtype=np.float32)
        return unit_length(mean)


def _window_mel(window: Audio) -> Mel:
    return mel_spectrogram(normalize_volume(np.asarray(window, dtype=np.float32)))


_loaded: VoiceEncoder | None = None
_lock = threading.Lock()


def voice_encoder(*, param: str | None = "response_format") -> VoiceEncoder:
    """The process's one speaker model, loaded on first use (see :meth:`VoiceEncoder.load`)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = VoiceEncoder.load(param=param)
        return _loaded
