"""Who said what, through a real server: diarized_json by voice (the official client parses
it), known speakers, per-channel transcripts of a stereo call, jobs, and the errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.audio import TranscriptionDiarized

from whisperd import audio, formats
from whisperd.api import create_app
from whisperd.engine import Segment, Transcriber, Transcription, Word
from whisperd.jobs.records import segments_from_json, segments_to_json
from whisperd.jobs.worker.work import job_result
from whisperd.settings import Settings
from whisperd.speakers.options import SpeakerOptions
from whisperd.speakers.voices import Voice, window_spans
from whisperd.spec import Spec

from support import assert_jfk, make_settings, normalise, running_app, spoken, wav

pytestmark = [pytest.mark.slow, pytest.mark.server]

GAP = np.zeros(int(0.8 * audio.SAMPLE_RATE), np.float32)
# Two speakers, as these tests know: how many there are is found in tests/test_speakers_model.py
# (and measured by bench/speakers.py); here, who is which, through every route.
TWO = {"min_speakers": "2", "max_speakers": "2"}


def level(samples: audio.Audio) -> audio.Audio:
    """``samples`` at a common loudness, so neither voice stands out by level alone."""
    rms = float(np.sqrt(np.mean(samples**2)))
    return (samples * (0.08 / max(rms, 1e-6))).astype(np.float32)


@pytest.fixture(scope="module")
def voices(jfk_audio: audio.Audio, hotwords_audio: audio.Audio) -> tuple[audio.Audio, audio.Audio]:
    return level(jfk_audio), level(hotwords_audio)


@pytest.fixture(scope="module")
def conversation(voices: tuple[audio.Audio, audio.Audio]) -> bytes:
    """Two real men taking turns, mono: JFK, the other, JFK, the other."""
    jfk, other = voices
    return wav(np.concatenate([jfk, GAP, other, GAP, jfk, GAP, other]))


@pytest.fixture(scope="module")
def call(voices: tuple[audio.Audio, audio.Audio]) -> tuple[bytes, audio.Audio, audio.Audio]:
    """A stereo call: JFK on channel 0, then the other man on channel 1 (silence on each
    channel while the other speaks); and each channel alone."""
    jfk, other = voices
    left = np.concatenate([jfk, GAP, np.zeros_like(other)])
    right = np.concatenate([np.zeros_like(jfk), GAP, other])
    return wav(left, right), left, right


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("speakers"), model_cache)


@pytest.fixture(scope="module")
def base_url(settings: Settings, engine: Transcriber) -> Iterator[str]:
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def data_url(samples: audio.Audio) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav(samples)).decode()


def by_speaker(segments: list[Any]) -> dict[str, str]:
    """Each speaker's words, in order."""
    said: dict[str, list[str]] = {}
    for s in segments:
        said.setdefault(s["speaker"], []).append(s["text"])
    return {speaker: normalise(" ".join(texts)) for speaker, texts in said.items()}


def assert_two_men(segments: list[Any], first: str = "A", second: str = "B") -> None:
    """JFK's words are all the first speaker's, the other man's all the second's."""
    said = by_speaker(segments)
    assert set(said) == {first, second}, said
    assert "country" in said[first] and "folder" not in said[first], said
    assert "folder" in said[second] and "country" not in said[second], said
    assert segments[0]["speaker"] == first


def test_diarized_json_tells_two_voices_apart(client: openai.OpenAI, conversation: bytes) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", conversation),
        response_format="diarized_json",
        chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
        extra_body=TWO,
    )
    assert isinstance(result, TranscriptionDiarized)
    assert result.task == "transcribe" and result.duration > 30
    segments = [s.model_dump() for s in result.segments]
    assert all(s["type"] == "transcript.text.segment" for s in segments)
    assert len({s["id"] for s in segments}) == len(segments)
    assert_two_men(segments)
    assert_jfk(result.text)
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)


def test_a_segment_that_starts_in_a_pause_is_its_speakers(
    client: openai.OpenAI, jfk_audio: audio.Audio, tmp_path: Path
) -> None:
    """A synthetic voice and JFK taking turns 0.7 s apart, with no speaker count given:
    Whisper starts JFK's second "And so" in the pause before it, and that silence is not
    taken for a voice (the other one's, or a third)."""
    said = "Thanks for calling the support line. How can I help you today?"
    robot = audio.decode(spoken(said, tmp_path / "robot.wav", "en-us"))
    pause = np.zeros(int(0.7 * audio.SAMPLE_RATE), np.float32)
    meeting = np.concatenate([robot, pause, jfk_audio, pause, robot, pause, jfk_audio])
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("meeting.wav", wav(meeting)), response_format="diarized_json"
    )
    segments = [s.model_dump() for s in result.segments]
    said_by = by_speaker(segments)
    assert set(said_by) == {"A", "B"}, segments
    assert said_by["A"] == normalise(f"{said} {said}"), said_by  # not JFK's "And" too
    assert "fellow" in said_by["B"] and "support" not in said_by["B"], said_by


def test_a_known_speakers_reference_names_their_voice(
    client: openai.OpenAI, conversation: bytes, voices: tuple[audio.Audio, audio.Audio]
) -> None:
    jfk, _ = voices
    reference = jfk[: 5 * audio.SAMPLE_RATE]
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", conversation),
        response_format="diarized_json",
        known_speaker_names=["JFK"],
        known_speaker_references=[data_url(reference)],
        extra_body=TWO,
    )
    assert_two_men([s.model_dump() for s in result.segments], first="JFK", second="A")


def test_verbose_json_srt_and_vtt_carry_speakers_when_asked(
    base_url: str, conversation: bytes
) -> None:
    def ask(fmt: str, **form: str) -> httpx.Response:
        response = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("talk.wav", conversation)},
            data={"response_format": fmt, "diarize": "true", **TWO, **form},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response

    verbose = ask("verbose_json").json()
    assert_two_men(verbose["segments"])
    assert verbose["words"]
    # with the words alone, each word says whose it is
    words = ask("verbose_json", **{"timestamp_granularities[]": "word"}).json()
    assert words.get("segments") is None
    said = {who: " ".join(w["word"] for w in words["words"] if w["speaker"] == who) for who in "AB"}
    assert "country" in said["A"] and "folder" in said["B"], said
    srt = ask("srt").text
    assert "\nA: " in srt and "\nB: " in srt
    vtt = ask("vtt").text
    assert "<v A>" in vtt and "<v B>" in vtt


def test_a_stream_sends_segments_with_speakers(base_url: str, conversation: bytes) -> None:
    with httpx.stream(
        "POST",
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("talk.wav", conversation)},
        data={"response_format": "diarized_json", "stream": "true", **TWO},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line]
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert_two_men(segments)
    assert events[-1]["type"] == "transcript.text.done"
    assert_jfk(events[-1]["text"])


def test_a_stereo_call_has_one_speaker_per_channel(
    base_url: str, call: tuple[bytes, audio.Audio, audio.Audio]
) -> None:
    stereo, left, right = call

    def transcribe(data: bytes, **form: str) -> dict[str, Any]:
        response = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("call.wav", data)},
            data={"response_format": "verbose_json", **form},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    merged = transcribe(stereo, multichannel="true")
    assert_two_men(merged["segments"])
    assert {s["channel"] for s in merged["segments"]} == {0, 1}
    for channel, alone in ((0, left), (1, right)):
        mono = transcribe(wav(alone))["text"]
        heard = " ".join(s["text"] for s in merged["segments"] if s["channel"] == channel)
        assert normalise(heard) == normalise(mono)
    named = transcribe(
        stereo,
        multichannel="true",
        **{"known_speaker_names[]": "Agent", "timestamp_granularities[]": "word"},
    )
    # the words of both channels, in time order, each with its channel and speaker
    starts = [w["start"] for w in named["words"]]
    assert starts == sorted(starts)
    said = {w["channel"]: w["speaker"] for w in named["words"]}
    assert said == {0: "Agent", 1: "B"}
    heard = {c: " ".join(w["word"] for w in named["words"] if w["channel"] == c) for c in (0, 1)}
    assert "country" in heard[0] and "folder" in heard[1], heard


def test_the_function_labels_speakers(base_url: str, call: tuple[bytes, Any, Any]) -> None:
    response = httpx.post(
        f"{base_url}/function/whisper?format=diarized_json&multichannel=true",
        content=call[0],
        headers={"Content-Type": "audio/wav"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert_two_men(response.json()["segments"])


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"known_speaker_names[]": ["A", "B"], "known_speaker_references[]": ["x"]}, "names"),
        ({"known_speaker_references[]": ["data:audio/wav;base64,AAAA"]}, "references"),
        ({"known_speaker_names[]": "X", "known_speaker_references[]": "not a url"}, "references"),
        ({"known_speaker_names[]": "X", "known_speaker_references[]": "data:;base64,@@"}, "ref"),
        ({"min_speakers": "3", "max_speakers": "2"}, "min_speakers"),
        ({"max_speakers": "0"}, "max_speakers"),
        ({"chunking_strategy": "sometimes"}, "chunking_strategy"),
        ({"chunking_strategy": "[" * 100_000 + "]" * 100_000}, "chunking_strategy"),
        ({"chunking_strategy": '{"type": "server_vad", "threshold": NaN}'}, "chunking_strategy"),
        ({"chunking_strategy": '{"type": "server_vad", "prefix_padding_ms": "1"}'}, "chunking"),
        ({"chunking_strategy": '{"type": "server_vad", "silence_duration_ms": -1}'}, "chunking"),
        # an object as OpenAI's SDKs send one in a form
        ({"chunking_strategy[type]": "bogus"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "5"}, "chunk"),
    ],
)
def test_bad_speaker_fields_are_400(base_url: str, form: dict[str, Any], param: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("jfk.wav", wav(np.zeros(16000, np.float32)))},
        data={"response_format": "diarized_json", **form},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert param in (error["param"] or ""), error


def test_references_that_are_not_audio_too_short_or_too_long_are_400(
    base_url: str, voices: tuple[audio.Audio, audio.Audio]
) -> None:
    jfk, _ = voices
    cases = {
        "not audio": "data:audio/wav;base64," + base64.b64encode(b"hello world" * 50).decode(),
        "cut at ';' (curl -F)": "data:audio/wav",
        "1 s": data_url(jfk[: audio.SAMPLE_RATE]),
        "11 s": data_url(np.concatenate([jfk, jfk])[: 11 * audio.SAMPLE_RATE]),
    }
    for what, reference in cases.items():
        response = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("jfk.wav", wav(jfk))},
            data={
                "response_format": "diarized_json",
                "known_speaker_names[]": "JFK",
                "known_speaker_references[]": reference,
            },
            timeout=60,
        )
        assert response.status_code == 400, (what, response.text)
        error = response.json()["error"]
        assert error["param"] == "known_speaker_references[]", what
        assert ("--form-string" in error["message"]) == what.startswith("cut"), error


@pytest.mark.parametrize("recording", ["mono", "mono stored as stereo"])
def test_multichannel_on_a_mono_recording_is_400(
    base_url: str, jfk_path: Path, recording: str
) -> None:
    data = audio.test_tone(1.0) if recording == "mono" else jfk_path.read_bytes()
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("call.wav", data)},
        data={"multichannel": "true"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "multichannel"


def test_a_jobs_chunks_are_labelled_together_at_the_merge(
    voices: tuple[audio.Audio, audio.Audio],
) -> None:
    """Each chunk's segments keep their voices in the store; the merge clusters them all at
    once, so a speaker has one label in every chunk."""
    from whisperd.jobs.chunks import merge
    from whisperd.jobs.records import ChunkRecord
    from whisperd.jobs.states import ChunkState
    from whisperd.speakers.encoder import voice_encoder

    jfk, other = voices
    encoder = voice_encoder()

    def said(start: float, samples: audio.Audio, text: str) -> Segment:
        spans = tuple(window_spans(start, start + audio.duration(samples)))
        windows = [
            samples[round((a - start) * audio.SAMPLE_RATE) : round((b - start) * audio.SAMPLE_RATE)]
            for a, b in spans
        ]
        voice = Voice(spans, encoder.embed(windows))
        end = start + audio.duration(samples)
        return Segment(0, 0, start, end, text, (1,), 0.0, -0.1, 1.0, 0.0, voice=voice)

    chunks = [
        [said(0.0, jfk, " country"), said(12.0, other, " folder")],
        [said(60.0, other, " folder"), said(65.0, jfk, " country")],
    ]
    records = [
        ChunkRecord("job", i, ChunkState.DONE, 60.0 * i, 60.0, segments=segments_to_json(c))
        for i, c in enumerate(chunks)
    ]
    spec = Spec(response_format="diarized_json", speakers=SpeakerOptions(diarize=True))
    body, _ = job_result(spec, merge(records, duration=120.0, task="transcribe"))
    assert_two_men(json.loads(body)["segments"])


def test_a_segment_is_split_where_the_speaker_changes() -> None:
    from whisperd.speakers.diarize import diarize

    words = tuple(Word(i * 0.5, i * 0.5 + 0.4, f" w{i}", 1.0) for i in range(8))
    spans = tuple(window_spans(0.0, 4.0))
    near = np.array([1.0] + [0.0] * 255, np.float32)
    far = np.array([0.0, 1.0] + [0.0] * 254, np.float32)
    vectors = np.stack([near if (a + b) / 2 < 2.0 else far for a, b in spans])
    segment = Segment(0, 0, 0.0, 4.0, "".join(w.word for w in words), (1, 2), 0.0, -0.1, 1.0, 0.0)
    segment = Segment(**{**_fields(segment), "words": words, "voice": Voice(spans, vectors)})
    result = diarize(
        Transcription(segment.text.strip(), "en", 1.0, 4.0, "transcribe", (segment,)),
        SpeakerOptions(diarize=True, min_speakers=2),
    )
    assert [s.speaker for s in result.segments] == ["A", "B"]
    assert "".join(s.text for s in result.segments) == segment.text
    assert [s.id for s in result.segments] == [0, 1]
    assert result.segments[0].end <= result.segments[1].start


def _fields(segment: Segment) -> dict[str, Any]:
    return {name: getattr(segment, name) for name in Segment.__dataclass_fields__}


def test_a_chunks_voices_and_a_jobs_speaker_options_are_stored_and_read_back() -> None:
    vectors = np.random.default_rng(0).random((3, 256)).astype(np.float32)
    voice = Voice(((0.0, 1.6), (0.8, 2.4), (1.6, 3.2)), vectors)
    segment = Segment(0, 0, 0.0, 3.2, " hi", (1,), 0.0, -0.1, 1.0, 0.0, voice=voice)
    [back] = segments_from_json(segments_to_json([segment]))
    assert back.voice is not None and back.voice.spans == voice.spans
    assert np.allclose(back.voice.vectors, vectors, atol=1e-3)
    spec = Spec(
        response_format="diarized_json",
        speakers=SpeakerOptions(diarize=True, names=("Ann",), references=((0.5,) * 4,)),
    )
    assert Spec.from_json(spec.to_json()) == spec


def test_diarized_json_renders_as_openai_does() -> None:
    segment = Segment(3, 0, 1.0, 2.5, " Hello.", (1,), 0.0, -0.1, 1.0, 0.0, speaker="Ann")
    body = formats.dumped(
        formats.to_diarized_json(Transcription("Hello.", "en", 1.0, 2.5, "transcribe", (segment,)))
    )
    assert TranscriptionDiarized.model_validate(body).segments[0].speaker == "Ann"
    assert body["segments"][0] == {
        "type": "transcript.text.segment",
        "id": "seg_3",
        "start": 1.0,
        "end": 2.5,
        "text": "Hello.",
        "speaker": "Ann",
    }
