"""The ``whisperd`` command line: serve, worker, transcribe, detect, models, bench."""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

import typer
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from whisperd import __version__
from whisperd.errors import WhisperdError

HELP_WIDTH = 150
"""Columns of help written to a pipe or file (a terminal's own width otherwise): enough for
every flag and variable name whole."""
if typer.rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():
    typer.rich_utils.MAX_WIDTH = HELP_WIDTH

app = typer.Typer(
    name="whisperd",
    help="A self-hosted Whisper speech-to-text service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List the model catalog, or pull a model into the cache.")
app.add_typer(models_app, name="models")
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

SAMPLE = resources.files("whisperd") / "samples" / "jfk.flac"
"""The 11 s recording shipped in the package (JFK's 1961 inaugural address, public domain)."""

FORMAT_CHOICES = ("text", "json", "verbose_json", "srt", "vtt", "tsv", "diarized_json")
Command = TypeVar("Command", bound=Callable[..., None])
T = TypeVar("T")
STDIN = Path("-")  # the input name that reads audio from standard input


# The settings each command takes as flags; every flag is named, typed and documented by its
# field in Settings. A list setting takes a repeatable flag in the singular (--api-key).
SERVE_FLAGS = (
    "host",
    "port",
    "tls_certfile",
    "tls_keyfile",
    "model",
    "preload_models",
    "models_dir",
    "max_loaded_models",
    "model_ttl",
    "device",
    "compute_type",
    "batch_size",
    "cpu_threads",
    "cpu_workers",
    "max_active",
    "max_queue",
    "request_timeout",
    "max_upload_bytes",
    "max_audio_seconds",
    "job_max_upload_bytes",
    "api_keys",
    "api_keys_file",
    "admin_api_keys",
    "fetch_allow_hosts",
    "fetch_enabled",
    "fetch_concurrency",
    "realtime_max_sessions",
    "max_header_bytes",
    "drain_timeout",
    "data_dir",
    "redis_url",
    "queue_consumers",
    "metrics_public",
    "vad_filter",
    "log_level",
    "log_format",
)
WORKER_FLAGS = (
    "redis_url",
    "model",
    "device",
    "compute_type",
    "batch_size",
    "cpu_threads",
    "cpu_workers",
    "metrics_port",
    "log_level",
    "log_format",
)
_SHORT_FLAGS = {"model": ("-m",)}


def _setting_flag(name: str) -> inspect.Parameter:
    """The option for setting ``name``: its type, help and variable from the Settings field."""
    from whisperd.settings import Settings

    field = Settings.model_fields[name]
    kind: Any = field.annotation
    words = name
    if get_origin(kind) is tuple:  # a list setting: a repeatable flag, in the singular
        kind, words = list[str], name.removesuffix("s")
    elif type(None) in get_args(kind):  # the flag's None already means "not given"
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    flag = "--" + words.replace("_", "-")
    option = typer.Option(
        f"{flag}/--no-{flag[2:]}" if kind is bool else flag,
        *_SHORT_FLAGS.get(name, ()),
        help=f"{field.description} [WHISPERD_{name.upper()}]",
        show_default=False,
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _setting_flags(*names: str) -> Callable[[Command], Command]:
    """Give a command taking ``**flags`` one flag per named setting."""

    def add(command: Command) -> Command:
        # typer reads a command's options from its signature
        flags = [_setting_flag(name) for name in names]
        command.__signature__ = inspect.Signature(flags)  # type: ignore[attr-defined]
        return command

    return add


# The request fields that the transcribe command's flags set, as the API's messages name them.
_FLAGS = {
    "response_format": "-f",
    "diarize": "--diarize",
    "multichannel": "--multichannel",
    "multilingual": "--multilingual",
    "known_speaker_names": "--speaker",
    "known_speaker_references": "--speaker",
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "max_line_width",
            "max_line_count",
            "max_words_per_line",
            "max_cue_seconds",
            "highlight_words",
            "word_timestamps",
            "min_speakers",
            "max_speakers",
            "beam_size",
        )
    },
}
# a field with an underscore as it is, or any as ``name=value``
_NAMES = "|".join(_FLAGS)
_BARE = "|".join(name for name in _FLAGS if "_" in name)
_FIELD = re.compile(rf"\b(?:(?P<name>{_NAMES})=(?P<value>[\w.-]+)|(?P<bare>{_BARE}))\b")


def _in_flags(message: str) -> str:
    """An API message in the command line's words: ``diarize=true`` as ``--diarize``,
    ``response_format text`` as ``-f text``."""

    def flag(match: re.Match[str]) -> str:
        if match["bare"]:
            return _FLAGS[match["bare"]]
        name, value = _FLAGS[match["name"]], match["value"]
        return name if value == "true" else f"{name} {value}"

    return _FIELD.sub(flag, message)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _settings(**overrides: Any) -> Any:
    """Settings from the environment, with the flags that were given on top."""
    from pydantic import ValidationError

    from whisperd.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        raise _fail(f"{where}: {message}", 2) from None


def _setup_logging(level: str, fmt: str = "text") -> None:
    from whisperd.logs import configure

    configure(level, fmt)


def _version(value: bool) -> None:
    if value:
        out.print(f"whisperd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """A self-hosted Whisper speech-to-text service."""


@app.command()
@_setting_flags(*SERVE_FLAGS)
def serve(**flags: Any) -> None:
    """Run the HTTP server (OpenAI API, function and upload endpoints, jobs)."""
    from whisperd.server import serve as run_server

    settings = _settings(**flags)
    _setup_logging(settings.log_level, settings.log_format)
    raise typer.Exit(run_server(settings))


@app.command()
@_setting_flags(*WORKER_FLAGS)
def worker(**flags: Any) -> None:
    """Run job consumers only (no HTTP): load the model once, take jobs from Redis.

    One worker per GPU. SIGTERM drains: no new jobs; running ones get WHISPERD_DRAIN_TIMEOUT s.

    Jobs still running after that go back to the queue for another worker.
    """
    from whisperd.jobs.worker.main import run_worker

    settings = _settings(**flags)
    _setup_logging(settings.log_level, settings.log_format)
    if settings.redis_url is None:
        raise _fail(
            "whisperd worker needs the Redis the API servers use: set WHISPERD_REDIS_URL "
            "(or --redis-url), e.g. redis://redis:6379/0",
            2,
        )
    try:
        status = run_worker(settings)
    except WhisperdError as exc:
        raise _fail(exc.message) from None
    raise typer.Exit(status)


@app.command()
def transcribe(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Audio or video files; - reads one from stdin.", show_default=False),
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Also transcribe the 11 s recording whisperd ships.")
    ] = False,
    model: Annotated[str | None, typer.Option("-m", "--model", help="Model name or dir.")] = None,
    fmt: Annotated[
        str, typer.Option("-f", "--format", help=f"One of: {', '.join(FORMAT_CHOICES)}.")
    ] = "text",
    output_dir: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="Write one file per input here.")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Language code; default: detect.")] = None,
    multilingual: Annotated[
        bool,
        typer.Option(help="Detect the language of each stretch of speech (mixed languages)."),
    ] = False,
    task: Annotated[str, typer.Option(help="transcribe or translate (to English).")] = "transcribe",
    word_timestamps: Annotated[bool, typer.Option(help="Time every word.")] = False,
    vad: Annotated[
        bool | None, typer.Option("--vad/--no-vad", help="Skip long silences (VAD).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Initial prompt (spelling, style).")] = None,
    hotwords: Annotated[str | None, typer.Option(help="Words to favour, e.g. names.")] = None,
    beam_size: Annotated[int | None, typer.Option(help="Beam size.", min=1, max=20)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    compute_type: Annotated[str | None, typer.Option(help="auto, int8, float16, ...")] = None,
    max_line_width: Annotated[
        int | None, typer.Option(help="srt/vtt: characters per line (cut at words).")
    ] = None,
    max_line_count: Annotated[int | None, typer.Option(help="srt/vtt: lines per cue.")] = None,
    max_words_per_line: Annotated[int | None, typer.Option(help="srt/vtt: words per line.")] = None,
    max_cue_seconds: Annotated[
        float | None, typer.Option(help="srt/vtt: longest cue, seconds.")
    ] = None,
    highlight_words: Annotated[
        bool, typer.Option(help="srt/vtt: a cue per word, the spoken one underlined.")
    ] = False,
    diarize: Annotated[
        bool, typer.Option(help="Tell speakers apart by voice (needs whisperd\\[speakers]).")
    ] = False,
    multichannel: Annotated[
        bool, typer.Option(help="Transcribe each channel on its own; the speaker is the channel.")
    ] = False,
    speaker: Annotated[
        list[str] | None,
        typer.Option(
            help="A known speaker: NAME=FILE (2-10 s of their voice), or with --multichannel "
            "NAME (the channels' names, in order). Repeatable."
        ),
    ] = None,
    min_speakers: Annotated[int | None, typer.Option(help="The fewest speakers to find.")] = None,
    max_speakers: Annotated[int | None, typer.Option(help="The most speakers to find.")] = None,
) -> None:
    """Transcribe files: print to stdout (one file) or write one output per input into -o DIR."""
    import shutil
    import tempfile

    from whisperd import formats
    from whisperd.engine import collect, items
    from whisperd.speakers.diarize import attribute, channel_sources, merge_channels
    from whisperd.spec import Spec
    from whisperd.subtitles import SubtitleOptions

    if fmt not in FORMAT_CHOICES:
        raise _fail(f"unknown format {fmt!r}; use one of {', '.join(FORMAT_CHOICES)}", 2)
    subtitles = SubtitleOptions(
        max_line_width, max_line_count, max_words_per_line, max_cue_seconds, highlight_words
    )
    if task not in ("transcribe", "translate"):
        raise _fail(f"unknown task {task!r}; use transcribe or translate", 2)
    try:
        speakers = _speaker_fields(
            speaker or [], diarize, multichannel, min_speakers, max_speakers
        ).checked(fmt)
        spec = Spec(
            task=task,  # type: ignore[arg-type]
            language=language,
            prompt=prompt,
            response_format=fmt,
            hotwords=hotwords,
            vad_filter=vad,
            beam_size=beam_size,
            word_timestamps=word_timestamps,
            subtitles=subtitles,
            multilingual=multilingual,
            speakers=speakers,
        ).check()
    except WhisperdError as exc:
        raise _fail(_in_flags(exc.message), 2) from None
    with contextlib.ExitStack() as stack:
        paths = list(files or [])
        if sample:
            paths.append(stack.enter_context(resources.as_file(SAMPLE)))
        inputs = _inputs(paths, output_dir, formats.EXTENSIONS[fmt])
        _setup_logging("warning")
        single = len(paths) == 1
        settings = _settings(
            model=model, device=device, compute_type=compute_type, preload_models=()
        )
        options = spec.options(settings)
        engine = _start_engine(stack, settings)
        try:
            # a bad language is the command's mistake, not a file's
            engine.check(engine.default_model, options)
        except WhisperdError as exc:
            raise _fail(_in_flags(exc.message), 2) from None
        if output_dir is not None:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                msg = f"cannot make the output directory {output_dir}: {exc.strerror}"
                raise _fail(msg, 2) from None
        if STDIN in paths:
            spool = stack.enter_context(tempfile.NamedTemporaryFile(prefix="whisperd-stdin-"))
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            paths = [Path(spool.name) if path == STDIN else path for path in paths]

        def run(path: Path, name: str) -> str:
            with path.open("rb") as source:
                prepared = engine.prepare(options, source=source)
                views, channels = channel_sources(source, multichannel=speakers.multichannel)
                tasks = [
                    engine.begin(prepared, engine.sections(view, channel=channel))
                    for view, channel in zip(views, channels, strict=True)
                ]
                results = [_collect_with_progress(tasks[0], prepared.estimate, name, single)]
                results += [collect(items(task)) for task in tasks[1:]]
            if speakers.multichannel:
                merged = merge_channels(results, speakers.names)
            else:
                merged = attribute(results[0], speakers)
            return spec.render(merged).text

        failures = 0
        try:
            names = [name for name, _ in inputs]
            done = _side_by_side(engine, run, paths, names)
            for (_, text), (_, target) in zip(done, inputs, strict=True):
                if text is None or not _deliver(text, target):
                    failures += 1
        except WhisperdError as exc:
            raise _fail(exc.message) from None
    if failures:
        raise typer.Exit(1)


@app.command()
def detect(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.", show_default=False)],
    model: Annotated[
        str, typer.Option("-m", "--model", help="A multilingual model's name or dir.")
    ] = "base",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per file: the answer of POST /v1/audio/language and `file`.",
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    compute_type: Annotated[str | None, typer.Option(help="auto, int8, float16, ...")] = None,
) -> None:
    """Say which language each file speaks, from its first 30 s of speech: one line per file."""
    import json

    from whisperd import formats
    from whisperd.api.schemas import LanguageDetectionResult

    if STDIN in files:
        raise _fail("detect reads files, not stdin", 2)
    names = [_input_name(path) for path in files]
    _setup_logging("warning")
    settings = _settings(model=model, device=device, compute_type=compute_type, preload_models=())
    with contextlib.ExitStack() as stack:
        engine = _start_engine(stack, settings)
        try:
            detector = engine.detector(None)
        except WhisperdError as exc:
            raise _fail(exc.message, 2) from None

        def run(path: Path, name: str) -> LanguageDetectionResult:
            return LanguageDetectionResult.of(engine.detect(detector, path).result())

        failures = 0
        for name, found in _side_by_side(engine, run, files, names):
            if found is None:
                failures += 1
                continue
            if as_json:
                line = json.dumps({"file": name, **found.model_dump()}, ensure_ascii=False)
            else:
                others = ", ".join(f"{o.language} {o.probability:.2f}" for o in found.languages[1:])
                spoken = formats.language_name(found.language)
                line = f"{name}: {found.language} ({spoken}) {found.probability:.2f}; {others}"
            sys.stdout.write(line + "\n")
    if failures:
        raise typer.Exit(1)


def _start_engine(stack: contextlib.ExitStack[Any], settings: Any) -> Any:
    """The engine, started (its default model loaded) until ``stack`` closes."""
    from whisperd.engine import Transcriber

    try:
        return stack.enter_context(Transcriber(settings))
    except WhisperdError as exc:
        raise _fail(exc.message) from None


def _side_by_side(
    engine: Any, run: Callable[[Path, str], T], paths: list[Path], names: list[str]
) -> Iterator[tuple[str, T | None]]:
    """``run(path, name)`` for every input at once (their windows batched), each result (None
    for one that failed, its error printed) in input order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=engine.plan.batch_size * engine.plan.workers) as pool:
        futures = [pool.submit(run, path, name) for path, name in zip(paths, names, strict=True)]
        for name, future in zip(names, futures, strict=True):
            try:
                yield name, future.result()
            except WhisperdError as exc:
                err.print(f"[bold red]error:[/] {escape(name)}: {escape(_in_flags(exc.message))}")
                yield name, None


def _inputs(
    paths: list[Path], output_dir: Path | None, extension: str
) -> list[tuple[str, Path | None]]:
    """Each input's name in messages (``stdin`` for ``-``) and the file its output goes to
    (None: stdout), once the command line is known to be usable: every input a file, and no
    two of them writing the same output file."""
    if not paths:
        raise _fail("give audio files, - to read one from stdin, or --sample", 2)
    if len(paths) > 1 and output_dir is None:
        raise _fail("several files need -o DIR (one output file per input)", 2)
    writers: dict[Path | None, str] = {}
    for path in paths:
        name = _input_name(path)
        target = None if output_dir is None else output_dir / f"{Path(name).stem}.{extension}"
        if target in writers:
            raise _fail(
                f"{writers[target]} and {name} would both be written to {target}; "
                "transcribe them into different -o directories",
                2,
            )
        writers[target] = name
    return [(name, target) for target, name in writers.items()]


def _input_name(path: Path) -> str:
    """The name of the input ``path`` in messages (``stdin`` for ``-``), once it is known to be
    a file."""
    if path.is_dir():
        raise _fail(f"{path} is a directory; pass the audio files in it, e.g. {path}/*", 2)
    if path != STDIN and not path.is_file():
        raise _fail(f"{path}: no such file", 2)
    return "stdin" if path == STDIN else str(path)


def _deliver(text: str, target: Path | None) -> bool:
    """Print ``text``, or write it to ``target``; False when it could not be written."""
    if target is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return True
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot write {escape(str(target))}: {exc.strerror}")
        return False
    err.print(f"wrote {escape(str(target))}")
    return True


def _speaker_fields(
    known: list[str],
    diarize: bool,
    multichannel: bool,
    min_speakers: int | None,
    max_speakers: int | None,
) -> Any:
    """The speaker options as a request sends them: ``--speaker NAME=FILE`` as a name and
    the file as a data URL (with --multichannel, ``--speaker NAME`` names a channel)."""
    import base64
    import mimetypes

    from whisperd.speakers.options import SpeakerFields

    names, references = [], []
    for entry in known:
        name, _, path = entry.partition("=")
        names.append(name)
        if path:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise _fail(f"cannot read {path}: {exc.strerror}", 2) from None
            kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
            references.append(f"data:{kind};base64,{base64.b64encode(data).decode()}")
    return SpeakerFields(
        diarize, multichannel, tuple(names), tuple(references), min_speakers, max_speakers
    )


def _collect_with_progress(task: Any, total: float | None, name: str, show: bool) -> Any:
    """The transcription, with a progress bar by audio position for a long file on a
    terminal."""
    from whisperd.engine import collect, items

    if not show or not err.is_terminal or total is None or total < 60:
        return collect(items(task))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        bar = progress.add_task(Path(name).name, total=total)
        return collect(items(task), on_segment=lambda s: progress.update(bar, completed=s.end))


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List each model: source, whether it is on this machine, size, languages."""
    if ctx.invoked_subcommand is not None:
        return
    from whisperd import models

    settings = _settings()
    table = Table("name", "source", "local", "size", "languages", "from")
    for row in models.list_models(settings.model_cache_dir, settings.models_dir):
        table.add_row(
            row.name,
            row.source,
            "yes" if row.available else "no",
            f"{row.size_mib} MiB",
            {True: "multilingual", False: "English-only", None: "unknown"}[row.multilingual],
            escape(row.detail),  # "whisperd[base]" is not markup
        )
    out.print(table)
    aliases = ", ".join(f"{a} -> {n}" for a, n in models.ALIASES.items())
    out.print(
        f"aliases: {aliases}; WHISPERD_MODEL and --model may also give the path of a directory "
        "with a CTranslate2 Whisper model."
    )


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str], typer.Argument(help="Model names to make local.")],
) -> None:
    """Make models local: assemble/verify bundled ones, download others (needs a network)."""
    from whisperd import models

    settings = _settings()
    for name in names:
        try:
            resolved = models.resolve(
                name,
                settings.model_cache_dir,
                models_dir=settings.models_dir,
                offline=settings.offline,
            )
        except WhisperdError as exc:
            raise _fail(exc.message) from None
        out.print(f"{resolved.name}: {resolved.path} ({resolved.source})")


@app.command()
def bench(
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url",
            help="A running server, as NAME=URL or URL (ours or any OpenAI-compatible one); "
            "repeatable to compare servers side by side.",
        ),
    ] = None,
    start: Annotated[
        list[str] | None,
        typer.Option(
            "--start",
            help="Start `whisperd serve ARGS` on a free port for the run, as NAME or "
            "NAME=ARGS (e.g. 'batch-1=--batch-size 1'); repeatable. Default without --url: one.",
        ),
    ] = None,
    audio_paths: Annotated[
        list[Path] | None,
        typer.Option(
            "--audio",
            help="Audio files or directories to send in turn [../shared/audio if it is there, "
            "else the bundled 11 s sample].",
        ),
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Concurrent clients per level, comma-separated.")
    ] = "1,4,16",
    requests: Annotated[
        int, typer.Option(min=1, help="Requests per level (at least one per client).")
    ] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Uncounted requests per server first.")] = 1,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where report.json and the PNG plots go.")
    ] = Path("bench/out/bench"),
    price_per_hour: Annotated[
        float | None,
        typer.Option(help="The machine's price in $/hour: shows the cost per audio minute."),
    ] = None,
    results_md: Annotated[
        Path | None, typer.Option(help="Append the table to this Markdown file.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key sent to every server.")] = None,
    model: Annotated[str, typer.Option(help="The `model` form field sent.")] = "whisper-1",
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 600.0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
) -> None:
    """Load-test transcription servers: latency percentiles, throughput, RTF, errors, memory.

    Every level sends --requests requests from N concurrent clients to
    /v1/audio/transcriptions; servers alternate within a level. Prints one table, writes
    OUT/report.json, OUT/latency.png and OUT/throughput.png.
    """
    import shlex

    import anyio

    import whisperd_bench as b
    from whisperd_bench import report as bench_report

    _setup_logging("warning")
    try:
        levels = [int(part) for part in concurrency.split(",") if part.strip()]
    except ValueError:
        raise _fail(f"--concurrency takes numbers like 1,4,16, not {concurrency!r}", 2) from None
    if not levels or min(levels) < 1:
        raise _fail("--concurrency needs at least one level of 1 or more clients", 2)
    if plots:
        try:
            bench_report.check_plots()
        except b.BenchError as exc:
            raise _fail(str(exc), 2) from None
    starts = [spec.partition("=")[::2] for spec in start or ([] if url else ["whisperd"])]
    urls = [b.parse_named(spec, "") for spec in url or []]
    urls = [(name or address.split("//")[-1].rstrip("/"), address) for name, address in urls]
    names = [name for name, _ in starts + urls]
    if len(set(names)) != len(names) or not all(names):
        raise _fail(f"each server needs its own name (NAME=...); got {names}", 2)
    command = "whisperd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        with contextlib.ExitStack() as stack:
            shared = b.default_audio_dir()
            paths = audio_paths or [shared or stack.enter_context(resources.as_file(SAMPLE))]
            clips = b.collect_clips(paths)
            servers: list[b.Server] = []
            for name, args in starts:
                err.print(f"starting {name}: whisperd serve {args}", highlight=False)
                log = out_dir / f"server-{name}.log"
                servers.append(
                    stack.enter_context(b.started_server(name, shlex.split(args), log=log))
                )
            servers += [b.Server(name, address, b.local_pid(address)) for name, address in urls]
            report = b.Report(
                b.machine(), servers, clips, price_per_hour=price_per_hour, command=command
            )
            err.print(f"machine: {b.describe(report.machine)}", highlight=False)

            def progress(level: b.Level) -> None:
                s = level.summary()
                counts = " ".join(f"{k}:{v}" for k, v in s["errors"].items())
                err.print(
                    f"{level.server} x{level.concurrency}: p50 {s['latency_p50'] or 0:.2f} s, "
                    f"{s['throughput']:.1f} audio s/s, {counts}",
                    highlight=False,
                )

            anyio.run(
                lambda: b.run_bench(
                    report,
                    concurrency=levels,
                    requests=requests,
                    warmup=warmup,
                    api_key=api_key,
                    model=model,
                    request_timeout=timeout,
                    on_level=progress,
                )
            )
        table = Table(*bench_report.COLUMNS, title=f"whisperd bench: {b.describe(report.machine)}")
        for row in bench_report.rows(report):
            table.add_row(*row)
        # wide enough for every column even when the output is a file or a pipe
        Console(highlight=False, width=max(out.width, 160)).print(table)
        out.print(
            "Latency percentiles are of the 200 answers; audio s/wall s is also audio "
            f"minutes per wall minute. OpenAI charges ${b.OPENAI_PRICE_PER_MINUTE}/audio min."
        )
        written = [bench_report.write_json(report, out_dir / "report.json")]
        if plots:
            written += bench_report.plot(report, out_dir)
        if results_md is not None:
            written.append(bench_report.append_markdown(report, results_md))
    except b.BenchError as exc:
        raise _fail(str(exc)) from None
    for path in written:
        out.print(f"wrote {path}")


def main() -> None:
    """Entry point of the ``whisperd`` script."""
    app()
