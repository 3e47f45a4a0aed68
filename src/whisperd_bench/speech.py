"""Real speech to send: recordings looped to a length, and recorded prompts with their text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from whisperd import audio
from whisperd_bench.errors import BenchError


def looped_speech(sources: Sequence[Path], seconds: float) -> bytes:
    """Real speech of about ``seconds``: the recordings in turn, 1 s and 1.5 s apart, as FLAC.

    Give two different recordings: one sentence repeated with short gaps makes Whisper's
    output repetitive enough to trigger its temperature fallback on every window (2-3x
    slower), which would measure the fallback rather than the server.
    """
    import numpy as np

    unit: list[audio.Audio] = []
    for index, source in enumerate(sources):
        pause = 1.0 if index % 2 == 0 else 1.5
        unit += [audio.decode(source), np.zeros(int(pause * audio.SAMPLE_RATE), np.float32)]
    block = np.concatenate(unit)
    repeats = max(1, round(seconds / audio.duration(block)))
    return audio.encode_flac(np.tile(block, repeats))


# Debian's asterisk-core-sounds-en-g722 (16 kHz) and asterisk-core-sounds-en (the texts):
# about 25 minutes of one real voice reading prompts, CC-BY-SA 3.0.
PROMPTS_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
PROMPTS_PACKAGES = "asterisk-core-sounds-en-g722 asterisk-core-sounds-en"


def prompt_speech(seconds: float, *, seed: int = 0) -> tuple[bytes, str]:
    """Real speech of at least ``seconds`` with its reference text, as FLAC: recorded prompts
    of three words to a paragraph, in a shuffled order, 0.3-0.8 s apart (dense, like a talk).

    Needs the Debian packages ``PROMPTS_PACKAGES``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: list[audio.Audio] = []
    said: list[str] = []
    total = 0.0
    for samples, text in prompt_utterances(seed=seed):
        gap = np.zeros(int(rng.uniform(0.3, 0.8) * audio.SAMPLE_RATE), np.float32)
        parts += [samples, gap]
        said.append(text)
        total += audio.duration(samples) + audio.duration(gap)
        if total >= seconds:
            break
    return audio.encode_flac(np.concatenate(parts)), " ".join(said)


def prompt_utterances(*, seed: int = 0) -> Iterator[tuple[audio.Audio, str]]:
    """Each recorded prompt (three words to a paragraph) once, in an order shuffled by
    ``seed``: its 16 kHz samples and its text. Needs the Debian packages ``PROMPTS_PACKAGES``.
    """
    import gzip
    import random
    import re

    if not PROMPTS_DIR.is_dir() or not PROMPTS_TEXT.is_file():
        raise BenchError(f"real speech needs: apt-get install {PROMPTS_PACKAGES}")
    texts: dict[str, str] = {}
    with gzip.open(PROMPTS_TEXT, "rt", encoding="utf-8", errors="replace") as lines:
        listed = list(lines)
    for line in listed:
        name, sep, text = line.partition(":")
        text = re.sub(r"\([^)]*\)", " ", text).strip()  # "(6 seconds of silence)"
        # bracketed lines are tones and effects, not speech
        if sep and len(text.split()) >= 3 and not line.startswith(";") and "[" not in text:
            texts[name.strip()] = text
    names = sorted(n for n in texts if (PROMPTS_DIR / f"{n}.g722").is_file())
    random.Random(seed).shuffle(names)
    for name in names:
        yield _decode_g722(PROMPTS_DIR / f"{name}.g722"), texts[name]


def _decode_g722(path: Path) -> audio.Audio:
    """A raw G.722 file (no container header to tell the codec), as 16 kHz mono float32."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
    frames = []
    with av.open(str(path), format="g722") as container:
        for frame in container.decode(audio=0):
            frames += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(frames).astype(np.float32)


def first_seconds(source: Path, seconds: float) -> bytes:
    """The first ``seconds`` of ``source``, as FLAC."""
    return audio.encode_flac(audio.decode(source)[: int(seconds * audio.SAMPLE_RATE)])
