"""The Transcriber: faster-whisper models behind the fair scheduler, returning our dataclasses."""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from whisperd import models
from whisperd.audio import Audio
from whisperd.chunking import Chunk
from whisperd.errors import (
    EmptyAudioError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedTaskError,
    ValidationError,
)
from whisperd.scheduler import Speedometer, Stepper, Task
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

TaskName = Literal["transcribe", "translate"]
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Batched decoding only pays off for audio of several windows.
_BATCH_MIN_SECONDS = 60.0
# How much of the text before a chunk prompts it (Whisper's prompt holds ~224 tokens).
_PROMPT_CHARS = 600
# Silero VAD settings: a lower threshold than the library's 0.5 keeps quiet speech, while
# two seconds of silence are still skipped (where Whisper would otherwise invent text).
VAD_PARAMETERS: dict[str, Any] = {
    "threshold": 0.35,
    "min_silence_duration_ms": 2000,
    "speech_pad_ms": 400,
}


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionInfo:
    language: str
    language_probability: float
    duration: float
    task: TaskName


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    language: str
    language_probability: float
    duration: float
    task: TaskName
    segments: tuple[Segment, ...]

    @classmethod
    def from_parts(cls, info: TranscriptionInfo, segments: tuple[Segment, ...]) -> Transcription:
        text = "".join(s.text for s in segments).strip()
        return cls(
            text, info.language, info.language_probability, info.duration, info.task, segments
        )


@dataclass(frozen=True, slots=True)
class TranscribeOptions:
    """How to transcribe; the defaults are faster-whisper's, with our VAD choice."""

    language: str | None = None
    task: TaskName = "transcribe"
    beam_size: int = 5
    temperature: tuple[float, ...] = DEFAULT_TEMPERATURES
    initial_prompt: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = False

    @classmethod
    def asked(
        cls,
        settings: Settings,
        *,
        language: str | None = None,
        task: TaskName = "transcribe",
        prompt: str | None = None,
        temperature: float = 0.0,
        hotwords: str | None = None,
        vad_filter: bool | None = None,
        beam_size: int | None = None,
        word_timestamps: bool = False,
    ) -> TranscribeOptions:
        """The options a request asks for in OpenAI's terms, with the server's defaults where
        it left one unset."""
        return cls(
            language=(language or "").strip().lower() or None,
            task=task,
            beam_size=beam_size or settings.beam_size,
            temperature=temperatures_from(temperature),
            initial_prompt=prompt or None,
            hotwords=hotwords or None,
            word_timestamps=word_timestamps,
            vad_filter=settings.vad_filter if vad_filter is None else vad_filter,
        )


def temperatures_from(value: float | None) -> tuple[float, ...]:
    """OpenAI's single temperature as a fallback schedule: from ``value`` up to 1.0."""
    if value is None or value <= 0:
        return DEFAULT_TEMPERATURES
    steps = [round(value + 0.2 * i, 2) for i in range(6)]
    return tuple(t for t in steps if t <= 1.0) or (min(value, 1.0),)


@dataclass(slots=True)
class LoadedModel:
    """A model in memory, with what ``/check-model-in-memory/`` reports."""

    name: str
    path: Path
    source: str
    device: str
    compute_type: str
    load_seconds: float
    multilingual: bool
    whisper: Any = field(repr=False)
    batched: Any = field(repr=False)


def _languages() -> frozenset[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def cuda_device_count() -> int:
    """GPUs CTranslate2 can use (0 without CUDA)."""
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:
        return 0


# Large blocks are mmapped (and unmapped when freed) from this size; see below.
_MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def return_large_buffers_to_the_os() -> None:
    """Have glibc give blocks of 4 MiB and more back to the system when they are freed.

    By default glibc raises its mmap threshold each time it frees a large mmapped block (up
    to 32 MiB), so afterwards decoded pieces, VAD batches and features of several MiB come
    from the heap, which fragments and is seldom returned: a process's resident memory creeps
    up with every long file (measured: +250 MiB over a one-minute file after an hour of
    audio, +90 MiB with this). Setting the threshold also turns the raising off. Smaller
    thresholds slow tiny.en down (its per-window buffers are 1-3 MiB). A no-op where
    ``MALLOC_MMAP_THRESHOLD_`` is set, or without glibc (see mallopt(3)).
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl has no mallopt)
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD):  # pragma: no cover - refused
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused; memory may creep up")


def available_cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible
    return cores


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """Device, compute type, slots and threads, resolved from the settings and the machine."""

    device: str
    compute_type: str
    slots: int
    cpu_threads: int
    max_active: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EnginePlan:
        device = settings.device
        if device == "auto":
            device = "cuda" if cuda_device_count() > 0 else "cpu"
        compute = settings.compute_type
        if compute == "auto":
            compute = "float16" if device == "cuda" else "int8"
        cores = available_cores()
        slots = settings.slots or (1 if device == "cuda" else min(cores, 4))
        threads = settings.cpu_threads or max(1, cores // slots)
        max_active = settings.max_active or 4 * slots
        return cls(device, compute, slots, threads, max_active)


class Transcriber:
    """Loads models once and transcribes through the fair scheduler.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plan = EnginePlan.from_settings(settings)
        self.speed = Speedometer()
        self._models: dict[str, LoadedModel] = {}
        self._load_lock = threading.Lock()
        self._stepper: Stepper | None = None
        self._languages = _languages()
        self._batch_size = settings.batch_size

    # --- lifetime ---------------------------------------------------------------------
    def start(self) -> Transcriber:
        """Load the default and preloaded models and start the slot threads."""
        return_large_buffers_to_the_os()
        for name in (self.settings.model, *self.settings.preload_models):
            self.load(name)
        self._stepper = Stepper(self.plan.slots)
        logger.info(
            "Engine ready: %s on %s/%s, %d slot(s) x %d thread(s)",
            ", ".join(self._models),
            self.plan.device,
            self.plan.compute_type,
            self.plan.slots,
            self.plan.cpu_threads,
        )
        return self

    def close(self) -> None:
        if self._stepper is not None:
            self._stepper.close()
            self._stepper = None

    def __enter__(self) -> Transcriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models -----------------------------------------------------------------------
    @property
    def default_model(self) -> LoadedModel:
        return self.load(self.settings.model)

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def _key(self, name: str) -> str:
        return models.canonical_name(name)

    def load(self, name: str) -> LoadedModel:
        """The model ``name``, loading it once (thread-safe)."""
        key = self._key(name)
        with self._load_lock:
            if key in self._models:
                return self._models[key]
            resolved = models.resolve(
                name, self.settings.model_cache_dir, offline=self.settings.offline
            )
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            started = time.perf_counter()
            try:
                whisper = WhisperModel(
                    str(resolved.path),
                    device=self.plan.device,
                    compute_type=self.plan.compute_type,
                    cpu_threads=self.plan.cpu_threads,
                    num_workers=self.plan.slots,
                )
            except (RuntimeError, ValueError, OSError) as exc:
                msg = f"Could not load model {name!r} from {resolved.path}: {exc}"
                raise ModelLoadError(msg) from exc
            loaded = LoadedModel(
                name=resolved.name,
                path=resolved.path,
                source=resolved.source,
                device=self.plan.device,
                compute_type=self.plan.compute_type,
                load_seconds=time.perf_counter() - started,
                multilingual=bool(whisper.model.is_multilingual),
                whisper=whisper,
                batched=BatchedInferencePipeline(whisper),
            )
            self._models[key] = loaded
            logger.info("Loaded model %s in %.2f s", loaded.name, loaded.load_seconds)
            return loaded

    def model_for(self, name: str | None) -> LoadedModel:
        """The model a request names: None or ``whisper-1`` is the default."""
        if name is None or name in ("", "whisper-1", self.settings.model):
            return self.default_model
        key = self._key(name)
        if key in self._models:
            return self._models[key]
        if not self.settings.load_on_demand:
            raise ModelNotFoundError(
                f"Model {name!r} is not loaded on this server; loaded: {', '.join(self._models)}."
            )
        if not models.is_available(name, self.settings.model_cache_dir) and (
            self.settings.offline or key not in models.CATALOG
        ):
            raise ModelNotFoundError(
                f"Model {name!r} is not available here; loaded: {', '.join(self._models)}."
            )
        return self.load(name)

    # --- transcription ----------------------------------------------------------------
    def check(self, model: LoadedModel, options: TranscribeOptions) -> None:
        """Refuse options the model cannot honour, before any work is done."""
        language = options.language
        if language is not None and language not in self._languages:
            raise ValidationError(
                f"Unknown language {language!r}; use an ISO-639-1 code such as 'en' or 'de'.",
                param="language",
            )
        if not model.multilingual:
            if options.task == "translate":
                raise UnsupportedTaskError(
                    f"Model {model.name} is English-only and cannot translate; use a "
                    "multilingual model such as 'base'.",
                    param="model",
                )
            if language not in (None, "en"):
                raise UnsupportedTaskError(
                    f"Model {model.name} is English-only; language {language!r} needs a "
                    "multilingual model such as 'base'.",
                    param="language",
                )

    def _steps(
        self, model: LoadedModel, chunks: Iterator[Chunk], options: TranscribeOptions
    ) -> Iterator[TranscriptionInfo | Segment]:
        """Transcribe chunk after chunk; each ``next()`` is at most one 30-second window (one
        batch of them with ``batch_size``).

        Taking the next chunk decodes it, so a long file is never in memory whole. Segment ids
        run on across chunks, times are shifted to the whole file, the language found in the
        first chunk holds for the rest, and each chunk is prompted with the end of the text
        before it, as Whisper conditions on previous text within a chunk.
        """
        language = options.language or (None if model.multilingual else "en")
        prompt = options.initial_prompt or None
        next_id = 0
        duration = 0.0
        first: TranscriptionInfo | None = None
        for chunk in chunks:
            # the batched pipeline groups the speech the VAD finds into windows: no VAD, no batch
            batched = (
                self._batch_size > 1 and options.vad_filter and chunk.duration > _BATCH_MIN_SECONDS
            )
            kwargs: dict[str, Any] = {"batch_size": self._batch_size} if batched else {}
            runner = model.batched if batched else model.whisper
            segments, info = runner.transcribe(
                chunk.samples,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                temperature=list(options.temperature),
                initial_prompt=prompt,
                hotwords=options.hotwords or None,
                word_timestamps=options.word_timestamps,
                vad_filter=options.vad_filter,
                vad_parameters=VAD_PARAMETERS if options.vad_filter else None,
                **kwargs,
            )
            duration = chunk.offset + chunk.duration
            if first is None:
                language = info.language
                first = TranscriptionInfo(
                    info.language, float(info.language_probability), duration, options.task
                )
                yield first
            texts = []
            for s in segments:
                yield _segment(s, next_id, chunk)
                next_id += 1
                texts.append(s.text)
            if texts:
                prompt = "".join(texts)[-_PROMPT_CHARS:]
        if first is not None and duration != first.duration:
            yield TranscriptionInfo(
                first.language, first.language_probability, duration, options.task
            )

    def submit(
        self,
        audio: Audio | Iterable[Chunk],
        options: TranscribeOptions,
        *,
        model: str | None = None,
        deadline: float | None = None,
    ) -> Task[TranscriptionInfo | Segment]:
        """Start transcribing; iterate the task for the info, then the segments as they come.

        ``audio`` is 16 kHz mono float32 samples, or chunks of them (see
        :func:`whisperd.chunking.split`), taken one at a time. The last
        :class:`TranscriptionInfo` seen carries the whole duration. ``deadline`` is a
        :func:`time.monotonic` instant; past it the task stops at the next window with
        :class:`~whisperd.errors.DeadlineExceededError`.
        """
        if self._stepper is None:
            msg = "The engine is not started"
            raise RuntimeError(msg)
        loaded = self.model_for(model)
        self.check(loaded, options)
        chunks = iter([Chunk(0, 0.0, audio)] if isinstance(audio, np.ndarray) else audio)
        return self._stepper.submit(self._steps(loaded, chunks, options), deadline=deadline)

    def stream(
        self,
        audio: Audio | Iterable[Chunk],
        options: TranscribeOptions,
        *,
        model: str | None = None,
        deadline: float | None = None,
        on_task: Callable[[Task[TranscriptionInfo | Segment]], None] | None = None,
    ) -> Iterator[TranscriptionInfo | Segment]:
        """Like :meth:`submit`, as a blocking iterator that cancels the task when closed."""
        task = self.submit(audio, options, model=model, deadline=deadline)
        if on_task is not None:
            on_task(task)
        seconds = 0.0
        try:
            for item in task:
                if isinstance(item, TranscriptionInfo):
                    seconds = item.duration
                yield item
        finally:
            task.cancel()
        # only a finished transcription says how fast the engine is (not a cancelled one)
        self.speed.record(seconds, task.busy_seconds)

    def transcribe(
        self,
        audio: Audio | Iterable[Chunk],
        options: TranscribeOptions | None = None,
        *,
        model: str | None = None,
        deadline: float | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcription:
        """Transcribe ``audio`` (samples or chunks) completely."""
        return collect(
            self.stream(audio, options or TranscribeOptions(), model=model, deadline=deadline),
            on_segment=on_segment,
        )


def collect(
    items: Iterable[TranscriptionInfo | Segment],
    *,
    on_segment: Callable[[Segment], None] | None = None,
) -> Transcription:
    """Gather the items of a transcription into one :class:`Transcription`."""
    info: TranscriptionInfo | None = None
    segments: list[Segment] = []
    for item in items:
        if isinstance(item, TranscriptionInfo):
            info = item
        else:
            segments.append(item)
            if on_segment is not None:
                on_segment(item)
    if info is None:
        # only a source that yields no chunk at all gets here; the decoder refuses empty audio
        raise EmptyAudioError("The file contains no audio samples.", param="file")
    return Transcription.from_parts(info, tuple(segments))


def _segment(s: Any, index: int, chunk: Chunk) -> Segment:
    """faster-whisper's segment as ours, with times shifted to the whole file and kept inside
    the chunk (the library can place a last segment past the end of the audio:
    https://github.com/SYSTRAN/faster-whisper/issues/1334).
    """
    end_of_chunk = chunk.offset + chunk.duration

    def shift(t: Any) -> float:
        return min(float(t) + chunk.offset, end_of_chunk)

    words = None
    if s.words is not None:
        words = tuple(
            Word(shift(w.start), shift(w.end), w.word, float(w.probability)) for w in s.words
        )
    return Segment(
        id=index,
        seek=int(s.seek),
        start=shift(s.start),
        end=shift(s.end),
        text=s.text,
        tokens=tuple(s.tokens),
        temperature=float(s.temperature or 0.0),
        avg_logprob=float(s.avg_logprob),
        compression_ratio=float(s.compression_ratio),
        no_speech_prob=float(s.no_speech_prob),
        words=words,
    )
