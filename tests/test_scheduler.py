"""The fair stepper (with fake step generators, no model) and admission control."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from whisperd import errors
from whisperd.scheduler import Admission, Speedometer, Stepper

from support import poll

Log = list[tuple[str, object]]


def steps(
    name: str,
    count: int,
    log: Log,
    gate: threading.Event | None = None,
    started: threading.Event | None = None,
) -> Iterator[int]:
    """``count`` steps that record themselves; the first sets ``started``, waits for ``gate``."""
    try:
        for index in range(count):
            if index == 0 and started is not None:
                started.set()
            if index == 0 and gate is not None:
                assert gate.wait(timeout=10)
            log.append((name, index))
            yield index
        log.append((name, "end"))
    finally:
        log.append((name, "closed"))


def forever(log: Log, name: str = "forever") -> Iterator[int]:
    index = 0
    try:
        while True:
            index += 1
            yield index
    finally:
        log.append((name, "closed"))


@pytest.fixture
def stepper() -> Iterator[Stepper]:
    stepper = Stepper(1)
    yield stepper
    stepper.close()


# --- Stepper ----------------------------------------------------------------------------


def test_items_arrive_in_order(stepper: Stepper) -> None:
    log: Log = []
    task = stepper.submit(steps("a", 5, log))
    assert list(task) == [0, 1, 2, 3, 4]
    assert task.finished
    assert log[-2:] == [("a", "end"), ("a", "closed")]


def test_short_task_finishes_long_before_a_long_one_on_one_slot(stepper: Stepper) -> None:
    log: Log = []
    gate = threading.Event()
    long = stepper.submit(steps("long", 50, log, gate))  # holds the only slot at its first step
    short = stepper.submit(steps("short", 2, log))
    gate.set()
    assert list(short) == [0, 1]
    assert list(long) == list(range(50))
    order = [entry for entry in log if entry[1] != "closed"]
    short_done = order.index(("short", "end"))
    long_steps_before = sum(1 for name, _ in order[:short_done] if name == "long")
    # round-robin: the short task waits for one step of the long task per step of its own
    assert long_steps_before <= 3
    assert order[-1] == ("long", "end")


def test_tasks_interleave_round_robin(stepper: Stepper) -> None:
    log: Log = []
    gate = threading.Event()
    tasks = [stepper.submit(steps("a", 4, log, gate))]
    tasks += [stepper.submit(steps(name, 4, log)) for name in ("b", "c")]
    gate.set()
    for task in tasks:
        list(task)
    names = [name for name, what in log if isinstance(what, int)]
    assert names == ["a", "b", "c"] * 4


def test_slots_run_tasks_in_parallel() -> None:
    barrier = threading.Barrier(2, timeout=10)

    def meets_the_other() -> Iterator[str]:
        barrier.wait()  # only returns if both tasks are in a step at the same time
        yield "met"

    stepper = Stepper(2)
    try:
        first, second = stepper.submit(meets_the_other()), stepper.submit(meets_the_other())
        assert list(first) == ["met"] and list(second) == ["met"]
    finally:
        stepper.close()


def test_cancel_stops_the_task_and_closes_its_steps(stepper: Stepper) -> None:
    log: Log = []
    task = stepper.submit(forever(log))
    items = iter(task)
    assert [next(items) for _ in range(3)] == [1, 2, 3]
    task.cancel()
    with pytest.raises(errors.CancelledError) as info:
        for _ in items:
            pass
    assert info.value.status_code == 499
    poll(
        lambda: ("forever", "closed") in log,
        timeout=10,
        interval=0.005,
        what="the steps to be closed",
    )
    assert task.finished
    # the slot is free again
    assert list(stepper.submit(steps("next", 2, []))) == [0, 1]


def test_cancel_with_a_reason(stepper: Stepper) -> None:
    task = stepper.submit(forever([]))
    task.cancel(errors.ServiceUnavailableError("draining"))
    task.cancel()  # the first reason wins
    with pytest.raises(errors.ServiceUnavailableError, match="draining"):
        list(task)


def test_deadline_in_the_past_runs_no_step(stepper: Stepper) -> None:
    log: Log = []
    task = stepper.submit(steps("late", 3, log), deadline=time.monotonic() - 1)
    with pytest.raises(errors.DeadlineExceededError) as info:
        list(task)
    assert info.value.status_code == 504
    assert [entry for entry in log if entry[1] != "closed"] == []


def test_deadline_stops_a_running_task(stepper: Stepper) -> None:
    task = stepper.submit(forever([]), deadline=time.monotonic() + 0.05)
    started = time.monotonic()
    received = 0
    with pytest.raises(errors.DeadlineExceededError):
        for _ in task:
            received += 1
    assert received > 0
    assert time.monotonic() - started < 5


def test_a_failing_step_reaches_the_consumer_and_the_slot_survives(stepper: Stepper) -> None:
    def typed() -> Iterator[int]:
        yield 1
        raise errors.UnsupportedTaskError("no translation here")

    def untyped() -> Iterator[int]:
        yield 1
        raise RuntimeError("engine bug")

    with pytest.raises(errors.UnsupportedTaskError):
        list(stepper.submit(typed()))
    with pytest.raises(RuntimeError, match="engine bug"):
        list(stepper.submit(untyped()))
    assert list(stepper.submit(steps("after", 2, []))) == [0, 1]


def close_in_background(stepper: Stepper) -> threading.Thread:
    """Start ``stepper.close()`` in a thread; return once it has begun (new work refused)."""
    closer = threading.Thread(target=stepper.close)
    closer.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stepper.submit(iter(()))
        except errors.ServiceUnavailableError:
            return closer
    pytest.fail("close() did not begin within 10 s")


def test_close_refuses_new_work_and_fails_queued_tasks() -> None:
    stepper = Stepper(1)
    gate, started = threading.Event(), threading.Event()
    running = stepper.submit(steps("running", 2, [], gate, started))
    assert started.wait(timeout=10)  # the only slot is busy with "running"
    queued = stepper.submit(forever([]))
    closer = close_in_background(stepper)
    gate.set()
    with pytest.raises(errors.ServiceUnavailableError):
        list(queued)
    closer.join(timeout=30)
    assert not closer.is_alive()
    with pytest.raises(errors.ServiceUnavailableError, match="shutting down"):
        stepper.submit(forever([]))
    assert running.finished


def test_close_of_an_idle_stepper_returns_at_once() -> None:
    stepper = Stepper(4)
    started = time.monotonic()
    stepper.close()
    assert time.monotonic() - started < 5


def test_close_stops_the_task_in_a_slot_after_its_current_step() -> None:
    stepper = Stepper(1)
    gate, started = threading.Event(), threading.Event()
    long = stepper.submit(steps("long", 500, [], gate, started))
    assert started.wait(timeout=10)  # "long" is in the slot, not in the queue
    closer = close_in_background(stepper)
    gate.set()
    closer.join(timeout=30)
    received: list[int] = []
    with pytest.raises(errors.ServiceUnavailableError):
        received.extend(long)
    assert len(received) < 500


def test_speedometer_averages_audio_per_busy_second() -> None:
    speed = Speedometer(initial=10.0)
    for _ in range(50):
        speed.record(20.0, 1.0)
    assert speed.speed == pytest.approx(20.0, rel=0.01)
    speed.record(0.0, 1.0)
    speed.record(5.0, 0.0)
    assert speed.speed == pytest.approx(20.0, rel=0.01)


# --- Admission --------------------------------------------------------------------------


def admission(max_active: int, max_queue: int) -> Admission:
    return Admission(max_active=max_active, max_queue=max_queue, slots=1, speed=Speedometer(10.0))


class Holder:
    """A request that holds its place until released."""

    def __init__(self, gate: Admission, name: str, entered: list[str], seconds: float = 10.0):
        self.gate, self.name, self.entered, self.seconds = gate, name, entered, seconds
        self.release = anyio.Event()
        self.error: BaseException | None = None

    async def __call__(self) -> None:
        try:
            async with self.gate.enter(self.seconds):
                self.entered.append(self.name)
                await self.release.wait()
        except errors.WhisperdError as exc:
            self.error = exc


@pytest.mark.anyio
async def test_admits_then_queues_then_refuses_with_retry_after() -> None:
    gate = admission(max_active=2, max_queue=2)
    entered: list[str] = []
    holders = [Holder(gate, f"r{i}", entered) for i in range(4)]
    async with anyio.create_task_group() as group:
        for holder in holders:
            group.start_soon(holder)
            await wait_all_tasks_blocked()
        assert entered == ["r0", "r1"]
        assert (gate.active, gate.waiting) == (2, 2)

        with pytest.raises(errors.RateLimitError) as info:
            async with gate.enter(10.0):
                pytest.fail("admitted past the queue")
        assert info.value.status_code == 429
        assert isinstance(info.value.retry_after, int) and info.value.retry_after >= 1
        assert (gate.active, gate.waiting) == (2, 2)  # the refusal took nothing

        for holder in holders:
            holder.release.set()
    assert entered == ["r0", "r1", "r2", "r3"]
    assert (gate.active, gate.waiting) == (0, 0)


@pytest.mark.anyio
async def test_waiters_are_promoted_first_come_first_served() -> None:
    gate = admission(max_active=1, max_queue=5)
    entered: list[str] = []
    holders = [Holder(gate, name, entered) for name in ("first", "w1", "w2", "w3")]
    async with anyio.create_task_group() as group:
        for holder in holders:
            group.start_soon(holder)
            await wait_all_tasks_blocked()
        for index, holder in enumerate(holders):
            assert entered == [h.name for h in holders[: index + 1]]
            assert gate.active == 1
            holder.release.set()
            await wait_all_tasks_blocked()
    assert entered == ["first", "w1", "w2", "w3"]


@pytest.mark.anyio
async def test_a_new_request_does_not_jump_the_queue() -> None:
    gate = admission(max_active=1, max_queue=5)
    entered: list[str] = []
    first, waiter = Holder(gate, "first", entered), Holder(gate, "waiter", entered)
    late = Holder(gate, "late", entered)
    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await wait_all_tasks_blocked()
        group.start_soon(waiter)
        await wait_all_tasks_blocked()
        first.release.set()
        group.start_soon(late)  # arrives in the same instant a place frees up
        await wait_all_tasks_blocked()
        assert entered == ["first", "waiter"]
        waiter.release.set()
        await wait_all_tasks_blocked()
        late.release.set()
    assert entered == ["first", "waiter", "late"]


@pytest.mark.anyio
async def test_retry_after_grows_with_the_queued_audio() -> None:
    short, long = admission(1, 1), admission(1, 1)
    async with anyio.create_task_group() as group:
        holders = []
        for gate, seconds in ((short, 5.0), (long, 600.0)):
            for name in ("active", "queued"):
                holder = Holder(gate, name, [], seconds)
                holders.append(holder)
                group.start_soon(holder)
                await wait_all_tasks_blocked()
        assert short.retry_after() >= 1
        assert long.retry_after() >= 100  # 1200 s of audio ahead at 10x real time
        assert long.retry_after() > short.retry_after()
        for holder in holders:
            holder.release.set()


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = admission(max_active=1, max_queue=2)
    entered: list[str] = []
    first, gone = Holder(gate, "first", entered), Holder(gate, "gone", entered)
    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await wait_all_tasks_blocked()
        async with anyio.create_task_group() as inner:  # the client of "gone" goes away
            inner.start_soon(gone)
            await wait_all_tasks_blocked()
            assert gate.waiting == 1
            inner.cancel_scope.cancel()
        assert (gate.active, gate.waiting) == (1, 0)
        first.release.set()
    assert entered == ["first"]
    assert (gate.active, gate.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_it_is_promoted_loses_no_place() -> None:
    gate = admission(max_active=1, max_queue=2)
    entered: list[str] = []
    gone, next_one = Holder(gate, "gone", entered), Holder(gate, "next", entered)
    scopes: list[anyio.CancelScope] = []

    async def cancellable() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await gone()

    place = gate.enter(1.0)
    await place.__aenter__()
    async with anyio.create_task_group() as group:
        group.start_soon(cancellable)
        await wait_all_tasks_blocked()
        group.start_soon(next_one)
        await wait_all_tasks_blocked()
        assert gate.waiting == 2
        await place.__aexit__(None, None, None)  # promotes "gone" without a checkpoint...
        scopes[0].cancel()  # ...whose client leaves before it runs
        await wait_all_tasks_blocked()
        # anyio may let "gone" enter before the cancellation lands; either way its place
        # is not lost: "next" gets in.
        assert entered[-1] == "next"
        assert (gate.active, gate.waiting) == (1, 0)
        next_one.release.set()
    assert (gate.active, gate.waiting) == (0, 0)


@pytest.mark.anyio
async def test_waiting_past_the_deadline_is_504_and_frees_the_queue_place() -> None:
    gate = admission(max_active=1, max_queue=1)
    entered: list[str] = []
    first = Holder(gate, "first", entered)
    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await wait_all_tasks_blocked()
        with pytest.raises(errors.DeadlineExceededError) as info:
            async with gate.enter(10.0, deadline=time.monotonic() + 0.05):
                pytest.fail("admitted while the only place is held")
        assert info.value.status_code == 504
        assert (gate.active, gate.waiting) == (1, 0)
        first.release.set()
    assert entered == ["first"]


@pytest.mark.anyio
async def test_draining_refuses_new_requests_and_lets_active_ones_finish() -> None:
    gate = admission(max_active=2, max_queue=2)
    entered: list[str] = []
    active = Holder(gate, "active", entered)
    async with anyio.create_task_group() as group:
        group.start_soon(active)
        await wait_all_tasks_blocked()
        gate.draining = True
        with pytest.raises(errors.ServiceUnavailableError) as info:
            async with gate.enter(1.0):
                pytest.fail("admitted while draining")
        assert info.value.status_code == 503
        assert gate.active == 1
        active.release.set()
    assert active.error is None and gate.active == 0
