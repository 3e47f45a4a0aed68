"""The parts of a live session, without a server: stable text, turn detection, the session's
configuration and the telephony codecs."""

from __future__ import annotations

import threading

import anyio
import av
import numpy as np
import pytest
from fastapi import FastAPI

from whisperd.audio import Audio
from whisperd.engine import PROMPT_CHARS, Item
from whisperd.errors import ServiceUnavailableError
from whisperd.realtime.agreement import StableText
from whisperd.realtime.codecs import G711, InputAudio, pcm16
from whisperd.realtime.protocol import ProtocolError, SessionConfig, check_type, parse
from whisperd.realtime.session import AHEAD_S, Budget, Decode, Pace
from whisperd.realtime.turns import CHUNK, SpeechProbabilities, TurnDetector
from whisperd.scheduler import Task
from whisperd.server import uvicorn_config
from whisperd.settings import Settings
from whisperd.spec import Spec


def test_only_words_two_decodes_agree_on_are_sent_and_never_taken_back() -> None:
    stable = StableText()
    assert stable.update("And so my") == ""  # one decode: nothing agreed yet
    # "And" is agreed, but not the word after it ("so" / "so,"): it may still change
    assert stable.update("And so, my fellow") == ""
    assert stable.update("And so, my fellow Americans") == "And so, my"
    assert stable.update("And so, my fellow Americans, ask") == ""
    assert stable.update("And so, my fellow Americans, ask not") == " fellow Americans,"
    # a decode that changes sent words sends nothing, and the text sent stays
    assert stable.update("Ands oh my fellow Americans, ask not what") == ""
    assert stable.text == "And so, my fellow Americans,"
    assert stable.finish("And so, my fellow Americans, ask not.") == " ask not."
    assert stable.text == "And so, my fellow Americans, ask not."


def test_a_final_text_that_does_not_continue_the_sent_text_adds_nothing() -> None:
    stable = StableText()
    stable.update("one two three")
    assert stable.update("one two three four") == "one two"
    assert stable.finish("won too three four") == ""
    assert stable.finish("One, two three four.") == " three four."  # punctuation aside


def test_turns_start_pause_resume_and_stop() -> None:
    detector = TurnDetector(threshold=0.5, silence_ms=100)  # 4 chunks of 32 ms
    speech, quiet = [0.9] * 5, [0.1] * 2
    unsure = 0.4  # under the threshold, over the threshold less the hysteresis
    probabilities = [0.1, *speech, *quiet, *speech, unsure, 0.1, unsure, unsure, unsure, 0.9]
    changes = detector.update(np.array(probabilities))
    kinds = [(c.kind, c.sample // CHUNK) for c in changes]
    # a pause shorter than 4 chunks resumes; an unsure chunk is not a pause, but once one has
    # begun it counts toward the end
    assert kinds == [
        ("started", 1),
        ("paused", 6),
        ("resumed", 8),
        ("paused", 14),
        ("stopped", 18),
        ("started", 18),
    ]
    detector.reset()
    assert not detector.speaking


def test_streaming_vad_equals_vad_over_the_whole_recording(jfk_audio: Audio) -> None:
    from faster_whisper.vad import get_vad_model

    samples = jfk_audio[: jfk_audio.size // CHUNK * CHUNK]
    whole = get_vad_model()(samples).reshape(-1)
    stream = SpeechProbabilities()
    pieces = [stream.feed(samples[i : i + 1000]) for i in range(0, samples.size, 1000)]
    assert np.allclose(np.concatenate(pieces), whole, atol=1e-5)


def test_a_session_update_is_merged_and_checked_whole() -> None:
    config = SessionConfig()
    assert config.input.turn_detection is not None and config.model is None
    config = config.updated({"audio": {"input": {"turn_detection": {"silence_duration_ms": 800}}}})
    assert config.input.turn_detection is not None
    assert config.input.turn_detection.silence_ms == 800
    assert config.input.turn_detection.threshold == 0.5  # kept
    config = config.updated({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert config.input.turn_detection is not None and config.input.turn_detection.silence_ms == 800
    off = config.updated({"audio": {"input": {"turn_detection": None}}})
    assert off.input.turn_detection is None
    named = config.updated({"audio": {"input": {"transcription": {"model": "base"}}}})
    assert named.model == "base"
    assert (
        config.updated(
            {"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}
        ).model
        is None
    )
    with pytest.raises(ProtocolError) as bad:
        config.updated({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}})
    assert bad.value.param == "session.audio.input.format.rate"
    with pytest.raises(ProtocolError) as unknown:
        config.updated({"audio": {"input": {"colour": "blue"}}})
    assert unknown.value.code == "unknown_parameter"
    with pytest.raises(ProtocolError):
        config.updated("not an object")


def test_a_prompt_is_kept_as_far_as_whisper_reads_it() -> None:
    """Whisper reads a prompt's last tokens and hotwords' first: a huge one is cut there once,
    not kept whole in a session or a job and tokenized again at every window."""
    words = " ".join(f"word{i}" for i in range(200_000))  # 1.4 MB
    spec = Spec(prompt=words, hotwords=words)
    assert spec.prompt is not None and spec.hotwords is not None
    assert len(spec.prompt) == len(spec.hotwords) == PROMPT_CHARS
    assert words.endswith(spec.prompt) and words.startswith(spec.hotwords)
    assert Spec(prompt="Kubernetes, k3s.").prompt == "Kubernetes, k3s."
    config = SessionConfig().updated({"audio": {"input": {"transcription": {"prompt": words}}}})
    said = config.described("sess")["audio"]["input"]["transcription"]["prompt"]
    assert said == spec.prompt


@pytest.mark.parametrize(
    "message",
    [
        "{",
        "[]",
        '{"type": 1}',
        '{"type": "response.create"}',
        b"\x00",
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_events_that_are_not_client_events(message: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        check_type(parse(message))


@pytest.mark.parametrize(
    ("kind", "codec"), [("audio/pcmu", "pcm_mulaw"), ("audio/pcma", "pcm_alaw")]
)
def test_g711_decodes_as_ffmpeg_encodes(kind: str, codec: str, jfk_audio: Audio) -> None:
    linear = np.frombuffer(pcm16(jfk_audio[:16000], rate=8000), dtype="<i2")
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(linear.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    encoded = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    decoded = G711[kind][np.frombuffer(encoded, dtype=np.uint8)].astype(float)
    # G.711 keeps about 13 bits: the error is a few percent of each sample at most
    assert np.abs(decoded - linear).max() <= 0.04 * np.abs(linear).max() + 16
    # appended a byte at a time, it comes out as 16 kHz samples all the same
    stream = InputAudio(kind)
    out = np.concatenate(
        [stream.convert(encoded[i : i + 333]) for i in range(0, len(encoded), 333)]
    )
    assert abs(out.size - 16000) <= 64


def test_pcm_split_mid_sample_is_kept_whole() -> None:
    stream = InputAudio("audio/pcm")
    # 3 s: an append is resampled a second at a time, and the seconds join as one stream
    data = pcm16(np.sin(np.linspace(0, 900, 48000)).astype(np.float32) * 0.5)
    whole = InputAudio("audio/pcm").convert(data)
    halves = np.concatenate([stream.convert(data[:1001]), stream.convert(data[1001:])])
    assert halves.size == whole.size and np.allclose(halves, whole, atol=1e-6)


def test_no_partial_decode_starts_while_a_final_one_runs() -> None:
    partials = Budget(1)
    gate = threading.Event()

    def submit() -> Task[Item]:
        assert gate.wait(10)
        raise ServiceUnavailableError("The engine is shutting down.")

    async def session() -> None:
        async with anyio.create_task_group() as group:
            final = Decode(group, submit, anyio.CapacityLimiter(2), partials)
            await anyio.wait_all_tasks_blocked()  # the decode runs, in a thread
            assert partials.holds == 1
            assert not partials.take()
            gate.set()
            with pytest.raises(ServiceUnavailableError):
                await final.result()
            assert partials.holds == 0
            assert partials.take()
            assert not partials.take()  # one at a time
            partials.release()

    anyio.run(session)


def test_a_session_that_stops_reading_is_not_closed_for_its_pong() -> None:
    # While its turns wait for transcripts a session reads nothing, the client's pong included:
    # a ping timeout closed it (1011) with committed turns never completed.
    config = uvicorn_config(FastAPI(), Settings())
    assert config.ws_ping_interval is not None and config.ws_ping_timeout is None


def test_audio_sent_faster_than_real_time_loses_the_live_priority() -> None:
    paced = Pace()
    for second in range(120):  # real time, 100 ms at a time
        paced.received(0.1, second / 10)
        assert paced.live(second / 10)
    flood = Pace()
    flood.received(30.0, 0.0)  # 30 s at once
    assert not flood.live(0.0)
    assert flood.live(30.0 - AHEAD_S)  # ...until real time has caught up
    burst = Pace()
    burst.received(1.0, 0.0)
    burst.received(AHEAD_S, 600.0)  # a long pause earns no credit for what comes after it
    assert burst.live(600.0)
    burst.received(1.0, 600.0)
    assert not burst.live(600.0)
