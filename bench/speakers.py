"""Who said what: speaker diarization on two real voices whose turns are known, against its
targets.

The input is a conversation of about ``--seconds`` (default 300 s) between two real people,
no synthetic speech: JFK (``../shared/audio/jfk.flac``, cut into its four phrases by
whisperd's own VAD, ``whisperd.chunking.speech_spans``; a turn is one to four consecutive
phrases with their own pauses) and Allison, who recorded Asterisk's English prompts
(``whisperd_bench.speech.prompt_utterances``; ``apt-get install asterisk-core-sounds-en-g722
asterisk-core-sounds-en``). Turns alternate, last 2-12 s and are 0.2-0.8 s apart, a quarter
of them back to back; every clip is scaled to the same speech level (RMS over its speech) so
that neither voice dominates. A seeded RNG (``--seed``) makes runs comparable.

The truth is kept in samples: each turn's speaker, its span, and its speech (the VAD's
speech spans of the clip alone, which holds one voice). It is scored in seconds against the
segments of the server's answer (their start, end and speaker):

- *speaker accuracy*: the share of truth speech time whose hypothesis speaker, under the best
  one-to-one mapping of hypothesis labels to true speakers (the assignment that puts the most
  seconds of the confusion matrix on the diagonal), is the right one. Truth speech under no
  hypothesis segment counts as wrong; time under k overlapping segments counts 1/k for each.
  Hypothesis time outside truth speech (pauses, segment edges) is not counted. Beside it:
  *coverage* (the share of truth speech under some segment) and the accuracy within covered
  time alone, which tell missed speech from confused speakers; and the accuracy with a
  0.25 s collar (the first and last 0.25 s of each truth speech span not scored, as NIST's
  diarization error rate usually is: word timestamps and the VAD's padding are that coarse);
- *turns right*: the share of turns whose segments (those whose middle lies in the turn)
  all carry the turn's speaker (mapped), at least one of them.

It starts ``whisperd serve`` with its defaults on 127.0.0.1 and sends requests with the
official ``openai`` SDK. Measures and targets:

1. ``response_format=diarized_json`` (parsed as ``TranscriptionDiarized``): speaker accuracy
   with the 0.25 s collar (target >= 0.95; the truth's spans carry the VAD's padding, so
   without a collar every turn's edges count as missed speech) and the number of speakers
   found (target 2);
2. known speakers: references of Allison (a 3-8 s prompt not in the conversation) and of JFK
   (one of his phrases, which is in the conversation: his 11 s file is all there is), named
   "Allison" and "JFK"; then Allison's alone. The share of Allison's speech labelled
   "Allison" (target >= 0.90), and of JFK's labelled "JFK";
3. the time diarization adds: the same file as ``verbose_json`` (no speakers), as
   ``verbose_json`` with word timestamps (which diarization turns on), and as
   ``diarized_json``, ``--runs`` times each, alternated; the medians and the ratio
   (target: diarized at most +25 % over verbose_json);
4. with ``--hour``: the server's peak resident memory (``VmHWM``, a fresh server each) for
   the conversation looped to 60 minutes, without and with diarization (target: bounded, as
   transcription is; within 150 MB of it is what ``longaudio.py`` asks of long files);
5. a stereo call, Allison on channel 0 and JFK on channel 1, taking turns, with
   ``multichannel=true`` and ``verbose_json``: the share of turns whose segments carry the
   right speaker (target 1.0), and each channel's text against a mono transcription of that
   channel alone (target: the same words);
6. word error rates: the diarized transcript against the verbose_json one (target 0: the
   same words; its segments' words against its own text too), and each against the known
   texts of the turns.

It prints each figure beside its target, the machine and its load, and writes
``bench/out/speakers.json`` and ``bench/out/speakers.png`` (truth against hypothesis
speakers on a timeline); the server's log is ``bench/out/speakers-server.log``.

    python bench/speakers.py
    python bench/speakers.py --hour
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openai
from openai.types.audio import TranscriptionDiarized, TranscriptionVerbose

import whisperd_bench as b
from conversation import (
    ALLISON,
    COLLAR_SECONDS,
    JFK,
    RATE,
    Conversation,
    Labelled,
    Said,
    Score,
    conversation,
    data_url,
    jfk_reference,
    score,
    segments_of,
    wav,
    word_differences,
)
from whisperd import audio

OUT = Path(__file__).resolve().parent / "out"
ACCURACY_TARGET = 0.95
KNOWN_TARGET = 0.90
OVERHEAD_TARGET = 0.25
FORMATS = ("verbose_json", "words", "diarized_json")
"""Measure 3's variants: no speakers, word timestamps alone, diarized."""


# --- the server ---------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """One request: its parsed answer, its wall time and its Server-Timing header."""

    result: Any
    seconds: float
    server_timing: str


class Whisperd:
    """The server under test, through the official SDK."""

    def __init__(self, server: b.Server, timeout: float = 900.0) -> None:
        self.client = openai.OpenAI(
            api_key="unused", base_url=f"{server.url}/v1", max_retries=0, timeout=timeout
        )
        self.diarized_as = "diarized_json"
        """How the ``diarized_json`` variant is asked for: as itself, or (where the server
        refuses that format) as ``verbose_json`` with ``diarize=true``."""
        self.refused: str | None = None
        """Why the server refused ``diarized_json``, if it did."""

    def transcribe(self, name: str, data: bytes, variant: str, **more: Any) -> Answer:
        """``data`` transcribed as ``variant``: a response_format, or ``words``
        (verbose_json with word timestamps). Where ``diarized_json`` is refused as a format,
        it says so once and asks for ``verbose_json`` with ``diarize=true`` from then on."""
        kwargs: dict[str, Any] = {"model": "whisper-1", "file": (name, data), "language": "en"}
        extra: dict[str, Any] = more.pop("extra_body", {})
        if variant == "words":
            kwargs |= {"response_format": "verbose_json", "timestamp_granularities": ["word"]}
        elif variant == "diarized_json" and self.diarized_as != variant:
            kwargs["response_format"] = "verbose_json"
            extra = extra | {"diarize": "true"}
        else:
            kwargs["response_format"] = variant
        if variant == "diarized_json":
            kwargs["chunking_strategy"] = "auto"
        started = time.perf_counter()
        try:
            raw = self.client.audio.transcriptions.with_raw_response.create(
                **kwargs, **more, extra_body=extra or None
            )
        except openai.UnprocessableEntityError as exc:
            if kwargs["response_format"] != "diarized_json" or "response_format" not in str(exc):
                raise
            self.refused = str(exc)
            self.diarized_as = "verbose_json + diarize=true"
            print(f"diarized_json REFUSED ({exc}); asking for {self.diarized_as} instead")
            return self.transcribe(name, data, variant, extra_body=extra, **more)
        seconds = time.perf_counter() - started
        return Answer(raw.parse(), seconds, raw.headers.get("server-timing", ""))


def hwm_bytes(pid: int) -> int | None:
    """The peak resident memory of process ``pid`` so far (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


class RssSampler:
    """The resident memory of process ``pid``, every half second while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.5):
            if (value := b.rss_bytes(self.pid)) is not None:
                self.samples.append(value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


# --- the measures -------------------------------------------------------------------------


@dataclass(slots=True)
class Table:
    """The figures, each beside its target, printed at the end."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, measure: str, figure: str, target: str, ok: bool | None) -> None:
        verdict = "-" if ok is None else ("yes" if ok else "NO")
        self.rows.append((measure, figure, target, verdict))

    def print(self) -> None:
        header = ("measure", "figure", "target", "met")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def describe_score(found: Score) -> str:
    mapped = ", ".join(f"{h}->{t}" for h, t in sorted(found.mapping.items()))
    return (
        f"accuracy {found.accuracy:.3f} (covered {found.covered:.3f}, accuracy where covered "
        f"{found.accuracy_covered:.3f}, with a {COLLAR_SECONDS:g} s collar "
        f"{found.accuracy_collar:.3f}), {found.speakers} speaker(s) [{mapped}], turns right "
        f"{found.turns_right:.3f}"
    )


def measure_formats(
    api: Whisperd, talk: Conversation, data: bytes, runs: int, table: Table
) -> dict[str, Any]:
    """Measures 1, 3 and 6: the three variants ``runs`` times each, alternated."""
    print(f"\n== 1, 3, 6. the conversation as {', '.join(FORMATS)}, {runs} run(s) each ==")
    times: dict[str, list[float]] = {v: [] for v in FORMATS}
    answers: dict[str, list[Answer]] = {v: [] for v in FORMATS}
    for run in range(runs):
        order = FORMATS if run % 2 == 0 else FORMATS[::-1]
        for variant in order:
            answer = api.transcribe("conversation.flac", data, variant)
            times[variant].append(answer.seconds)
            answers[variant].append(answer)
            print(
                f"  run {run + 1} {variant:<13} {answer.seconds:6.1f} s  [{answer.server_timing}]",
                flush=True,
            )
    medians = {v: statistics.median(t) for v, t in times.items()}
    diarized, plain = answers["diarized_json"][0].result, answers["verbose_json"][0].result
    words = answers["words"][0].result
    parsed = isinstance(diarized, TranscriptionDiarized) and isinstance(plain, TranscriptionVerbose)
    found = score(talk, segments_of(diarized))
    ratio = medians["diarized_json"] / medians["verbose_json"]
    words_ratio = medians["words"] / medians["verbose_json"]
    joined = " ".join(s.text for s in diarized.segments)
    reference = talk.text()
    wers = {
        "diarized_vs_verbose": b.word_error_rate(diarized.text, plain.text),
        "diarized_vs_words": b.word_error_rate(diarized.text, words.text),
        "words_vs_verbose": b.word_error_rate(words.text, plain.text),
        "diarized_segments_vs_text": b.word_error_rate(joined, diarized.text),
        "diarized_vs_known": b.word_error_rate(diarized.text, reference),
        "verbose_vs_known": b.word_error_rate(plain.text, reference),
    }
    stable = {
        v: len({a.result.text for a in answers[v]}) == 1 for v in FORMATS
    }  # the same text on every run
    print(
        f"  parsed as TranscriptionDiarized / TranscriptionVerbose: {parsed}\n"
        f"  1. {describe_score(found)} (target accuracy >= {ACCURACY_TARGET}, 2 speakers)\n"
        f"  3. medians: verbose_json {medians['verbose_json']:.1f} s, with word timestamps "
        f"{medians['words']:.1f} s ({words_ratio:.2f}x), diarized_json "
        f"{medians['diarized_json']:.1f} s: {ratio:.2f}x (target <= {1 + OVERHEAD_TARGET:.2f}x)\n"
        f"  6. WER diarized vs verbose_json {wers['diarized_vs_verbose']:.4f} (target 0), vs "
        f"word timestamps {wers['diarized_vs_words']:.4f}; word timestamps vs verbose_json "
        f"{wers['words_vs_verbose']:.4f}; diarized segments vs its text "
        f"{wers['diarized_segments_vs_text']:.4f}; vs the known texts: diarized "
        f"{wers['diarized_vs_known']:.4f}, verbose_json {wers['verbose_vs_known']:.4f}\n"
        f"  the same text on every run: {stable}",
        flush=True,
    )
    if wers["diarized_vs_verbose"]:
        print(f"     diarized vs verbose_json: {word_differences(diarized.text, plain.text)}")
    table.add("parsed as TranscriptionDiarized", str(parsed), "True", parsed)
    table.add(
        "1. speaker accuracy, 0.25 s collar",
        f"{found.accuracy_collar:.3f}",
        f">= {ACCURACY_TARGET}",
        found.accuracy_collar >= ACCURACY_TARGET,
    )
    table.add(
        "   no collar / coverage / where covered",
        f"{found.accuracy:.3f} / {found.covered:.3f} / {found.accuracy_covered:.3f}",
        "-",
        None,
    )
    table.add("1. speakers found", str(found.speakers), "2", found.speakers == 2)
    table.add("   turns right", f"{found.turns_right:.3f}", "-", None)
    table.add(
        "3. diarized_json / verbose_json time",
        f"{ratio:.2f}x ({medians['diarized_json']:.1f} / {medians['verbose_json']:.1f} s)",
        f"<= {1 + OVERHEAD_TARGET:.2f}x",
        ratio <= 1 + OVERHEAD_TARGET,
    )
    table.add("   word timestamps / verbose_json time", f"{words_ratio:.2f}x", "-", None)
    table.add(
        "6. WER diarized vs verbose_json",
        f"{wers['diarized_vs_verbose']:.4f}",
        "0",
        wers["diarized_vs_verbose"] == 0,
    )
    table.add(
        "6. WER diarized segments vs its text",
        f"{wers['diarized_segments_vs_text']:.4f}",
        "0",
        wers["diarized_segments_vs_text"] == 0,
    )
    table.add(
        "6. WER vs known texts (diarized / verbose)",
        f"{wers['diarized_vs_known']:.4f} / {wers['verbose_vs_known']:.4f}",
        "-",
        None,
    )
    return {
        "parsed": parsed,
        "score": asdict(found),
        "seconds": times,
        "medians": medians,
        "ratio": ratio,
        "words_ratio": words_ratio,
        "wer": wers,
        "same_text_every_run": stable,
        "server_timing": {v: [a.server_timing for a in answers[v]] for v in FORMATS},
        "segments": {v: segments_of(answers[v][0].result) for v in ("diarized_json",)},
        "texts": {v: answers[v][0].result.text for v in FORMATS},
    }


def measure_known(
    api: Whisperd,
    talk: Conversation,
    data: bytes,
    references: dict[str, Said],
    table: Table,
) -> dict[str, Any]:
    """Measure 2: known speakers' references; both, then Allison's alone."""
    seconds = {n: audio.duration(s.samples) for n, s in references.items()}
    print(
        "\n== 2. known speakers: "
        + ", ".join(f"{n} ({seconds[n]:.1f} s reference)" for n in references)
        + f"; {JFK}'s is a phrase also in the conversation =="
    )
    figures: dict[str, Any] = {"reference_seconds": seconds}
    for names in ((ALLISON, JFK), (ALLISON,)):
        answer = api.transcribe(
            "conversation.flac",
            data,
            "diarized_json",
            known_speaker_names=list(names),
            known_speaker_references=[data_url(references[n].samples) for n in names],
        )
        hypothesis = segments_of(answer.result)
        labels = sorted({label for _, _, label in hypothesis})
        as_named = score(talk, hypothesis, mapping={n: n for n in names})
        best = score(talk, hypothesis)
        share = {
            n: as_named.confusion.get(n, {}).get(n, 0.0) / sum(as_named.confusion[n].values())
            for n in (ALLISON, JFK)
        }
        print(
            f"  {' + '.join(names)}: labels {labels}; {ALLISON}'s speech labelled {ALLISON!r} "
            f"{share[ALLISON]:.3f} (target >= {KNOWN_TARGET}), {JFK}'s labelled {JFK!r} "
            f"{share[JFK]:.3f}; best mapping: {describe_score(best)} ({answer.seconds:.1f} s)",
            flush=True,
        )
        key = "+".join(names)
        table.add(
            f"2. {ALLISON}'s time as {ALLISON!r} ({key})",
            f"{share[ALLISON]:.3f}",
            f">= {KNOWN_TARGET}",
            share[ALLISON] >= KNOWN_TARGET,
        )
        if JFK in names:
            table.add(f"2. {JFK}'s time as {JFK!r} ({key})", f"{share[JFK]:.3f}", "-", None)
        figures[key] = {
            "labels": labels,
            "share_named": share,
            "score_as_named": asdict(as_named),
            "score_best": asdict(best),
            "seconds": answer.seconds,
            "segments": hypothesis,
        }
    return figures


def measure_channels(api: Whisperd, talk: Conversation, table: Table) -> dict[str, Any]:
    """Measure 5: Allison on channel 0, JFK on channel 1, multichannel=true."""
    print(f"\n== 5. a stereo call: {ALLISON} on channel 0, {JFK} on channel 1 ==")
    names = (ALLISON, JFK)
    channels = [talk.channel(n) for n in names]
    answer = api.transcribe(
        "call.wav",
        wav(channels),
        "verbose_json",
        known_speaker_names=list(names),
        extra_body={"multichannel": "true"},
    )
    hypothesis = segments_of(answer.result)
    found = score(talk, hypothesis, mapping={n: n for n in names})
    figures: dict[str, Any] = {
        "seconds": answer.seconds,
        "score": asdict(found),
        "segments": hypothesis,
        "channels": {},
    }
    print(
        f"  multichannel: {answer.seconds:.1f} s; turns right {found.turns_right:.3f} "
        f"(target 1.0); time right {found.accuracy:.3f} (covered {found.covered:.3f})",
        flush=True,
    )
    table.add(
        "5. stereo turns with the right speaker",
        f"{found.turns_right:.3f}",
        "1.0",
        found.turns_right == 1.0,
    )
    for index, (name, samples) in enumerate(zip(names, channels, strict=True)):
        mono = api.transcribe(f"channel-{index}.flac", audio.encode_flac(samples), "verbose_json")
        heard = " ".join(
            s.text for s in answer.result.segments if getattr(s, "speaker", "") == name
        )
        errors = b.word_error_rate(heard, mono.result.text)
        differences = word_differences(heard, mono.result.text)
        print(
            f"  channel {index} ({name}) vs its mono transcription ({mono.seconds:.1f} s): "
            f"WER {errors:.4f}" + (f", differences {differences}" if differences else ", equal"),
            flush=True,
        )
        table.add(f"5. channel {index} text vs mono (WER)", f"{errors:.4f}", "0", errors == 0)
        figures["channels"][name] = {
            "wer_vs_mono": errors,
            "differences": differences,
            "mono_seconds": mono.seconds,
        }
    return figures


def measure_hour(
    talk: Conversation, args: argparse.Namespace, warmup: bytes, table: Table
) -> dict[str, Any]:
    """Measure 4: peak RSS for the conversation looped to an hour, a fresh server each."""
    repeats = max(1, round(args.hour_seconds / talk.seconds))
    data = audio.encode_flac(np.tile(talk.samples, repeats))
    seconds = talk.seconds * repeats
    print(f"\n== 4. the conversation looped to {seconds / 60:.0f} min, a fresh server each ==")
    figures: dict[str, Any] = {"audio_seconds": seconds}
    for variant in ("verbose_json", "diarized_json"):
        log = OUT / f"speakers-hour-{variant}.log"
        with b.started_server("whisperd", args.serve_args.split(), log=log) as server:
            assert server.pid is not None
            api = Whisperd(server, timeout=3 * 3600)
            api.transcribe("jfk.flac", warmup, "verbose_json")
            before = hwm_bytes(server.pid)
            load = b.load_average()
            with RssSampler(server.pid) as sampler:
                answer = api.transcribe("hour.flac", data, variant)
            peak = hwm_bytes(server.pid)
        row: dict[str, Any] = {
            "seconds": answer.seconds,
            "hwm_after_warmup_bytes": before,
            "hwm_bytes": peak,
            "rss_samples_max_bytes": max(sampler.samples, default=None),
            "load_before": load,
            "load_after": b.load_average(),
            "server_timing": answer.server_timing,
        }
        line = (
            f"  {variant:<13} {answer.seconds:6.0f} s; peak RSS {mib(peak)} (after warm-up "
            f"{mib(before)}); load {load} -> {row['load_after']}"
        )
        if variant == "diarized_json":
            found = score(talk, segments_of(answer.result), repeats=repeats)
            row["score"] = asdict(found) | {"confusion": found.confusion}
            line += f"; {describe_score(found)}"
        print(line, flush=True)
        figures[variant] = row
    plain, diarized = figures["verbose_json"]["hwm_bytes"], figures["diarized_json"]["hwm_bytes"]
    if plain and diarized:
        extra = diarized - plain
        figures["extra_bytes"] = extra
        table.add(
            f"4. {seconds / 60:.0f}-min peak RSS, diarized vs not",
            f"{mib(diarized)} vs {mib(plain)} ({extra / 2**20:+.0f} MiB)",
            "bounded (<= +150 MB)",
            extra <= 150e6,
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="the conversation's length")
    parser.add_argument("--seed", type=int, default=0, help="the conversation's turns and gaps")
    parser.add_argument("--runs", type=int, default=3, help="runs of each format in measure 3")
    parser.add_argument("--hour", action="store_true", help="also measure 4 (about 10+ min)")
    parser.add_argument(
        "--hour-seconds", type=float, default=3600.0, help="measure 4's file, looped to this"
    )
    parser.add_argument(
        "--only", choices=("formats", "known", "channels", "hour"), help="run one measure"
    )
    parser.add_argument("--serve-args", default="", help="extra `whisperd serve` arguments")
    parser.add_argument(
        "--audio", type=Path, default=b.default_audio_dir(), help="jfk.flac's folder"
    )
    args = parser.parse_args()
    if args.audio is None:
        raise b.BenchError("no ../shared/audio: give --audio DIR (with jfk.flac)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = b.machine()
    print(f"machine: {b.describe(info)}; load average {b.load_average()}", flush=True)
    jfk = args.audio / "jfk.flac"
    talk, allison = conversation(args.seconds, seed=args.seed, jfk=jfk)
    by_speaker = {
        n: sum(z - a for t in talk.turns if t.speaker == n for a, z in t.speech) / RATE
        for n in (ALLISON, JFK)
    }
    print(
        f"conversation: {talk.seconds:.1f} s, {len(talk.turns)} turns, speech "
        + ", ".join(f"{n} {s:.1f} s" for n, s in by_speaker.items())
        + f" (seed {args.seed})",
        flush=True,
    )
    data = audio.encode_flac(talk.samples)
    warmup = jfk.read_bytes()
    table = Table()
    figures: dict[str, Any] = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "conversation": {
            "seconds": talk.seconds,
            "speech_seconds": by_speaker,
            "turns": [asdict(t) for t in talk.turns],
        },
    }
    if args.only in (None, "formats", "known", "channels"):
        with b.started_server(
            "whisperd", args.serve_args.split(), log=OUT / "speakers-server.log"
        ) as server:
            print(f"started: whisperd serve {args.serve_args} (pid {server.pid})", flush=True)
            api = Whisperd(server)
            # warm up: the model, the first decodes, the speaker model
            api.transcribe("jfk.flac", warmup, "verbose_json")
            if args.only in (None, "formats", "known"):
                api.transcribe("jfk.flac", warmup, "diarized_json")
                figures["diarized_json_refused"] = api.refused
                if api.refused:
                    table.add("diarized_json accepted", "no: 422", "yes", False)
            if args.only in (None, "formats"):
                figures["formats"] = measure_formats(api, talk, data, args.runs, table)
                print(f"  load average {b.load_average()}", flush=True)
            if args.only in (None, "known"):
                references = {ALLISON: allison, JFK: jfk_reference(jfk)}
                figures["known"] = measure_known(api, talk, data, references, table)
                print(f"  load average {b.load_average()}", flush=True)
            if args.only in (None, "channels"):
                figures["channels"] = measure_channels(api, talk, table)
                print(f"  load average {b.load_average()}", flush=True)
    if args.hour or args.only == "hour":
        figures["hour"] = measure_hour(talk, args, warmup, table)
    figures["load_average_after"] = list(os.getloadavg())
    print()
    table.print()
    print(f"\nmachine: {b.describe(info)}")
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in info['load_average'])}, after: "
        f"{b.load_average()}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    figures["table"] = table.rows
    (OUT / "speakers.json").write_text(json.dumps(figures, indent=2, default=str))
    plot(talk, figures, OUT / "speakers.png")
    print(f"wrote {OUT / 'speakers.json'} and {OUT / 'speakers.png'}")
    return 0


def plot(talk: Conversation, figures: dict[str, Any], path: Path) -> None:
    """Truth against each hypothesis, a row each, over the whole conversation and its first
    minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[Labelled], dict[str, str]]] = [
        ("truth", talk.truth(), {ALLISON: ALLISON, JFK: JFK})
    ]
    if "formats" in figures:
        found = figures["formats"]
        rows.append(("diarized", found["segments"]["diarized_json"], found["score"]["mapping"]))
    for key, row in figures.get("known", {}).items():
        if isinstance(row, dict) and "segments" in row:
            rows.append((f"known: {key}", row["segments"], row["score_best"]["mapping"]))
    if "channels" in figures:
        rows.append(("multichannel", figures["channels"]["segments"], {ALLISON: ALLISON, JFK: JFK}))
    colours = {ALLISON: "#c55", JFK: "#47a"}
    fig, axes = plt.subplots(2, 1, figsize=(14, 1.0 + 0.9 * len(rows) * 2))
    for ax, limit in zip(axes, (talk.seconds, min(60.0, talk.seconds)), strict=True):
        for y, (_, spans, mapping) in enumerate(reversed(rows)):
            for speaker in sorted({label for _, _, label in spans}):
                bars = [(s, e - s) for s, e, label in spans if label == speaker and s < limit]
                colour = colours.get(mapping.get(speaker, ""), "#999")
                ax.broken_barh(bars, (y + 0.1, 0.8), color=colour, alpha=0.8)
        ax.set_yticks([y + 0.5 for y in range(len(rows))], [n for n, _, _ in reversed(rows)])
        ax.set_xlim(0, limit)
        ax.set_xlabel("seconds")
    axes[0].set_title(f"speakers: truth (red {ALLISON}, blue {JFK}) and hypotheses, mapped")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
