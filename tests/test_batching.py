"""The batcher with a fake CTranslate2 model: grouping, fairness, stopping, failures, prompts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from whisperd import errors
from whisperd.batching import (
    STARVING_BATCHES,
    BatchedWhisper,
    Batcher,
    Encoded,
    Owner,
    align_prompts,
)
from whisperd.scheduler import Task

from support import poll

SOT, PREV = 50257, 50361


class FakeWhisper:
    """Records each batch; a window's "encoding" is its features plus one, and a generated
    result names the window it was for. ``gate`` holds the first call until it is set."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, dict[str, Any]]] = []
        self.encoded: list[list[float]] = []
        self.prompts: list[list[list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.inside = 0  # calls running at once
        self._lock = threading.Lock()
        self.fail_if: Any = None
        self.max_ok = 1000
        self.is_multilingual = False

    def _record(self, kind: str, size: int, kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.inside += 1
        self.entered.set()
        try:
            assert self.gate.wait(10)
        finally:
            with self._lock:
                self.inside -= 1
        if size > self.max_ok:
            raise RuntimeError("CUDA failed with error out of memory")
        self.batches.append((kind, size, kwargs))

    def encode(self, features: Any, to_cpu: bool = False) -> np.ndarray:
        array = np.asarray(features)
        self._record("encode", array.shape[0], {})
        self.encoded.append([float(row.flat[0]) for row in array])
        if self.fail_if is not None and self.fail_if(array):
            raise RuntimeError("the model failed on this window")
        return array + 1

    def generate(self, encoded: Any, prompts: list[list[int]], **kwargs: Any) -> list[Any]:
        array = np.asarray(encoded)
        self._record("generate", array.shape[0], kwargs)
        positions = {p.index(SOT) for p in prompts}
        if len(positions) != 1:
            raise ValueError("<|startoftranscript|> must be at the same position")
        self.prompts.append(prompts)
        return [float(row.flat[0]) for row in array]


@pytest.fixture
def fake() -> FakeWhisper:
    return FakeWhisper()


@pytest.fixture
def batcher(fake: FakeWhisper) -> Iterator[Batcher]:
    batcher = Batcher(fake, max_batch=4, linger=0.0)
    yield batcher
    fake.gate.set()
    batcher.close()


class Call(threading.Thread):
    """One stream making one call from its own thread."""

    def __init__(self, batcher: Batcher, owner: Owner, kind: str, *args: Any, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.batcher, self.owner, self.kind, self.args, self.kw = batcher, owner, kind, args, kw
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        model = BatchedWhisper(self.batcher.model, self.batcher, SOT)
        try:
            with self.batcher.stream(self.owner):
                self.result = getattr(model, self.kind)(*self.args, **self.kw)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(10)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def window(value: float) -> np.ndarray:
    return np.full((1, 2, 3), value, dtype=np.float32)


def encoded(value: float) -> Encoded:
    return Encoded(window(value))


def plug(batcher: Batcher, fake: FakeWhisper) -> Call:
    """Hold the worker inside a first batch, so the calls queued next are all pending."""
    fake.gate.clear()
    fake.entered.clear()
    call = Call(batcher, Owner(), "encode", window(0))
    assert fake.entered.wait(10)
    return call


def queued(batcher: Batcher, calls: list[Call], count: int) -> list[Call]:
    poll(lambda: batcher.pending == count, timeout=10)
    return calls


def test_a_lone_call_runs_at_once(batcher: Batcher, fake: FakeWhisper) -> None:
    result = Call(batcher, Owner(), "encode", window(1)).outcome()
    assert isinstance(result, Encoded)
    assert float(result.array.flat[0]) == 2.0
    assert fake.batches == [("encode", 1, {})]


def test_waiting_calls_of_one_kind_share_a_batch_and_get_their_own_results(
    batcher: Batcher, fake: FakeWhisper
) -> None:
    first = plug(batcher, fake)
    owner = Owner()
    calls = queued(batcher, [Call(batcher, owner, "encode", window(v)) for v in (1, 2, 3)], 3)
    fake.gate.set()
    first.outcome()
    assert [float(c.outcome().array.flat[0]) for c in calls] == [2.0, 3.0, 4.0]
    assert fake.batches[1] == ("encode", 3, {})
    assert owner.busy_seconds > 0


def test_generate_calls_are_grouped_by_their_options(batcher: Batcher, fake: FakeWhisper) -> None:
    first = plug(batcher, fake)
    owner = Owner()
    prompt = [SOT]
    calls = [
        Call(batcher, owner, "generate", encoded(v), [prompt], beam_size=beam)
        for v, beam in ((1, 5), (2, 1), (3, 5), (4, 1), (5, 5))
    ]
    queued(batcher, calls, 5)
    fake.gate.set()
    first.outcome()
    assert [c.outcome() for c in calls] == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    generated = [(size, kw["beam_size"]) for kind, size, kw in fake.batches if kind == "generate"]
    assert sorted(generated) == [(2, 1), (3, 5)]


def test_calls_of_other_kinds_wait_for_their_own_batch(batcher: Batcher, fake: FakeWhisper) -> None:
    first = plug(batcher, fake)
    owner = Owner()
    calls = [
        Call(batcher, owner, "encode", window(1)),
        Call(batcher, owner, "generate", encoded(2), [[SOT]], beam_size=1),
        Call(batcher, owner, "encode", window(3)),
    ]
    queued(batcher, calls, 3)
    fake.gate.set()
    first.outcome()
    for call in calls:
        call.outcome()
    assert [(kind, size) for kind, size, _ in fake.batches[1:]] == [("encode", 2), ("generate", 1)]


def test_batches_are_filled_round_robin_across_owners(batcher: Batcher, fake: FakeWhisper) -> None:
    """A request with six streams and one with a single stream: the single one is in the next
    batch, and the many streams take the rest of its places, not all of them."""
    first = plug(batcher, fake)
    many, one = Owner(), Owner()
    calls = [Call(batcher, many, "encode", window(10 + i)) for i in range(6)]
    queued(batcher, calls, 6)
    lone = Call(batcher, one, "encode", window(99))
    queued(batcher, [lone], 7)
    fake.gate.set()
    first.outcome()
    assert float(lone.outcome().array.flat[0]) == 100.0
    for call in calls:
        call.outcome()
    assert [size for _, size, _ in fake.batches[1:]] == [4, 3]
    # the lone stream went in the first of the two batches
    assert fake.encoded[1] == [10.0, 99.0, 11.0, 12.0]


def test_short_requests_are_batched_apart_from_long_ones(
    batcher: Batcher, fake: FakeWhisper
) -> None:
    first = plug(batcher, fake)
    long, short = Owner(), Owner(priority=1)
    calls = [Call(batcher, long, "encode", window(10 + i)) for i in range(3)]
    queued(batcher, calls, 3)
    calls += [Call(batcher, short, "encode", window(90 + i)) for i in range(2)]
    queued(batcher, calls, 5)
    fake.gate.set()
    first.outcome()
    for call in calls:
        call.outcome()
    assert fake.encoded[1:] == [[90.0, 91.0], [10.0, 11.0, 12.0]]


def test_an_owner_left_waiting_too_long_leads_whatever_its_priority(fake: FakeWhisper) -> None:
    """A steady flow of higher-priority work cannot starve a long request."""
    batcher = Batcher(fake, max_batch=1, linger=0.0)
    try:
        first = plug(batcher, fake)
        low, high = Owner(), Owner(priority=1)
        waiting = Call(batcher, low, "encode", window(1))
        calls = queued(batcher, [waiting], 1)
        calls += [Call(batcher, high, "encode", window(2)) for _ in range(STARVING_BATCHES + 3)]
        queued(batcher, calls, STARVING_BATCHES + 4)
        fake.gate.set()
        first.outcome()
        for call in calls:
            call.outcome()
        order = [values[0] for values in fake.encoded[1:]]
        assert order.index(1.0) <= STARVING_BATCHES + 1
        assert order[0] == 2.0
    finally:
        batcher.close()


def test_encoder_batches_may_be_held_smaller(fake: FakeWhisper) -> None:
    batcher = Batcher(fake, max_batch=4, max_encode=2, linger=0.0)
    try:
        first = plug(batcher, fake)
        owner = Owner()
        calls = [Call(batcher, owner, "encode", window(v)) for v in range(1, 5)]
        calls += [
            Call(batcher, owner, "generate", encoded(v), [[SOT]], beam_size=1) for v in (5, 6, 7)
        ]
        queued(batcher, calls, 7)
        fake.gate.set()
        first.outcome()
        for call in calls:
            call.outcome()
        assert [(kind, size) for kind, size, _ in fake.batches[1:]] == [
            ("encode", 2),
            ("encode", 2),
            ("generate", 3),
        ]
    finally:
        batcher.close()


def test_the_owner_served_longest_ago_leads_the_next_batch() -> None:
    """With one place per batch, two owners' calls alternate, and a higher priority goes first."""
    fake = FakeWhisper()
    batcher = Batcher(fake, max_batch=1, linger=0.0)
    order: list[str] = []
    original = fake.encode

    def encode(features: Any, to_cpu: bool = False) -> np.ndarray:
        order.append(
            {1.0: "a", 2.0: "b", 3.0: "live"}.get(float(np.asarray(features).flat[0]), "-")
        )
        return original(features)

    fake.encode = encode  # type: ignore[method-assign]
    try:
        first = plug(batcher, fake)
        a, b, live = Owner(), Owner(), Owner(priority=1)
        calls = [Call(batcher, a, "encode", window(1)) for _ in range(3)]
        queued(batcher, calls, 3)
        calls += [Call(batcher, b, "encode", window(2)) for _ in range(3)]
        queued(batcher, calls, 6)
        calls.append(Call(batcher, live, "encode", window(3)))
        queued(batcher, calls, 7)
        fake.gate.set()
        first.outcome()
        for call in calls:
            call.outcome()
        assert order[1:] == ["live", "a", "b", "a", "b", "a", "b"]
    finally:
        batcher.close()


def test_a_cancelled_owner_leaves_at_its_next_call(batcher: Batcher, fake: FakeWhisper) -> None:
    first = plug(batcher, fake)
    task: Task[object] = Task(deadline=None)
    stopped, other = Owner(stopped=task.stopped), Owner()
    gone = [Call(batcher, stopped, "encode", window(1)) for _ in range(2)]
    kept = Call(batcher, other, "encode", window(2))
    queued(batcher, [*gone, kept], 3)
    task.cancel()
    fake.gate.set()
    first.outcome()
    for call in gone:
        with pytest.raises(errors.WorkCancelledError):
            call.outcome()
    assert float(kept.outcome().array.flat[0]) == 3.0
    assert [size for _, size, _ in fake.batches[1:]] == [1]
    with pytest.raises(errors.WorkCancelledError):
        Call(batcher, stopped, "encode", window(1)).outcome()


def test_an_owner_past_its_deadline_stops_mid_way(batcher: Batcher, fake: FakeWhisper) -> None:
    task: Task[object] = Task(deadline=time.monotonic() + 3)
    owner = Owner(stopped=task.stopped)
    Call(batcher, owner, "encode", window(1)).outcome()  # in time
    poll(lambda: task.stopped() is not None, timeout=10)
    with pytest.raises(errors.DeadlineExceededError):
        Call(batcher, owner, "encode", window(1)).outcome()


def test_a_failing_batch_fails_only_its_own_calls(batcher: Batcher, fake: FakeWhisper) -> None:
    fake.fail_if = lambda array: bool((array == 7).any())
    first = plug(batcher, fake)
    bad = [Call(batcher, Owner(), "encode", window(v)) for v in (6, 7)]
    queued(batcher, bad, 2)
    good = Call(batcher, Owner(), "generate", encoded(1), [[SOT]], beam_size=1)
    queued(batcher, [*bad, good], 3)
    fake.gate.set()
    first.outcome()
    for call in bad:
        with pytest.raises(RuntimeError, match="failed on this window"):
            call.outcome()
    assert good.outcome() == [1.0]
    # the worker goes on after a failure
    assert float(Call(batcher, Owner(), "encode", window(1)).outcome().array.flat[0]) == 2.0


def test_out_of_memory_halves_the_batch_and_loses_no_call(
    batcher: Batcher, fake: FakeWhisper
) -> None:
    fake.max_ok = 1
    first = plug(batcher, fake)
    calls = [Call(batcher, Owner(), "encode", window(v)) for v in (1, 2, 3, 4)]
    queued(batcher, calls, 4)
    fake.gate.set()
    first.outcome()
    assert [float(c.outcome().array.flat[0]) for c in calls] == [2.0, 3.0, 4.0, 5.0]
    assert batcher.max_batch == 1


def test_prompts_with_previous_text_are_trimmed_to_a_common_start(
    batcher: Batcher, fake: FakeWhisper
) -> None:
    first = plug(batcher, fake)
    long_prompt = [PREV, 1, 2, 3, 4, 5, SOT]
    short_prompt = [PREV, 8, 9, SOT]
    fresh = [SOT]
    calls = [
        Call(batcher, Owner(), "generate", encoded(v), [prompt], beam_size=1)
        for v, prompt in ((1, long_prompt), (2, short_prompt), (3, fresh))
    ]
    queued(batcher, calls, 3)
    fake.gate.set()
    first.outcome()
    assert [c.outcome() for c in calls] == [[1.0], [2.0], [3.0]]
    # those with previous text in one batch, aligned by dropping the oldest tokens; the one
    # without previous text in a batch of its own
    assert sorted(fake.prompts, key=len) == [[fresh], [[PREV, 4, 5, SOT], short_prompt]]


def test_align_prompts_keeps_the_newest_previous_tokens() -> None:
    prompts = [([PREV, 1, 2, 3, SOT, 7], 4), ([PREV, 9, SOT, 7], 2)]
    assert align_prompts(prompts, 2) == [[PREV, 3, SOT, 7], [PREV, 9, SOT, 7]]


def test_close_fails_waiting_calls(fake: FakeWhisper) -> None:
    batcher = Batcher(fake, max_batch=4, linger=0.0)
    first = plug(batcher, fake)
    waiting = Call(batcher, Owner(), "encode", window(1))
    queued(batcher, [waiting], 1)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(errors.ServiceUnavailableError):
        waiting.outcome()
    fake.gate.set()
    first.outcome()
    closer.join(10)
    with pytest.raises(errors.ServiceUnavailableError):
        Call(batcher, Owner(), "encode", window(1)).outcome()


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_run_batches_side_by_side(fake: FakeWhisper, workers: int) -> None:
    """Each worker runs a batch of its own: with two, a second batch starts while the first
    still runs, and each owner is charged its share of the engine's time."""
    batcher = Batcher(fake, max_batch=1, workers=workers, linger=0.0)
    try:
        first = plug(batcher, fake)
        owner = Owner()
        second = Call(batcher, owner, "encode", window(1))
        if workers == 2:
            poll(lambda: fake.inside == 2, timeout=10)
        else:
            poll(lambda: batcher.pending == 1, timeout=10)
            assert fake.inside == 1
        fake.gate.set()
        first.outcome()
        np.testing.assert_array_equal(second.outcome().array, window(2))
        assert [size for _, size, _ in fake.batches] == [1, 1]
        assert owner.busy_seconds > 0
    finally:
        fake.gate.set()
        batcher.close()


def test_while_live_sessions_are_open_other_work_leaves_a_worker_free(fake: FakeWhisper) -> None:
    live = threading.Event()
    live.set()
    batcher = Batcher(fake, max_batch=4, workers=2, linger=0.0, live=live.is_set, live_priority=2)
    try:
        first = plug(batcher, fake)  # a file's call holds one worker
        other = Call(batcher, Owner(), "encode", window(1))
        poll(lambda: batcher.pending == 1, timeout=10)
        assert fake.inside == 1  # the second file call waits...
        turn = Call(batcher, Owner(priority=2), "encode", window(2))
        poll(lambda: fake.inside == 2, timeout=10)  # ...and a live turn's runs beside it
        assert batcher.pending == 1
        fake.gate.set()
        for call, value in ((first, 1), (other, 2), (turn, 3)):
            np.testing.assert_array_equal(call.outcome().array, window(value))
    finally:
        fake.gate.set()
        batcher.close()


def test_the_idle_hook_runs_once_when_the_last_stream_has_left(fake: FakeWhisper) -> None:
    """The engine gives freed memory back when idle: once after work, not while streams run."""
    idled = threading.Event()
    calls: list[int] = []

    def on_idle() -> None:
        calls.append(batcher.pending)
        idled.set()

    batcher = Batcher(fake, max_batch=4, linger=0.0, on_idle=on_idle)
    try:
        first = plug(batcher, fake)
        assert not idled.is_set()
        fake.gate.set()
        first.outcome()
        assert idled.wait(10)
        Call(batcher, Owner(), "encode", window(1)).outcome()
        poll(lambda: len(calls) == 2, timeout=10)
        assert calls == [0, 0]
    finally:
        batcher.close()


def test_while_live_sessions_are_open_other_work_is_batched_small(fake: FakeWhisper) -> None:
    live = threading.Event()
    batcher = Batcher(fake, max_batch=8, linger=0.0, live=live.is_set, live_priority=2)
    try:
        for open_sessions, sizes in ((False, [8]), (True, [2, 2, 2, 2])):
            live.set() if open_sessions else live.clear()
            fake.batches.clear()
            first = plug(batcher, fake)
            calls = [Call(batcher, Owner(), "encode", window(v)) for v in range(1, 9)]
            queued(batcher, calls, 8)
            fake.gate.set()
            first.outcome()
            for call in calls:
                call.outcome()
            assert [size for _, size, _ in fake.batches[1:]] == sizes
        # a live decode's own batch is not held small
        fake.batches.clear()
        first = plug(batcher, fake)
        turns = [Call(batcher, Owner(priority=2), "encode", window(v)) for v in range(1, 9)]
        queued(batcher, turns, 8)
        fake.gate.set()
        first.outcome()
        for call in turns:
            call.outcome()
        assert [size for _, size, _ in fake.batches[1:]] == [8]
    finally:
        batcher.close()
