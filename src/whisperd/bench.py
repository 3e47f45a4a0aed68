"""Load generation against transcription servers: ``whisperd bench`` and the ``bench/`` scripts.

N concurrent async clients send real audio as multipart uploads to an OpenAI-compatible
``/v1/audio/transcriptions`` (whisperd's or another server's) and record, per request, the
latency, the status and the audio's duration; a level's summary gives the latency
percentiles, the throughput (audio seconds per wall second, which is also audio minutes per
wall minute), the real-time factor and the statuses. When the server is a process on this
machine, its resident memory is sampled from ``/proc``.

:func:`started_server` runs ``whisperd serve`` on a free port for the length of a block.
Plots and the Markdown table are in :mod:`whisperd.bench_report`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from whisperd import audio

AUDIO_SUFFIXES = frozenset(
    {".flac", ".mp3", ".wav", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv"}
)
OPENAI_PRICE_PER_MINUTE = 0.006
"""OpenAI's Whisper API price, in US dollars per audio minute."""
TRANSCRIPTIONS = "/v1/audio/transcriptions"
STATUS_CLASSES = ("200", "429", "5xx", "other")


class BenchError(Exception):
    """The benchmark cannot run as asked (no audio, a server that does not start, ...)."""


# --- accuracy -----------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case words, punctuation aside (apostrophes kept): for comparing transcripts."""
    return "".join(c.lower() if c.isalnum() or c in " '" else " " for c in text).split()


def word_errors(
    hypothesis: str, reference: str, free: frozenset[str] = frozenset()
) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words), case and punctuation aside.

    A reference word in ``free`` (a name the model cannot spell) matches up to three
    hypothesis words, or none, at no cost.
    """
    hyp, ref = words(hypothesis), words(reference)
    previous = list(range(len(hyp) + 1))
    for word in ref:
        if word in free:
            current = [min(previous[max(0, j - 3) : j + 1]) for j in range(len(hyp) + 1)]
        else:
            current = [previous[0] + 1]
            for j, said in enumerate(hyp, start=1):
                current.append(
                    min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (said != word))
                )
        previous = current
    return previous[-1], len(ref)


def word_error_rate(hypothesis: str, reference: str, free: frozenset[str] = frozenset()) -> float:
    """Word errors per reference word (see :func:`word_errors`)."""
    errors, count = word_errors(hypothesis, reference, free)
    return errors / max(1, count)


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


def looped_speech(sources: Sequence[Path], seconds: float) -> bytes:
    """Real speech of about ``seconds``: the recordings in turn, 1 s and 1.5 s apart, as FLAC.

    Give two different recordings: one sentence repeated with short gaps makes Whisper's
    output repetitive enough to trigger its temperature fallback on every window (2-3x
    slower), which would measure the fallback rather than the server.
    """
    import numpy as np

    unit: list[audio.Audio] = []
    for index, source in enumerate(sources):
        pause = 1.0 if index % 2 == 0 else 1.5
        unit += [audio.decode(source), np.zeros(int(pause * audio.SAMPLE_RATE), np.float32)]
    block = np.concatenate(unit)
    repeats = max(1, round(seconds / audio.duration(block)))
    return audio.encode_flac(np.tile(block, repeats))


# Debian's asterisk-core-sounds-en-g722 (16 kHz) and asterisk-core-sounds-en (the texts):
# about 25 minutes of one real voice reading prompts, CC-BY-SA 3.0.
PROMPTS_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
PROMPTS_PACKAGES = "asterisk-core-sounds-en-g722 asterisk-core-sounds-en"


def prompt_speech(seconds: float, *, seed: int = 0) -> tuple[bytes, str]:
    """Real speech of at least ``seconds`` with its reference text, as FLAC: recorded prompts
    of three words to a paragraph, in a shuffled order, 0.3-0.8 s apart (dense, like a talk).

    Needs the Debian packages ``PROMPTS_PACKAGES``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: list[audio.Audio] = []
    said: list[str] = []
    total = 0.0
    for samples, text in prompt_utterances(seed=seed):
        gap = np.zeros(int(rng.uniform(0.3, 0.8) * audio.SAMPLE_RATE), np.float32)
        parts += [samples, gap]
        said.append(text)
        total += audio.duration(samples) + audio.duration(gap)
        if total >= seconds:
            break
    return audio.encode_flac(np.concatenate(parts)), " ".join(said)


def prompt_utterances(*, seed: int = 0) -> Iterator[tuple[audio.Audio, str]]:
    """Each recorded prompt (three words to a paragraph) once, in an order shuffled by
    ``seed``: its 16 kHz samples and its text. Needs the Debian packages ``PROMPTS_PACKAGES``.
    """
    import gzip
    import random
    import re

    if not PROMPTS_DIR.is_dir() or not PROMPTS_TEXT.is_file():
        raise BenchError(f"real speech needs: apt-get install {PROMPTS_PACKAGES}")
    texts: dict[str, str] = {}
    with gzip.open(PROMPTS_TEXT, "rt", encoding="utf-8", errors="replace") as lines:
        listed = list(lines)
    for line in listed:
        name, sep, text = line.partition(":")
        text = re.sub(r"\([^)]*\)", " ", text).strip()  # "(6 seconds of silence)"
        # bracketed lines are tones and effects, not speech
        if sep and len(text.split()) >= 3 and not line.startswith(";") and "[" not in text:
            texts[name.strip()] = text
    names = sorted(n for n in texts if (PROMPTS_DIR / f"{n}.g722").is_file())
    random.Random(seed).shuffle(names)
    for name in names:
        yield _decode_g722(PROMPTS_DIR / f"{name}.g722"), texts[name]


def _decode_g722(path: Path) -> audio.Audio:
    """A raw G.722 file (no container header to tell the codec), as 16 kHz mono float32."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
    frames = []
    with av.open(str(path), format="g722") as container:
        for frame in container.decode(audio=0):
            frames += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(frames).astype(np.float32)


def first_seconds(source: Path, seconds: float) -> bytes:
    """The first ``seconds`` of ``source``, as FLAC."""
    return audio.encode_flac(audio.decode(source)[: int(seconds * audio.SAMPLE_RATE)])


# --- the machine and the server's process -------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, memory, load average."""
    from whisperd.engine import available_cores

    cpu = platform.processor() or platform.machine()
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "usable_cores": available_cores(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": list(os.getloadavg()),
    }


def describe(info: Mapping[str, Any]) -> str:
    """``AMD EPYC, 2 cores, 23.5 GiB``: for titles and headings."""
    cores = info["cores"]
    usable = info.get("usable_cores", cores)
    text = f"{info['cpu']}, {cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    if info.get("memory_bytes"):
        text += f", {info['memory_bytes'] / 2**30:.1f} GiB"
    return text


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``1.02 0.87 0.60``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (VmRSS in ``/proc/PID/status``); None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def pid_listening_on(port: int) -> int | None:
    """The local process listening on TCP ``port`` (one of ours: /proc shows only those)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cells = line.split()
                if len(cells) > 9 and cells[3] == "0A" and int(cells[1].split(":")[1], 16) == port:
                    inodes.add(f"socket:[{cells[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def local_pid(url: str) -> int | None:
    """The PID of the server at ``url`` when it runs on this machine, else None."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return pid_listening_on(parts.port or (443 if parts.scheme == "https" else 80))


# --- servers ------------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A server under test: a name for the tables, its base URL, and its PID when local."""

    name: str
    url: str
    pid: int | None = None
    command: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started_server(
    name: str,
    args: Sequence[str] = (),
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
) -> Iterator[Server]:
    """``whisperd serve ARGS`` on a free port of 127.0.0.1 until the block ends (SIGTERM).

    Async jobs are off unless ``env`` turns them on (the bench measures synchronous requests,
    and several started servers would otherwise share one embedded Redis).
    """
    port = free_port()
    command = [sys.executable, "-m", "whisperd", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    full_env = {"WHISPERD_JOBS_ENABLED": "false", **os.environ, **(env or {})}
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"server {name} ({' '.join(args)}) did not start:\n{tail}")
            time.sleep(0.2)
        yield Server(name, url, process.pid, " ".join(["whisperd serve", *args]))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
