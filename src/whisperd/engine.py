"""The Transcriber: the one entry point for transcription. Faster-whisper models behind their
batching workers (see :mod:`whisperd.batching`), returning our dataclasses."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import numpy as np

from whisperd import audio, chunking, models
from whisperd.audio import SAMPLE_RATE, Audio, AudioSource
from whisperd.batching import BatchedWhisper, Batcher, Owner
from whisperd.chunking import Section, plan_pieces, speech_spans, stretches
from whisperd.errors import (
    AudioError,
    EmptyAudioError,
    InvalidValueError,
    ModelLoadError,
    ModelNotFoundError,
    ServiceUnavailableError,
    UnsupportedTaskError,
    WhisperdError,
    shown,
)
from whisperd.scheduler import Speedometer, Task
from whisperd.settings import Settings
from whisperd.speakers.voices import Voice, voices

logger = logging.getLogger(__name__)

TaskName = Literal["transcribe", "translate"]
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# How often a task's driver looks at its cancel flag and deadline while its streams run.
_POLL_SECONDS = 0.05
# Pieces of one request decoded at once, per window of the batch: enough that the pending calls
# of one kind fill a batch while others are between calls.
PARALLEL = 2
# Whisper tells the language from one 30 s window: detection listens to that much speech.
DETECT_SECONDS = 30.0
TOP_LANGUAGES = 5
T = TypeVar("T")
# In multilingual mode, a stretch of speech shorter than this is too short for Whisper to tell
# its language reliably (one or two words): it takes the language of its neighbour.
MIN_DETECT_SECONDS = 1.0


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
    language: str | None = None
    """The language it was transcribed in, in multilingual mode (else None)."""
    speaker: str | None = None
    """Who said it, once speakers are told apart (else None)."""
    channel: int | None = None
    """The channel it was heard on, when each channel is transcribed on its own."""
    voice: Voice | None = field(default=None, compare=False, repr=False)
    """Embeddings of the voice over the segment's speech, when speakers are to be told apart."""


@dataclass(frozen=True, slots=True)
class TranscriptionInfo:
    language: str
    language_probability: float
    duration: float
    task: TaskName


Item = TranscriptionInfo | Segment
"""What a transcription's task yields: its info first, then its segments in order."""


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
class LanguageDetection:
    """The language spoken (an ISO-639-1 code) with its probability; the most likely
    ``TOP_LANGUAGES`` with theirs, the most likely first; and the seconds of speech heard."""

    language: str
    probability: float
    languages: tuple[tuple[str, float], ...]
    duration: float


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
    multilingual: bool = False
    voices: bool = False
    """Embed the voice of each segment (word timestamps on), to tell speakers apart."""

    @property
    def per_stretch(self) -> bool:
        """Whether the language is detected for each stretch of speech, each transcribed in
        its own: asked for with ``multilingual``, and no ``language`` given."""
        return self.multilingual and self.language is None


PROMPT_CHARS = 16384
"""Whisper reads at most 223 tokens of a prompt (its last ones) and of hotwords (their first
ones), and no token is near this many characters long: text past it cannot change a decode.
It is cut off before it is kept or tokenized (tokenizing a megabyte of prompt held the GIL
for a second, at every window)."""


def clipped(text: str | None, *, keep: Literal["head", "tail"]) -> str | None:
    """``text`` cut to the ``PROMPT_CHARS`` that Whisper can read of it: a prompt's tail,
    hotwords' head."""
    if text is None or len(text) <= PROMPT_CHARS:
        return text
    return text[:PROMPT_CHARS] if keep == "head" else text[-PROMPT_CHARS:]


def temperatures_from(value: float | None) -> tuple[float, ...]:
    """OpenAI's single temperature as a fallback schedule: from ``value`` up to 1.0."""
    if value is None or value <= 0:
        return DEFAULT_TEMPERATURES
    steps = [round(value + 0.2 * i, 2) for i in range(6)]
    return tuple(t for t in steps if t <= 1.0) or (min(value, 1.0),)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A transcription ready to begin: its model, the options checked against it, and the
    duration the audio declares (None when unknown)."""

    model: LoadedModel
    options: TranscribeOptions
    estimate: float | None


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
    batcher: Batcher = field(repr=False)
    # tasks running on it, and when it was last asked for or left by one (time.monotonic)
    users: int = field(default=0, repr=False)
    last_used: float = field(default=0.0, repr=False)


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


# glibc's mallopt() parameter numbers (see mallopt(3))
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks from this size are mapped on their own and unmapped when freed (glibc's largest).
_MMAP_THRESHOLD = 32 << 20
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl has no mallopt)
        return None
    return libc


def reuse_freed_buffers() -> None:
    """Have glibc reuse the engine's freed buffers from one heap while it is busy;
    :func:`release_freed_memory` gives the free pages back when it goes idle.

    CTranslate2 allocates and frees the same buffers in every batch (tiny.en: 4-18 MiB of
    activations, 54 MiB of attention scores a window). Mapped afresh each time, every page
    is faulted in and zeroed again: with blocks of 4 MiB and more mapped (this module's
    former choice) and each thread in its own arena (whose heaps glibc maps and unmaps
    whole), 16 clients cost 6.5 million page faults, 47.5 CPU-s and a 609 MiB peak; with
    one arena and only blocks of 32 MiB and more mapped, 39.5 CPU-s and a 551 MiB peak
    (one heap for every thread: the model's threads must start after this call). What the
    heap keeps between files is given back when the engine is idle, so memory does not creep
    up with every long file. A no-op where ``MALLOC_ARENA_MAX`` or
    ``MALLOC_MMAP_THRESHOLD_`` is set, or without glibc.
    """
    if any(name in os.environ for name in _MALLOC_ENV):
        return
    libc = _glibc()
    if libc is None:
        return
    for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)):
        if not libc.mallopt(param, value):  # pragma: no cover - refused
            logger.debug("mallopt(%d, %d) refused; memory may creep up", param, value)


def release_freed_memory() -> None:
    """Give the free pages of the heap back to the system (the engine is idle)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
    """Device, compute type, batch size, workers (batches run at once) and threads, resolved
    from the settings and the machine."""

    device: str
    compute_type: str
    batch_size: int
    encode_batch: int
    cpu_threads: int
    workers: int
    max_active: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EnginePlan:
        device = settings.device
        if device == "auto":
            device = "cuda" if cuda_device_count() > 0 else "cpu"
        compute = settings.compute_type
        if compute == "auto":
            compute = "float16" if device == "cuda" else "int8"
        threads = settings.cpu_threads or available_cores()
        workers = 1
        if device == "cpu":
            workers = min(threads, settings.cpu_workers or CPU_MAX_WORKERS)
        batch = settings.batch_size or (
            gpu_batch_size() if device == "cuda" else max(CPU_MIN_BATCH, CPU_WINDOWS // workers)
        )
        encode = batch if device == "cuda" else min(batch, CPU_ENCODE_BATCH)
        max_active = settings.max_active or 2 * batch * workers
        return cls(device, compute, batch, encode, threads, workers, max_active)

    @property
    def threads_per_worker(self) -> int:
        """CPU threads of each batch."""
        return max(1, self.cpu_threads // self.workers)


# On CPU, batches side by side on one thread each get more from the cores than one batch on all
# of them: on 2 cores (tiny.en int8, beam 5, bench/workers.py) two workers ran 11 s windows at
# 34.9 audio-s/s in batches of 4, one worker on both threads at 25.4 in batches of 8, and a
# single window took 0.54 s on one thread against 0.72 s on two. So a CPU runs one worker per
# core (up to CPU_MAX_WORKERS; past that the cores are shared among them), with CPU_WINDOWS
# windows in flight shared among the workers (but at least CPU_MIN_BATCH each): the decoder's
# cost per window falls with the batch while each window in it adds about 40 MiB to the peak
# memory: on 2 cores batches of 2 rather than 4 kept 16 clients' peak about 100 MiB lower at
# much the same throughput, for about a tenth more time on a long file (README, "Choices,
# measured"). The encoder's cost per window is flat from 1 (CPU per window 0.50 s at 1, 0.52 s
# at 2) and a second window in its batch adds about 97 MiB to the peak (attention over 1500
# frames): windows are encoded one at a time.
CPU_WINDOWS = 4
CPU_MIN_BATCH = 2
CPU_MAX_WORKERS = 4
CPU_ENCODE_BATCH = 1
# Requests of at most this much audio go first (a short clip never waits in a long file's batch).
SHORT_SECONDS = 30.0
SHORT_PRIORITY = 1
# Live turns' decodes go before everything else (their final decodes first of all).
LIVE_PRIORITY = SHORT_PRIORITY + 1
# Work that goes after every request, a short one included (audio sent live faster than real
# time); the batcher's starvation rule still gives it a turn.
BACKGROUND_PRIORITY = -1
# GPU memory one 30 s window of a large model needs in a batch (encoder and beam states).
_GPU_BYTES_PER_WINDOW = 256 << 20
_GPU_MAX_BATCH = 32


def gpu_batch_size() -> int:
    """Windows per batch on the GPU: what half its free memory holds, from 1 to 32 (an
    out-of-memory error halves it later, see :mod:`whisperd.batching`)."""
    free = _cuda_free_bytes()
    if free is None:
        return 8
    return max(1, min(_GPU_MAX_BATCH, free // 2 // _GPU_BYTES_PER_WINDOW))


def _cuda_free_bytes() -> int | None:
    for name in ("libcudart.so.12", "libcudart.so.13", "libcudart.so"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
    return None


class Transcriber:
    """Loads models once and transcribes through their batching workers.

    Models in memory: the default and preloaded ones (loaded at start) stay; others load when a
    request first names them. At most ``max_loaded_models`` are loaded: room for another is
    made by unloading the least recently used idle one, and one idle for ``model_ttl`` seconds
    is unloaded. A model that a running task uses is never unloaded.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plan = EnginePlan.from_settings(settings)
        self.speed = Speedometer()
        # the models in memory by name, and their users and use times: held briefly
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        # one load or unload at a time (taken before ``_lock``, never while holding it)
        self._load_lock = threading.Lock()
        self._default: LoadedModel | None = None
        self._pinned: set[str] = set()
        self._closing = threading.Event()
        self._expiry: threading.Thread | None = None
        self._tasks: set[Task[Any]] = set()
        self._tasks_lock = threading.Lock()
        self._live = 0
        self._started = False
        self._languages = _languages()

    # --- lifetime ---------------------------------------------------------------------
    def start(self) -> Transcriber:
        """Load the default and preloaded models (each starts its batching workers)."""
        reuse_freed_buffers()
        for spec in (self.settings.model, *self.settings.preload_models):
            loaded = self._load(spec, setting=True)
            self._pinned.add(loaded.name)
            if self._default is None:
                self._default = loaded
        if self.settings.model_ttl > 0:
            self._expiry = threading.Thread(
                target=self._expire, name="whisperd-model-ttl", daemon=True
            )
            self._expiry.start()
        self._started = True
        logger.info(
            "Engine ready: %s on %s/%s, %d batch(es) at once of up to %d window(s), "
            "%d thread(s) each",
            ", ".join(self._models),
            self.plan.device,
            self.plan.compute_type,
            self.plan.workers,
            self.plan.batch_size,
            self.plan.threads_per_worker,
        )
        return self

    def close(self) -> None:
        """Stop every running transcription and the batching workers."""
        self._started = False
        self._closing.set()
        with self._tasks_lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel(ServiceUnavailableError("The engine is shutting down."))
        with self._load_lock:
            for model in self.loaded.values():
                model.batcher.close()
        if self._expiry is not None:
            self._expiry.join()

    def __enter__(self) -> Transcriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def live_session(self) -> Iterator[None]:
        """While open (a live session runs), batches of other work are kept small on every
        model, so that the session's decodes never wait long behind one."""
        with self._lock:
            self._live += 1
        try:
            yield
        finally:
            with self._lock:
                self._live -= 1

    # --- models -----------------------------------------------------------------------
    @property
    def default_model(self) -> LoadedModel:
        if self._default is None:
            raise ServiceUnavailableError("The engine is not running.")
        return self._default

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        """The models in memory by name, least recently loaded first."""
        with self._lock:
            return dict(self._models)

    def catalog(self) -> list[models.ModelStatus]:
        """Every model this server knows by name, and whether it is on this machine."""
        return models.list_models(self.settings.model_cache_dir, self.settings.models_dir)

    def load(self, name: str) -> LoadedModel:
        """The model ``name`` (a catalog name or one of ``models_dir``), loading it once."""
        return self._load(name, setting=False)

    def _load(self, spec: str, *, setting: bool) -> LoadedModel:
        """The model ``spec`` names (for a ``setting``, also a directory's path), loading it
        once (thread-safe); the files of a model loaded under another name are not loaded
        again."""
        with self._load_lock:
            with self._lock:
                loaded = self._models.get(models.canonical_name(spec))
                if loaded is not None:
                    loaded.last_used = time.monotonic()
                    return loaded
            resolve = models.resolve_setting if setting else models.resolve
            resolved = resolve(
                spec,
                self.settings.model_cache_dir,
                models_dir=self.settings.models_dir,
                offline=self.settings.offline,
            )
            with self._lock:
                for loaded in self._models.values():
                    if loaded.path == resolved.path:  # the same files under another name
                        loaded.last_used = time.monotonic()
                        return loaded
                if resolved.name in self._models:
                    msg = (
                        f"Two different models are named {resolved.name!r} ({spec} and "
                        f"{self._models[resolved.name].path}); rename one of the directories."
                    )
                    raise ModelLoadError(msg)
            self._make_room(resolved.name)
            loaded = self._new(resolved)
            with self._lock:
                self._models[loaded.name] = loaded
            logger.info("Loaded model %s in %.2f s", loaded.name, loaded.load_seconds)
            return loaded

    def _new(self, resolved: models.ResolvedModel) -> LoadedModel:
        """Load ``resolved`` into memory behind batching workers of its own."""
        from faster_whisper import WhisperModel

        from whisperd.features import BlockFeatures

        started = time.perf_counter()
        try:
            whisper = WhisperModel(
                str(resolved.path),
                device=self.plan.device,
                compute_type=self.plan.compute_type,
                cpu_threads=self.plan.threads_per_worker,
                num_workers=self.plan.workers,  # a replica for each batching worker
            )
        except (RuntimeError, ValueError, OSError) as exc:
            logger.error("Could not load model %s from %s: %s", resolved.name, resolved.path, exc)
            msg = f"Could not load model {resolved.name!r}: {type(exc).__name__}; see the log."
            raise ModelLoadError(msg) from exc
        batcher = Batcher(
            whisper.model,
            max_batch=self.plan.batch_size,
            max_encode=self.plan.encode_batch,
            workers=self.plan.workers,
            name=resolved.name,
            on_idle=release_freed_memory,
            live=lambda: self._live > 0,
            live_priority=LIVE_PRIORITY,
        )
        sot = whisper.hf_tokenizer.token_to_id("<|startoftranscript|>")
        whisper.model = BatchedWhisper(whisper.model, batcher, sot)
        whisper.feature_extractor = BlockFeatures(**whisper.feat_kwargs)
        return LoadedModel(
            name=resolved.name,
            path=resolved.path,
            source=resolved.source,
            device=self.plan.device,
            compute_type=self.plan.compute_type,
            load_seconds=time.perf_counter() - started,
            multilingual=bool(whisper.model.is_multilingual),
            whisper=whisper,
            batcher=batcher,
            last_used=time.monotonic(),
        )

    def _idle(self, model: LoadedModel) -> bool:
        """Whether ``model`` may be unloaded: no task uses it and no setting keeps it."""
        return model.users == 0 and model.name not in self._pinned

    def _make_room(self, name: str) -> None:
        """Unload the least recently used idle model if ``name`` would be one too many
        (called with ``_load_lock`` held)."""
        limit = self.settings.max_loaded_models
        with self._lock:
            if len(self._models) < limit:
                return
            idle = [m for m in self._models.values() if self._idle(m)]
            if not idle:
                raise ServiceUnavailableError(
                    f"Model {name!r} cannot be loaded now: the {limit} models in memory are in "
                    "use; retry shortly (the server's limit is WHISPERD_MAX_LOADED_MODELS)."
                )
            victim = min(idle, key=lambda m: m.last_used)
            del self._models[victim.name]
        self._unload(victim, f"to make room for {name}")

    def _expire(self) -> None:
        """Unload the models idle for ``model_ttl`` seconds, until the engine closes."""
        ttl = self.settings.model_ttl
        wait = ttl
        while not self._closing.wait(wait):
            with self._load_lock:
                now = time.monotonic()
                with self._lock:
                    idle = [m for m in self._models.values() if self._idle(m)]
                    expired = [m for m in idle if now - m.last_used >= ttl]
                    for model in expired:
                        del self._models[model.name]
                    # next look: when the first idle model reaches its TTL (one that becomes
                    # idle later reaches it more than ``ttl`` from now)
                    wait = min(
                        (m.last_used + ttl - now for m in idle if m.name in self._models),
                        default=ttl,
                    )
                for model in expired:
                    self._unload(model, f"after {ttl:g} s unused")

    @staticmethod
    def _unload(model: LoadedModel, why: str) -> None:
        """Stop the batching worker of ``model``, already out of ``_models``; its memory goes
        with the last reference (called with ``_load_lock`` held)."""
        model.batcher.close()
        logger.info("Unloaded model %s %s", model.name, why)

    def _acquire(self, model: LoadedModel) -> LoadedModel:
        """``model`` marked in use by a task until :meth:`_release` (loaded again if it was
        unloaded since a request looked it up)."""
        while True:
            with self._lock:
                if self._models.get(model.name) is model:
                    model.users += 1
                    model.last_used = time.monotonic()
                    return model
            model = self.load(model.name)

    def _release(self, model: LoadedModel) -> None:
        with self._lock:
            model.users -= 1
            model.last_used = time.monotonic()

    def _lookup(self, name: str | None) -> LoadedModel | models.ModelStatus:
        """The model a request names: the loaded one, or the status of one this server may
        load; ModelNotFoundError for any other name. None or one of OpenAI's names (such as
        ``whisper-1``) is the default."""
        if name is None or models.is_default(name):
            return self.default_model
        with self._lock:
            loaded = self._models.get(models.canonical_name(str(name)))
            if loaded is not None:
                loaded.last_used = time.monotonic()
                return loaded
        if not self.settings.load_on_demand:
            raise ModelNotFoundError(
                f"Model {shown(name)} is not loaded on this server; loaded: "
                f"{', '.join(self.loaded)}."
            )
        return models.loadable(
            str(name),
            self.settings.model_cache_dir,
            models_dir=self.settings.models_dir,
            offline=self.settings.offline,
        )

    def model_for(self, name: str | None) -> LoadedModel:
        """The model a request names (None or ``whisper-1``: the default), loading it once."""
        found = self._lookup(name)
        return found if isinstance(found, LoadedModel) else self.load(found.name)

    def validate(self, options: TranscribeOptions, *, model: str | None = None) -> None:
        """Refuse a model or options the engine cannot honour, without loading anything (for
        work that runs later, such as a queued job)."""
        found = self._lookup(model)
        self._check(found.name, found.multilingual, options)

    # --- transcription ----------------------------------------------------------------
    def check(self, model: LoadedModel, options: TranscribeOptions) -> None:
        """Refuse options the model cannot honour, before any work is done."""
        self._check(model.name, model.multilingual, options)

    def _check(self, name: str, multilingual: bool | None, options: TranscribeOptions) -> None:
        language = options.language
        if language is not None and language not in self._languages:
            raise InvalidValueError(
                f"Unknown language {shown(language)}; use an ISO-639-1 code such as 'en' or 'de'.",
                param="language",
            )
        if multilingual is False:
            if options.task == "translate":
                raise UnsupportedTaskError(
                    f"Model {name} is English-only and cannot translate; use a "
                    "multilingual model such as 'base'.",
                    param="model",
                )
            if language not in (None, "en"):
                raise UnsupportedTaskError(
                    f"Model {name} is English-only; language {shown(language)} needs a "
                    "multilingual model such as 'base'.",
                    param="language",
                )
            if options.per_stretch:
                raise UnsupportedTaskError(
                    f"Model {name} is English-only and cannot tell languages apart; "
                    "multilingual=true needs a multilingual model such as 'base'.",
                    param="multilingual",
                )

    def prepare(
        self,
        options: TranscribeOptions,
        *,
        model: str | None = None,
        source: IO[bytes] | None = None,
    ) -> Prepared:
        """The first step of every transcription: resolve the model (loading it once), check
        the options against it and, given the ``source``, read the duration its container
        declares, refusing audio over the limit before anything is decoded."""
        loaded = self.model_for(model)
        self.check(loaded, options)
        estimate = None
        if source is not None:
            estimate = audio.declared_seconds(source, self.settings.max_audio_seconds)
        return Prepared(loaded, options, estimate)

    def sections(self, source: AudioSource, *, channel: int | None = None) -> Iterator[Section]:
        """``source`` (mixed down, or only ``channel``) decoded as a stream, in sections of
        about ``section_seconds`` cut at pauses (nothing is decoded until the first is asked
        for)."""
        return chunking.split(
            source,
            target_seconds=self.settings.section_seconds,
            max_seconds=self.settings.max_audio_seconds,
            channel=channel,
        )

    def begin(
        self,
        prepared: Prepared,
        sections: Iterator[Section],
        *,
        deadline: float | None = None,
        priority: int = 0,
    ) -> Task[Item]:
        """The second step: decode the first section here (so bad input fails before anything is
        answered), then start the work; the rest is decoded as the engine gets to it."""
        first = next(sections, None)
        if first is None:
            raise EmptyAudioError("The file contains no audio samples.", param="file")
        return self._start(
            prepared, itertools.chain([first], sections), deadline=deadline, priority=priority
        )

    def submit(
        self,
        audio: Audio | Iterable[Section],
        options: TranscribeOptions,
        *,
        model: str | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> Task[Item]:
        """Start transcribing; iterate the task for the info, then the segments as they come.

        ``audio`` is 16 kHz mono float32 samples, or sections of them (see
        :func:`whisperd.chunking.split`), taken one at a time. Each section is cut at pauses into
        pieces that are decoded side by side as streams of the batching engine, and their
        segments come out in order. The last :class:`TranscriptionInfo` seen carries the whole
        duration. ``deadline`` is a :func:`time.monotonic` instant; past it the task stops at
        the next window with :class:`~whisperd.errors.DeadlineExceededError`. A higher
        ``priority`` goes first in every batch (live turns).
        """
        sections = iter([Section(0, 0.0, audio)] if isinstance(audio, np.ndarray) else audio)
        return self._start(
            self.prepare(options, model=model), sections, deadline=deadline, priority=priority
        )

    def _start(
        self,
        prepared: Prepared,
        sections: Iterator[Section],
        *,
        deadline: float | None,
        priority: int,
    ) -> Task[Item]:
        def work(task: Task[Item], owner: Owner, model: LoadedModel) -> None:
            """Start the pieces as streams (as many at once as a batch holds), and hand the
            consumer the info, then the segments in order."""
            run = _Run(
                task,
                owner,
                model,
                sections,
                prepared.options,
                PARALLEL * self.plan.batch_size * self.plan.workers,
            )
            run.run()
            # only a finished transcription says how fast the engine is (not a stopped one)
            self.speed.record(run.duration, owner.busy_seconds)

        return self._launch(prepared.model, work, deadline=deadline, priority=priority)

    def _launch(
        self,
        model: LoadedModel,
        work: Callable[[Task[T], Owner, LoadedModel], None],
        *,
        deadline: float | None,
        priority: int,
    ) -> Task[T]:
        """Run ``work`` on a thread of its own as a new task on ``model``, which stays loaded
        meanwhile; the engine stops the task when it closes."""
        if not self._started:
            raise ServiceUnavailableError("The engine is not running.")
        model = self._acquire(model)
        task: Task[T] = Task(deadline)
        owner = Owner(stopped=task.stopped, priority=priority)
        with self._tasks_lock:
            self._tasks.add(task)
        threading.Thread(
            target=self._drive,
            args=(task, owner, model, work),
            name="whisperd-task",
            daemon=True,
        ).start()
        return task

    def _drive(
        self,
        task: Task[T],
        owner: Owner,
        model: LoadedModel,
        work: Callable[[Task[T], Owner, LoadedModel], None],
    ) -> None:
        """Run one task's ``work``, then end the task, with the work's error if it failed."""
        outcome: BaseException | None = None
        try:
            work(task, owner, model)
        except BaseException as exc:
            if not isinstance(exc, WhisperdError):
                logger.exception("An engine task failed")
            outcome = exc
        finally:
            task.busy_seconds = owner.busy_seconds
            with self._tasks_lock:
                self._tasks.discard(task)
            self._release(model)  # before the consumer hears of the end: the model is free
            task.finish(outcome)

    # --- language detection -----------------------------------------------------------
    def detector(self, name: str | None) -> LoadedModel:
        """The model a request names (None or ``whisper-1``: the default) for language
        detection, loading it once; an English-only model is refused."""
        found = self._lookup(name)
        # refused before loading where the catalog knows (a directory's model, once loaded)
        if found.multilingual is not False and not isinstance(found, LoadedModel):
            found = self.load(found.name)
        if not isinstance(found, LoadedModel) or not found.multilingual:
            raise UnsupportedTaskError(
                f"Model {found.name} is English-only and cannot detect a language; use a "
                "multilingual model such as 'base'.",
                param="model",
            )
        return found

    def detect(
        self,
        model: LoadedModel,
        source: Audio | AudioSource,
        *,
        deadline: float | None = None,
    ) -> Task[LanguageDetection]:
        """Start detecting the language spoken in ``source`` (samples, or a file to decode) with
        ``model`` (see :meth:`detector`); the task yields one :class:`LanguageDetection`.

        Whisper listens to the first ``DETECT_SECONDS`` of speech, found by the voice activity
        detector, so leading silence, music or noise is skipped; the audio is decoded only as
        far as that speech goes (at most ``max_audio_seconds``). Audio without speech fails
        the task with a 400 (``no_speech``) rather than guessing a language.
        """

        def work(task: Task[LanguageDetection], owner: Owner, loaded: LoadedModel) -> None:
            with contextlib.closing(_frames_of(source)) as frames:
                speech = chunking.leading_speech(
                    _until_stopped(frames, task),
                    DETECT_SECONDS,
                    max_seconds=self.settings.max_audio_seconds,
                )
            if speech.size == 0:
                raise AudioError(
                    "No speech found in the audio, so no language to detect.",
                    param="file",
                    code="no_speech",
                )
            with loaded.batcher.stream(owner):
                language, probability, ranked = loaded.whisper.detect_language(audio=speech)
            task.put(
                LanguageDetection(
                    language=language,
                    probability=float(probability),
                    languages=tuple((code, float(p)) for code, p in ranked[:TOP_LANGUAGES]),
                    duration=audio.duration(speech),
                )
            )

        return self._launch(model, work, deadline=deadline, priority=SHORT_PRIORITY)

    def stream(
        self,
        audio: Audio | Iterable[Section],
        options: TranscribeOptions,
        *,
        model: str | None = None,
        deadline: float | None = None,
        on_task: Callable[[Task[Item]], None] | None = None,
    ) -> Iterator[Item]:
        """Like :meth:`submit`, as a blocking iterator that cancels the task when closed."""
        task = self.submit(audio, options, model=model, deadline=deadline)
        if on_task is not None:
            on_task(task)
        return items(task)

    def transcribe(
        self,
        audio: Audio | Iterable[Section],
        options: TranscribeOptions | None = None,
        *,
        model: str | None = None,
        deadline: float | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcription:
        """Transcribe ``audio`` (samples or sections) completely."""
        return collect(
            self.stream(audio, options or TranscribeOptions(), model=model, deadline=deadline),
            on_segment=on_segment,
        )


def _frames_of(source: Audio | AudioSource) -> Generator[Audio, None, None]:
    """``source`` as runs of samples, decoded as they are asked for (closing stops decoding)."""
    if isinstance(source, np.ndarray):
        yield source
    else:
        yield from audio.iter_frames(source)


def _until_stopped(pieces: Iterable[Audio], task: Task[Any]) -> Iterator[Audio]:
    """``pieces``, until ``task`` is stopped (cancelled, past its deadline): then its reason."""
    for piece in pieces:
        reason = task.stopped()
        if reason is not None:
            raise reason
        yield piece


def items(task: Task[Item]) -> Iterator[Item]:
    """The items of ``task``, as a blocking iterator that stops the task when closed."""
    try:
        yield from task
    finally:
        task.cancel()


def collect(
    items: Iterable[Item],
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
        # only a source that yields no section at all gets here; the decoder refuses empty audio
        raise EmptyAudioError("The file contains no audio samples.", param="file")
    return Transcription.from_parts(info, tuple(segments))


class _Run:
    """One task: its pieces decoded as streams of the batching engine, as many at once as a
    batch holds, and its items handed on in order (the info first, then each piece's segments).

    A multilingual model with no language given detects it on the first piece, then decodes the
    rest in that language. In multilingual mode (:attr:`TranscribeOptions.per_stretch`) the
    language of each stretch of speech is detected first, pieces end where it changes, each is
    decoded in its own language and its segments say which; the task's language is the one
    spoken longest. A failing stream stops the others and fails the task.
    """

    def __init__(
        self,
        task: Task[Item],
        owner: Owner,
        model: LoadedModel,
        sections: Iterator[Section],
        options: TranscribeOptions,
        parallel: int,
    ) -> None:
        self.task = task
        self.owner = owner
        self.model = model
        self.sections = sections
        self.options = options
        self.parallel = max(1, parallel)
        self.language = options.language or (None if model.multilingual else "en")
        self.probability = 1.0
        self.duration = 0.0
        self.events: queue.SimpleQueue[tuple[Section, str, Any]] = queue.SimpleQueue()
        self._buffers: dict[int, list[Any]] = {}
        self._finished: set[int] = set()
        self._next_piece = 0
        self._next_id = 0
        self._info: TranscriptionInfo | None = None
        # multilingual mode: the language each piece is decoded in, the highest probability
        # each language was detected with, and the segments handed on
        self._piece_languages: dict[int, str] = {}
        self._detected: dict[str, float] = {}
        self._labelled: list[Segment] = []

    def run(self) -> None:
        pieces = self._pieces()
        active: set[int] = set()
        started = 0
        exhausted = False
        while True:
            reason = self.task.stopped()
            if reason is not None:
                raise reason
            while (
                not exhausted
                and len(active) < self.parallel
                and (self.language or self.options.per_stretch or not started)
            ):
                planned = next(pieces, None)
                if planned is None:
                    exhausted = True
                    break
                piece, language, speech = planned
                active.add(piece.index)
                self._buffers[piece.index] = []
                started += 1
                threading.Thread(
                    target=self._stream,
                    args=(piece, language or self.language, speech),
                    daemon=True,
                ).start()
            if exhausted and not active:
                break
            try:
                piece, kind, value = self.events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if kind == "error":
                self.task.cancel()  # the other streams leave at their next window
                raise value
            if kind == "info":
                self._piece_languages[piece.index] = value.language
                if self.language is None:
                    self.language, self.probability = value.language, value.language_probability
            elif kind == "segment":
                self._buffers[piece.index].append((value, piece))
            elif kind == "done":
                active.discard(piece.index)
                self._finished.add(piece.index)
            self._flush()
        if self.language is None:  # no speech at all: nothing was detected
            self.language, self.probability = "en", 0.0
        self._flush()
        longest = spoken_longest(self._labelled)
        if longest is not None:
            self.language, self.probability = longest, self._detected.get(longest, 1.0)
        if self._info is not None and self._info != self._new_info():
            self.task.put(self._new_info())

    def _pieces(self) -> Iterator[tuple[Section, str | None, list[tuple[float, float]]]]:
        """Each piece, with the language to decode it in (None: the task's) and its runs of
        speech (in seconds of the piece)."""
        index = 0
        for section in self.sections:
            short = index == 0 and section.offset == 0 and section.duration <= SHORT_SECONDS
            if short and self.owner.priority != BACKGROUND_PRIORITY:
                self.owner.priority = max(self.owner.priority, SHORT_PRIORITY)
            self.duration = section.offset + section.duration
            spans = speech_spans(section.samples)
            for start, end, language in self._plan(section.samples, spans):
                piece = Section(
                    index, section.offset + start / SAMPLE_RATE, section.samples[start:end]
                )
                speech = [
                    ((max(a, start) - start) / SAMPLE_RATE, (min(b, end) - start) / SAMPLE_RATE)
                    for a, b in spans
                    if a < end and b > start
                ]
                yield piece, language, speech
                index += 1

    def _plan(
        self, samples: Audio, spans: list[tuple[int, int]]
    ) -> list[tuple[int, int, str | None]]:
        """Where a section's pieces start and end and, in multilingual mode, their languages."""
        labels = self._languages(samples, spans) if self.options.per_stretch else None
        return plan_pieces(samples, spans, labels, drop_silence=self.options.vad_filter)

    def _languages(self, samples: Audio, spans: list[tuple[int, int]]) -> list[str]:
        """The language of each span: that of the stretch of speech it is in, detected on the
        stretch's own audio (the stretches side by side through the batcher). A stretch
        shorter than ``MIN_DETECT_SECONDS`` takes the language of the one before it (the
        first: of the first detected), unless all are that short."""
        joined = stretches(spans)
        shortest = int(MIN_DETECT_SECONDS * SAMPLE_RATE)
        asked = [i for i, g in enumerate(joined) if g[-1][1] - g[0][0] >= shortest]
        asked = asked or list(range(len(joined)))
        if not asked:
            return []

        def detect(i: int) -> tuple[str, float]:
            start, end = joined[i][0][0], joined[i][-1][1]
            with self.model.batcher.stream(self.owner):
                found = self.model.whisper.detect_language(audio=samples[start:end])
            return str(found[0]), float(found[1])

        with ThreadPoolExecutor(max_workers=min(self.parallel, len(asked))) as pool:
            detected = dict(zip(asked, pool.map(detect, asked), strict=True))
        for language, probability in detected.values():
            self._detected[language] = max(probability, self._detected.get(language, 0.0))
        labels: list[str] = []
        language = detected[asked[0]][0]
        for i, group in enumerate(joined):
            language = detected[i][0] if i in detected else language
            labels += [language] * len(group)
        if self.language is None:
            self.language, self.probability = labels[0], self._detected[labels[0]]
        return labels

    def _stream(
        self, piece: Section, language: str | None, speech: list[tuple[float, float]]
    ) -> None:
        """Decode one piece sequentially (in this thread, its calls batched with others')."""
        options = self.options
        try:
            with self.model.batcher.stream(self.owner):
                segments, info = self.model.whisper.transcribe(
                    piece.samples,
                    language=language,
                    task=options.task,
                    beam_size=options.beam_size,
                    temperature=list(options.temperature),
                    initial_prompt=options.initial_prompt,
                    hotwords=options.hotwords,
                    word_timestamps=options.word_timestamps,
                    vad_filter=False,  # silence is left out when the pieces are cut
                )
                self.events.put((piece, "info", info))
                decoded = list(segments) if options.voices else []
                if not options.voices:
                    for segment in segments:
                        self.events.put((piece, "segment", (segment, None)))
            # the voices are embedded beside the batcher, not inside one of its windows
            if decoded:
                found = voices(decoded, piece.samples, piece.offset, speech)
                for segment, voice in zip(decoded, found, strict=True):
                    self.events.put((piece, "segment", (segment, voice)))
        except BaseException as exc:
            self.events.put((piece, "error", exc))
        else:
            self.events.put((piece, "done", None))

    def _new_info(self) -> TranscriptionInfo:
        assert self.language is not None
        return TranscriptionInfo(
            self.language, float(self.probability), self.duration, self.options.task
        )

    def _flush(self) -> None:
        """Hand on what is ready, in order: the info once the language is known, then the
        segments of each piece once those of the pieces before it are all out."""
        if self._info is None:
            if self.language is None:
                return
            self._info = self._new_info()
            self.task.put(self._info)
        while self._next_piece in self._buffers:
            buffered = self._buffers[self._next_piece]
            for (raw, voice), piece in buffered:
                language = self._piece_languages[piece.index] if self.options.per_stretch else None
                segment = _segment(raw, self._next_id, piece, language, voice)
                if language is not None:
                    self._labelled.append(segment)
                self.task.put(segment)
                self._next_id += 1
            buffered.clear()
            if self._next_piece not in self._finished:
                return
            del self._buffers[self._next_piece]
            self._next_piece += 1


def spoken_longest(segments: Iterable[Segment]) -> str | None:
    """The language the ``segments`` that carry one are longest in, together (None if none
    carries one)."""
    seconds: dict[str, float] = {}
    for segment in segments:
        if segment.language is not None:
            seconds[segment.language] = (
                seconds.get(segment.language, 0.0) + segment.end - segment.start
            )
    return max(seconds, key=seconds.__getitem__) if seconds else None


def _segment(
    s: Any, index: int, piece: Section, language: str | None, voice: Voice | None = None
) -> Segment:
    """faster-whisper's segment as ours, with times shifted to the whole file and kept inside
    the piece (the library can place a last segment past the end of the audio:
    https://github.com/SYSTRAN/faster-whisper/issues/1334).
    """
    end_of_piece = piece.offset + piece.duration

    def shift(t: Any) -> float:
        return min(float(t) + piece.offset, end_of_piece)

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
        language=language,
        voice=voice,
    )
