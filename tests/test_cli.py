"""The real ``whisperd`` command in a subprocess, on the real recordings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import whisperd
from whisperd.bench import words

Result = subprocess.CompletedProcess[str]
Run = Callable[..., Result]

SRT_SPAN = re.compile(r"^\d{2,}:\d{2}:\d{2},\d{3} --> \d{2,}:\d{2}:\d{2},\d{3}$")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user with an empty cache and no network to a model hub."""
    home = tmp_path_factory.mktemp("cli-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPERD_")}
    env.pop("COLUMNS", None)  # output must not depend on the terminal running the tests
    env.update(
        HF_HUB_OFFLINE="1",
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        WHISPERD_OFFLINE="true",
    )
    return env


@pytest.fixture(scope="module")
def whisperd_cli(cli_env: dict[str, str]) -> Run:
    def run(*args: str | Path, cwd: Path | None = None) -> Result:
        return subprocess.run(
            [sys.executable, "-m", "whisperd", *map(str, args)],
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=cwd,
            timeout=240,
        )

    return run


def parse_srt(text: str) -> list[tuple[str, str]]:
    cues = []
    for number, block in enumerate(text.strip("\n").split("\n\n"), start=1):
        index, span, *lines = block.split("\n")
        assert index == str(number)
        assert SRT_SPAN.match(span), span
        assert lines and all(lines)
        cues.append((span, " ".join(lines)))
    return cues


def assert_clean_failure(result: Result) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error:")
    assert result.stdout == ""


def test_version(whisperd_cli: Run) -> None:
    result = whisperd_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"whisperd {whisperd.__version__}"


def test_models_lists_the_bundled_ones(whisperd_cli: Run) -> None:
    result = whisperd_cli("models")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells
    assert rows["tiny.en"][1:3] == ["bundled", "yes"]
    assert rows["base"][1:3] == ["bundled", "yes"]
    assert rows["large-v3"][1:3] == ["hub", "no"]
    assert "whisperd[base]" in result.stdout  # the extra that installs base, shown whole
    assert "turbo -> large-v3-turbo" in result.stdout


@pytest.mark.slow
def test_transcribe_prints_the_text(whisperd_cli: Run, jfk_path: Path, jfk_text: str) -> None:
    result = whisperd_cli("transcribe", jfk_path)
    assert result.returncode == 0, result.stderr
    assert words(result.stdout) == words(jfk_text)
    assert len(result.stdout.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_verbose_json_with_word_timestamps(
    whisperd_cli: Run, jfk_path: Path, jfk_text: str
) -> None:
    result = whisperd_cli("transcribe", "-f", "verbose_json", "--word-timestamps", jfk_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["language"] == "english" and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(11.0, abs=0.05)
    assert words(" ".join(w["word"] for w in body["words"])) == words(jfk_text)
    previous_start = previous_end = 0.0
    for w in body["words"]:
        assert set(w) == {"word", "start", "end"}
        assert 0.0 <= w["start"] <= w["end"] <= 11.05
        assert w["start"] >= previous_start and w["end"] >= previous_end
        previous_start, previous_end = w["start"], w["end"]


@pytest.mark.slow
def test_output_dir_gets_one_srt_per_input(
    whisperd_cli: Run, jfk_path: Path, hotwords_path: Path, jfk_text: str, tmp_path: Path
) -> None:
    out = tmp_path / "subtitles"
    result = whisperd_cli("transcribe", "-f", "srt", "-o", out, jfk_path, hotwords_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["hotwords.srt", "jfk.srt"]
    jfk_cues = parse_srt((out / "jfk.srt").read_text(encoding="utf-8"))
    assert words(" ".join(text for _, text in jfk_cues)) == words(jfk_text)
    assert jfk_cues[0][0].startswith("00:00:00,000 --> ")
    hotwords_cues = parse_srt((out / "hotwords.srt").read_text(encoding="utf-8"))
    assert {"folder", "again"} <= set(words(" ".join(text for _, text in hotwords_cues)))


def test_missing_file_fails_in_one_line(whisperd_cli: Run, tmp_path: Path) -> None:
    result = whisperd_cli("transcribe", "nope.wav", cwd=tmp_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: nope.wav: no such file"]


@pytest.fixture(scope="module")
def not_audio_result(
    whisperd_cli: Run, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Result]:
    notes = tmp_path_factory.mktemp("not-audio") / "notes.pdf"
    notes.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 40)
    return notes, whisperd_cli("transcribe", notes)


@pytest.mark.slow
def test_non_audio_file_fails_without_a_traceback(not_audio_result: tuple[Path, Result]) -> None:
    notes, result = not_audio_result
    assert_clean_failure(result)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert str(notes) in message
    assert "mp3, wav" in message  # says what would work


@pytest.mark.slow
def test_non_audio_file_error_is_one_line(not_audio_result: tuple[Path, Result]) -> None:
    _, result = not_audio_result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_english_only_model_refuses_another_language(whisperd_cli: Run, jfk_path: Path) -> None:
    result = whisperd_cli("transcribe", "--language", "de", jfk_path)
    assert_clean_failure(result)
    assert "English-only" in " ".join(result.stderr.split())


def test_bad_format_is_a_usage_error(whisperd_cli: Run, jfk_path: Path) -> None:
    result = whisperd_cli("transcribe", "-f", "docx", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "srt" in result.stderr
