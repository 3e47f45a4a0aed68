"""The block-wise log-mel features equal faster-whisper's, bit for bit, on real speech."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from whisperd import audio
from whisperd.features import BLOCK_FRAMES, BlockFeatures

HOP = 160  # samples per frame


@pytest.mark.parametrize(
    "samples",
    [
        None,  # the whole recording
        1,
        HOP * BLOCK_FRAMES - HOP,  # a block's worth of frames, give or take one
        HOP * BLOCK_FRAMES,
        HOP * BLOCK_FRAMES + 1,
        28 * audio.SAMPLE_RATE,  # a whole piece
    ],
)
@pytest.mark.parametrize("mels", [80, 128])
def test_block_features_equal_the_library_s(
    jfk_audio: audio.Audio, hotwords_audio: audio.Audio, samples: int | None, mels: int
) -> None:
    speech = np.concatenate([jfk_audio, hotwords_audio])
    clip = speech if samples is None else np.resize(speech, samples)
    expected = FeatureExtractor(feature_size=mels)(clip)
    found = BlockFeatures(feature_size=mels)(clip)
    assert found.dtype == expected.dtype
    assert found.shape == expected.shape
    assert np.array_equal(found, expected)
    assert np.array_equal(BlockFeatures(feature_size=mels)(clip, chunk_length=30), expected)
