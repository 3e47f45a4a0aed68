"""Live transcription over the Realtime WebSocket, at real-time pace, against its targets.

It starts ``whisperd serve`` with its defaults on 127.0.0.1 and drives
``GET /v1/realtime?intent=transcription`` with the official ``openai`` SDK, server VAD on
(its defaults unless ``--silence-ms`` says otherwise). The input is real speech whose turns
are known: recorded prompts of 3-12 s (see ``whisperd_bench.speech.prompt_utterances``; ``apt-get
install asterisk-core-sounds-en-g722 asterisk-core-sounds-en``), each trimmed to its speech,
``--gap`` seconds of silence apart, sent as 24 kHz PCM16 in 100 ms appends on a clock that
does not drift (append n goes at start + (n + 1) x 0.1 s, when its audio would have been
heard). "End of speech" is the wall time at which the append holding an utterance's last
sample was sent, "speech start" the one holding its first; the server's events are not used
to define them. It measures:

1. one session alone: the time from the end of speech to ``completed`` for each turn (target
   median <= 1.0 s), and from ``speech_stopped`` to ``completed``;
2. the same turns: the time from speech start to the turn's first ``delta`` (target median
   <= 1.5 s), and how many turns had a delta before their speech ended;
3. N live sessions at once (1, 2, 4, 8, 12, 16; it stops at the first N that fails) while
   file requests of a few minutes of speech run back to back over
   ``POST /v1/audio/transcriptions``: each turn's lag (``completed`` after its end of
   speech) p50/p90/max, how late the client's appends went out, and whether every session
   stayed at most 2 s behind (target: at least 8 sessions); the file requests' times;
4. the word error rate of the completed transcripts against the prompts' texts (target at
   most 0.15).

It prints each figure beside its target, the machine and its load, and writes
``bench/out/realtime.json`` and ``bench/out/realtime.png``. The bench's client runs on the
same machine as the server and takes some of its CPU, as a browser tab would.

    python bench/realtime.py --runs 2
    python bench/realtime.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

import whisperd_bench as b
from whisperd import audio
from whisperd.realtime.codecs import pcm16

OUT = Path(__file__).resolve().parent / "out"
CHUNK_SECONDS = 0.1
RATE = 24000
BEHIND_LIMIT = 2.0
"""A session is keeping up while every turn completes at most this long after its speech
ended, and every append goes out at most this late."""
SETTLE_SECONDS = 20.0
"""After the last append, how long to wait for the last turns' transcripts."""
MIN_PROMPT, MAX_PROMPT = 3.0, 12.0
"""Prompt lengths used as turns: long enough that partial text matters."""


# --- the input ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    start: int
    """First sample of its speech, in 16 kHz samples from the stream's start."""
    end: int
    """One past its last sample."""


@dataclass(frozen=True, slots=True)
class Script:
    """A session's input: its appends (base64 PCM16 at 24 kHz) and the utterances in it."""

    appends: list[str] = field(repr=False)
    utterances: list[Utterance]
    seconds: float

    def append_of(self, sample: int) -> int:
        """The index of the append that holds 16 kHz ``sample``."""
        return min(int(sample / audio.SAMPLE_RATE / CHUNK_SECONDS), len(self.appends) - 1)


def trimmed(samples: audio.Audio) -> audio.Audio:
    """The speech of a prompt: from its first to its last 20 ms above -40 dBFS."""
    frame = audio.SAMPLE_RATE // 50
    frames = samples[: samples.size // frame * frame].reshape(-1, frame)
    loud = np.nonzero(10 * np.log10((frames**2).mean(axis=1) + 1e-12) > -40)[0]
    if loud.size == 0:
        return samples
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


_PROMPTS: list[tuple[audio.Audio, str]] = []


def prompts() -> list[tuple[audio.Audio, str]]:
    """The recorded prompts of MIN_PROMPT to MAX_PROMPT seconds (after trimming), decoded once."""
    if not _PROMPTS:
        for samples, text in b.prompt_utterances(seed=0):
            speech = trimmed(samples)
            if MIN_PROMPT <= audio.duration(speech) <= MAX_PROMPT:
                _PROMPTS.append((speech, text))
    return _PROMPTS


def script(seconds: float, *, seed: int, gap: float, lead: float = 0.5) -> Script:
    """About ``seconds`` of prompts in an order of their own (``seed``), ``gap`` s apart, with
    ``lead`` s of silence first and ``gap`` s after the last (so its turn ends too)."""
    pool = prompts()
    order = np.random.default_rng(seed).permutation(len(pool))
    silence = np.zeros(int(gap * audio.SAMPLE_RATE), np.float32)
    parts = [np.zeros(int(lead * audio.SAMPLE_RATE), np.float32)]
    position = parts[0].size
    utterances: list[Utterance] = []
    for index in order:
        speech, text = pool[int(index)]
        utterances.append(Utterance(text, position, position + speech.size))
        parts += [speech, silence]
        position += speech.size + silence.size
        if position >= seconds * audio.SAMPLE_RATE:
            break
    pcm = pcm16(np.concatenate(parts), RATE)
    step = int(RATE * CHUNK_SECONDS) * 2
    appends = [base64.b64encode(pcm[i : i + step]).decode() for i in range(0, len(pcm), step)]
    return Script(appends, utterances, position / audio.SAMPLE_RATE)


# --- one live session ---------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One turn as the server saw it, with the wall times its events arrived."""

    id: str
    start_ms: int
    started_at: float
    end_ms: int | None = None
    stopped_at: float | None = None
    deltas: list[float] = field(default_factory=list)
    completed_at: float | None = None
    transcript: str = ""
    seconds: float = 0.0
    failed: str = ""


@dataclass(slots=True)
class TurnResult:
    """One utterance, measured from the audio sent (times in seconds, None when missing)."""

    text: str
    transcript: str
    items: int
    seconds: float
    to_completed: float | None
    """End of speech (its last sample sent) to the ``completed`` of its last turn."""
    stopped_to_completed: float | None
    to_first_delta: float | None
    """Speech start (its first sample sent) to the first delta of its turn."""
    partial_before_end: bool
    """A delta arrived before its speech ended."""
    to_speech_started: float | None
    """Speech start to ``speech_started`` (the VAD's delay)."""
    to_speech_stopped: float | None
    """End of speech to ``speech_stopped`` of its last turn (silence_duration_ms and more)."""


@dataclass(slots=True)
class SessionResult:
    turns: list[TurnResult]
    send_late_max: float
    """How late the latest append went out after its scheduled time."""
    stray_items: int
    errors: list[str]

    def lags(self) -> list[float]:
        return [t.to_completed for t in self.turns if t.to_completed is not None]

    def missing(self) -> int:
        return sum(t.to_completed is None for t in self.turns)

    def behind(self) -> float:
        """The most this session fell behind: a turn's lag, or an append's lateness."""
        if self.missing():
            return float("inf")
        return max([*self.lags(), self.send_late_max])


def session_config(silence_ms: int | None) -> dict[str, Any]:
    detection: dict[str, Any] = {"type": "server_vad"}
    if silence_ms is not None:
        detection["silence_duration_ms"] = silence_ms
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": detection,
            }
        },
    }


async def live_session(
    url: str, plan: Script, *, silence_ms: int | None, delay: float = 0.0
) -> SessionResult:
    """Stream ``plan`` at real-time pace over one session, after ``delay`` s; its turns."""
    await asyncio.sleep(delay)
    client = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
    items: dict[str, Item] = {}
    order: list[str] = []
    errors: list[str] = []
    sent_at: list[float] = []
    late = 0.0
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.session.update(session=session_config(silence_ms))  # type: ignore[arg-type]
        updated, settled = asyncio.Event(), asyncio.Event()

        async def read() -> None:
            async for event in connection:
                now = time.perf_counter()
                kind = event.type
                item_id = getattr(event, "item_id", None)
                if kind == "session.updated":
                    updated.set()
                elif kind == "input_audio_buffer.speech_started":
                    items[event.item_id] = Item(event.item_id, event.audio_start_ms, now)
                    order.append(event.item_id)
                elif item_id not in items:
                    if kind == "error":
                        errors.append(str(event.error.message))
                elif kind == "input_audio_buffer.speech_stopped":
                    items[item_id].end_ms = event.audio_end_ms
                    items[item_id].stopped_at = now
                elif kind == "conversation.item.input_audio_transcription.delta":
                    items[item_id].deltas.append(now)
                elif kind == "conversation.item.input_audio_transcription.completed":
                    item = items[item_id]
                    item.completed_at, item.transcript = now, event.transcript
                    usage = getattr(event, "usage", None)
                    item.seconds = float(getattr(usage, "seconds", 0.0) or 0.0)
                elif kind == "conversation.item.input_audio_transcription.failed":
                    items[item_id].failed = str(event.error)
                    items[item_id].completed_at = now
                if kind.startswith("conversation.item.input_audio_transcription.") and _settled(
                    items, plan
                ):
                    settled.set()

        reader = asyncio.create_task(read())
        try:
            async with asyncio.timeout(120):
                await updated.wait()
            origin = time.perf_counter()
            for n, chunk in enumerate(plan.appends):
                due = origin + (n + 1) * CHUNK_SECONDS
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                await connection.input_audio_buffer.append(audio=chunk)
                sent_at.append(time.perf_counter())
                late = max(late, sent_at[-1] - due)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_SECONDS):
                    await settled.wait()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    return _turns(plan, [items[i] for i in order], sent_at, late, errors)


def _settled(items: dict[str, Item], plan: Script) -> bool:
    """Every turn begun has completed, and the last utterance's turn has begun."""
    last_ms = plan.utterances[-1].start * 1000 // audio.SAMPLE_RATE
    return all(i.completed_at is not None for i in items.values()) and any(
        (i.end_ms or 10**9) > last_ms for i in items.values()
    )


def _turns(
    plan: Script, items: list[Item], sent_at: list[float], late: float, errors: list[str]
) -> SessionResult:
    """Each utterance with the server's turns that overlap it most."""
    mine: list[list[Item]] = [[] for _ in plan.utterances]
    stray = 0
    spans = [
        (u.start * 1000 / audio.SAMPLE_RATE, u.end * 1000 / audio.SAMPLE_RATE)
        for u in plan.utterances
    ]
    for item in items:
        end = item.end_ms if item.end_ms is not None else item.start_ms + item.seconds * 1000
        overlaps = [min(end, e) - max(item.start_ms, s) for s, e in spans]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            mine[best].append(item)
        else:
            stray += 1
    turns = []
    for utterance, its in zip(plan.utterances, mine, strict=True):
        start_sent = sent_at[plan.append_of(utterance.start)]
        end_sent = sent_at[plan.append_of(utterance.end - 1)]
        last = its[-1] if its else None
        deltas = [d for i in its for d in i.deltas]
        completed = last.completed_at if last is not None and not last.failed else None
        turns.append(
            TurnResult(
                text=utterance.text,
                transcript=" ".join(i.transcript.strip() for i in its),
                items=len(its),
                seconds=(utterance.end - utterance.start) / audio.SAMPLE_RATE,
                to_completed=None if completed is None else completed - end_sent,
                stopped_to_completed=(
                    None
                    if completed is None or last is None or last.stopped_at is None
                    else completed - last.stopped_at
                ),
                to_first_delta=min(deltas) - start_sent if deltas else None,
                partial_before_end=bool(deltas) and min(deltas) < end_sent,
                to_speech_started=its[0].started_at - start_sent if its else None,
                to_speech_stopped=(
                    None if last is None or last.stopped_at is None else last.stopped_at - end_sent
                ),
            )
        )
    return SessionResult(turns, late, stray, errors)


# --- where the machine's CPU went ---------------------------------------------------------


class CpuMeter:
    """CPU used between two readings, in cores: by the server, by this bench (its client) and
    by everything else on the machine (a shared machine's neighbours)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._tick = os.sysconf("SC_CLK_TCK")
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(map(int, fields)) - int(fields[3]) - int(fields[4])  # less idle, iowait
        return (
            time.perf_counter(),
            busy / self._tick,
            self._process(self.server_pid),
            self._process(os.getpid()),
        )

    def _process(self, pid: int | None) -> float:
        if pid is None:
            return 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self._tick
        return 0.0

    def cores(self) -> dict[str, float]:
        """Cores used since the meter was made: server, client, others."""
        now = self._read()
        wall = max(now[0] - self._start[0], 1e-9)
        busy, server, client = (
            (n - s) / wall for n, s in zip(now[1:], self._start[1:], strict=True)
        )
        return {"server": server, "client": client, "others": max(0.0, busy - server - client)}


def cpu_line(cores: dict[str, float]) -> str:
    return (
        f"CPU in cores: server {cores['server']:.2f}, this client {cores['client']:.2f}, "
        f"other processes {cores['others']:.2f}"
    )


# --- the measures -------------------------------------------------------------------------


def pct(values: Iterable[float | None], q: float) -> float | None:
    return b.percentile([v for v in values if v is not None], q)


def fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f} {unit}".strip()


def wer(turns: Sequence[TurnResult]) -> float:
    """The word error rate of the completed turns (missing ones are counted apart)."""
    done = [t for t in turns if t.to_completed is not None]
    return b.word_error_rate(" ".join(t.transcript for t in done), " ".join(t.text for t in done))


def measure_solo(server: b.Server, args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"\n== 1-2. one session alone: {args.solo_seconds:.0f} s of prompts "
        f"({MIN_PROMPT:g}-{MAX_PROMPT:g} s each), {args.gap:g} s apart, {args.runs} run(s) ==",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    every: list[TurnResult] = []
    meter = CpuMeter(server.pid)
    for run in range(args.runs):
        plan = script(args.solo_seconds, seed=run, gap=args.gap)
        result = asyncio.run(live_session(server.url, plan, silence_ms=args.silence_ms))
        turns = result.turns
        every += turns
        figures = _solo_figures(turns) | {"run": run + 1, "stray_items": result.stray_items}
        runs.append(figures | {"turns": [asdict(t) for t in turns], "errors": result.errors})
        print(
            f"  run {run + 1}: {len(turns)} turns ({figures['missing']} missing, "
            f"{result.stray_items} stray), end of speech -> completed p50 "
            f"{fmt(figures['completed_p50'])} p90 {fmt(figures['completed_p90'])}; speech start "
            f"-> first delta p50 {fmt(figures['delta_p50'])} p90 {fmt(figures['delta_p90'])}; "
            f"WER {figures['wer']:.3f}",
            flush=True,
        )
    total = _solo_figures(every)
    medians = {
        key: [r[key] for r in runs if r[key] is not None]
        for key in ("completed_p50", "delta_p50", "wer")
    }

    def spread(key: str) -> str:
        values = medians[key]
        return f" (runs {min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""

    print(
        f"all {len(every)} turns ({sum(t.seconds for t in every) / max(1, len(every)):.1f} s "
        f"of speech on average):\n"
        f"  1. end of speech -> completed: median {fmt(total['completed_p50'])}"
        f"{spread('completed_p50')}, p90 {fmt(total['completed_p90'])}, max "
        f"{fmt(total['completed_max'])} (target median <= 1.0 s)\n"
        f"     speech_stopped -> completed: median {fmt(total['stopped_p50'])}, p90 "
        f"{fmt(total['stopped_p90'])}; end of speech -> speech_stopped: median "
        f"{fmt(total['vad_stop_p50'])}\n"
        f"  2. speech start -> first delta: median {fmt(total['delta_p50'])}{spread('delta_p50')}, "
        f"p90 {fmt(total['delta_p90'])} (target median <= 1.5 s); turns with a delta before "
        f"their speech ended: {total['partial_before_end']}/{len(every)}; speech start -> "
        f"speech_started: median {fmt(total['vad_start_p50'])}\n"
        f"  4. WER of the completed transcripts: {total['wer']:.3f}{spread('wer')} "
        "(target <= 0.15)",
        flush=True,
    )
    cores = meter.cores()
    print(f"  {cpu_line(cores)}")
    return {"total": total, "runs": runs, "cpu_cores": cores}


def _solo_figures(turns: Sequence[TurnResult]) -> dict[str, Any]:
    completed = [t.to_completed for t in turns]
    stopped = [t.stopped_to_completed for t in turns]
    deltas = [t.to_first_delta for t in turns]
    return {
        "turns": len(turns),
        "missing": sum(c is None for c in completed),
        "split": sum(t.items > 1 for t in turns),
        "completed_p50": pct(completed, 50),
        "completed_p90": pct(completed, 90),
        "completed_max": max((c for c in completed if c is not None), default=None),
        "stopped_p50": pct(stopped, 50),
        "stopped_p90": pct(stopped, 90),
        "vad_start_p50": pct((t.to_speech_started for t in turns), 50),
        "vad_stop_p50": pct((t.to_speech_stopped for t in turns), 50),
        "delta_p50": pct(deltas, 50),
        "delta_p90": pct(deltas, 90),
        "partial_before_end": sum(t.partial_before_end for t in turns),
        "wer": wer(turns),
    }


@dataclass(slots=True)
class FileRequests:
    """The file requests of one level: the times of those done, how long the last one had
    run when the sessions ended (None if none was running), the statuses other than 200."""

    seconds: list[float] = field(default_factory=list)
    unfinished: float | None = None
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        done = ", ".join(f"{t:.1f}" for t in self.seconds) or "none done"
        if self.unfinished is not None:
            done += f" (+{self.unfinished:.0f} s running)"
        return done + (f", {len(self.failed)} failed" if self.failed else "")


async def concurrent(
    server: b.Server, plans: Sequence[Script], file_data: bytes, args: argparse.Namespace
) -> tuple[list[SessionResult], FileRequests, int | None]:
    """The sessions at once (their starts spread over the first second), file requests back
    to back while they run; the sessions, the file requests, the server's peak RSS."""
    requests = FileRequests()
    running_since: list[float] = []
    rss: list[int] = []
    stop = asyncio.Event()

    async def files() -> None:
        async with httpx.AsyncClient(timeout=900) as http:
            while not stop.is_set():
                running_since[:] = [time.perf_counter()]
                response = await http.post(
                    f"{server.url}{b.TRANSCRIPTIONS}",
                    files={"file": ("speech.flac", file_data)},
                    data={"response_format": "json"},
                )
                if response.status_code == 200:
                    requests.seconds.append(time.perf_counter() - running_since[0])
                else:
                    requests.failed.append(f"{response.status_code} {response.text[:100]}")
                running_since.clear()

    async def sample() -> None:
        while not stop.is_set():
            if server.pid is not None and (value := b.rss_bytes(server.pid)) is not None:
                rss.append(value)
            await asyncio.sleep(0.25)

    background = [asyncio.create_task(files()), asyncio.create_task(sample())]
    try:
        sessions = await asyncio.gather(
            *(
                live_session(server.url, plan, silence_ms=args.silence_ms, delay=i / len(plans))
                for i, plan in enumerate(plans)
            )
        )
    finally:
        stop.set()
        # the file request in flight is not waited for: its time is not a full one
        if running_since:
            requests.unfinished = time.perf_counter() - running_since[0]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    return list(sessions), requests, max(rss, default=None)


def measure_concurrent(
    server: b.Server, args: argparse.Namespace, file_data: bytes, file_seconds: float
) -> list[dict[str, Any]]:
    print(
        f"\n== 3. N sessions of {args.live_seconds:.0f} s at real-time pace, with "
        f"{file_seconds:.0f} s file requests back to back ==",
        flush=True,
    )
    print(
        "     N | turns | lag p50 | lag p90 | lag max | late appends | behind <= 2 s | "
        "files done (s) | WER | RSS MiB | CPU server/client/others"
    )
    levels: list[dict[str, Any]] = []
    for n in args.sessions:
        plans = [script(args.live_seconds, seed=100 + i, gap=args.gap) for i in range(n)]
        meter = CpuMeter(server.pid)
        sessions, files, rss = asyncio.run(concurrent(server, plans, file_data, args))
        cores = meter.cores()
        lags = [lag for s in sessions for lag in s.lags()]
        turns = [t for s in sessions for t in s.turns]
        behind = [s.behind() for s in sessions]
        keeping_up = sum(x <= BEHIND_LIMIT for x in behind)
        level = {
            "sessions": n,
            "turns": len(turns),
            "missing": sum(s.missing() for s in sessions),
            "lag_p50": b.percentile(lags, 50),
            "lag_p90": b.percentile(lags, 90),
            "lag_max": max(lags, default=None),
            "send_late_max": max(s.send_late_max for s in sessions),
            "behind": behind,
            "keeping_up": keeping_up,
            "ok": keeping_up == n,
            "file_requests": asdict(files),
            "wer": wer(turns),
            "rss_peak_bytes": rss,
            "cpu_cores": cores,
            "errors": [e for s in sessions for e in s.errors],
            "per_session": [
                {"turns": [asdict(t) for t in s.turns], "send_late_max": s.send_late_max}
                for s in sessions
            ],
        }
        levels.append(level)
        missing = f" ({level['missing']} missing)" if level["missing"] else ""
        print(
            f"    {n:>2} | {len(turns):>5} | {fmt(level['lag_p50']):>7} | "
            f"{fmt(level['lag_p90']):>7} | {fmt(level['lag_max']):>7} | "
            f"{fmt(level['send_late_max']):>12} | {keeping_up:>2}/{n:<2} "
            f"{'yes' if level['ok'] else 'NO '}"
            f"{missing} | {files.describe()} | "
            f"{level['wer']:.3f} | {(rss or 0) / 2**20:.0f} | "
            f"{cores['server']:.2f}/{cores['client']:.2f}/{cores['others']:.2f}",
            flush=True,
        )
        if not level["ok"] and not args.keep_going:
            break
    passed = [lv["sessions"] for lv in levels if lv["ok"]]
    most = max(passed, default=0)
    print(
        f"sessions that all stayed <= {BEHIND_LIMIT:g} s behind with a file request running: "
        f"{most} (target >= 8)"
    )
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of the solo session")
    parser.add_argument("--solo-seconds", type=float, default=75.0, help="audio per solo run")
    parser.add_argument(
        "--live-seconds", type=float, default=35.0, help="audio per session in measure 3"
    )
    parser.add_argument(
        "--sessions",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 4, 8, 12, 16],
        help="levels of measure 3, e.g. 1,4,8",
    )
    parser.add_argument("--keep-going", action="store_true", help="go on past a failed level")
    parser.add_argument("--file-seconds", type=float, default=180.0, help="the file requests")
    parser.add_argument("--gap", type=float, default=1.5, help="silence between utterances, s")
    parser.add_argument(
        "--silence-ms", type=int, help="server VAD silence_duration_ms (default: the server's)"
    )
    parser.add_argument("--serve-args", default="", help="extra `whisperd serve` arguments")
    parser.add_argument("--only", choices=("solo", "concurrent"), help="run one part")
    parser.add_argument(
        "--quick", action="store_true", help="one short solo run, levels 1,4,8, a 60 s file"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.solo_seconds, args.live_seconds = 1, 40.0, 25.0
        args.sessions, args.file_seconds = [1, 4, 8], 60.0
    # a SIGTERM stops the server this bench started, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = b.machine()
    print(f"machine: {b.describe(info)}; load average {b.load_average()}", flush=True)
    print(f"prompts of {MIN_PROMPT:g}-{MAX_PROMPT:g} s: {len(prompts())}", flush=True)
    file_data, _ = b.prompt_speech(args.file_seconds, seed=7)
    file_seconds = audio.duration(audio.decode(file_data))
    figures: dict[str, Any] = {"machine": info, "args": vars(args)}
    with b.started_server(
        "whisperd", args.serve_args.split(), log=OUT / "realtime-server.log"
    ) as server:
        print(f"started: whisperd serve {args.serve_args} (pid {server.pid})", flush=True)
        # warm up: the model, Silero VAD, the first decodes
        asyncio.run(
            live_session(server.url, script(6, seed=99, gap=1.0), silence_ms=args.silence_ms)
        )
        started = time.perf_counter()
        httpx.post(
            f"{server.url}{b.TRANSCRIPTIONS}",
            files={"file": ("speech.flac", file_data)},
            timeout=900,
        ).raise_for_status()
        figures["file_alone_seconds"] = time.perf_counter() - started
        print(
            f"the {file_seconds:.0f} s file alone: {figures['file_alone_seconds']:.1f} s",
            flush=True,
        )
        if args.only in (None, "solo"):
            figures["solo"] = measure_solo(server, args)
        if args.only in (None, "concurrent"):
            figures["concurrent"] = measure_concurrent(server, args, file_data, file_seconds)
    figures["load_average_after"] = list(os.getloadavg())
    print(f"\nload average after: {b.load_average()}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "realtime.json").write_text(json.dumps(figures, indent=2, default=str))
    plot(figures, OUT / "realtime.png")
    print(f"wrote {OUT / 'realtime.json'} and {OUT / 'realtime.png'}")
    return 0


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if "solo" in figures:
        turns = [t for run in figures["solo"]["runs"] for t in run["turns"]]
        series = {
            "end of speech\n-> completed": [t["to_completed"] for t in turns],
            "speech_stopped\n-> completed": [t["stopped_to_completed"] for t in turns],
            "speech start\n-> first delta": [t["to_first_delta"] for t in turns],
        }
        data = [[v for v in values if v is not None] for values in series.values()]
        left.boxplot(data, tick_labels=list(series))
        for x, values in enumerate(data, start=1):
            left.scatter([x] * len(values), values, s=8, alpha=0.5, color="#47a")
        left.axhline(1.0, color="#a44", linestyle=":", linewidth=1)
        left.axhline(1.5, color="#a74", linestyle=":", linewidth=1)
        left.set_ylabel("seconds")
        left.set_title("one session: each turn")
    if "concurrent" in figures:
        levels = figures["concurrent"]
        n = [lv["sessions"] for lv in levels]
        for key, label in (("lag_p50", "p50"), ("lag_p90", "p90"), ("lag_max", "max")):
            right.plot(n, [lv[key] for lv in levels], marker="o", label=f"lag {label}")
        right.axhline(BEHIND_LIMIT, color="#a44", linestyle=":", linewidth=1)
        right.set_xlabel("live sessions (and a file request)")
        right.set_ylabel("completed after end of speech, s")
        right.set_title("sessions at real-time pace")
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
