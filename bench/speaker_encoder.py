"""whisperd's speaker model against the same checkpoint in PyTorch: load time, speed, and
how far apart their embeddings are.

It loops jfk.flac and hotwords.mp3 to about ``--seconds`` of real speech, cuts it into
windows (``--window`` s long, every ``--hop`` s), and embeds them with whisperd's
encoder and with PyTorch's LSTM and linear layers loaded from the same checkpoint (each
given the same mel spectrograms of the same windows, so the network alone differs). Runs
alternate (whisperd, torch, whisperd, ...); each figure is the median of ``--runs``. It prints
seconds to load, seconds to embed, audio seconds embedded per second, the ratio, and the
largest difference between the two sets of embeddings.

    python bench/speaker_encoder.py [--seconds 60] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import whisperd_bench as b
from whisperd import audio
from whisperd.speakers import encoder, mel
from whisperd.speakers.checkpoint import read_state


def looped_speech(audio_dir: Path, seconds: float) -> audio.Audio:
    """jfk.flac and hotwords.mp3 in turn, back to back, cut to ``seconds``."""
    voices = [audio.decode(audio_dir / name) for name in ("jfk.flac", "hotwords.mp3")]
    unit = np.concatenate(voices)
    repeats = int(np.ceil(seconds * audio.SAMPLE_RATE / unit.size))
    return np.tile(unit, repeats)[: int(seconds * audio.SAMPLE_RATE)]


def cut(samples: audio.Audio, window: float, hop: float) -> list[audio.Audio]:
    size, step = int(window * audio.SAMPLE_RATE), int(hop * audio.SAMPLE_RATE)
    return [samples[s : s + size] for s in range(0, samples.size - size + 1, step)]


def torch_encoder() -> Callable[[np.ndarray], np.ndarray]:
    """The checkpoint in PyTorch: mel frames (batch, frames, 40) to unit embeddings."""
    import torch

    weights = torch.load(encoder.checkpoint_path(), map_location="cpu", weights_only=True)
    state = weights["model_state"]
    lstm = torch.nn.LSTM(40, 256, num_layers=3, batch_first=True)
    linear = torch.nn.Linear(256, 256)
    lstm.load_state_dict({k[len("lstm.") :]: v for k, v in state.items() if "lstm." in k})
    linear.load_state_dict({k[len("linear.") :]: v for k, v in state.items() if "linear." in k})

    def embed(mels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, (hidden, _) = lstm(torch.from_numpy(mels))
            raw = torch.relu(linear(hidden[-1]))
            return (raw / raw.norm(dim=1, keepdim=True)).numpy()

    return embed


def numpy_encoder(path: Path) -> encoder.VoiceEncoder:
    """whisperd's encoder, read afresh from the checkpoint (not the process's cached one)."""
    return encoder.VoiceEncoder(read_state(path, "model_state"))


def embed_with(model: Callable[[np.ndarray], np.ndarray], windows: list[audio.Audio]) -> Any:
    """Embeddings of ``windows`` by ``model``, given whisperd's mel spectrograms of them."""
    mels = np.stack([mel.mel_spectrogram(mel.normalize_volume(w)) for w in windows])
    return model(mels)


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio to embed")
    parser.add_argument("--window", type=float, default=1.6, help="window length, seconds")
    parser.add_argument("--hop", type=float, default=0.8, help="seconds between windows")
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed measure")
    parser.add_argument("--audio-dir", type=Path, default=b.default_audio_dir())
    args = parser.parse_args()
    if args.audio_dir is None:
        parser.error("no ../shared/audio here: pass --audio-dir")
    import torch

    samples = looped_speech(args.audio_dir, args.seconds)
    windows = cut(samples, args.window, args.hop)
    seconds = audio.duration(samples)
    print(
        f"machine: {b.describe(b.machine())}; load average {b.load_average()}\n"
        f"{seconds:.0f} s of real speech, {len(windows)} windows of {args.window} s every "
        f"{args.hop} s; torch {torch.__version__} on {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    path = encoder.checkpoint_path()
    loads: dict[str, list[float]] = {"whisperd": [], "torch": []}
    embeds: dict[str, list[float]] = {"whisperd": [], "torch": []}
    results: dict[str, np.ndarray] = {}
    for _ in range(args.runs):
        took, ours = timed(functools.partial(numpy_encoder, path))
        loads["whisperd"].append(took)
        took, theirs = timed(torch_encoder)
        loads["torch"].append(took)
        took, results["whisperd"] = timed(functools.partial(ours.embed, windows))
        embeds["whisperd"].append(took)
        took, results["torch"] = timed(functools.partial(embed_with, theirs, windows))
        embeds["torch"].append(took)

    speed = {name: seconds / statistics.median(times) for name, times in embeds.items()}
    print(f"\n{'encoder':8} {'load s':>8} {'embed s':>8} {'audio s/s':>10}")
    for name in ("whisperd", "torch"):
        load, embed = statistics.median(loads[name]), statistics.median(embeds[name])
        print(f"{name:8} {load:8.3f} {embed:8.2f} {speed[name]:10.0f}")
    difference = np.abs(results["whisperd"] - results["torch"])
    cosine = np.sum(results["whisperd"] * results["torch"], axis=1)
    print(
        f"\nwhisperd speed / torch speed: {speed['whisperd'] / speed['torch']:.2f}\n"
        f"largest difference in any embedding component: {difference.max():.2e}; "
        f"least cosine similarity: {cosine.min():.7f}\n"
        f"load average after: {b.load_average()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
