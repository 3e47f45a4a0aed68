"""The real ``whisperd`` command in a subprocess, on the real recordings."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import typer

import whisperd
from whisperd import cli
from whisperd.settings import Settings
from whisperd_bench.wer import words

from support import local_certificate, server_process

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
    def run(*args: str | Path, cwd: Path | None = None, stdin: Path | None = None) -> Result:
        with contextlib.ExitStack() as stack:
            source = None if stdin is None else stack.enter_context(stdin.open("rb"))
            return subprocess.run(
                [sys.executable, "-m", "whisperd", *map(str, args)],
                capture_output=True,
                text=True,
                env=cli_env,
                cwd=cwd,
                stdin=source,
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


def test_english_only_model_refuses_another_language(whisperd_cli: Run, jfk_path: Path) -> None:
    result = whisperd_cli("transcribe", "--language", "DE", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "English-only; language 'de'" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_detect_prints_each_files_language(
    whisperd_cli: Run, german_wav: Path, jfk_path: Path
) -> None:
    result = whisperd_cli("detect", german_wav, jfk_path)
    assert result.returncode == 0, result.stderr
    german, english = result.stdout.splitlines()
    assert german.startswith(f"{german_wav}: de (german) 0.")
    assert english.startswith(f"{jfk_path}: en (english) 0.")
    as_json = whisperd_cli("detect", "--json", jfk_path)
    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stdout.splitlines()
    body = json.loads(line)
    assert (body["file"], body["language"]) == (str(jfk_path), "en")
    assert body["languages"][0]["language"] == "en"
    assert len(body["languages"]) == 5


def test_detect_with_an_english_only_model_is_a_usage_error(
    whisperd_cli: Run, jfk_path: Path
) -> None:
    result = whisperd_cli("detect", "-m", "tiny.en", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "English-only" in result.stderr


def test_multilingual_on_an_english_only_model_is_a_usage_error(
    whisperd_cli: Run, jfk_path: Path
) -> None:
    result = whisperd_cli("transcribe", "--multilingual", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "--multilingual needs a multilingual model" in " ".join(result.stderr.split())


def test_option_errors_name_the_flags(whisperd_cli: Run, jfk_path: Path) -> None:
    result = whisperd_cli("transcribe", "--diarize", "-f", "text", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    said = " ".join(result.stderr.split())
    assert "--diarize labels speakers" in said and "-f text has no speakers" in said, said
    result = whisperd_cli("transcribe", "--max-line-count", "2", "-f", "srt", jfk_path)
    assert result.returncode == 2
    said = " ".join(result.stderr.split())
    assert "--max-line-count needs --max-line-width or --max-words-per-line" in said, said


def test_bad_format_is_a_usage_error(whisperd_cli: Run, jfk_path: Path) -> None:
    result = whisperd_cli("transcribe", "-f", "docx", jfk_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "srt" in result.stderr


@pytest.mark.slow
def test_language_is_read_as_the_api_reads_it(
    whisperd_cli: Run, jfk_path: Path, jfk_text: str
) -> None:
    result = whisperd_cli("transcribe", "--language", " EN ", jfk_path)
    assert result.returncode == 0, result.stderr
    assert words(result.stdout) == words(jfk_text)


def test_unknown_language_is_a_usage_error_before_any_file(
    whisperd_cli: Run, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(b"%PDF-1.4\n")
    result = whisperd_cli("transcribe", "--language", "xx", notes)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Unknown language 'xx'; use an ISO-639-1 code such as 'en' or 'de'."
    ]


def test_a_directory_is_named_as_one(whisperd_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "talks").mkdir()
    result = whisperd_cli("transcribe", "talks", cwd=tmp_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: talks is a directory; pass the audio files in it, e.g. talks/*"
    ]


def test_inputs_that_would_write_the_same_output_are_refused(
    whisperd_cli: Run, jfk_path: Path, hotwords_path: Path, tmp_path: Path
) -> None:
    for folder, source in (("a", jfk_path), ("b", hotwords_path)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.flac").write_bytes(source.read_bytes())
    result = whisperd_cli("transcribe", "-o", "out", "a/x.flac", "b/x.flac", cwd=tmp_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: a/x.flac and b/x.flac would both be written to {Path('out', 'x.txt')}; "
        "transcribe them into different -o directories"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["taken", "taken/sub"])
def test_output_dir_that_cannot_be_made_fails_in_one_line(
    whisperd_cli: Run, jfk_path: Path, tmp_path: Path, target: str
) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    result = whisperd_cli("transcribe", "-o", target, jfk_path, cwd=tmp_path)
    assert_clean_failure(result)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot make the output directory {target}: ")


@pytest.mark.slow
def test_an_output_that_cannot_be_written_fails_that_input_only(
    whisperd_cli: Run, jfk_path: Path, hotwords_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "jfk.txt").mkdir()  # where jfk's transcript would go
    result = whisperd_cli("transcribe", "-o", tmp_path, jfk_path, hotwords_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: cannot write {tmp_path / 'jfk.txt'}: " in result.stderr
    assert f"wrote {tmp_path / 'hotwords.txt'}" in result.stderr
    assert {"folder", "again"} <= set(words((tmp_path / "hotwords.txt").read_text("utf-8")))


@pytest.mark.slow
def test_dash_reads_audio_from_stdin(whisperd_cli: Run, jfk_path: Path, jfk_text: str) -> None:
    result = whisperd_cli("transcribe", "-", stdin=jfk_path)
    assert result.returncode == 0, result.stderr
    assert words(result.stdout) == words(jfk_text)


@pytest.mark.slow
def test_stdin_into_an_output_dir_is_named_stdin(
    whisperd_cli: Run, jfk_path: Path, hotwords_path: Path, jfk_text: str, tmp_path: Path
) -> None:
    result = whisperd_cli("transcribe", "-o", tmp_path, "-", hotwords_path, stdin=jfk_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hotwords.txt", "stdin.txt"]
    assert words((tmp_path / "stdin.txt").read_text(encoding="utf-8")) == words(jfk_text)


@pytest.mark.slow
def test_readme_first_command_transcribes_in_a_plain_clone(
    whisperd_cli: Run, jfk_text: str, tmp_path: Path
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```sh\n(.*)\n```", readme)
    assert first is not None
    commands = [c.strip() for c in first.group(1).split("&&")]
    [transcribe] = [c for c in commands if c.startswith("whisperd transcribe")]
    # from any directory: nothing outside the installed package is needed
    result = whisperd_cli(*shlex.split(transcribe)[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert words(result.stdout) == words(jfk_text)


def parsed_settings(command: str, argv: list[str]) -> Settings:
    """The settings ``whisperd COMMAND ARGV`` runs with, parsed by the real command line."""
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    context = group.commands[command].make_context(command, argv)
    settings: Settings = cli._settings(**context.params)
    return settings


def flag_settings(command: str) -> set[str]:
    """The settings that ``whisperd COMMAND`` has flags for."""
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    return {str(p.name) for p in group.commands[command].params if p.name != "help"}


def test_every_serve_and_worker_flag_reaches_the_settings(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("k3\n")
    tls = local_certificate(tmp_path / "tls")
    given = {
        "serve": [
            (["--host", "0.0.0.0"], "host", "0.0.0.0"),
            (["--port", "9001"], "port", 9001),
            (["--tls-certfile", str(tls.certfile)], "tls_certfile", tls.certfile),
            (["--tls-keyfile", str(tls.keyfile)], "tls_keyfile", tls.keyfile),
            (["-m", "base"], "model", "base"),
            (
                ["--preload-model", "tiny", "--preload-model", "small,medium"],
                "preload_models",
                ("tiny", "small", "medium"),
            ),
            (["--models-dir", str(tmp_path)], "models_dir", tmp_path),
            (["--max-loaded-models", "4"], "max_loaded_models", 4),
            (["--model-ttl", "60"], "model_ttl", 60.0),
            (["--device", "cpu"], "device", "cpu"),
            (["--compute-type", "float32"], "compute_type", "float32"),
            (["--batch-size", "3"], "batch_size", 3),
            (["--cpu-threads", "2"], "cpu_threads", 2),
            (["--cpu-workers", "1"], "cpu_workers", 1),
            (["--max-active", "5"], "max_active", 5),
            (["--max-queue", "7"], "max_queue", 7),
            (["--request-timeout", "12.5"], "request_timeout", 12.5),
            (["--max-upload-bytes", "1000"], "max_upload_bytes", 1000),
            (["--max-audio-seconds", "60"], "max_audio_seconds", 60.0),
            (["--job-max-upload-bytes", "2000"], "job_max_upload_bytes", 2000),
            (["--api-key", "k1", "--api-key", "k2"], "api_keys", ("k1", "k2")),
            (["--api-keys-file", str(keys_file)], "api_keys_file", keys_file),
            (["--admin-api-key", "boss"], "admin_api_keys", ("boss",)),
            (["--fetch-concurrency", "4"], "fetch_concurrency", 4),
            (["--realtime-max-sessions", "3"], "realtime_max_sessions", 3),
            (["--max-header-bytes", "8192"], "max_header_bytes", 8192),
            (
                ["--fetch-allow-host", "10.0.0.0/8", "--fetch-allow-host", "redis"],
                "fetch_allow_hosts",
                ("10.0.0.0/8", "redis"),
            ),
            (["--no-fetch-enabled"], "fetch_enabled", False),
            (["--drain-timeout", "3"], "drain_timeout", 3.0),
            (["--data-dir", str(tmp_path / "data")], "data_dir", tmp_path / "data"),
            (["--redis-url", "redis://r:6379/0"], "redis_url", "redis://r:6379/0"),
            (["--no-queue-consumers"], "queue_consumers", False),
            (["--metrics-public"], "metrics_public", True),
            (["--no-vad-filter"], "vad_filter", False),
            (["--log-level", "debug"], "log_level", "debug"),
            (["--log-format", "json"], "log_format", "json"),
        ],
        "worker": [
            (["--redis-url", "redis://r:6379/0"], "redis_url", "redis://r:6379/0"),
            (["-m", "base"], "model", "base"),
            (["--device", "cpu"], "device", "cpu"),
            (["--compute-type", "float32"], "compute_type", "float32"),
            (["--batch-size", "3"], "batch_size", 3),
            (["--cpu-threads", "2"], "cpu_threads", 2),
            (["--cpu-workers", "1"], "cpu_workers", 1),
            (["--metrics-port", "9100"], "metrics_port", 9100),
            (["--log-level", "debug"], "log_level", "debug"),
            (["--log-format", "json"], "log_format", "json"),
        ],
    }
    for command, flags in given.items():
        settings = parsed_settings(command, [arg for argv, _, _ in flags for arg in argv])
        assert {(name, getattr(settings, name)) for _, name, _ in flags} == {
            (name, value) for _, name, value in flags
        }
        assert flag_settings(command) == {name for _, name, _ in flags}


def test_tls_files_are_checked_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours, theirs = local_certificate(tmp_path / "a"), local_certificate(tmp_path / "b")
    cases = {
        "go together": ["--tls-certfile", str(ours.certfile)],
        "not a readable PEM certificate and its key": [
            *("--tls-certfile", str(ours.certfile), "--tls-keyfile", str(theirs.keyfile)),
        ],
    }
    for message, argv in cases.items():
        with pytest.raises(typer.Exit) as stopped:
            parsed_settings("serve", argv)
        assert stopped.value.exit_code == 2
        assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_help_written_to_a_pipe_names_every_flag_whole(whisperd_cli: Run, command: str) -> None:
    result = whisperd_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    for param in group.commands[command].params:
        names = [*param.opts, *([param.envvar] if isinstance(param.envvar, str) else [])]
        for name in names:
            assert name in result.stdout, name


def test_a_bad_flag_value_is_a_usage_error(whisperd_cli: Run) -> None:
    result = whisperd_cli("serve", "--device", "tpu")
    assert result.returncode == 2
    assert "tpu" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.server
def test_serve_flags_configure_the_running_server(tmp_path: Path, jfk_path: Path) -> None:
    data = tmp_path / "flag-data"
    args = ("serve", "--max-upload-bytes", "100000", "--api-key", "k1", "--data-dir", str(data))
    with server_process(tmp_path, args=args) as server:
        url = f"{server.url}/v1/audio/transcriptions"
        files = {"file": ("jfk.flac", jfk_path.read_bytes())}
        assert httpx.post(url, files=files, timeout=60).status_code == 401
        too_big = httpx.post(url, files=files, headers={"Authorization": "Bearer k1"}, timeout=60)
        assert too_big.status_code == 413, too_big.text
        assert (data / "redis").is_dir()


def test_the_readme_names_exactly_the_serve_flags_there_are() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|") for line in readme.splitlines() if line.startswith("| `WHISPERD_")]
    listed = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)`", row[2])}
    options = (cli._setting_flag(name).annotation.__metadata__[0] for name in cli.SERVE_FLAGS)
    assert listed == {str(option.default).split("/")[0] for option in options}
