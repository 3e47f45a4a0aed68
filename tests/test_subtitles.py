"""Cues fit for a screen, cut from word timestamps: the splitter on built word lists (fast),
then the options through every route, a job and the CLI on real speech."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from whisperd import formats
from whisperd.api import create_app
from whisperd.engine import Segment, Transcriber, Transcription, Word
from whisperd.errors import InvalidRequestError
from whisperd.render import render
from whisperd.settings import Settings
from whisperd.spec import Spec
from whisperd.subtitles import Cue, Cuer, SubtitleOptions, line_text
from whisperd_bench.wer import word_error_rate

from support import JFK, make_settings, poll, running_app, speech_flac

HIGHLIGHT = SubtitleOptions(highlight_words=True)

SPEECH = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can "
    "do for your country. Extraordinarily incomprehensibilities notwithstanding, we go on."
)
SPAN = re.compile(r"^(\d{2,}):(\d{2}):(\d{2})[,.](\d{3}) --> (\d{2,}):(\d{2}):(\d{2})[,.](\d{3})$")


def timed(text: str, start: float = 0.0, *, step: float = 0.4, length: float = 0.3) -> Segment:
    """A segment of ``text`` whose words last ``length`` seconds, one every ``step``."""
    words = tuple(
        Word(start + i * step, start + i * step + length, f" {w}", 0.9)
        for i, w in enumerate(text.split())
    )
    end = words[-1].end if words else start
    return Segment(0, 0, start, end, f" {text}", (), 0.0, -0.2, 1.2, 0.01, words)


def transcription(*segments: Segment) -> Transcription:
    text = "".join(s.text for s in segments).strip()
    return Transcription(text, "en", 1.0, segments[-1].end, "transcribe", segments)


def parse(text: str) -> list[tuple[float, float, list[str]]]:
    """(start, end, lines) of each cue of an SRT or WebVTT document, checked for form."""
    body = text.removeprefix("WEBVTT\n\n")
    assert body.endswith("\n\n")
    cues = []
    for block in body[:-2].split("\n\n"):
        head = block.split("\n")
        if SPAN.match(head[0]) is None:  # SRT: a number first
            head = head[1:]
        span, *lines = head
        match = SPAN.match(span)
        assert match, span
        t = [int(g) for g in match.groups()]
        start = t[0] * 3600 + t[1] * 60 + t[2] + t[3] / 1000
        end = t[4] * 3600 + t[5] * 60 + t[6] + t[7] / 1000
        assert lines and all(lines), block
        cues.append((start, end, lines))
    return cues


def visible(line: str) -> str:
    return re.sub(r"</?u>", "", line)


def assert_fit(
    cues: list[tuple[float, float, list[str]]], width: int, count: int | None = None
) -> None:
    """Times that run on without overlap, lines within the width (but for a lone long
    word), no more lines than ``count``."""
    last_end = 0.0
    for start, end, lines in cues:
        assert last_end <= start <= end, (last_end, start, end)
        last_end = end
        assert count is None or len(lines) <= count, lines
        for line in lines:
            shown = visible(line)
            assert len(shown) <= width or " " not in shown, shown


def cut(options: SubtitleOptions, *segments: Segment) -> list[Cue]:
    cuer = Cuer(options)
    return [cue for s in segments for cue in cuer.cues(s)]


def test_no_option_is_one_cue_per_segment_as_before() -> None:
    segments = (timed(SPEECH), timed("the end", 40.0))
    assert not SubtitleOptions().active
    assert [(c.start, c.end) for c in cut(SubtitleOptions(), *segments)] == [
        (s.start, s.end) for s in segments
    ]
    plain = render(transcription(*segments), "srt").text
    assert plain == formats.to_srt(transcription(*segments), SubtitleOptions())
    assert plain.count("-->") == 2


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
@pytest.mark.parametrize(("width", "count"), [(32, 2), (42, 1), (10, 3), (1, 2)])
def test_lines_fit_the_width_and_cues_the_count(fmt: str, width: int, count: int) -> None:
    options = SubtitleOptions(max_line_width=width, max_line_count=count)
    cues = parse(render(transcription(timed(SPEECH)), fmt, subtitles=options).text)
    assert_fit(cues, width, count)
    said = " ".join(line for _, _, lines in cues for line in lines)
    assert said.split() == SPEECH.split()  # every word, once, in order


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
@pytest.mark.parametrize("width", [20, 42])
def test_a_speakers_label_counts_in_the_width(fmt: str, width: int) -> None:
    """SRT starts each cue with ``Agent: ``: its lines still fit (but for a lone long word
    after the label); VTT's voice tag is not shown."""
    options = SubtitleOptions(max_line_width=width, max_line_count=2)
    segments = (
        replace(timed(SPEECH), speaker="Agent"),
        replace(timed("the end", 40.0), speaker="B"),
    )
    cues = parse(render(transcription(*segments), fmt, subtitles=options).text)
    shown = [re.sub(r"^<v [^>]*>", "", line) for _, _, lines in cues for line in lines]
    for line in shown:
        assert len(line) <= width or " " not in re.sub(r"^(Agent|B): ", "", line), line
    first = [lines[0] for _, _, lines in cues]
    if fmt == "srt":
        assert first[0].startswith("Agent: ") and first[-1] == "B: the end"
    else:
        assert first[0].startswith("<v Agent>")


def test_lines_are_balanced() -> None:
    words = "And so my fellow Americans, ask not what your country can do"
    [cue] = cut(SubtitleOptions(max_line_width=42, max_line_count=2), timed(words))
    top, bottom = (line_text(line) for line in cue.lines)
    # filling the first line would give 40 characters over 19
    assert (top, bottom) == ("And so my fellow Americans, ask", "not what your country can do")


def test_cues_are_balanced_too() -> None:
    # filling each cue would leave "do" alone in the last of four
    words = "ask not what your country can do for you ask what you can do"
    cues = cut(SubtitleOptions(max_line_width=20, max_line_count=1), timed(words))
    assert [line_text(c.lines[0]) for c in cues] == [
        "ask not what",
        "your country can",
        "do for you ask",
        "what you can do",
    ]


def test_random_word_lists_keep_every_limit() -> None:
    rng = random.Random(16)
    vocabulary = [*SPEECH.replace(",", "").replace(".", "").split(), "a", "I", "x" * 45]
    for _ in range(200):
        segments, start = [], 0.0
        for _ in range(rng.randint(1, 4)):
            text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 40)))
            # word times that overlap the previous segment's, as Whisper's sometimes do
            segment = timed(text, start, step=rng.uniform(0.05, 0.6), length=rng.uniform(0, 0.7))
            segments.append(segment)
            start = segment.end - rng.uniform(0, 0.5)
        width, count, per_line = rng.randint(1, 50), rng.randint(1, 3), rng.randint(1, 6)
        seconds = rng.choice([None, 1.0, 3.5])
        options = SubtitleOptions(width, count, per_line, seconds, rng.random() < 0.3)
        cues = cut(options, *segments)
        last_end = 0.0
        for cue in cues:
            assert last_end <= cue.start <= cue.end
            last_end = cue.end
            assert len(cue.lines) <= count
            for line in cue.lines:
                assert len(line) <= per_line
                assert len(line_text(line)) <= width or len(line) == 1
            if seconds is not None and not options.highlight_words:
                assert cue.end - cue.start <= seconds or sum(map(len, cue.lines)) == 1
        if not options.highlight_words:
            shown = [w for cue in cues for line in cue.lines for w in line]
            assert shown == [w.word for s in segments for w in s.words or ()]


def test_words_per_line_and_cue_seconds() -> None:
    options = SubtitleOptions(max_words_per_line=3, max_line_count=1, max_cue_seconds=1.0)
    cues = cut(options, timed(SPEECH))
    assert all(len(c.lines) == 1 and len(c.lines[0]) <= 3 for c in cues)
    assert all(c.end - c.start <= 1.0 for c in cues)
    long_word = Segment(0, 0, 0.0, 5.0, " mmm", (), 0.0, 0.0, 1.0, 0.0, (Word(0, 5, " mmm", 1),))
    assert [(c.start, c.end) for c in cut(options, long_word)] == [(0.0, 5.0)]


def test_highlight_underlines_each_word_in_turn() -> None:
    segment = timed("ask not what your country can do", step=0.5, length=0.3)
    vtt = render(
        transcription(segment), "vtt", subtitles=SubtitleOptions(highlight_words=True)
    ).text
    cues = parse(vtt)
    lit = [re.findall(r"<u>(.*?)</u>", "\n".join(lines)) for _, _, lines in cues]
    assert [w for found in lit for w in found] == segment.text.split()
    assert all(len(found) <= 1 for found in lit)
    # the pauses between words show the cue with nothing underlined
    assert lit[:3] == [["ask"], [], ["not"]]
    assert cues[0][:2] == (0.0, 0.3) and cues[1][:2] == (0.3, 0.5)
    assert all(visible(" ".join(lines)) == segment.text.strip() for _, _, lines in cues)
    assert_fit(cues, 1000)


def test_vtt_escapes_the_text_but_not_the_underline() -> None:
    segment = timed("a <b> & c")
    vtt = render(
        transcription(segment), "vtt", subtitles=SubtitleOptions(highlight_words=True)
    ).text
    assert "<u>&lt;b&gt;</u>" in vtt and "<u>&amp;</u>" in vtt
    assert "<b>" not in vtt


def test_words_without_spaces_are_joined_as_they_are() -> None:
    chars = "今天天气很好我们去公园散步吧"
    words = tuple(Word(i * 0.3, i * 0.3 + 0.25, c, 0.9) for i, c in enumerate(chars))
    segment = Segment(0, 0, 0.0, words[-1].end, chars, (), 0.0, 0.0, 1.0, 0.0, words)
    cues = cut(SubtitleOptions(max_line_width=8, max_line_count=1), segment)
    assert [line_text(c.lines[0]) for c in cues] == ["今天天气很好我", "们去公园散步吧"]


def test_a_segment_without_words_is_cut_by_its_text() -> None:
    untimed = Segment(0, 0, 10.0, 20.0, f" {SPEECH}", (), 0.0, 0.0, 1.0, 0.0, None)
    cues = cut(SubtitleOptions(max_line_width=32, max_line_count=2), untimed)
    assert len(cues) > 1 and cues[0].start == 10.0 and cues[-1].end == pytest.approx(20.0)
    assert " ".join(line_text(line) for c in cues for line in c.lines) == SPEECH


@pytest.mark.parametrize(
    ("options", "fmt", "param"),
    [
        (SubtitleOptions(max_line_width=0), "srt", "max_line_width"),
        (SubtitleOptions(max_words_per_line=-2), "vtt", "max_words_per_line"),
        (SubtitleOptions(max_cue_seconds=float("nan")), "srt", "max_cue_seconds"),
        (SubtitleOptions(max_cue_seconds=0.0), "srt", "max_cue_seconds"),
        (SubtitleOptions(max_line_width=32), "json", "response_format"),
        (SubtitleOptions(highlight_words=True), "text", "response_format"),
        (SubtitleOptions(max_line_count=2), "srt", "max_line_count"),
    ],
)
def test_bad_options_are_refused(options: SubtitleOptions, fmt: str, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        options.check(fmt)
    assert caught.value.param == param


def test_a_job_keeps_its_options_and_renders_with_them() -> None:
    options = SubtitleOptions(max_line_width=20, max_line_count=2, highlight_words=True)
    spec = Spec(response_format="vtt", subtitles=options)
    again = Spec.from_json(spec.to_json())
    assert again == spec
    assert Spec.from_json(Spec(response_format="srt").to_json()).subtitles == SubtitleOptions()
    body = again.render(transcription(timed(SPEECH))).text
    assert body == render(transcription(timed(SPEECH)), "vtt", subtitles=options).text


# --- through the real stack ---------------------------------------------------------------
FIT = {"max_line_width": 32, "max_line_count": 2}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, engine: Transcriber
) -> Iterator[tuple[str, Settings]]:
    """A real server with jobs (its embedded Redis in a temporary directory)."""
    root = tmp_path_factory.mktemp("subtitles")
    settings = make_settings(root, model_cache, job_poll_interval=0.1)
    with running_app(create_app(settings, engine=engine)) as url:
        yield url, settings


@pytest.fixture(scope="module")
def client(server: tuple[str, Settings]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.slow
@pytest.mark.server
def test_a_minute_of_speech_fits_the_screen(
    server: tuple[str, Settings], client: openai.OpenAI, jfk_text: str
) -> None:
    minute = speech_flac(70)  # five sentences
    srt = client.audio.transcriptions.create(
        model="whisper-1",
        file=("minute.flac", minute),
        response_format="srt",
        extra_body=FIT,
    )
    # VTT from the function route, whose cues are written as the segments come
    vtt = httpx.post(
        f"{server[0]}/function/whisper",
        params={"format": "vtt", **FIT},
        content=minute,
        headers={"Content-Type": "audio/flac"},
        timeout=240,
    )
    assert vtt.status_code == 200, vtt.text
    for document in (str(srt), vtt.text):
        cues = parse(document)
        assert_fit(cues, 32, 2)
        assert len(cues) >= 10  # five times the jfk sentence (107 characters), 64 at most a cue
        said = " ".join(line for _, _, lines in cues for line in lines)
        # all the speech is there (batched decoding may hear a word or two differently)
        assert word_error_rate(said, " ".join([jfk_text] * 5)) < 0.15, said


def cli_cues(fmt: str, flags: list[str], settings: Settings) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WHISPERD_")},
        "WHISPERD_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "WHISPERD_OFFLINE": "true",
    }
    command = [sys.executable, "-m", "whisperd", "transcribe", "-f", fmt, *flags, str(JFK)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("srt", FIT),
        ("vtt", {"max_words_per_line": 4, "max_line_count": 1, "highlight_words": True}),
    ],
)
def test_every_route_the_cli_and_a_job_give_the_same_cues(
    server: tuple[str, Settings], client: openai.OpenAI, fmt: str, options: dict[str, Any]
) -> None:
    url, settings = server
    with JFK.open("rb") as f:
        openai_cues = str(
            client.audio.transcriptions.create(
                model="whisper-1",
                file=f,
                response_format=fmt,  # type: ignore[call-overload]
                extra_body=options,
            )
        )
    assert_fit(parse(openai_cues), 32)
    assert ("<u>" in openai_cues) == bool(options.get("highlight_words"))
    query = {"format": fmt, **{k: str(v).lower() for k, v in options.items()}}
    function = httpx.post(
        f"{url}/function/whisper",
        params=query,
        content=JFK.read_bytes(),
        headers={"Content-Type": "audio/flac"},
        timeout=120,
    )
    assert function.status_code == 200, function.text
    assert function.text == openai_cues
    with JFK.open("rb") as f:
        form = {"response_format": fmt, **{k: str(v).lower() for k, v in options.items()}}
        job = httpx.post(f"{url}/v1/jobs", files={"file": f}, data=form, timeout=60)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]

    def result() -> str | None:
        got = httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=10)
        return got.text if got.status_code == 200 else None

    assert poll(result, timeout=120, what="the job's result") == openai_cues
    flags = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in options.items()
    ]
    assert cli_cues(fmt, flags, settings) == openai_cues


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"max_line_width": "0"}, 422, "max_line_width"),
        ({"max_line_count": "-1", "max_line_width": "32"}, 422, "max_line_count"),
        ({"max_words_per_line": "two"}, 422, "max_words_per_line"),
        ({"max_cue_seconds": "nan"}, 422, "max_cue_seconds"),
        ({"max_line_width": "32", "response_format": "json"}, 400, "response_format"),
        ({"highlight_words": "true", "response_format": "verbose_json"}, 400, "response_format"),
        ({"max_line_count": "2", "response_format": "srt"}, 400, "max_line_count"),
    ],
)
def test_bad_subtitle_options_are_refused_on_every_route(
    server: tuple[str, Settings], fields: dict[str, str], status: int, param: str
) -> None:
    url = server[0]
    audio = ("jfk.flac", JFK.read_bytes())
    form = {"response_format": "srt", **fields}
    query = {("format" if k == "response_format" else k): v for k, v in form.items()}
    answers = [
        httpx.post(f"{url}/v1/audio/transcriptions", files={"file": audio}, data=form),
        httpx.post(f"{url}/v1/audio/translations", files={"file": audio}, data=form),
        httpx.post(f"{url}/v1/jobs", files={"file": audio}, data=form),
        httpx.post(f"{url}/function/whisper", params=query, content=JFK.read_bytes()),
        httpx.post(f"{url}/async-function/whisper", params=query, content="http://x/a.mp3"),
    ]
    for answer in answers:
        assert answer.status_code == status, (answer.request.url, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param, error
        assert set(error) == {"message", "type", "param", "code"}
