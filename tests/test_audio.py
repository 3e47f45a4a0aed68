"""Decoding real recordings and generated media to 16 kHz mono float32, and every typed failure."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from whisperd import audio, errors

RATE = audio.SAMPLE_RATE


def tone(seconds: float, rate: int, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / RATE)[int(np.argmax(spectrum))])


def wav_bytes(channels: np.ndarray, rate: int, layout: str = "mono") -> bytes:
    """PCM 16-bit WAV from float samples shaped (channels, n)."""
    interleaved = (np.clip(channels.T.reshape(1, -1), -1, 1) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def media_bytes(
    fmt: str, samples: np.ndarray | None, *, audio_codec: str = "", video_codec: str = ""
) -> bytes:
    """A container with an optional video stream (a few seconds of grey frames) and audio."""
    for codec in (audio_codec, video_codec):
        if codec and codec not in av.codecs_available:
            pytest.skip(f"this PyAV build has no {codec} encoder")
    seconds = 2.0 if samples is None else samples.size / RATE
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        # every stream is added before the first packet is muxed (that writes the header)
        video = container.add_stream(video_codec, rate=10) if video_codec else None
        sound = container.add_stream(audio_codec, rate=RATE, layout="mono") if audio_codec else None
        if video is not None:
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            for index in range(int(seconds * 10)):
                image = np.full((48, 64, 3), index % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                for packet in video.encode(frame):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
        if sound is not None and samples is not None:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = RATE
            for packet in [*sound.encode(frame), *sound.encode(None)]:
                container.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jfk_bytes(jfk_path: Path) -> bytes:
    return jfk_path.read_bytes()


@pytest.fixture(scope="module")
def jfk_wav(jfk_audio: np.ndarray) -> bytes:
    return wav_bytes(jfk_audio.reshape(1, -1), RATE)


@pytest.fixture(scope="module")
def jfk_mp3(jfk_audio: np.ndarray) -> bytes:
    return media_bytes("mp3", jfk_audio, audio_codec="libmp3lame")


@pytest.fixture(scope="module")
def silent_video() -> bytes:
    return media_bytes("webm", None, video_codec="libvpx")


# --- decoding ---------------------------------------------------------------------------


def test_jfk_decodes_to_11_seconds_of_16khz_mono_float32(jfk_path: Path) -> None:
    samples = audio.decode(jfk_path)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert audio.duration(samples) == pytest.approx(11.0, abs=0.05)
    assert np.isfinite(samples).all()
    # resampling 44.1 -> 16 kHz may overshoot full scale a little (float: nothing clips)
    assert 0.1 < float(np.abs(samples).max()) < 1.5
    assert float(np.sqrt(np.mean(samples**2))) > 0.01  # speech, not silence


def test_mp3_decodes(hotwords_path: Path) -> None:
    assert audio.duration(audio.decode(hotwords_path)) == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("kind", ["str", "path", "bytes", "file", "bytesio"])
def test_every_source_kind_decodes_the_same(kind: str, jfk_path: Path, jfk_bytes: bytes) -> None:
    reference = audio.decode(jfk_path)
    if kind == "str":
        samples = audio.decode(str(jfk_path))
    elif kind == "path":
        samples = audio.decode(jfk_path)
    elif kind == "bytes":
        samples = audio.decode(jfk_bytes)
    elif kind == "file":
        with jfk_path.open("rb") as f:
            samples = audio.decode(f)
    else:
        samples = audio.decode(io.BytesIO(jfk_bytes))
    np.testing.assert_array_equal(samples, reference)


def test_iter_frames_yields_the_decoded_audio_in_frames(jfk_path: Path) -> None:
    chunks = list(audio.iter_frames(jfk_path))
    assert len(chunks) > 10
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), audio.decode(jfk_path))


@pytest.mark.parametrize(
    ("fmt", "video_codec", "audio_codec"),
    [("mp4", "libx264", "aac"), ("webm", "libvpx", "libopus")],
)
def test_video_file_decodes_its_audio(
    fmt: str, video_codec: str, audio_codec: str, jfk_audio: np.ndarray
) -> None:
    data = media_bytes(fmt, jfk_audio, audio_codec=audio_codec, video_codec=video_codec)
    with av.open(io.BytesIO(data)) as container:  # the fixture really has both streams
        assert container.streams.video and container.streams.audio
    samples = audio.decode(data)
    assert audio.duration(samples) == pytest.approx(11.0, abs=0.1)
    # lossy codecs change the waveform, not its loudness
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(jfk_audio**2))), rel=0.1)


def test_eight_channels_downmix_to_mono() -> None:
    rate = 48_000
    channels = np.stack([tone(2.0, rate, 220.0 * (i + 1)) / 4 for i in range(8)])
    samples = audio.decode(wav_bytes(channels, rate, layout="7.1"))
    assert samples.ndim == 1
    assert audio.duration(samples) == pytest.approx(2.0, abs=0.01)
    assert float(np.sqrt(np.mean(samples**2))) > 0.05


@pytest.mark.parametrize(
    "script",
    [
        "ffconcat version 1.0\nfile 'secret.wav'\n",
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsecret.wav\n#EXT-X-ENDLIST\n",
    ],
    ids=["ffconcat", "hls"],
)
def test_data_naming_other_files_reads_none_of_them(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another upload's spooled file, or any file the server can read, is a relative path away
    (tmp_path / "secret.wav").write_bytes(wav_bytes(tone(2.0, RATE).reshape(1, -1), RATE))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.UndecodableAudioError):
        audio.decode(script.encode())


@pytest.mark.parametrize("count", [2, 7, 8])
def test_each_channel_is_read_on_its_own(count: int) -> None:
    # PyAV misreads planar frames of 8 channels (read past the frame: the process crashed)
    rate = 48_000
    frequencies = [220.0 * (i + 1) for i in range(count)]
    data = wav_bytes(np.stack([tone(2.0, rate, f) / 4 for f in frequencies]), rate, f"{count}c")
    for channel, frequency in enumerate(frequencies):
        samples = np.concatenate(list(audio.iter_frames(io.BytesIO(data), channel=channel)))
        assert audio.duration(samples) == pytest.approx(2.0, abs=0.01)
        assert dominant_frequency(samples) == pytest.approx(frequency, abs=2.0)
    assert not audio.channels_alike(io.BytesIO(data))


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 96_000])
def test_any_sample_rate_resamples_to_16khz(rate: int) -> None:
    samples = audio.decode(wav_bytes(tone(2.0, rate).reshape(1, -1), rate))
    assert audio.duration(samples) == pytest.approx(2.0, abs=0.01)
    assert dominant_frequency(samples) == pytest.approx(440.0, abs=2.0)


@pytest.mark.parametrize("rate", [1, 4, 999])
def test_a_sample_rate_below_the_least_taken_is_refused(rate: int) -> None:
    # 100 kB at 4 Hz would be 3.5 hours of audio to resample and decode
    noise = np.random.default_rng(0).uniform(-1, 1, 50_000).reshape(1, -1)
    with pytest.raises(errors.UndecodableAudioError) as refused:
        audio.decode(wav_bytes(noise, rate))
    assert refused.value.code == "sample_rate_too_low"
    assert refused.value.status_code == 415
    assert str(audio.MIN_SAMPLE_RATE) in str(refused.value)


def test_test_tone_is_a_wav_of_the_asked_length_and_pitch() -> None:
    data = audio.test_tone(2.5, frequency=1000.0)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    samples = audio.decode(data)
    assert audio.duration(samples) == pytest.approx(2.5, abs=0.001)
    assert dominant_frequency(samples) == pytest.approx(1000.0, abs=1.0)
    assert float(np.abs(samples).max()) == pytest.approx(0.3, abs=0.01)
    assert audio.duration(audio.decode(audio.test_tone())) == pytest.approx(1.0, abs=0.001)


# --- probing ----------------------------------------------------------------------------


def test_probe_duration_reads_the_container(jfk_path: Path, hotwords_path: Path) -> None:
    assert audio.probe_duration(jfk_path) == pytest.approx(11.0, abs=0.05)
    assert audio.probe_duration(hotwords_path) == pytest.approx(4.0, abs=0.1)
    assert audio.probe_duration(audio.test_tone(3.0)) == pytest.approx(3.0, abs=0.01)


def test_probe_duration_is_none_when_unknown(silent_video: bytes) -> None:
    assert audio.probe_duration(b"") is None
    assert audio.probe_duration(b"this is not audio at all" * 100) is None
    assert audio.probe_duration(silent_video) is None


# --- typed failures ---------------------------------------------------------------------


def test_zero_bytes_is_empty_audio(tmp_path: Path) -> None:
    with pytest.raises(errors.EmptyAudioError) as bytes_error:
        audio.decode(b"")
    assert bytes_error.value.status_code == 400
    assert bytes_error.value.param == "file"
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(errors.EmptyAudioError):
        audio.decode(empty)


def test_missing_path_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(errors.AudioError, match=r"no-such-file\.wav"):
        audio.decode(tmp_path / "no-such-file.wav")


@pytest.mark.parametrize("size", [1, 100, 5000, 100_000])
def test_random_bytes_are_undecodable(size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    with pytest.raises(errors.UndecodableAudioError) as info:
        audio.decode(data)
    assert info.value.status_code == 415
    assert "format" in info.value.message


def test_text_file_is_refused_as_unsupported_media(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("Meeting notes\n" * 200)
    # FFmpeg opens plain text as a (subtitle/tty) container, so this is "no audio stream"
    with pytest.raises((errors.UndecodableAudioError, errors.NoAudioStreamError)) as info:
        audio.decode(notes)
    assert info.value.status_code == 415


def test_video_without_audio_has_no_audio_stream(silent_video: bytes) -> None:
    with pytest.raises(errors.NoAudioStreamError) as info:
        audio.decode(silent_video)
    assert info.value.status_code == 415


def test_longer_than_max_seconds_is_refused(jfk_path: Path) -> None:
    with pytest.raises(errors.AudioTooLongError) as info:
        audio.decode(jfk_path, max_seconds=5)
    assert info.value.status_code == 413
    assert "5 s" in info.value.message
    assert audio.duration(audio.decode(jfk_path, max_seconds=11.5)) == pytest.approx(11.0, abs=0.05)


def test_half_a_flac_is_truncated_audio(jfk_bytes: bytes) -> None:
    with pytest.raises(errors.TruncatedAudioError) as info:
        audio.decode(jfk_bytes[: len(jfk_bytes) // 2])
    assert info.value.status_code == 400
    assert "breaks off after 5." in info.value.message  # says how much was readable


@pytest.mark.parametrize("fixture", ["jfk_wav", "jfk_mp3"])
def test_half_a_wav_or_mp3_decodes_the_first_half(
    fixture: str, request: pytest.FixtureRequest, jfk_audio: np.ndarray
) -> None:
    # Frame-based formats carry no end marker: FFmpeg decodes what is there, which is
    # the right first half of the speech (WAV exactly, MP3 up to its codec's changes).
    data: bytes = request.getfixturevalue(fixture)
    samples = audio.decode(data[: len(data) // 2])
    assert audio.duration(samples) == pytest.approx(5.5, abs=0.15)
    prefix = jfk_audio[: samples.size]
    correlation = float(np.corrcoef(samples, prefix)[0, 1])
    assert correlation > (0.999 if fixture == "jfk_wav" else 0.9)


@pytest.mark.parametrize("fixture", ["jfk_bytes", "jfk_wav", "jfk_mp3"])
def test_cut_or_damaged_files_never_raise_untyped_errors(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    data: bytes = request.getfixturevalue(fixture)
    rng = np.random.default_rng(7)
    for fraction in (0.001, 0.01, 0.05, 0.3, 0.7, 0.99):
        cut = data[: max(1, int(len(data) * fraction))]
        damaged = bytearray(data)
        start = int(len(data) * fraction)
        damaged[start : start + 2000] = rng.bytes(len(damaged[start : start + 2000]))
        for sample in (cut, bytes(damaged)):
            try:
                samples = audio.decode(sample)
            except errors.AudioError:
                continue
            assert samples.dtype == np.float32
            assert 0 < audio.duration(samples) <= 11.1
