"""Shared fixtures: the real recordings, one started engine per model, and no model hub.

The engines are session-scoped (each model loads once per run) and use a model cache in
a temporary directory, so the tests never touch the user's ``~/.cache/whisperd``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from whisperd import audio
from whisperd.engine import Transcriber

from support import make_settings, spoken_german

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"

JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
HOTWORDS_TEXT = "Then you go into your ComfyUI folder again in the ComfyUI"
# base translates this at temperature 0 with room to spare (average log-probability -0.89
# against the -1.0 that makes Whisper fall back to sampling, whose output is random).
GERMAN_TEXT = (
    "Guten Morgen! Heute ist ein schöner Tag. Das Wetter ist warm und die Sonne scheint. "
    "Am Nachmittag gehen wir mit den Kindern in den Park."
)


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """The root logger as each test found it: a CLI command run in-process points it at the
    runner's stream, which is closed once the command returns."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_configure(config: pytest.Config) -> None:
    # No test may download a model. huggingface_hub reads this when it is imported, and
    # whisperd's catalog checks it too; subprocesses (the CLI tests) inherit it.
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def jfk_text() -> str:
    return JFK_TEXT


@pytest.fixture(scope="session")
def hotwords_text() -> str:
    return HOTWORDS_TEXT


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    assert AUDIO_DIR.is_dir(), f"the shared recordings are missing: expected {AUDIO_DIR}"
    return AUDIO_DIR


@pytest.fixture(scope="session")
def jfk_path(audio_dir: Path) -> Path:
    return audio_dir / "jfk.flac"


@pytest.fixture(scope="session")
def hotwords_path(audio_dir: Path) -> Path:
    return audio_dir / "hotwords.mp3"


@pytest.fixture(scope="session")
def jfk_audio(jfk_path: Path) -> audio.Audio:
    return audio.decode(jfk_path)


@pytest.fixture(scope="session")
def hotwords_audio(hotwords_path: Path) -> audio.Audio:
    return audio.decode(hotwords_path)


@pytest.fixture(scope="session")
def long_speech(jfk_audio: audio.Audio) -> audio.Audio:
    """150 s, five 30-s windows each holding jfk.flac then 19 s of silence.

    (Back-to-back copies of one sentence make Whisper's output repetitive enough to trigger
    its temperature fallback, which makes every window several times slower.)
    """
    gap = np.zeros(19 * audio.SAMPLE_RATE, dtype=np.float32)
    return np.concatenate([jfk_audio, gap] * 5)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def _started(model: str, root: Path, cache: Path) -> Transcriber:
    settings = make_settings(root, cache, model=model, preload_models=())
    return Transcriber(settings).start()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Transcriber]:
    """The bundled English-only tiny.en, on every core, with the default engine settings.

    A module whose app differs only in app-level settings (keys, fetching, jobs, dirs,
    limits the app enforces) serves it with ``create_app(settings, engine=engine)``.
    """
    with _started("tiny.en", tmp_path_factory.mktemp("engine"), model_cache) as transcriber:
        yield transcriber


@pytest.fixture(scope="session")
def base_engine(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[Transcriber]:
    """The bundled multilingual base (assembled into the session's cache)."""
    with _started("base", tmp_path_factory.mktemp("base-engine"), model_cache) as transcriber:
        yield transcriber


@pytest.fixture(scope="session")
def german_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GERMAN_TEXT spoken by espeak-ng, as a WAV file."""
    return spoken_german(GERMAN_TEXT, tmp_path_factory.mktemp("espeak") / "german.wav")


@pytest.fixture(scope="session")
def german_speech(german_wav: Path) -> audio.Audio:
    return audio.decode(german_wav)


@pytest.fixture(scope="session")
def mixed_flac(jfk_audio: audio.Audio, german_speech: audio.Audio) -> bytes:
    """English then German: jfk.flac (11 s), a second's pause, GERMAN_TEXT (9.4 s), as FLAC."""
    pause = np.zeros(audio.SAMPLE_RATE, dtype=np.float32)
    return audio.encode_flac(np.concatenate([jfk_audio, pause, german_speech]))
