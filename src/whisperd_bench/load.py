"""Load generation against transcription servers: ``whisperd bench`` and the ``bench/`` scripts.

N concurrent async clients send real audio as multipart uploads to an OpenAI-compatible
``/v1/audio/transcriptions`` (whisperd's or another server's) and record, per request, the
latency, the status and the audio's duration; a level's summary gives the latency
percentiles, the throughput (audio seconds per wall second, which is also audio minutes per
wall minute), the real-time factor and the statuses. When the server is a process on this
machine, its resident memory is sampled from ``/proc``.

The servers are in :mod:`whisperd_bench.servers`; plots and the Markdown table are in
:mod:`whisperd_bench.report`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from whisperd import audio
from whisperd_bench.errors import BenchError
from whisperd_bench.host import rss_bytes
from whisperd_bench.servers import Server

AUDIO_SUFFIXES = frozenset(
    {".flac", ".mp3", ".wav", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv"}
)
OPENAI_PRICE_PER_MINUTE = 0.006
"""OpenAI's Whisper API price, in US dollars per audio minute."""
TRANSCRIPTIONS = "/v1/audio/transcriptions"
STATUS_CLASSES = ("200", "429", "5xx", "other")


# --- the workload -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clip:
    """One audio file to send: its bytes, its duration and a class for per-class figures."""

    name: str
    data: bytes = field(repr=False)
    seconds: float
    kind: str = "clip"

    @classmethod
    def from_bytes(cls, name: str, data: bytes, kind: str = "clip") -> Clip:
        seconds = audio.probe_duration(data)
        if seconds is None or seconds <= 0:  # no duration in the header: decode once
            seconds = audio.duration(audio.decode(data))
        return cls(name, data, seconds, kind)

    @classmethod
    def from_path(cls, path: Path, kind: str = "clip") -> Clip:
        return cls.from_bytes(path.name, path.read_bytes(), kind)


def default_audio_dir() -> Path | None:
    """``../shared/audio`` beside the working directory or beside this checkout, if present."""
    for candidate in (
        Path.cwd().parent / "shared" / "audio",
        Path(__file__).resolve().parents[3] / "shared" / "audio",
    ):
        if candidate.is_dir():
            return candidate
    return None


def collect_clips(paths: Sequence[Path]) -> list[Clip]:
    """The audio files among ``paths`` (directories are searched one level deep, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise BenchError(f"{path}: no such file or directory")
    if not files:
        raise BenchError(f"no audio files in {', '.join(map(str, paths))}")
    return [Clip.from_path(p) for p in files]


# --- the load generator -------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One request: what was sent, the status (0: no HTTP answer), and when it ran."""

    clip: str
    kind: str
    audio_seconds: float
    status: int
    latency: float
    sent_at: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def status_class(status: int) -> str:
    """``200``, ``429``, ``5xx`` or ``other`` (other 4xx, and no answer at all)."""
    if status in (200, 429):
        return str(status)
    return "5xx" if 500 <= status < 600 else "other"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(slots=True)
class Level:
    """Every request of one run at one concurrency against one server."""

    server: str
    concurrency: int
    wall_seconds: float
    outcomes: list[Outcome]
    rss_start: int | None = None
    rss_peak: int | None = None
    rss_end: int | None = None

    def summary(self, kind: str | None = None) -> dict[str, Any]:
        """Latency percentiles (successful requests), throughput, RTF, statuses."""
        chosen = [o for o in self.outcomes if kind is None or o.kind == kind]
        ok = [o for o in chosen if o.ok]
        latencies = [o.latency for o in ok]
        audio_done = sum(o.audio_seconds for o in ok)
        throughput = audio_done / self.wall_seconds if self.wall_seconds > 0 else 0.0
        counts = Counter(status_class(o.status) for o in chosen)
        return {
            "requests": len(chosen),
            "errors": {name: counts.get(name, 0) for name in STATUS_CLASSES},
            "statuses": dict(sorted(Counter(str(o.status) for o in chosen).items())),
            "latency_p50": percentile(latencies, 50),
            "latency_p95": percentile(latencies, 95),
            "latency_p99": percentile(latencies, 99),
            "latency_max": max(latencies, default=None),
            "audio_seconds": audio_done,
            "throughput": throughput,
            "rtf_p50": percentile([o.latency / o.audio_seconds for o in ok], 50),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "concurrency": self.concurrency,
            "wall_seconds": self.wall_seconds,
            "rss_start_bytes": self.rss_start,
            "rss_peak_bytes": self.rss_peak,
            "rss_end_bytes": self.rss_end,
            **self.summary(),
            "by_kind": {k: self.summary(k) for k in sorted({o.kind for o in self.outcomes})},
            "outcomes": [asdict(o) for o in self.outcomes],
        }


class Client:
    """Sends clips to one server's transcription endpoint."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str = "whisper-1",
        timeout: float = 600.0,
        connections: int = 64,
    ) -> None:
        self.url = url.rstrip("/") + TRANSCRIPTIONS
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def send(self, clip: Clip, origin: float) -> Outcome:
        """Transcribe ``clip`` once; ``origin`` is the run's start (perf_counter)."""
        started = time.perf_counter()
        status, error = 0, ""
        try:
            response = await self._http.post(
                self.url,
                files={"file": (clip.name, clip.data, "application/octet-stream")},
                data={"model": self.model, "response_format": "json"},
            )
            status = response.status_code
            if status != 200:
                error = response.text[:200]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Outcome(
            clip.name,
            clip.kind,
            clip.seconds,
            status,
            time.perf_counter() - started,
            started - origin,
            error,
        )


async def run_level(
    server: Server,
    clips: Sequence[Clip],
    *,
    concurrency: int,
    requests: int,
    api_key: str | None = None,
    model: str = "whisper-1",
    request_timeout: float = 600.0,
    on_outcome: Callable[[Outcome, int], None] | None = None,
) -> Level:
    """``requests`` requests by ``concurrency`` clients, each taking the next clip in turn.

    ``on_outcome(outcome, done)`` is called after each request (e.g. to print progress).
    """
    if not clips:
        raise BenchError("no clips to send")
    outcomes: list[Outcome] = []
    taken = 0
    rss: list[int] = []

    def sample() -> None:
        if server.pid is not None and (value := rss_bytes(server.pid)) is not None:
            rss.append(value)

    async def client_loop(client: Client, origin: float) -> None:
        nonlocal taken
        while taken < requests:
            clip = clips[taken % len(clips)]
            taken += 1
            outcome = await client.send(clip, origin)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome, len(outcomes))

    async def sampler() -> None:
        while True:
            sample()
            await anyio.sleep(0.25)

    sample()
    rss_start = rss[0] if rss else None
    async with Client(
        server.url,
        api_key=api_key,
        model=model,
        timeout=request_timeout,
        connections=concurrency + 2,
    ) as client:
        origin = time.perf_counter()
        async with anyio.create_task_group() as clients:
            clients.start_soon(sampler)
            async with anyio.create_task_group() as senders:
                for _ in range(concurrency):
                    senders.start_soon(client_loop, client, origin)
            clients.cancel_scope.cancel()
        wall = time.perf_counter() - origin
    sample()
    return Level(
        server.name,
        concurrency,
        wall,
        outcomes,
        rss_start=rss_start,
        rss_peak=max(rss, default=None),
        rss_end=rss[-1] if rss else None,
    )


async def warm_up(
    server: Server, clip: Clip, *, api_key: str | None = None, model: str = "whisper-1"
) -> Outcome:
    """One request, not counted: the first one pays for lazy start-up work."""
    async with Client(server.url, api_key=api_key, model=model) as client:
        return await client.send(clip, time.perf_counter())


# --- a whole benchmark --------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """Every level of every server, with what and where it was measured."""

    machine: dict[str, Any]
    servers: list[Server]
    clips: list[Clip]
    levels: list[Level] = field(default_factory=list)
    price_per_hour: float | None = None
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    command: str = ""
    load_after: list[float] = field(default_factory=list)

    def cost_per_minute(self, level: Level) -> float | None:
        """US dollars per audio minute at this level's throughput and ``price_per_hour``."""
        throughput = level.summary()["throughput"]
        if self.price_per_hour is None or throughput <= 0:
            return None
        return float(self.price_per_hour / (throughput * 60))

    def to_dict(self) -> dict[str, Any]:
        from whisperd import __version__

        return {
            "whisperd_version": __version__,
            "started_at": self.started_at,
            "command": self.command,
            "machine": self.machine,
            "load_average_after": self.load_after,
            "price_per_hour": self.price_per_hour,
            "openai_price_per_minute": OPENAI_PRICE_PER_MINUTE,
            "servers": [asdict(s) for s in self.servers],
            "clips": [
                {"name": c.name, "seconds": c.seconds, "bytes": len(c.data)} for c in self.clips
            ],
            "levels": [
                {**level.to_dict(), "cost_per_audio_minute": self.cost_per_minute(level)}
                for level in self.levels
            ],
        }


async def run_bench(
    report: Report,
    *,
    concurrency: Sequence[int],
    requests: int,
    warmup: int = 1,
    api_key: str | None = None,
    model: str = "whisper-1",
    request_timeout: float = 600.0,
    on_level: Callable[[Level], None] | None = None,
) -> Report:
    """Every concurrency level against every server, servers alternating within a level so
    that a neighbour's load on a shared machine hits them alike."""
    for server in report.servers:
        for _ in range(warmup):
            await warm_up(server, report.clips[0], api_key=api_key, model=model)
    for level in concurrency:
        for server in report.servers:
            result = await run_level(
                server,
                report.clips,
                concurrency=level,
                requests=max(requests, level),
                api_key=api_key,
                model=model,
                request_timeout=request_timeout,
            )
            report.levels.append(result)
            if on_level is not None:
                on_level(result)
    report.load_after = list(os.getloadavg())
    return report


def parse_named(value: str, default_name: str) -> tuple[str, str]:
    """``NAME=VALUE`` as (NAME, VALUE); a bare ``VALUE`` is named ``default_name``."""
    name, sep, rest = value.partition("=")
    if sep and name and "/" not in name and ":" not in name and " " not in name:
        return name, rest
    return default_name, value
