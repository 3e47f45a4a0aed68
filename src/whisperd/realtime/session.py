"""One live transcription session: audio in, turns found, partial text while a turn grows,
the final transcript when it ends.

Appended audio goes into the session's input buffer (bounded: outside a turn only the prefix
padding is kept, and a turn that reaches the longest turn length is committed). Server VAD
finds turns. While a turn grows it is decoded again every ``realtime_partial_interval`` as a
high-priority stream of the batching engine (greedy, one decode in flight), and words two
decodes agree on go out as deltas. When the speaker pauses, the final decode starts at once,
with the options a file transcription takes, so the final text is what a file of the turn's
audio gives; if the pause lasts, the turn is committed and its transcript completes it, else
that decode is dropped. Transcripts complete in commit order; at most ``MAX_PENDING_TURNS``
wait, and past that the session stops reading the socket, which throttles the client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from whisperd.audio import SAMPLE_RATE, Audio
from whisperd.engine import (
    BACKGROUND_PRIORITY,
    LIVE_PRIORITY,
    Item,
    TranscribeOptions,
    Transcriber,
    Transcription,
    collect,
    items,
)
from whisperd.errors import ServiceUnavailableError, WhisperdError
from whisperd.formats import word_logprobs
from whisperd.realtime import protocol
from whisperd.realtime.agreement import StableText
from whisperd.realtime.codecs import InputAudio
from whisperd.realtime.protocol import (
    GOING_AWAY,
    MAX_REASON,
    ProtocolError,
    SessionConfig,
    server_event,
)
from whisperd.realtime.turns import CHUNK, SpeechProbabilities, TurnDetector
from whisperd.scheduler import Task
from whisperd.settings import Settings
from whisperd.spec import Spec

logger = logging.getLogger(__name__)

PARTIAL_PRIORITY = LIVE_PRIORITY
"""Partial decodes go before file requests in every batch..."""
FINAL_PRIORITY = LIVE_PRIORITY + 1
"""...and final decodes before partial ones."""
AHEAD_S = 10.0
"""Audio ahead of real time that a session's decodes keep their priority with: one sending
faster is transcribed after every request (as work in the background)."""
MAX_PENDING_TURNS = 2
"""Committed turns waiting for their transcript; past it the session stops reading."""
TAIL_MS = 200
"""Audio kept after the end of speech in a turn (the VAD judges a little late)."""
MIN_COMMIT_MS = 100
"""The least audio a manual commit takes (as OpenAI's)."""
MIN_PARTIAL_SECONDS = 0.5
"""No partial decode of a turn shorter than this."""


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _samples(ms: float) -> int:
    return int(ms * SAMPLE_RATE / 1000)


class Budget:
    """At most ``limit`` of something at once, taken without waiting or not at all, and none
    while something more urgent holds it (used in the event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.holds = 0

    def take(self) -> bool:
        if self.used >= self.limit or self.holds:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Refuse every ``take`` while the block runs."""
        self.holds += 1
        try:
            yield
        finally:
            self.holds -= 1


class Pace:
    """How far a session's audio runs ahead of real time: the seconds received beyond the
    seconds passed, never below 0 (a pause earns no credit for a later burst)."""

    def __init__(self) -> None:
        self.ahead = 0.0
        self._at: float | None = None

    def received(self, seconds: float, now: float) -> None:
        if self._at is not None:
            self.ahead = max(0.0, self.ahead - (now - self._at))
        self.ahead += seconds
        self._at = now

    def live(self, now: float) -> bool:
        """Whether the audio comes at about real time (at most ``AHEAD_S`` ahead)."""
        passed = 0.0 if self._at is None else now - self._at
        return self.ahead - passed <= AHEAD_S


class ClientGone(Exception):
    """The client closed the connection, or it broke."""


async def refuse(websocket: WebSocket, error: WhisperdError, code: int) -> None:
    """Answer an accepted WebSocket with ``error`` and close it, running no session."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.send_text(json.dumps(protocol.error_event(error)))
        await websocket.close(code, error.message[:MAX_REASON])


class Buffer:
    """The input audio buffer: samples from ``start`` (in samples since the session began)."""

    def __init__(self) -> None:
        self.start = 0
        self._pieces: list[Audio] = []
        self._size = 0

    @property
    def end(self) -> int:
        return self.start + self._size

    def append(self, samples: Audio) -> None:
        if samples.size:
            self._pieces.append(samples)
            self._size += samples.size

    def audio(self, start: int, end: int) -> Audio:
        """A copy of the samples from ``start`` to ``end`` (clipped to what is held)."""
        whole = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        self._pieces = [whole] if whole.size else []
        return whole[max(0, start - self.start) : max(0, end - self.start)].copy()

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self._size)
        if cut:
            whole = np.concatenate(self._pieces)[cut:]
            self._pieces = [whole] if whole.size else []
            self._size = whole.size
            self.start += cut


class Decode:
    """One decode through the engine, started at once in the session's task group and awaited
    later, or cancelled (its engine task then stops at its next window). While it runs it holds
    ``holds``, if given."""

    def __init__(
        self,
        group: TaskGroup,
        submit: Callable[[], Task[Item]],
        limiter: anyio.CapacityLimiter,
        holds: Budget | None = None,
    ) -> None:
        self.done = anyio.Event()
        self._holds = holds
        self._result: Transcription | WhisperdError | None = None
        self._scope = anyio.CancelScope()
        self._started: list[Task[Item]] = []
        self._stopped = False
        group.start_soon(self._run, submit, limiter)

    async def _run(
        self,
        submit: Callable[[], Task[Item]],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        def work() -> Transcription:
            task = submit()
            self._started.append(task)
            if self._stopped:  # cancelled while it was being submitted
                task.cancel()
            return collect(items(task))

        held = self._holds.held() if self._holds is not None else contextlib.nullcontext()
        try:
            with held, self._scope:
                self._result = await anyio.to_thread.run_sync(
                    work, abandon_on_cancel=True, limiter=limiter
                )
        except WhisperdError as error:
            self._result = error
        finally:
            self._stopped = True
            for task in self._started:
                task.cancel()
            self.done.set()

    def cancel(self) -> None:
        self._scope.cancel()

    async def result(self) -> Transcription:
        await self.done.wait()
        if isinstance(self._result, Transcription):
            return self._result
        raise self._result or ServiceUnavailableError("The decode was stopped.")


@dataclass
class Turn:
    item_id: str
    start: int
    """Where its audio starts, in samples since the session began."""
    stable: StableText = field(default_factory=StableText)
    speech_end: int | None = None
    """Where the speaker paused (None while speaking)."""
    paused_at: float = 0.0
    """When the pause was heard (monotonic)."""
    final: tuple[int, Decode] | None = None
    """The final decode started at the pause, with where its audio ends."""
    partial: Decode | None = None
    last_partial: float = -math.inf
    committed: bool = False


@dataclass
class Committed:
    turn: Turn
    samples: int
    decode: Decode
    ended_at: float


class LiveSession:
    """Runs one WebSocket's session until the client leaves, it idles out, or the server
    drains (then the turn in progress is transcribed before the close frame)."""

    def __init__(
        self,
        websocket: WebSocket,
        settings: Settings,
        engine: Transcriber,
        *,
        configured: bool,
        draining: anyio.Event,
        limiter: anyio.CapacityLimiter,
        partials: Budget,
        observe: Callable[[str, float], None],
    ) -> None:
        self.ws = websocket
        self.settings = settings
        self.engine = engine
        self.id = protocol.new_id("sess")
        self.config = SessionConfig()
        self.configured = configured
        self._draining = draining
        self._limiter = limiter
        self._partials = partials
        self._pending = 0
        """Committed turns still waiting for their transcript."""
        self._observe = observe
        self.buffer = Buffer()
        self._pace = Pace()
        self._input = InputAudio(self.config.input.format.type)
        self._vad: tuple[SpeechProbabilities, TurnDetector] | None = None
        self.turn: Turn | None = None
        self._detect_turns()
        self.previous_item: str | None = None
        self._send_lock = anyio.Lock()
        self._group: TaskGroup | None = None
        self._waiting: anyio.CancelScope | None = None
        self._held: Message | None = None
        self._commits: MemoryObjectSendStream[Committed]
        self._completions: MemoryObjectReceiveStream[Committed]
        self._commits, self._completions = anyio.create_memory_object_stream[Committed](
            MAX_PENDING_TURNS
        )
        self._completed = anyio.Event()

    # --- running ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                await self.send(server_event("session.created", session=self._described()))
                group.start_soon(self._complete)
                group.start_soon(self._stop_on_drain)
                code, reason = await self._receive()
                await self._end_turn()
                self._commits.close()
                await self._completed.wait()
                with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                    await self.ws.close(code, reason[:MAX_REASON])
                group.cancel_scope.cancel()
        except* ClientGone:
            logger.info("Live session %s: the client left", self.id)
        finally:
            self._commits.close()
            self._completions.close()

    async def _stop_on_drain(self) -> None:
        await self._draining.wait()
        if self._waiting is not None:
            self._waiting.cancel()

    async def _receive(self) -> tuple[int, str]:
        """Take client events until the client leaves (ClientGone), the session idles out or
        the server drains; returns the close frame to send. Only the wait for the next event
        is cut short by a drain, never the handling of one."""
        timeout = self.settings.realtime_idle_timeout
        idle_at = anyio.current_time() + timeout
        while not self._draining.is_set():
            message, self._held = self._held, None  # one read while a turn waited, first
            if message is None:
                with anyio.move_on_after(idle_at - anyio.current_time()) as self._waiting:
                    message = await self.ws.receive()
                self._waiting = None
            if message is not None:
                if await self._take(message):  # an event refused does not keep it open
                    idle_at = anyio.current_time() + timeout
            elif not self._draining.is_set():
                await self.send_error(
                    ProtocolError(
                        f"No event for {timeout:g} s; the session is closed.", code="idle_timeout"
                    )
                )
                return 1000, "Idle timeout."
        return GOING_AWAY, "The server is shutting down."

    async def _take(self, message: Message) -> bool:
        """Handle one client event; whether it was taken (False: an error event answered it)."""
        if message["type"] == "websocket.disconnect":
            raise ClientGone
        event_id = None
        try:
            text = message.get("text")
            event = protocol.parse(text if text is not None else message.get("bytes"))
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            protocol.check_type(event)
            await self._handle(event)
        except WhisperdError as error:
            await self.send_error(error, event_id)
        except ClientGone:
            raise
        except Exception:
            logger.exception("Live session %s: an event failed", self.id)
            await self.send_error(WhisperdError("Internal server error; see the server log."))
        else:
            return True
        return False

    # --- events -------------------------------------------------------------------------
    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "session.update":
            await self._update(event.get("session"))
        elif kind == "input_audio_buffer.append":
            if not self.configured:
                raise ProtocolError(
                    "Audio came before the session was set up: send session.update with "
                    "session.type 'transcription' first (or connect with "
                    "?intent=transcription).",
                    code="session_not_configured",
                )
            await self._append(self._input.convert(protocol.audio_bytes(event)))
        elif kind == "input_audio_buffer.commit":
            await self._commit_by_client()
        else:
            self._drop_turn()
            self.buffer.drop_before(self.buffer.end)
            await self.send(server_event("input_audio_buffer.cleared"))

    async def _update(self, session: Any) -> None:
        config = self.config.updated(session)
        # the model is loaded (once) and the options checked against it before anything changes
        await anyio.to_thread.run_sync(
            functools.partial(self.engine.prepare, self._final_options(config), model=config.model),
            limiter=self._limiter,
        )
        old = self.config
        self.config = config
        self.configured = True
        if config.input.format != old.input.format:
            self._input = InputAudio(config.input.format.type)
        if config.input.turn_detection != old.input.turn_detection:
            self._detect_turns()
        await self.send(server_event("session.updated", session=self._described()))

    def _detect_turns(self) -> None:
        detection = self.config.input.turn_detection
        self._vad = None
        if detection is not None:
            detector = TurnDetector(detection.threshold, detection.silence_ms)
            detector.position = self.buffer.end
            if self.turn is not None:  # a turn in progress goes on, until the pause that ends it
                detector.speaking = True
                self._resume(self.turn)
            self._vad = (SpeechProbabilities(), detector)

    def _resume(self, turn: Turn) -> None:
        """The turn's speech goes on: a pause heard in it so far is not its end."""
        turn.speech_end = None
        if turn.final is not None:
            turn.final[1].cancel()
            turn.final = None

    def _described(self) -> dict[str, Any]:
        if not self.configured:  # a session without intent: what it is waits for session.update
            return {"object": "realtime.session", "id": self.id, "type": "realtime"}
        return self.config.described(self.id)

    # --- audio and turns ----------------------------------------------------------------
    async def _append(self, samples: Audio) -> None:
        self._observe("audio", samples.size / SAMPLE_RATE)
        self._pace.received(samples.size / SAMPLE_RATE, time.monotonic())
        # a second at a time, so that a large append finds its turns as a stream of small ones
        for start in range(0, samples.size, SAMPLE_RATE):
            await self._take_audio(samples[start : start + SAMPLE_RATE])

    async def _take_audio(self, samples: Audio) -> None:
        self.buffer.append(samples)
        if self._vad is None:
            if self.turn is None:
                self.turn = Turn(protocol.new_id("item"), self.buffer.start)
        else:
            await self._follow_speech(samples)
        longest = _samples(self.settings.realtime_max_turn_seconds * 1000)
        while (turn := self.turn) is not None and self.buffer.end - turn.start >= longest:
            # a turn at the longest length is committed there, and the next one goes on
            end = turn.start + longest
            await self._commit(end, time.monotonic())
            if self._vad is None:
                self.turn = Turn(protocol.new_id("item"), end)
            elif self._vad[1].speaking:
                await self._start_turn(end)
        if self.turn is not None:
            self._speculate(self.turn)
            self._maybe_partial(self.turn)

    async def _follow_speech(self, samples: Audio) -> None:
        assert self._vad is not None
        speech, detector = self._vad
        probabilities = await anyio.to_thread.run_sync(speech.feed, samples, limiter=self._limiter)
        detection = self.config.input.turn_detection
        assert detection is not None
        for change in detector.update(probabilities):
            turn = self.turn
            if change.kind == "started":
                await self._start_turn(change.sample - _samples(detection.prefix_padding_ms))
            elif turn is None:
                continue
            elif change.kind == "paused":
                turn.speech_end = change.sample
                turn.paused_at = time.monotonic()
                if turn.partial is not None:  # the final decode comes next: it goes first
                    turn.partial.cancel()
            elif change.kind == "resumed":
                self._resume(turn)
            else:
                # the turn's audio: its speech and a tail of the pause (the next turn starts
                # after it)
                end = (turn.speech_end or change.sample) + _samples(self._tail_ms())
                await self.send(
                    server_event(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=_ms(end),
                        item_id=turn.item_id,
                    )
                )
                await self._commit(end, turn.paused_at or time.monotonic())
        if self.turn is None:
            # the prefix padding, and a chunk more: the VAD judges whole chunks
            keep = _samples(detection.prefix_padding_ms) + CHUNK
            self.buffer.drop_before(self.buffer.end - keep)

    def _tail_ms(self) -> int:
        detection = self.config.input.turn_detection
        return min(TAIL_MS, detection.silence_ms) if detection is not None else 0

    async def _start_turn(self, start: int) -> None:
        turn = self.turn = Turn(protocol.new_id("item"), max(self.buffer.start, start))
        await self.send(
            server_event(
                "input_audio_buffer.speech_started",
                audio_start_ms=_ms(turn.start),
                item_id=turn.item_id,
            )
        )

    def _speculate(self, turn: Turn) -> None:
        """Start the final decode once a pause's tail has arrived."""
        if turn.speech_end is None or turn.final is not None:
            return
        end = turn.speech_end + _samples(self._tail_ms())
        if self.buffer.end >= end:
            turn.final = (end, self._decode(turn.start, end, final=True))

    def _maybe_partial(self, turn: Turn) -> None:
        now = time.monotonic()
        if (
            turn.partial is not None
            or turn.speech_end is not None
            or now - turn.last_partial < self.settings.realtime_partial_interval
            or self.buffer.end - turn.start < _samples(MIN_PARTIAL_SECONDS * 1000)
            or self._pending  # finals first
            or not self._partials.take()
        ):
            return
        turn.last_partial = now
        decode = turn.partial = self._decode(turn.start, self.buffer.end, final=False)
        assert self._group is not None
        self._group.start_soon(self._send_partial, turn, decode, now)

    async def _send_partial(self, turn: Turn, decode: Decode, started: float) -> None:
        try:
            text = (await decode.result()).text
        except WhisperdError as error:
            logger.debug("Live session %s: a partial decode failed: %s", self.id, error)
            return
        finally:
            turn.partial = None
            self._partials.release()
        delta = turn.stable.update(text)
        if delta and not turn.committed:
            await self._send_delta(turn, delta)
            self._observe("partial", time.monotonic() - started)

    async def _commit_by_client(self) -> None:
        turn = self.turn
        start = self.buffer.start if turn is None else turn.start
        held = self.buffer.end - start
        if held < _samples(MIN_COMMIT_MS):
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {held * 1000 / SAMPLE_RATE:.2f}"
                "ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        if turn is None:
            self.turn = Turn(protocol.new_id("item"), start)
        await self._commit(self.buffer.end, time.monotonic())
        if self._vad is not None:
            self._vad[1].reset()

    async def _commit(self, end: int, ended_at: float) -> None:
        """Commit the turn in progress, its audio ending at ``end``: the events, then its
        transcript in line (waiting while MAX_PENDING_TURNS are)."""
        turn = self.turn
        assert turn is not None
        self.turn = None
        turn.committed = True
        end = min(end, self.buffer.end)
        if turn.partial is not None:
            turn.partial.cancel()
        if turn.final is not None and turn.final[0] != end:
            turn.final[1].cancel()
            turn.final = None
        decode = turn.final[1] if turn.final else self._decode(turn.start, end, final=True)
        samples = end - turn.start
        self.buffer.drop_before(end)
        previous, self.previous_item = self.previous_item, turn.item_id
        await self.send(
            server_event(
                "input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=previous
            )
        )
        item = protocol.user_item(turn.item_id)
        await self.send(
            server_event("conversation.item.added", item=item, previous_item_id=previous)
        )
        await self.send(
            server_event("conversation.item.done", item=item, previous_item_id=previous)
        )
        self._pending += 1
        await self._queue(Committed(turn, samples, decode, ended_at))

    async def _queue(self, committed: Committed) -> None:
        """Put a committed turn in line for its transcript. While MAX_PENDING_TURNS wait, the
        client's next message is read (and kept for after), so that one who leaves meanwhile
        ends the session at once, its decodes cancelled."""

        async def watch() -> None:
            if self._held is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    raise ClientGone
                self._held = message

        try:
            try:
                self._commits.send_nowait(committed)
            except anyio.WouldBlock:
                async with anyio.create_task_group() as group:
                    group.start_soon(watch)
                    await self._commits.send(committed)
                    group.cancel_scope.cancel()
        except anyio.BrokenResourceError:  # the transcripts stopped: sending to the client failed
            raise ClientGone from None
        except ExceptionGroup as errors:
            if errors.subgroup((ClientGone, anyio.BrokenResourceError)) is not None:
                raise ClientGone from None
            raise

    def _drop_turn(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            for decode in (turn.partial, turn.final[1] if turn.final else None):
                if decode is not None:
                    decode.cancel()
        if self._vad is not None:
            self._vad[1].reset()

    async def _end_turn(self) -> None:
        """On drain or idle close: the turn in progress is committed (if it holds enough
        audio), so it gets its transcript before the close frame."""
        turn = self.turn
        if turn is None:
            return
        if self.buffer.end - turn.start >= _samples(MIN_COMMIT_MS):
            await self._commit(self.buffer.end, time.monotonic())
        else:
            self._drop_turn()

    # --- transcripts ----------------------------------------------------------------------
    def _decode(self, start: int, end: int, *, final: bool) -> Decode:
        samples = self.buffer.audio(start, end)
        options = self._final_options(self.config) if final else self._partial_options()
        priority = FINAL_PRIORITY if final else PARTIAL_PRIORITY
        if not self._pace.live(time.monotonic()):
            priority = BACKGROUND_PRIORITY
        deadline = time.monotonic() + self.settings.request_timeout
        assert self._group is not None
        submit = functools.partial(
            self.engine.submit,
            samples,
            options,
            model=self.config.model,
            deadline=deadline,
            priority=priority,
        )
        # no partial decode starts, in any session, while a final one runs
        return Decode(self._group, submit, self._limiter, self._partials if final else None)

    def _final_options(self, config: SessionConfig) -> TranscribeOptions:
        asked = config.input.transcription
        return Spec(
            language=None if asked is None else asked.language,
            prompt=None if asked is None else asked.prompt,
            word_timestamps=config.logprobs,
        ).options(self.settings)

    def _partial_options(self) -> TranscribeOptions:
        final = self._final_options(self.config)
        return TranscribeOptions(
            language=final.language,
            beam_size=1,
            temperature=(0.0,),
            initial_prompt=final.initial_prompt,
        )

    async def _complete(self) -> None:
        async with self._completions:
            async for committed in self._completions:
                await self._transcript(committed)
                self._pending -= 1
        self._completed.set()

    async def _transcript(self, committed: Committed) -> None:
        turn = committed.turn
        try:
            result = await committed.decode.result()
        except WhisperdError as error:
            details = error.to_dict()["error"]
            await self.send(
                server_event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=turn.item_id,
                    content_index=0,
                    error=details,
                )
            )
            return
        rest = turn.stable.finish(result.text)
        if rest:
            await self._send_delta(turn, rest)
        fields: dict[str, Any] = {
            "item_id": turn.item_id,
            "content_index": 0,
            "transcript": result.text,
            "usage": {"type": "duration", "seconds": round(committed.samples / SAMPLE_RATE, 3)},
        }
        if self.config.logprobs:
            fields["logprobs"] = [p.model_dump() for p in word_logprobs(result.segments)]
        await self.send(
            server_event("conversation.item.input_audio_transcription.completed", **fields)
        )
        self._observe("final", time.monotonic() - committed.ended_at)

    async def _send_delta(self, turn: Turn, delta: str) -> None:
        await self.send(
            server_event(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=delta,
            )
        )

    # --- sending --------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(event))
            except (RuntimeError, WebSocketDisconnect, OSError) as exc:
                raise ClientGone from exc

    async def send_error(self, error: WhisperdError, event_id: str | None = None) -> None:
        await self.send(protocol.error_event(error, event_id))
