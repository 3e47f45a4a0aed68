"""The speaker model on real speech: the same embeddings as PyTorch running the same
checkpoint, a loader that runs no code from the file, and speakers found and named."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from whisperd import audio
from whisperd.errors import ModelLoadError, SpeakerModelMissingError
from whisperd.speakers import checkpoint, clustering, encoder, mel

from browser import require

RATE = audio.SAMPLE_RATE
WINDOW = int(1.5 * RATE)
HOP = int(0.75 * RATE)


@pytest.fixture(scope="module")
def model() -> encoder.VoiceEncoder:
    return encoder.voice_encoder()


@pytest.fixture(scope="module")
def jfk(audio_dir: Path) -> audio.Audio:
    return audio.decode(audio_dir / "jfk.flac")


@pytest.fixture(scope="module")
def hotwords(audio_dir: Path) -> audio.Audio:
    return audio.decode(audio_dir / "hotwords.mp3")


def windows(samples: audio.Audio) -> list[audio.Audio]:
    return [samples[s : s + WINDOW] for s in range(0, len(samples) - WINDOW + 1, HOP)]


def raised(samples: audio.Audio) -> audio.Audio:
    """Raised to -30 dBFS mean power if quieter: the model's input loudness."""
    gain_db = -30.0 - 10.0 * np.log10(np.mean(np.square(samples.astype(np.float64))))
    return samples if gain_db <= 0 else (samples * 10.0 ** (gain_db / 20.0)).astype(np.float32)


def librosa_mel(samples: audio.Audio) -> np.ndarray:
    import librosa

    spectrogram = librosa.feature.melspectrogram(
        y=samples, sr=RATE, n_fft=400, hop_length=160, n_mels=40
    )
    return np.asarray(spectrogram, dtype=np.float32).T


@pytest.fixture(scope="module")
def torch_model() -> Callable[[np.ndarray], np.ndarray]:
    """The checkpoint in PyTorch's own LSTM and linear layers (the speaker encoder bench's
    reference): mel frames (batch, frames, 40) to unit embeddings."""
    path = Path(__file__).resolve().parents[1] / "bench" / "speaker_encoder.py"
    spec = importlib.util.spec_from_file_location("speaker_encoder_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    embed: Callable[[np.ndarray], np.ndarray] = bench.torch_encoder()
    return embed


# --- the model's input and output, against librosa and PyTorch ------------------------------
@pytest.mark.parametrize("name", ["jfk.flac", "hotwords.mp3"])
def test_mel_spectrogram_is_librosas(audio_dir: Path, name: str) -> None:
    samples = raised(audio.decode(audio_dir / name))
    ours = mel.mel_spectrogram(samples)
    theirs = librosa_mel(samples)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (mel.frame_count(len(samples)), 40)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.max()))


def test_volume_is_raised_to_minus_30_dbfs_never_lowered(jfk: audio.Audio) -> None:
    quiet = (jfk * 0.001).astype(np.float32)
    louder = mel.normalize_volume(quiet)
    assert 10 * np.log10(np.mean(np.square(louder.astype(np.float64)))) == pytest.approx(-30.0)
    assert mel.normalize_volume(jfk) is jfk  # already louder than -30 dBFS
    silence = np.zeros(RATE, dtype=np.float32)
    assert not mel.normalize_volume(silence).any()


def test_window_embeddings_are_pytorchs(
    model: encoder.VoiceEncoder,
    torch_model: Callable[[np.ndarray], np.ndarray],
    jfk: audio.Audio,
    hotwords: audio.Audio,
) -> None:
    # windows of several lengths, and a quiet one, in one call: grouped by length inside
    cuts = [(jfk, 0, 25_600), (hotwords, 8_000, 33_600), (jfk, 40_000, 56_000)]
    cuts += [(hotwords, 0, 8_000), (jfk, 100_000, 125_600), (jfk, 3_000, 11_123)]
    parts = [samples[start:stop] for samples, start, stop in cuts]
    parts.append((jfk[60_000:76_000] * 0.01).astype(np.float32))
    ours = model.embed(parts)
    theirs = np.concatenate([torch_model(librosa_mel(raised(p))[None]) for p in parts])
    assert ours.shape == (len(parts), 256)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.9999
    assert np.max(np.abs(ours - theirs)) < 1e-4


def test_no_windows_no_embeddings(model: encoder.VoiceEncoder) -> None:
    assert model.embed([]).shape == (0, 256)


def test_utterance_embedding_is_the_mean_of_pytorchs_partials(
    model: encoder.VoiceEncoder, torch_model: Callable[[np.ndarray], np.ndarray], jfk: audio.Audio
) -> None:
    # 11 s: partials of 160 frames every 77; the 14th would hold only 62% of its frames
    starts = encoder.partial_starts(len(jfk))
    assert starts == list(range(0, 13 * 77, 77))
    padded = np.pad(raised(jfk), (0, max(0, (starts[-1] + 160) * 160 - len(jfk))))
    spectrogram = librosa_mel(padded)
    partials = torch_model(np.stack([spectrogram[s : s + 160] for s in starts]))
    mean = partials.mean(axis=0)
    expected = mean / np.linalg.norm(mean)
    ours = model.embed_utterance(jfk)
    assert ours.shape == (256,)
    assert float(ours @ expected) > 0.9999
    assert np.max(np.abs(ours - expected)) < 1e-4


def test_a_short_clip_is_one_padded_partial() -> None:
    assert encoder.partial_starts(8_000) == [0]
    assert encoder.partial_starts(0) == [0]


# --- the loader -------------------------------------------------------------------------------
def test_the_runtime_imports_neither_torch_nor_resemblyzer() -> None:
    code = (
        "import sys\n"
        "from whisperd.speakers import clustering, encoder\n"
        "model = encoder.voice_encoder()\n"
        "model.embed([__import__('numpy').zeros(16000, 'float32')])\n"
        "print(sorted(m for m in ('torch', 'resemblyzer', 'librosa', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


class _Runs:
    """Pickles as a call of ``function`` with ``args``: what a hostile checkpoint holds."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


def legacy_checkpoint(path: Path, saved: object, *, info: object = None) -> Path:
    """A checkpoint in PyTorch's legacy layout holding ``saved`` (and no storages)."""
    parts = [checkpoint.MAGIC, checkpoint.PROTOCOL, info or {"little_endian": True}, saved, []]
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in parts))
    return path


@pytest.mark.parametrize("where", ["object", "system information"])
def test_loader_refuses_a_checkpoint_that_names_another_global(tmp_path: Path, where: str) -> None:
    proof = tmp_path / "ran"
    hostile = _Runs(shutil.copyfile, __file__, str(proof))
    saved = {"model_state": {"x": hostile}} if where == "object" else {}
    info = hostile if where == "system information" else None
    path = legacy_checkpoint(tmp_path / "hostile.pt", saved, info=info)
    with pytest.raises(ModelLoadError, match=r"shutil\.copyfile.*not allowed"):
        checkpoint.read_state(path, "model_state")
    assert not proof.exists()


def test_loader_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    path.write_bytes(b"PK\x03\x04 not a legacy checkpoint")
    with pytest.raises(ModelLoadError):
        checkpoint.read_state(path, "model_state")
    with pytest.raises(ModelLoadError, match="no dict of tensors"):
        checkpoint.read_state(legacy_checkpoint(tmp_path / "empty.pt", {}), "model_state")


def test_model_refuses_weights_of_the_wrong_shape() -> None:
    state = checkpoint.read_state(encoder.checkpoint_path(), "model_state")
    state["linear.weight"] = state["linear.weight"][:128]
    with pytest.raises(ModelLoadError, match=r"linear\.weight is \(128, 256\)"):
        encoder.VoiceEncoder(state)


def test_missing_speaker_model_is_a_client_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # as if not installed
    with pytest.raises(SpeakerModelMissingError) as caught:
        encoder.VoiceEncoder.load()
    assert caught.value.status_code == 400
    body = caught.value.to_dict()["error"]
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "response_format"
    assert "pip install --no-deps resemblyzer==0.1.4" in body["message"]
    with pytest.raises(SpeakerModelMissingError) as caught:
        encoder.checkpoint_path(param="speakers")
    assert caught.value.param == "speakers"


# --- speakers from real voices ---------------------------------------------------------------
@pytest.fixture(scope="module")
def two_voices(
    model: encoder.VoiceEncoder, jfk: audio.Audio, hotwords: audio.Audio
) -> tuple[np.ndarray, np.ndarray]:
    """JFK's windows and the other man's, interleaved (hotwords.mp3 first), and who is who."""
    jfk_windows, other_windows = windows(jfk), windows(hotwords)
    order: list[tuple[int, audio.Audio]] = []
    for i in range(max(len(jfk_windows), len(other_windows))):
        order += [(1, w) for w in other_windows[i : i + 1]]
        order += [(0, w) for w in jfk_windows[i : i + 1]]
    truth = np.array([who for who, _ in order])
    return model.embed([w for _, w in order]), truth


def test_two_voices_are_two_speakers(two_voices: tuple[np.ndarray, np.ndarray]) -> None:
    embeddings, truth = two_voices
    labels = clustering.cluster(embeddings)
    # hotwords.mp3 comes first, so the other man is speaker 0
    np.testing.assert_array_equal(labels, 1 - truth)


def test_one_voice_is_one_speaker(model: encoder.VoiceEncoder, jfk: audio.Audio) -> None:
    labels = clustering.cluster(model.embed(windows(jfk)))
    assert labels.tolist() == [0] * len(windows(jfk))


def test_speaker_count_bounds_are_honoured(two_voices: tuple[np.ndarray, np.ndarray]) -> None:
    embeddings, truth = two_voices
    assert set(clustering.cluster(embeddings, max_speakers=1).tolist()) == {0}
    three = clustering.cluster(embeddings, min_speakers=3)
    assert set(three.tolist()) == {0, 1, 2}
    first_seen = [int(np.argmax(three == k)) for k in range(3)]
    assert first_seen == sorted(first_seen)  # numbered in order of first appearance
    assert clustering.cluster(embeddings, min_speakers=2, max_speakers=2).tolist() == list(
        1 - truth
    )
    with pytest.raises(ValueError, match="above max_speakers"):
        clustering.cluster(embeddings, min_speakers=3, max_speakers=2)


def test_few_embeddings() -> None:
    assert clustering.cluster(np.zeros((0, 256), dtype=np.float32)).shape == (0,)
    one = np.ones((1, 256), dtype=np.float32)
    assert clustering.cluster(one, min_speakers=2).tolist() == [0]


def test_weights_must_be_one_positive_number_each(
    two_voices: tuple[np.ndarray, np.ndarray],
) -> None:
    embeddings, truth = two_voices
    seconds = np.full(len(embeddings), 1.5)
    assert clustering.cluster(embeddings, weights=seconds).tolist() == list(1 - truth)
    with pytest.raises(ValueError, match="weights"):
        clustering.cluster(embeddings, weights=np.zeros(len(embeddings)))


def test_many_windows_cluster_in_bounded_memory() -> None:
    rng = np.random.default_rng(3)
    voices = encoder.unit_length(rng.normal(size=(3, 256)))
    truth = np.repeat([2, 0, 1], 2_000)
    rng.shuffle(truth)
    noisy = voices[truth] + rng.normal(scale=0.04, size=(truth.size, 256))
    embeddings = encoder.unit_length(noisy)
    tracemalloc.start()
    try:
        labels = clustering.cluster(embeddings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # a 6000 x 6000 matrix of distances alone is 288 MB
    assert len(set(labels.tolist())) == 3
    for voice in range(3):
        assert len(set(labels[truth == voice].tolist())) == 1
    assert labels[0] == 0


def test_centroids_are_unit_means(two_voices: tuple[np.ndarray, np.ndarray]) -> None:
    embeddings, truth = two_voices
    centres = clustering.centroids(embeddings, truth)
    assert centres.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, rtol=1e-5)
    jfk_mean = embeddings[truth == 0].mean(axis=0)
    np.testing.assert_allclose(centres[0], jfk_mean / np.linalg.norm(jfk_mean), atol=1e-6)


@pytest.fixture(scope="module")
def robot_voice(tmp_path_factory: pytest.TempPathFactory) -> audio.Audio:
    """A sentence in espeak-ng's voice: a voice that is neither man's."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        require("espeak-ng")
    out = tmp_path_factory.mktemp("espeak") / "robot.wav"
    text = "Please leave a message after the tone, and we will call you back tomorrow morning."
    subprocess.run([str(espeak), "-s", "150", "-w", str(out), text], check=True, timeout=60)
    return audio.decode(out)


def test_reference_voices_name_their_speakers(
    model: encoder.VoiceEncoder,
    two_voices: tuple[np.ndarray, np.ndarray],
    jfk: audio.Audio,
    hotwords: audio.Audio,
    robot_voice: audio.Audio,
) -> None:
    embeddings, _ = two_voices
    labels = clustering.cluster(embeddings)
    centres = clustering.centroids(embeddings, labels)
    references = {
        "Kennedy": model.embed_utterance(jfk[: len(jfk) // 2]),
        "Presenter": model.embed_utterance(hotwords[: len(hotwords) // 2]),
        "Robot": model.embed_utterance(robot_voice),
    }
    assert clustering.name_speakers(centres, references) == {0: "Presenter", 1: "Kennedy"}
    assert clustering.name_speakers(centres, {"Robot": references["Robot"]}) == {}
    assert clustering.name_speakers(centres, {}) == {}


def test_a_name_goes_to_one_speaker_at_most() -> None:
    speaker = encoder.unit_length(np.ones((1, 256), dtype=np.float32))
    references = {"A": speaker[0], "B": speaker[0] * 0.5}
    assert clustering.name_speakers(np.concatenate([speaker, speaker]), references) in (
        {0: "A", 1: "B"},
        {1: "A", 0: "B"},
    )
