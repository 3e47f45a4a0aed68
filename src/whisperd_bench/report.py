"""A benchmark's outputs: table rows, the JSON report, PNG plots and a Markdown section.

The plots need matplotlib, the ``bench`` extra (``pip install 'whisperd[bench]'``); it is
imported only when plotting.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from whisperd_bench.errors import BenchError
from whisperd_bench.host import describe
from whisperd_bench.load import OPENAI_PRICE_PER_MINUTE, Level, Report

COLUMNS = (
    "server",
    "clients",
    "requests",
    "200",
    "429",
    "5xx",
    "other",
    "p50 s",
    "p95 s",
    "p99 s",
    "audio s/wall s",
    "RTF p50",
    "peak RSS MiB",
    "$/audio min",
)


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def rows(report: Report) -> list[list[str]]:
    """One row per (concurrency, server), servers side by side within a level."""
    table = []
    for level in sorted(report.levels, key=lambda lv: lv.concurrency):
        s = level.summary()
        cost = report.cost_per_minute(level)
        table.append(
            [
                level.server,
                str(level.concurrency),
                str(s["requests"]),
                *(str(s["errors"][name]) for name in ("200", "429", "5xx", "other")),
                _num(s["latency_p50"]),
                _num(s["latency_p95"]),
                _num(s["latency_p99"]),
                _num(s["throughput"], 1),
                _num(s["rtf_p50"], 3),
                "–" if level.rss_peak is None else f"{level.rss_peak / 2**20:.0f}",
                "–" if cost is None else f"{cost:.5f}",
            ]
        )
    return table


def write_json(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return path


def markdown(report: Report) -> str:
    """A section for bench/RESULTS.md: heading, machine, command, the table."""
    lines = [
        f"## {report.started_at}: {', '.join(s.name for s in report.servers)}",
        "",
        f"Machine: {describe(report.machine)}; load average before "
        + " ".join(f"{x:.2f}" for x in report.machine["load_average"])
        + ", after "
        + " ".join(f"{x:.2f}" for x in report.load_after)
        + ".",
        "",
    ]
    if report.command:
        lines += [f"Command: `{report.command}`", ""]
    for server in report.servers:
        lines.append(f"- {server.name}: {server.command or server.url}")
    clips = ", ".join(f"{c.name} ({c.seconds:.1f} s)" for c in report.clips)
    lines += ["", f"Audio: {clips}. Latency percentiles are of the 200 answers.", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + " --- |" * len(COLUMNS))
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    if report.price_per_hour is not None:
        lines += [
            "",
            f"Cost at ${report.price_per_hour:g}/hour; OpenAI: ${OPENAI_PRICE_PER_MINUTE}/min.",
        ]
    return "\n".join(lines) + "\n"


def append_markdown(report: Report, path: Path) -> Path:
    """Append the report's section to ``path`` (created with a title if new)."""
    head = (
        ""
        if path.exists()
        else "# Benchmark results\n\nWritten by `whisperd bench --results-md`.\n"
    )
    with path.open("a", encoding="utf-8") as out:
        out.write(head + "\n" + markdown(report))
    return path


# --- plots --------------------------------------------------------------------------------


def check_plots() -> None:
    """Fail now, not after the run, where matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchError(
            "the plots need matplotlib: pip install 'whisperd[bench]' (or pass --no-plots)"
        )


def _pyplot() -> Any:
    check_plots()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: Report, out_dir: Path) -> list[Path]:
    """``latency.png`` (distribution per server at each concurrency) and ``throughput.png``
    (throughput and latency against concurrency, one line per server)."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = describe(report.machine)
    names = [s.name for s in report.servers]
    levels = sorted({lv.concurrency for lv in report.levels})
    by_key = {(lv.server, lv.concurrency): lv for lv in report.levels}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    # Latency distribution: a box per server (whiskers 5th-95th percentile) with its points.
    fig, axes = plt.subplots(
        1, len(levels), figsize=(max(5.0, 3.2 * len(levels)), 4.8), sharey=True, squeeze=False
    )
    for ax, level in zip(axes[0], levels, strict=True):
        data = [_latencies(by_key.get((name, level))) for name in names]
        positions = list(range(1, len(names) + 1))
        if any(data):
            boxes = ax.boxplot(
                [d or [float("nan")] for d in data],
                positions=positions,
                whis=(5, 95),
                showfliers=False,
                widths=0.6,
                patch_artist=True,
            )
            for patch, colour in zip(boxes["boxes"], colours, strict=False):
                patch.set_facecolor(colour)
                patch.set_alpha(0.35)
        for i, (values, colour) in enumerate(zip(data, colours, strict=False)):
            jitter = [positions[i] + 0.18 * ((k * 0.618) % 1 - 0.5) for k in range(len(values))]
            ax.scatter(jitter, values, s=10, color=colour, alpha=0.8, zorder=3)
        ax.set_xticks(positions, names, rotation=20 if len(names) > 2 else 0)
        ax.set_title(f"{level} concurrent client{'s' if level > 1 else ''}")
        ax.set_xlabel("server")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("latency per request (s)")
    fig.suptitle(f"Latency of successful requests (box: quartiles, whiskers: p5-p95)\n{machine}")
    fig.tight_layout()
    latency_png = out_dir / "latency.png"
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)

    # Throughput and latency percentiles against concurrency.
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, colour in zip(names, colours, strict=False):
        mine = [by_key[(name, c)] for c in levels if (name, c) in by_key]
        xs = [lv.concurrency for lv in mine]
        summaries = [lv.summary() for lv in mine]
        left.plot(xs, [s["throughput"] for s in summaries], "o-", color=colour, label=name)
        right.plot(
            xs, [s["latency_p50"] for s in summaries], "o-", color=colour, label=f"{name} p50"
        )
        right.plot(
            xs, [s["latency_p95"] for s in summaries], "s--", color=colour, label=f"{name} p95"
        )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend()
    left.set_ylabel("audio seconds per wall second (× real time)")
    left.set_title("Throughput (successful requests)")
    left.set_ylim(bottom=0)
    right.set_ylabel("latency (s)")
    right.set_title("Latency percentiles")
    right.set_ylim(bottom=0)
    fig.suptitle(f"Throughput vs concurrency\n{machine}")
    fig.tight_layout()
    throughput_png = out_dir / "throughput.png"
    fig.savefig(throughput_png, dpi=110)
    plt.close(fig)
    return [latency_png, throughput_png]


def _latencies(level: Level | None) -> list[float]:
    return [] if level is None else [o.latency for o in level.outcomes if o.ok]
