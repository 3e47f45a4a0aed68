"""Engine tasks, the speedometer and admission control."""

from __future__ import annotations

import time

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from whisperd import errors
from whisperd.scheduler import Admission, Speedometer, Task
from whisperd.services import Lifecycle

# --- Task -------------------------------------------------------------------------------


def test_a_task_hands_on_its_items_in_order_then_ends() -> None:
    task: Task[int] = Task(deadline=None)
    for item in (1, 2, 3):
        task.put(item)
    task.finish()
    assert list(task) == [1, 2, 3]
    assert task.finished


def test_a_task_that_fails_raises_to_its_consumer_after_its_items() -> None:
    task: Task[int] = Task(deadline=None)
    task.put(1)
    task.finish(errors.ServiceUnavailableError("gone"))
    received: list[int] = []
    with pytest.raises(errors.ServiceUnavailableError):
        received.extend(task)
    assert received == [1]


def test_cancel_keeps_the_first_reason() -> None:
    task: Task[int] = Task(deadline=None)
    assert task.stopped() is None
    task.cancel(errors.ServiceUnavailableError("draining"))
    task.cancel()
    assert isinstance(task.stopped(), errors.ServiceUnavailableError)


def test_a_task_past_its_deadline_is_stopped() -> None:
    task: Task[int] = Task(deadline=time.monotonic() - 1)
    assert isinstance(task.stopped(), errors.DeadlineExceededError)


def test_speedometer_averages_audio_per_busy_second() -> None:
    speed = Speedometer(initial=10.0)
    for _ in range(50):
        speed.record(20.0, 1.0)
    assert speed.speed == pytest.approx(20.0, rel=0.01)
    speed.record(0.0, 1.0)
    speed.record(5.0, 0.0)
    assert speed.speed == pytest.approx(20.0, rel=0.01)


# --- Admission --------------------------------------------------------------------------


def admission(max_active: int, max_queue: int, lifecycle: Lifecycle | None = None) -> Admission:
    return Admission(
        max_active=max_active,
        max_queue=max_queue,
        speed=Speedometer(10.0),
        lifecycle=lifecycle or Lifecycle(),
    )


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
    lifecycle = Lifecycle()
    gate = admission(max_active=2, max_queue=2, lifecycle=lifecycle)
    entered: list[str] = []
    active = Holder(gate, "active", entered)
    async with anyio.create_task_group() as group:
        group.start_soon(active)
        await wait_all_tasks_blocked()
        lifecycle.drain()
        with pytest.raises(errors.ServiceUnavailableError) as info:
            async with gate.enter(1.0):
                pytest.fail("admitted while draining")
        assert info.value.status_code == 503
        assert gate.active == 1
        active.release.set()
    assert active.error is None and gate.active == 0
