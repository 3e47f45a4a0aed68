"""``whisperd bench`` against two real servers (ours in-process, and one it starts itself), the
bench package's helpers, and the server never importing that package."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from whisperd.api import create_app
from whisperd.cli import app as cli
from whisperd.engine import Transcriber
from whisperd_bench.load import parse_named, percentile, status_class
from whisperd_bench.wer import word_error_rate, word_errors

from support import JFK, make_settings, running_app

PNG = b"\x89PNG\r\n\x1a\n"
SRC = Path(__file__).resolve().parents[1] / "src"
SERVER_MODULES = (
    "whisperd.api.app",
    "whisperd.server",
    "whisperd.jobs.service",
    "whisperd.jobs.process",
    "whisperd.jobs.worker.main",
    "whisperd.cli",
)


@pytest.fixture(scope="module")
def ours(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, engine: Transcriber
) -> Iterator[str]:
    """whisperd with the default batches, in this process."""
    settings = make_settings(tmp_path_factory.mktemp("bench-ours"), model_cache, jobs_enabled=False)
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


@pytest.mark.slow
@pytest.mark.server
def test_bench_compares_two_servers_side_by_side(ours: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = tmp_path / "RESULTS.md"
    env = {
        **os.environ,
        "WHISPERD_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "WHISPERD_DATA_DIR": str(tmp_path / "data"),
        "WHISPERD_TMP_DIR": str(tmp_path / "tmp"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [
            *(sys.executable, "-m", "whisperd", "bench"),
            *("--url", f"ours={ours}"),
            *("--start", "batch-1=--batch-size 1 --max-queue 4"),
            *("--audio", str(JFK)),
            *("--concurrency", "1,2", "--requests", "2", "--warmup", "1"),
            *("--price-per-hour", "0.50", "--out", str(out), "--results-md", str(results)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ours" in done.stdout and "batch-1" in done.stdout
    assert "p50" in done.stdout and "audio s/wall s" in done.stdout

    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    assert [s["name"] for s in report["servers"]] == ["batch-1", "ours"]
    levels = {(lv["server"], lv["concurrency"]): lv for lv in report["levels"]}
    assert set(levels) == {(s, c) for s in ("ours", "batch-1") for c in (1, 2)}
    for level in levels.values():
        assert level["errors"] == {"200": 2, "429": 0, "5xx": 0, "other": 0}
        assert 0 < level["latency_p50"] <= level["latency_p95"] <= level["latency_p99"]
        assert level["audio_seconds"] == pytest.approx(22.0, abs=0.1)
        assert level["throughput"] > 0 and level["rtf_p50"] > 0
        assert level["cost_per_audio_minute"] > 0
        assert level["rss_peak_bytes"] > 50 * 2**20  # both servers run on this machine
        assert len(level["outcomes"]) == 2
    assert report["clips"] == [
        {"name": "jfk.flac", "seconds": pytest.approx(11.0, abs=0.1), "bytes": JFK.stat().st_size}
    ]

    import matplotlib.image

    for name in ("latency.png", "throughput.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width >= 500 and height >= 300

    section = results.read_text()
    assert section.count("| ours |") == 2 and section.count("| batch-1 |") == 2
    assert "whisperd serve --batch-size 1 --max-queue 4" in section
    assert (out / "server-batch-1.log").is_file()


def test_bench_refuses_missing_audio(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["bench", "--url", "http://127.0.0.1:9", "--audio", str(tmp_path / "nothing")]
    )
    assert result.exit_code == 1
    assert "no such file or directory" in " ".join(result.output.split())


def test_bench_without_matplotlib_says_so_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    # nothing listens on port 9: a bench that ran would fail there instead
    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "need matplotlib" in result.output and "--no-plots" in result.output


def test_bench_refuses_two_servers_with_one_name() -> None:
    result = CliRunner().invoke(
        cli, ["bench", "--url", "a=http://127.0.0.1:9", "--url", "a=http://127.0.0.1:10"]
    )
    assert result.exit_code == 2
    assert "its own name" in " ".join(result.output.split())


def test_helpers() -> None:
    assert parse_named("ours=http://h:1", "x") == ("ours", "http://h:1")
    assert parse_named("http://h:1/v1", "x") == ("x", "http://h:1/v1")
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert [status_class(s) for s in (200, 429, 503, 400, 0)] == [
        "200",
        "429",
        "5xx",
        "other",
        "other",
    ]


def test_word_error_rate() -> None:
    assert word_errors("And so, my fellow Americans!", "and so my fellow americans") == (0, 5)
    assert word_errors("so my fellow american", "and so my fellow americans") == (2, 5)
    assert word_error_rate("", "") == 0.0
    # a name the model cannot spell costs nothing, however it comes out
    assert (
        word_error_rate("ask not what Jon F Kenedy", "ask not what kennedy", frozenset({"kennedy"}))
        == 0.0
    )


def test_the_server_never_imports_the_bench() -> None:
    """A fresh interpreter that imports the app, the server, the jobs runtime and the CLI has
    loaded no module of whisperd_bench (which that same interpreter can import)."""
    code = (
        "import importlib, sys\n"
        f"for name in {SERVER_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'whisperd_bench'))\n"
        "import whisperd_bench\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _imported(node: ast.AST) -> list[str]:
    """The modules an ``import`` or ``from ... import`` statement names; none for others."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def test_only_the_bench_command_imports_the_bench() -> None:
    """No module of whisperd imports whisperd_bench, but for the body of ``whisperd bench``
    in cli.py, which imports it when the command runs."""
    cli_py = SRC / "whisperd" / "cli.py"
    found = []
    for path in sorted((SRC / "whisperd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        allowed: set[int] = set()
        if path == cli_py:
            command = next(
                f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "bench"
            )
            allowed = {id(node) for node in ast.walk(command)}
        found += [
            f"{path.relative_to(SRC)}:{node.lineno}"
            for node in ast.walk(tree)
            if id(node) not in allowed
            and any(name.partition(".")[0] == "whisperd_bench" for name in _imported(node))
        ]
    assert found == []
