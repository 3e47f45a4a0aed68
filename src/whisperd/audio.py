"""Decode any container or codec FFmpeg reads (through PyAV) to 16 kHz mono float32."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream

from whisperd.errors import (
    AudioTooLongError,
    EmptyAudioError,
    NoAudioStreamError,
    TruncatedAudioError,
    UndecodableAudioError,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# The lowest input rate taken. Speech needs more (telephony is 8 kHz); below it a few bytes
# stand for hours of audio (100 kB of 16-bit samples at 4 Hz: 3.5 hours), all of it made in
# the resampler at once.
MIN_SAMPLE_RATE = 1_000
Audio = npt.NDArray[np.float32]
AudioSource = str | Path | bytes | IO[bytes]


_READ_ITSELF = {"protocol_whitelist": "none"}
"""What data read through a Python file object may open besides itself: nothing. A playlist
or concat script (hls, ffconcat) names other files and URLs, which would then be read: another
upload's open file, a local secret, an internal address."""
_READ_FILES = {"protocol_whitelist": "file"}
"""What a local file named by its path may open: local files (its owner's own)."""


def _open(source: AudioSource) -> av.container.InputContainer:
    if isinstance(source, bytes):
        if not source:
            raise EmptyAudioError("The audio file is empty (0 bytes).", param="file")
        source = io.BytesIO(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise EmptyAudioError(f"No such audio file: {path}", param="file")
        if path.stat().st_size == 0:
            raise EmptyAudioError("The audio file is empty (0 bytes).", param="file")
        source = str(path)
    elif source.seekable():
        # an empty upload or raw body is the client's mistake, not an unknown format
        start = source.tell()
        empty = not source.read(1)
        source.seek(start)
        if empty:
            raise EmptyAudioError("The audio file is empty (0 bytes).", param="file")
    try:
        options = _READ_FILES if isinstance(source, str) else _READ_ITSELF
        return av.open(source, mode="r", metadata_errors="ignore", options=options)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise UndecodableAudioError(
            "The file is not audio or video in a format FFmpeg can read; "
            "send a common format such as mp3, wav, flac, ogg, m4a, webm or mp4.",
            param="file",
        ) from exc


def probe_duration(source: AudioSource) -> float | None:
    """The duration the container declares, in seconds, without decoding; None if unknown."""
    try:
        with _open(source) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return float(container.duration / av.time_base)
    except (UndecodableAudioError, EmptyAudioError):
        return None
    return None


def declared_seconds(source: IO[bytes], max_seconds: float) -> float | None:
    """The duration ``source`` declares (None if it does not; the position is put back to
    the start), refusing audio that declares more than ``max_seconds`` before anything is
    decoded. A header that understates the length is caught by the decoder's own limit."""
    estimate = probe_duration(source)
    source.seek(0)
    if estimate is not None and estimate > max_seconds:
        raise AudioTooLongError(
            f"The audio lasts {estimate:.0f} s, over the limit of {max_seconds:.0f} s; split "
            "it or raise WHISPERD_MAX_AUDIO_SECONDS.",
            param="file",
        )
    return estimate


def channel_count(source: IO[bytes]) -> int:
    """How many channels the first audio stream of ``source`` has (read from its start; the
    position is put back to the start)."""
    try:
        with _open(source) as container:
            if not container.streams.audio:
                raise NoAudioStreamError("The file has no audio stream.", param="file")
            return int(container.streams.audio[0].codec_context.channels)
    finally:
        source.seek(0)


class _View(io.RawIOBase):
    """A read-only view of an open file with a position of its own (``os.pread``): several
    decoders can read one spooled upload at once."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._fd, len(buffer), self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            offset += os.fstat(self._fd).st_size
        elif whence == io.SEEK_CUR:
            offset += self._position
        self._position = max(0, offset)
        return self._position

    def tell(self) -> int:
        return self._position


def views(source: IO[bytes], count: int) -> list[IO[bytes]]:
    """``count`` readers of ``source``, each with its own position (the file is not copied
    when it has a descriptor; an in-memory one is)."""
    try:
        fd = source.fileno()  # a spooled file moves to disk here
    except (OSError, ValueError, io.UnsupportedOperation):
        source.seek(0)
        data = source.read()
        return [io.BytesIO(data) for _ in range(count)]
    source.flush()
    return [cast(IO[bytes], io.BufferedReader(_View(fd))) for _ in range(count)]


def channels_alike(source: IO[bytes], *, seconds: float = 30.0) -> bool:
    """Whether every channel of ``source`` carries the same sound over its first ``seconds``
    (a mono recording stored as stereo), and it is not silence. The position is put back to
    the start."""
    try:
        with _open(source) as container:
            stream = container.streams.audio[0]
            resampler = _channels_resampler(stream)
            frames, wanted = [], int(seconds * SAMPLE_RATE)
            for frame in container.decode(stream):
                frames += [_interleaved(out) for out in resampler.resample(frame)]
                if sum(f.shape[1] for f in frames) >= wanted:
                    break
    except (av.FFmpegError, ValueError):
        return False  # the decoder's own errors come when the audio is transcribed
    finally:
        source.seek(0)
    if not frames:
        return False
    heard = np.concatenate(frames, axis=1)[:, :wanted]
    shared = _rms(heard.mean(axis=0))
    return shared > _SILENT and _rms(heard - heard.mean(axis=0)) <= _ALIKE * shared


def _rms(samples: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


_SILENT = 1e-4
_ALIKE = 0.1
"""Channels whose differences are 20 dB below what they share carry the same sound."""


def _channels_resampler(stream: AudioStream) -> av.AudioResampler:
    """To 16 kHz with every channel kept, interleaved: PyAV misreads planar frames of 8 or
    more channels (one plane too many, read past the frame)."""
    return av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=SAMPLE_RATE)


def _interleaved(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    """A packed frame's samples as one row per channel."""
    return cast(Audio, frame.to_ndarray()).reshape(-1, frame.layout.nb_channels).T


def _samples(frame: av.AudioFrame, channel: int | None) -> Audio:
    row = frame.to_ndarray().reshape(-1) if channel is None else _interleaved(frame)[channel]
    return np.ascontiguousarray(row, dtype=np.float32)


def iter_frames(
    source: AudioSource, *, max_seconds: float | None = None, channel: int | None = None
) -> Iterator[Audio]:
    """Decode ``source`` frame by frame: 16 kHz mono float32 arrays of a few thousand samples,
    the channels mixed down, or only ``channel`` (counted from 0).

    Raises a typed :class:`~whisperd.errors.AudioError` for empty input, input with no
    audio stream, undecodable or truncated data, and audio longer than ``max_seconds``.
    """
    max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    decoded = 0
    with _open(source) as container:
        if not container.streams.audio:
            raise NoAudioStreamError("The file has no audio stream.", param="file")
        stream = container.streams.audio[0]
        if channel is None:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        else:
            resampler = _channels_resampler(stream)
        try:
            for frame in container.decode(stream):
                if frame.sample_rate < MIN_SAMPLE_RATE:
                    raise UndecodableAudioError(
                        f"The audio's sample rate is {frame.sample_rate} Hz; the least taken "
                        f"is {MIN_SAMPLE_RATE} Hz.",
                        param="file",
                        code="sample_rate_too_low",
                    )
                # A frame with no timestamp (raw streams) is fine; resampling handles rates.
                for out in resampler.resample(frame):
                    samples = _samples(out, channel)
                    decoded += samples.size
                    if max_samples is not None and decoded > max_samples:
                        raise AudioTooLongError(
                            f"The audio is longer than the limit of {max_seconds:.0f} s; "
                            "split it or raise WHISPERD_MAX_AUDIO_SECONDS.",
                            param="file",
                        )
                    yield samples
            for out in resampler.resample(None):
                samples = _samples(out, channel)
                decoded += samples.size
                yield samples
        except (av.FFmpegError, ValueError) as exc:
            if decoded == 0:
                raise UndecodableAudioError(
                    "The audio stream could not be decoded; the file is damaged or uses "
                    "a codec FFmpeg cannot read.",
                    param="file",
                ) from exc
            raise TruncatedAudioError(
                f"The audio breaks off after {decoded / SAMPLE_RATE:.1f} s (cut or damaged "
                "data); send the complete file.",
                param="file",
            ) from exc
    if decoded == 0:
        raise EmptyAudioError("The file contains no audio samples.", param="file")


def decode(source: AudioSource, *, max_seconds: float | None = None) -> Audio:
    """Decode ``source`` completely to one 16 kHz mono float32 array."""
    frames = list(iter_frames(source, max_seconds=max_seconds))
    return np.concatenate(frames).astype(np.float32, copy=False)


def duration(audio: Audio) -> float:
    """Seconds of audio in a decoded array."""
    return float(audio.shape[0]) / SAMPLE_RATE


def ffmpeg_versions() -> dict[str, str]:
    """The versions of the FFmpeg libraries PyAV was built with."""
    return {name: ".".join(map(str, ver)) for name, ver in av.library_versions.items()}


def test_tone(seconds: float = 1.0, frequency: float = 440.0) -> bytes:
    """A sine tone encoded as WAV (PCM 16-bit, 16 kHz) by FFmpeg itself."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return _encode(0.3 * np.sin(2 * np.pi * frequency * t), "wav", "pcm_s16le")


def encode_flac(samples: Audio) -> bytes:
    """16 kHz mono float samples as FLAC (16-bit; values past full scale are clipped)."""
    return _encode(samples, "flac", "flac")


# Samples converted to 16-bit at a time while encoding (10 s): no second copy of the audio.
_ENCODE_BLOCK = 10 * SAMPLE_RATE


def _encode(samples: npt.NDArray[np.floating[Any]], container_format: str, codec: str) -> bytes:
    """16 kHz mono float samples, 16-bit (clipped at full scale), in ``container_format``."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = cast(AudioStream, container.add_stream(codec, rate=SAMPLE_RATE, layout="mono"))
        for start in range(0, samples.shape[0], _ENCODE_BLOCK):
            block = samples[start : start + _ENCODE_BLOCK]
            pcm = (np.clip(block, -1.0, 1.0) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
