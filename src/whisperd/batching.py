"""The batching engine's core: the workers of each loaded model run every stream's CTranslate2
calls in batches.

A *stream* is one sequential Whisper decode (faster-whisper's own loop: seek to the last
timestamp, previous-text prompt, temperature fallback, no-speech and compression checks, word
alignment) running on a thread of its own. The model it decodes with is a
:class:`BatchedWhisper`, which stands in for CTranslate2's ``Whisper``: every call a stream makes
(encode a window, detect its language, generate its tokens, align its words) waits in the
:class:`Batcher`, whose workers each run the waiting calls that can share a CTranslate2 call as
one call of up to ``max_batch`` windows: on a GPU one worker, on a CPU one per core (up to
four), each batch on a thread (and model replica) of its own. So each stream decodes exactly
as it would alone, and many streams cost little more than one.

Which calls share a batch: calls of one kind whose options CTranslate2 needs equal (beam size,
sampling temperature, lengths, ...). Generate prompts must also put ``<|startoftranscript|>`` at
one position: prompts that carry previous text are trimmed (oldest tokens first) to the shortest
in the batch, and those without previous text are batched apart.

Fairness: the batch is led by the owner (a request, a job chunk, a live turn) of the highest
priority (live turns, then short requests), served longest ago, and filled round-robin across the
owners of that priority, one call each per round, so a request with many streams cannot crowd out
another, and a short clip never waits in a batch of a long file's dense windows. An owner left
unserved for ``STARVING_BATCHES`` batches leads the next one, whatever its priority. A call
already running can't be interrupted, so while live sessions are open other work is batched
small and, of several workers, leaves one free for them. A stopped owner's calls fail at once
(its streams leave at their next window); a failing call fails only the calls in its batch; on
the GPU an out-of-memory error halves the batch and runs it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisperd.errors import ServiceUnavailableError, WhisperdError

logger = logging.getLogger(__name__)

# How long the worker waits for streams that are between calls, so a batch fills.
LINGER_SECONDS = 0.05
# After this many batches without a turn, an owner leads the next batch whatever its priority.
STARVING_BATCHES = 8
# While live sessions are open, a batch led by other work holds at most this share of a full
# batch, so that live decodes wait behind small ones where no worker is free for them.
LIVE_SHARE = 4

Stopped = Callable[[], WhisperdError | None]


def _never() -> WhisperdError | None:
    return None


@dataclass(eq=False)
class Owner:
    """Whose calls these are: one request, job chunk or live turn; its streams share its turn.

    ``stopped`` says why its work should stop (cancelled, past its deadline), or None.
    ``busy_seconds`` adds up its share of the engine's time: each batch it was in split among
    the batch's calls and the workers that run batches side by side.
    """

    stopped: Stopped = _never
    priority: int = 0
    busy_seconds: float = 0.0
    served: int = field(default=-1, repr=False)
    since: int = field(default=-1, repr=False)


@dataclass(eq=False)
class _Call:
    kind: str
    key: Any
    owner: Owner
    payload: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Encoded:
    """One window's encoder output, held for the stream that made it (a stand-in for the
    ``StorageView`` faster-whisper passes back to the model)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


_local = threading.local()


class Batcher:
    """Runs the CTranslate2 calls of every stream of one model in batches, ``workers`` batches
    at once (each on a thread of its own and a replica of the model's own)."""

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int,
        max_encode: int | None = None,
        workers: int = 1,
        linger: float = LINGER_SECONDS,
        name: str = "model",
        on_idle: Callable[[], None] | None = None,
        live: Callable[[], bool] = lambda: False,
        live_priority: int = 0,
    ) -> None:
        self.model = model
        # whether live sessions are open, and the priority of their decodes
        self.live = live
        self.live_priority = live_priority
        # called on the worker's thread once each time the last stream has left
        self.on_idle = on_idle
        self._ran = False
        self.max_batch = max(1, max_batch)
        # encoder batches are costly in memory (attention over 1500 frames a window) and, on a
        # CPU, no cheaper per window past two: they may be held smaller than the others
        self.max_encode = max(1, max_encode or max_batch)
        self.linger = linger
        self._pending: list[_Call] = []
        self._streams = 0
        self._running = 0  # calls in the batches being run
        self._others = 0  # workers running a batch of work other than live decodes
        self._taken = 0
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"whisperd-batch-{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    # --- what streams call ------------------------------------------------------------
    @contextmanager
    def stream(self, owner: Owner) -> Iterator[None]:
        """Run the body as one stream of ``owner``: its calls from this thread are batched."""
        previous = getattr(_local, "owner", None)
        _local.owner = owner
        with self._cv:
            self._streams += 1
        try:
            yield
        finally:
            _local.owner = previous
            with self._cv:
                self._streams -= 1
                self._cv.notify_all()

    def call(self, kind: str, key: Hashable, payload: Any) -> Any:
        """Queue one call of this thread's stream and wait for its result."""
        owner: Owner = getattr(_local, "owner", None) or Owner()
        reason = owner.stopped()
        if reason is not None:
            raise reason
        item = _Call(kind, key, owner, payload)
        with self._cv:
            if self._closed:
                raise ServiceUnavailableError("The engine is shutting down.")
            self._pending.append(item)
            self._cv.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    @property
    def pending(self) -> int:
        """Calls waiting for a batch."""
        return len(self._pending)

    def close(self) -> None:
        """Fail what waits and stop the workers after their current batches."""
        with self._cv:
            self._closed = True
            for item in self._pending:
                self._fail(item, ServiceUnavailableError("The engine is shutting down."))
            self._pending.clear()
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # --- the worker -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._ready() and not self._closed:
                    idle = not self._streams and not self._running
                    if self._ran and idle and self.on_idle is not None:
                        self._ran = False
                        self._cv.release()
                        try:
                            self.on_idle()
                        except Exception:
                            logger.exception("The idle hook of the batcher failed")
                        finally:
                            self._cv.acquire()
                        continue
                    self._cv.wait()
                if self._closed:
                    return
                # streams between two calls join the batch if they come within the linger
                until = time.monotonic() + self.linger
                while (
                    len(self._pending) < min(self.max_batch, self._streams - self._running)
                    and (left := until - time.monotonic()) > 0
                ):
                    self._cv.wait(left)
                batch = self._take()
                self._ran = self._ran or bool(batch)
                self._running += len(batch)
                other = bool(batch) and batch[0].owner.priority < self.live_priority
                self._others += other
            if batch:
                try:
                    self._run(batch)
                finally:
                    with self._cv:
                        self._running -= len(batch)
                        self._others -= other
                        self._cv.notify_all()

    def _held(self, owner: Owner) -> bool:
        """Whether ``owner``'s calls wait for now: while live sessions are open, work other than
        theirs leaves one worker of several free for them (called with the lock held)."""
        return (
            owner.priority < self.live_priority
            and self._others >= max(1, len(self._threads) - 1)
            and self.live()
        )

    def _ready(self) -> bool:
        """Whether a pending call may be taken (or failed: its owner stopped) now."""
        return any(
            not self._held(item.owner) or item.owner.stopped() is not None for item in self._pending
        )

    def _take(self) -> list[_Call]:
        """The next batch, removed from the pending calls (called with the lock held)."""
        live: list[_Call] = []
        for item in self._pending:
            reason = item.owner.stopped()
            if reason is None:
                live.append(item)
            else:
                self._fail(item, reason)
        self._pending = live
        # each owner's calls in arrival order; the starving first, then by priority, then the
        # longest unserved; the batch takes owners of the lead's priority only
        queues: dict[Owner, list[_Call]] = {}
        for item in live:
            if not self._held(item.owner):
                queues.setdefault(item.owner, []).append(item)
        if not queues:
            return []
        self._taken += 1

        def rank(owner: Owner) -> tuple[bool, int, int]:
            if owner.since < 0:
                owner.since = self._taken
            starving = self._taken - max(owner.served, owner.since) > STARVING_BATCHES
            return (not starving, -owner.priority, owner.served)

        owners = sorted(queues, key=rank)
        owners = [o for o in owners if o.priority == owners[0].priority]
        lead = queues[owners[0]][0]
        group = (lead.kind, lead.key)
        limit = self.max_encode if lead.kind == "encode" else self.max_batch
        if owners[0].priority < self.live_priority and self.live():
            limit = min(limit, max(1, self.max_batch // LIVE_SHARE))
        batch: list[_Call] = []
        while len(batch) < limit:
            took = False
            for owner in owners:
                mine = queues[owner]
                for i, item in enumerate(mine):
                    if (item.kind, item.key) == group:
                        batch.append(mine.pop(i))
                        took = True
                        break
                if len(batch) == limit:
                    break
            if not took:
                break
        chosen = {id(item) for item in batch}
        self._pending = [item for item in live if id(item) not in chosen]
        for owner in dict.fromkeys(item.owner for item in batch):
            owner.served = self._taken
        return batch

    def _run(self, batch: list[_Call]) -> None:
        started = time.perf_counter()
        try:
            results = self._execute(batch)
        except Exception as exc:
            if _out_of_memory(exc) and len(batch) > 1:
                self.max_batch = max(1, len(batch) // 2)
                self.max_encode = min(self.max_encode, self.max_batch)
                logger.warning(
                    "Out of memory at batch %d; batches are now %d", len(batch), self.max_batch
                )
                half = len(batch) // 2
                self._run(batch[:half])
                self._run(batch[half:])
                return
            logger.exception("A batch of %d %s call(s) failed", len(batch), batch[0].kind)
            for item in batch:
                self._fail(item, exc)
            return
        share = (time.perf_counter() - started) / (len(batch) * len(self._threads))
        for item, result in zip(batch, results, strict=True):
            item.owner.busy_seconds += share
            item.result = result
            item.done.set()

    def _execute(self, batch: list[_Call]) -> list[Any]:
        kind = batch[0].kind
        if kind == "encode":
            features = np.concatenate([item.payload for item in batch])
            encoded = np.asarray(self.model.encode(_storage(features), to_cpu=True))
            return [Encoded(encoded[i : i + 1]) for i in range(len(batch))]
        if kind == "detect_language":
            return [[r] for r in self.model.detect_language(_stack(item.payload for item in batch))]
        if kind == "generate":
            windows = _stack(item.payload[0] for item in batch)
            sot_index = min(item.payload[2] for item in batch)
            prompts = align_prompts([item.payload[1:] for item in batch], sot_index)
            kwargs = dict(batch[0].key[0])
            return [[r] for r in self.model.generate(windows, prompts, **kwargs)]
        if kind == "align":
            start_sequence, median_filter_width = batch[0].key
            text_tokens: list[list[int]] = []
            frames: list[int] = []
            arrays: list[np.ndarray] = []
            sizes = []
            for item in batch:
                encoded, tokens, num_frames = item.payload
                text_tokens.extend(tokens)
                frames.extend(num_frames)
                sizes.append(len(tokens))
                rows = encoded.array
                arrays.append(rows if rows.shape[0] == len(tokens) else rows.repeat(len(tokens), 0))
            results = self.model.align(
                _storage(np.concatenate(arrays)),
                list(start_sequence),
                text_tokens,
                frames,
                median_filter_width=median_filter_width,
            )
            out: list[Any] = []
            at = 0
            for size in sizes:
                out.append(results[at : at + size])
                at += size
            return out
        msg = f"unknown call kind {kind!r}"
        raise AssertionError(msg)

    @staticmethod
    def _fail(item: _Call, error: BaseException) -> None:
        item.error = error
        item.done.set()


def _storage(array: np.ndarray) -> Any:
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))


def _stack(encoded: Iterator[Encoded] | Sequence[Encoded]) -> Any:
    return _storage(np.concatenate([e.array for e in encoded]))


def _out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def align_prompts(prompts: Sequence[tuple[list[int], int]], sot_index: int) -> list[list[int]]:
    """Trim the previous-text tokens of each prompt (given with the position of its
    ``<|startoftranscript|>``), oldest first after ``<|startofprev|>``, so that the start token
    stands at ``sot_index`` in all of them, as CTranslate2 requires of one batch."""
    aligned = []
    for prompt, position in prompts:
        extra = position - sot_index
        aligned.append(prompt if extra <= 0 else prompt[:1] + prompt[1 + extra :])
    return aligned


class BatchedWhisper:
    """Stands in for a CTranslate2 ``Whisper`` model inside faster-whisper: the calls a stream
    makes go through the batcher; everything else is the model's own."""

    def __init__(self, model: Any, batcher: Batcher, sot: int) -> None:
        self._model = model
        self._batcher = batcher
        self._sot = sot

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode(self, features: Any, to_cpu: bool = False) -> Encoded:
        return self._batcher.call("encode", "encode", np.asarray(features))  # type: ignore[no-any-return]

    def detect_language(self, encoded: Encoded) -> Any:
        return self._batcher.call("detect_language", "detect_language", encoded)

    def generate(self, encoded: Encoded, prompts: list[list[int]], **kwargs: Any) -> Any:
        (prompt,) = prompts
        sot = prompt.index(self._sot)
        options = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items()))
        # one batch: the same options and number of tokens after <|startoftranscript|>; prompts
        # with previous text (trimmed to the shortest at run time) apart from those without
        key = (options, len(prompt) - sot, sot > 0)
        return self._batcher.call("generate", key, (encoded, prompt, sot))

    def align(
        self,
        encoded: Encoded,
        start_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: int | list[int],
        median_filter_width: int = 7,
    ) -> Any:
        frames = num_frames if isinstance(num_frames, list) else [num_frames] * len(text_tokens)
        key = (tuple(start_sequence), median_filter_width)
        return self._batcher.call("align", key, (encoded, text_tokens, frames))


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value
