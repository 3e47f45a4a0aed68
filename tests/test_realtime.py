"""Live transcription over the Realtime WebSocket, driven by the official ``openai`` SDK (and a
raw WebSocket client where a browser's way of connecting is tested), against a real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import websockets

from whisperd import audio
from whisperd.api import create_app
from whisperd.api.services import services_of
from whisperd.engine import Transcriber
from whisperd.realtime.codecs import InputAudio, pcm16
from whisperd.settings import Settings
from whisperd_bench.wer import word_error_rate

from support import (
    JFK,
    assert_jfk,
    local_certificate,
    make_settings,
    normalise,
    poll,
    running_app,
    server_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
VAD = {"type": "server_vad", "silence_duration_ms": 500}
EVENT_TIMEOUT = 120.0


def session(turn_detection: dict[str, Any] | None = VAD, **input_: Any) -> dict[str, Any]:
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": turn_detection,
                **input_,
            }
        },
    }


@pytest.fixture(scope="module")
def jfk_pcm(jfk_audio: audio.Audio) -> bytes:
    return pcm16(jfk_audio)


def live_settings(engine: Transcriber, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of an app that serves ``engine`` live, with jobs off, spooling to ``tmp_path``
    itself (a test checks that nothing is left there)."""
    values: dict[str, Any] = {
        "jobs_enabled": False,
        "tmp_dir": tmp_path,
        "realtime_partial_interval": 0.3,
    }
    return make_settings(tmp_path, engine.settings.model_cache_dir, **(values | overrides))


@pytest.fixture(scope="module")
def live(engine: Transcriber, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = live_settings(engine, tmp_path_factory.mktemp("live"), realtime_max_sessions=4)
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


def sdk(url: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0)


def connect(url: str, key: str = "unused", **query: str) -> Any:
    return sdk(url, key).realtime.connect(extra_query={"intent": "transcription", **query})


async def append(connection: Any, pcm: bytes, *, chunk_ms: int = 100, pace: float = 0) -> None:
    """Send ``pcm`` (24 kHz) in pieces of ``chunk_ms``; ``pace`` 1 is real time, 0 at once."""
    step = 24 * chunk_ms * 2
    for start in range(0, len(pcm), step):
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(pcm[start : start + step]).decode()
        )
        if pace:
            await asyncio.sleep(chunk_ms / 1000 / pace)


async def events_until(
    connection: Any, done: str, count: int = 1, log: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The events received until the ``count``-th of type ``done``."""
    seen = [] if log is None else log
    async with asyncio.timeout(EVENT_TIMEOUT):
        async for event in connection:
            seen.append(event.model_dump())
            if event.type == done:
                count -= 1
                if count == 0:
                    return seen
    raise AssertionError(f"the connection closed before {done}: {seen}")


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def transcripts(events: list[dict[str, Any]]) -> str:
    return " ".join(
        e["transcript"] for e in of(events, "conversation.item.input_audio_transcription.completed")
    )


def test_https_and_wss_with_a_certificate(
    engine: Transcriber, tmp_path: Path, jfk_pcm: bytes
) -> None:
    tls = local_certificate(tmp_path / "tls")
    settings = live_settings(engine, tmp_path, tls_certfile=tls.certfile, tls_keyfile=tls.keyfile)

    async def main(url: str) -> tuple[str, str]:
        http = httpx.AsyncClient(verify=tls.trusted)
        async with openai.AsyncOpenAI(
            api_key="unused", base_url=f"{url}/v1", max_retries=0, http_client=http
        ) as client:
            file = await client.audio.transcriptions.create(
                model="whisper-1", file=("jfk.flac", JFK.read_bytes())
            )
            async with client.realtime.connect(
                extra_query={"intent": "transcription"},
                websocket_connection_options={"ssl": tls.trusted},
            ) as connection:
                await connection.session.update(session=session(turn_detection=None))
                await append(connection, jfk_pcm)
                await connection.input_audio_buffer.commit()
                events = await events_until(
                    connection, "conversation.item.input_audio_transcription.completed"
                )
        return file.text, transcripts(events)

    with running_app(create_app(settings, engine=engine)) as url:
        assert url.startswith("https://")
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served beside it
            httpx.get(url.replace("https", "http", 1) + "/healthz", timeout=10)
        file_text, live_text = asyncio.run(main(url))
    assert_jfk(file_text)
    assert_jfk(live_text)


def test_server_vad_turns_at_real_time_pace(live: str, jfk_pcm: bytes) -> None:
    silence = bytes(24000 * 2)

    async def main() -> list[dict[str, Any]]:
        async with connect(live) as connection:
            await connection.session.update(session=session())
            log: list[dict[str, Any]] = []
            reading = asyncio.create_task(events_until(connection, "never", log=log))
            await append(connection, jfk_pcm + silence, pace=1)
            # the last turn ends in the trailing second of silence: wait for its transcript
            async with asyncio.timeout(EVENT_TIMEOUT):
                while not _all_completed(log):  # noqa: ASYNC110 (the reader fills the log)
                    await asyncio.sleep(0.1)
            reading.cancel()
            return log

    events = asyncio.run(main())
    assert events[0]["type"] == "session.created"
    assert events[0]["session"]["type"] == "transcription"
    started = of(events, "input_audio_buffer.speech_started")
    assert started, events
    for start in started:
        item = start["item_id"]
        kinds = [e["type"] for e in events if e.get("item_id") == item or _item(e) == item]
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index(
            "input_audio_buffer.committed"
        )
        assert kinds.index("input_audio_buffer.committed") < kinds.index("conversation.item.added")
        completed = kinds.index("conversation.item.input_audio_transcription.completed")
        assert "conversation.item.input_audio_transcription.delta" in kinds[:completed], kinds
        final = next(
            e
            for e in events
            if e["type"] == "conversation.item.input_audio_transcription.completed"
            and e["item_id"] == item
        )
        assert final["usage"]["type"] == "duration" and final["usage"]["seconds"] > 0
    said = transcripts(events)
    assert word_error_rate(said, JFK_TEXT) <= 0.15, said
    stopped = of(events, "input_audio_buffer.speech_stopped")
    assert all(s["audio_end_ms"] <= 12000 for s in stopped), stopped
    # one turn's audio ends before the next one's begins
    spans = [
        (a["audio_start_ms"], b["audio_end_ms"]) for a, b in zip(started, stopped, strict=True)
    ]
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), spans


def _all_completed(events: list[dict[str, Any]]) -> bool:
    """Whether turns began, and every one has its transcript."""
    started = len(of(events, "input_audio_buffer.speech_started"))
    return 0 < started <= len(of(events, "conversation.item.input_audio_transcription.completed"))


def _item(event: dict[str, Any]) -> str | None:
    item = event.get("item")
    return item.get("id") if isinstance(item, dict) else None


def test_partial_text_grows_before_a_manual_commit(live: str, jfk_pcm: bytes) -> None:
    """Without turn detection the client commits; before it does, the turn is decoded again
    as audio arrives, and only words two decodes agree on are sent."""
    quiet = bytes(24 * 20 * 2)  # 20 ms

    async def main() -> list[dict[str, Any]]:
        async with connect(live) as connection:
            await connection.session.update(session=session(turn_detection=None))
            log = await events_until(connection, "session.updated")
            await append(connection, jfk_pcm)
            # keep the turn growing (by silence) until the partial decodes agree on some text
            async with asyncio.timeout(EVENT_TIMEOUT):
                while not of(log, "conversation.item.input_audio_transcription.delta"):
                    await append(connection, quiet)
                    try:
                        async with asyncio.timeout(0.5):
                            log.append((await connection.recv()).model_dump())
                    except TimeoutError:
                        pass
            await connection.input_audio_buffer.commit()
            return await events_until(
                connection, "conversation.item.input_audio_transcription.completed", log=log
            )

    events = asyncio.run(main())
    kinds = [e["type"] for e in events]
    assert kinds.index("conversation.item.input_audio_transcription.delta") < kinds.index(
        "input_audio_buffer.committed"
    )
    deltas = "".join(
        e["delta"] for e in of(events, "conversation.item.input_audio_transcription.delta")
    )
    final = of(events, "conversation.item.input_audio_transcription.completed")[0]
    assert_jfk(final["transcript"])
    # what was sent while the speaker talked is never taken back: the transcript continues it
    assert normalise(final["transcript"]).startswith(normalise(deltas)), (deltas, final)
    assert final["usage"]["seconds"] >= 11


@pytest.mark.parametrize("before", [None, VAD], ids=["manual-then-vad", "vad-then-longer"])
def test_changing_turn_detection_mid_turn_keeps_the_turn(
    live: str, jfk_pcm: bytes, before: dict[str, Any] | None
) -> None:
    """Turn detection switched on, or its silence changed, while a turn is in progress: the
    turn goes on under the new detection, and no audio of it is lost."""
    head = 24000 * 2 * 2  # mid-way through "And so my fellow Americans" (2 s)

    async def main() -> list[dict[str, Any]]:
        async with connect(live) as connection:
            await connection.session.update(session=session(turn_detection=before))
            log = await events_until(connection, "session.updated")
            await append(connection, jfk_pcm[:head])
            longer = {"type": "server_vad", "silence_duration_ms": 600}
            await connection.session.update(session=session(turn_detection=longer))
            await events_until(connection, "session.updated", log=log)
            await append(connection, jfk_pcm[head:] + bytes(24000 * 2 * 3 // 2))
            # every event before it has been handled once the clear is answered
            await connection.input_audio_buffer.clear()
            await events_until(connection, "input_audio_buffer.cleared", log=log)
            async with asyncio.timeout(EVENT_TIMEOUT):
                while len(of(log, "conversation.item.input_audio_transcription.completed")) < len(
                    of(log, "input_audio_buffer.committed")
                ):
                    log.append((await connection.recv()).model_dump())
            return log

    events = asyncio.run(main())
    assert of(events, "input_audio_buffer.committed"), events
    said = transcripts(events)
    # the words before the change are there (the turn they began was lost: "America. Not! ...")
    assert normalise(said).startswith("and so") and "fellow" in normalise(said), said
    assert word_error_rate(said, JFK_TEXT) <= 0.2, said


def test_a_turns_final_text_is_the_file_transcription_of_its_audio(
    live: str, jfk_pcm: bytes
) -> None:
    async def main() -> dict[str, Any]:
        async with connect(live) as connection:
            await connection.session.update(session=session(turn_detection=None))
            await events_until(connection, "session.updated")
            await append(connection, jfk_pcm, chunk_ms=1000)
            await connection.input_audio_buffer.commit()
            log = await events_until(
                connection, "conversation.item.input_audio_transcription.completed"
            )
            return of(log, "conversation.item.input_audio_transcription.completed")[0]

    final = asyncio.run(main())
    # the same audio as the server turned it into 16 kHz samples, as a file
    samples = InputAudio("audio/pcm").convert(jfk_pcm)
    answer = httpx.post(
        f"{live}/v1/audio/transcriptions",
        files={"file": ("turn.flac", audio.encode_flac(samples))},
        data={"model": "whisper-1", "language": "en"},
        timeout=EVENT_TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    file_text = answer.json()["text"]
    assert_jfk(final["transcript"])
    assert word_error_rate(final["transcript"], file_text) <= 0.05, (final, file_text)


def test_telephony_mu_law_with_logprobs(live: str, jfk_audio: audio.Audio) -> None:
    import av

    encoder = av.CodecContext.create("pcm_mulaw", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    linear = pcm16(jfk_audio, rate=8000)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(linear, "<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 8000
    mu_law = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    config = session(turn_detection=None, format={"type": "audio/pcmu"})
    config["include"] = ["item.input_audio_transcription.logprobs"]

    async def main() -> list[dict[str, Any]]:
        async with connect(live) as connection:
            await connection.session.update(session=config)
            log = await events_until(connection, "session.updated")
            assert log[-1]["session"]["audio"]["input"]["format"]["type"] == "audio/pcmu"
            for start in range(0, len(mu_law), 1600):
                await connection.input_audio_buffer.append(
                    audio=base64.b64encode(mu_law[start : start + 1600]).decode()
                )
            await connection.input_audio_buffer.commit()
            return await events_until(
                connection, "conversation.item.input_audio_transcription.completed"
            )

    final = of(asyncio.run(main()), "conversation.item.input_audio_transcription.completed")[0]
    assert word_error_rate(final["transcript"], JFK_TEXT) <= 0.15, final
    logprobs = final["logprobs"]
    assert logprobs and all(p["logprob"] <= 0 for p in logprobs)
    assert normalise("".join(p["token"] for p in logprobs)) == normalise(final["transcript"])


async def _raw(
    url: str, *, subprotocols: list[str] | None = None, query: str = "intent=transcription"
) -> Any:
    return await websockets.connect(
        f"{url.replace('http', 'ws')}/v1/realtime?{query}",
        subprotocols=subprotocols,  # type: ignore[arg-type]
    )


async def _next(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(EVENT_TIMEOUT):
        event: dict[str, Any] = json.loads(await ws.recv())
        return event


BAD_EVENTS = [
    ("not json", "invalid_json"),
    (json.dumps([1, 2]), "invalid_event"),
    (json.dumps({"type": "response.create"}), "invalid_event"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}), "invalid_base64"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": 5}), "invalid_event"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": session(format={"type": "audio/pcm", "rate": 16000}),
            }
        ),
        "invalid_value",
    ),
    (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"bogus": 1}}), "unknown_parameter"),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"model": "../etc"}}}},
            }
        ),
        "model_not_found",
    ),
]


def test_every_bad_event_gets_an_error_and_the_session_goes_on(live: str, jfk_pcm: bytes) -> None:
    async def main() -> None:
        async with await _raw(live) as ws:
            assert (await _next(ws))["type"] == "session.created"
            for message, code in BAD_EVENTS:
                await ws.send(message)
                event = await _next(ws)
                assert event["type"] == "error", (message, event)
                assert event["error"]["code"] == code, (message, event)
                assert event["error"]["message"] and event["error"]["type"]
            await ws.send(b"\x00binary")
            assert (await _next(ws))["error"]["code"] == "invalid_event"
            # the session is as healthy as before
            await ws.send(
                json.dumps({"type": "session.update", "session": session(None), "event_id": "e1"})
            )
            updated = await _next(ws)
            assert updated["type"] == "session.updated", updated
            assert updated["session"]["audio"]["input"]["turn_detection"] is None
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(jfk_pcm).decode(),
                    }
                )
            )
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while (event := await _next(ws))["type"] != (
                "conversation.item.input_audio_transcription.completed"
            ):
                assert event["type"] != "error", event
            assert_jfk(event["transcript"])

    asyncio.run(main())


def test_audio_before_a_transcription_session_is_an_error(live: str) -> None:
    async def main() -> None:
        async with await _raw(live, query="model=gpt-realtime") as ws:
            created = await _next(ws)
            assert created["type"] == "session.created"
            assert created["session"]["type"] == "realtime"  # not a transcription one yet
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "a1"})
            )
            error = (await _next(ws))["error"]
            assert error["code"] == "session_not_configured" and error["event_id"] == "a1"
            await ws.send(json.dumps({"type": "response.create", "event_id": "r1"}))
            error = (await _next(ws))["error"]
            assert error["code"] == "invalid_event" and error["event_id"] == "r1"
            await ws.send(
                json.dumps({"type": "session.update", "session": {"type": "transcription"}})
            )
            updated = await _next(ws)
            assert updated["type"] == "session.updated"
            assert updated["session"]["type"] == "transcription"
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await _next(ws))["type"] == "input_audio_buffer.cleared"

    asyncio.run(main())


def test_limits_sessions_idle_and_turn_length(
    engine: Transcriber, tmp_path: Path, jfk_pcm: bytes
) -> None:
    settings = live_settings(
        engine,
        tmp_path,
        realtime_max_sessions=1,
        realtime_idle_timeout=1.0,
        realtime_max_turn_seconds=4.0,
    )

    async def main(url: str) -> None:
        async with connect(url) as first:
            await first.session.update(session=session(turn_detection=None))
            await events_until(first, "session.updated")
            # a second session is refused while the first is open
            async with await _raw(url) as second:
                event = await _next(second)
                assert event["type"] == "error" and event["error"]["code"] == "too_many_sessions"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await second.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            # 11 s of audio in one go, no commit: turns of at most 4 s are committed by the server
            await append(first, jfk_pcm, chunk_ms=500)
            log = await events_until(
                first, "conversation.item.input_audio_transcription.completed", 2
            )
            seconds = [
                e["usage"]["seconds"]
                for e in of(log, "conversation.item.input_audio_transcription.completed")
            ]
            assert all(3.5 <= s <= 4.0 for s in seconds), seconds
        # an idle session is told why, then closed (once the first has gone)
        await asyncio.to_thread(
            poll, lambda: services_of(app).live.active == 0, timeout=60, what="the session to end"
        )
        async with await _raw(url) as idle:
            assert (await _next(idle))["type"] == "session.created"

            async def refused_events() -> None:  # answered with errors: they are not activity
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(100):
                        await idle.send("{}")
                        await asyncio.sleep(0.3)

            sending = asyncio.create_task(refused_events())
            codes = []
            while (code := (await _next(idle))["error"]["code"]) != "idle_timeout":
                codes.append(code)
            assert set(codes) <= {"invalid_event"}, codes
            assert not sending.done()  # closed while they were still coming
            with pytest.raises(websockets.ConnectionClosed):
                await idle.recv()
            sending.cancel()

    app = create_app(settings, engine=engine)
    with running_app(app) as url:
        asyncio.run(main(url))


def test_api_keys_as_the_sdks_and_browsers_send_them(engine: Transcriber, tmp_path: Path) -> None:
    settings = live_settings(engine, tmp_path, api_keys=("sk-live",))

    async def main(url: str) -> None:
        async with connect(url, key="sk-live") as connection:
            await connection.session.update(session=session())
            await events_until(connection, "session.updated")
        async with connect(url, key="sk-wrong") as refused:
            event = (await refused.recv()).model_dump()
            assert event["error"]["type"] == "authentication_error", event
        # a browser is told why too: an error event, then close code 1008
        for subprotocols in (None, ["realtime", "openai-insecure-api-key.sk-wrong"]):
            async with await _raw(url, subprotocols=subprotocols) as ws:
                assert (await _next(ws))["error"]["code"] == "invalid_api_key"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        browser = ["realtime", "openai-insecure-api-key.sk-live"]
        async with await _raw(url, subprotocols=browser) as ws:
            assert ws.subprotocol == "realtime"
            assert (await _next(ws))["type"] == "session.created"

    with running_app(create_app(settings, engine=engine)) as url:
        asyncio.run(main(url))


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_client_killed_mid_turn_leaks_nothing(
    engine: Transcriber, tmp_path: Path, jfk_pcm: bytes
) -> None:
    settings = live_settings(engine, tmp_path)
    app = create_app(settings, engine=engine)

    async def main(url: str) -> None:
        ws = await _raw(url)
        await _next(ws)
        await ws.send(json.dumps({"type": "session.update", "session": session()}))
        await _next(ws)
        pcm = base64.b64encode(jfk_pcm[: 24000 * 2 * 4]).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
        while (await _next(ws))["type"] != "input_audio_buffer.speech_started":
            pass
        ws.transport.abort()  # no close frame: the connection just breaks

    with running_app(app) as url:
        asyncio.run(main(url))
        poll(lambda: services_of(app).live.active == 0, timeout=60, what="the session to end")
        poll(lambda: not engine._tasks, timeout=60, what="its decodes to stop")
        assert _metric(url, "whisperd_realtime_sessions_open") == 0
        assert _metric(url, "whisperd_realtime_sessions_total") >= 1
        assert _metric(url, "whisperd_realtime_audio_seconds_total") >= 3.9
    assert not list(tmp_path.iterdir())


def test_sigterm_completes_the_turn_in_progress_then_closes(tmp_path: Path, jfk_pcm: bytes) -> None:
    async def main(server: Any) -> list[dict[str, Any]]:
        async with await _raw(server.url) as ws:
            await _next(ws)
            await ws.send(json.dumps({"type": "session.update", "session": session(None)}))
            await _next(ws)
            pcm = base64.b64encode(jfk_pcm).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
            await ws.send(json.dumps({"type": "session.update", "session": session(None)}))
            await _next(ws)  # the audio is in the buffer, not committed
            server.process.send_signal(signal.SIGTERM)
            events = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    events.append(await _next(ws))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            return events

    with server_process(tmp_path, env={"WHISPERD_JOBS_ENABLED": "false"}) as server:
        events = asyncio.run(main(server))
        assert server.process.wait(60) == 0
    final = of(events, "conversation.item.input_audio_transcription.completed")
    assert final, events
    assert_jfk(final[0]["transcript"])
