"""The ``whisperd`` command line: serve, worker, transcribe, models, bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from whisperd import __version__
from whisperd.errors import WhisperdError

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

FORMAT_CHOICES = ("text", "json", "verbose_json", "srt", "vtt", "tsv")


# Options that serve and worker share; each is also a WHISPERD_ setting.
ModelOption = Annotated[
    str | None, typer.Option("-m", "--model", help="Default model [WHISPERD_MODEL].")
]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu or cuda [WHISPERD_DEVICE].")]
ComputeOption = Annotated[
    str | None, typer.Option(help="auto, int8, float16, ... [WHISPERD_COMPUTE_TYPE].")
]
BatchOption = Annotated[
    int | None, typer.Option(help="Most windows decoded in one batch [WHISPERD_BATCH_SIZE].")
]
LogLevelOption = Annotated[str | None, typer.Option(help="[WHISPERD_LOG_LEVEL]")]
LogFormatOption = Annotated[str | None, typer.Option(help="text or json [WHISPERD_LOG_FORMAT].")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
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
        raise _fail(f"{where}: {first['msg']}", 2) from None


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
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [WHISPERD_HOST].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [WHISPERD_PORT].")] = None,
    model: ModelOption = None,
    device: DeviceOption = None,
    compute_type: ComputeOption = None,
    batch_size: BatchOption = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Waiting requests before 429 [WHISPERD_MAX_QUEUE].")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Accepted API key; repeatable [WHISPERD_API_KEYS].")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="External Redis for jobs [WHISPERD_REDIS_URL].")
    ] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the HTTP server (OpenAI API, function and upload endpoints, jobs)."""
    from whisperd.server import serve as run_server

    settings = _settings(
        host=host,
        port=port,
        model=model,
        device=device,
        compute_type=compute_type,
        batch_size=batch_size,
        max_queue=max_queue,
        api_keys=tuple(api_key) if api_key else None,
        redis_url=redis_url,
        log_level=log_level,
        log_format=log_format,
    )
    _setup_logging(settings.log_level, settings.log_format)
    raise typer.Exit(run_server(settings))


@app.command()
def worker(
    redis_url: Annotated[
        str | None,
        typer.Option(help="The Redis the API servers use [WHISPERD_REDIS_URL]; required."),
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = None,
    compute_type: ComputeOption = None,
    batch_size: BatchOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run job consumers only (no HTTP): load the model once, take jobs from Redis.

    One worker per GPU. SIGTERM drains: no new jobs; running ones get WHISPERD_DRAIN_TIMEOUT s.

    Jobs still running after that go back to the queue for another worker.
    """
    from whisperd.jobs.runtime import run_worker

    settings = _settings(
        redis_url=redis_url,
        model=model,
        device=device,
        compute_type=compute_type,
        batch_size=batch_size,
        log_level=log_level,
        log_format=log_format,
    )
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
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.", show_default=False)],
    model: Annotated[str | None, typer.Option("-m", "--model", help="Model name or dir.")] = None,
    fmt: Annotated[
        str, typer.Option("-f", "--format", help=f"One of: {', '.join(FORMAT_CHOICES)}.")
    ] = "text",
    output_dir: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="Write one file per input here.")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Language code; default: detect.")] = None,
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
) -> None:
    """Transcribe files: print to stdout (one file) or write one output per input into -o DIR."""
    from concurrent.futures import ThreadPoolExecutor

    from whisperd import formats
    from whisperd.engine import TranscribeOptions, Transcriber

    if fmt not in FORMAT_CHOICES:
        raise _fail(f"unknown format {fmt!r}; use one of {', '.join(FORMAT_CHOICES)}", 2)
    if task not in ("transcribe", "translate"):
        raise _fail(f"unknown task {task!r}; use transcribe or translate", 2)
    if len(files) > 1 and output_dir is None:
        raise _fail("several files need -o DIR (one output file per input)", 2)
    for path in files:
        if not path.is_file():
            raise _fail(f"{path}: no such file", 2)
    _setup_logging("warning")
    single = len(files) == 1
    settings = _settings(model=model, device=device, compute_type=compute_type, preload_models=())
    options = TranscribeOptions(
        language=language,
        task=task,  # type: ignore[arg-type]
        beam_size=beam_size or settings.beam_size,
        initial_prompt=prompt,
        hotwords=hotwords,
        word_timestamps=word_timestamps,
        vad_filter=settings.vad_filter if vad is None else vad,
    )
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        with Transcriber(settings) as engine:

            def run(path: Path) -> str:
                with path.open("rb") as source:
                    prepared = engine.prepare(options, source=source)
                    task = engine.begin(prepared, engine.chunks(source))
                    result = _collect_with_progress(task, prepared.estimate, path, single)
                return formats.render(result, fmt)

            # several files run side by side, their windows batched; outputs keep input order
            with ThreadPoolExecutor(max_workers=engine.plan.batch_size) as pool:
                for path, future in [(p, pool.submit(run, p)) for p in files]:
                    try:
                        text = future.result()
                    except WhisperdError as exc:
                        err.print(f"[bold red]error:[/] {path}: {exc.message}")
                        failures += 1
                        continue
                    if output_dir is None:
                        sys.stdout.write(text if text.endswith("\n") else text + "\n")
                    else:
                        target = output_dir / f"{path.stem}.{formats.EXTENSIONS[fmt]}"
                        target.write_text(text, encoding="utf-8")
                        err.print(f"wrote {target}")
    except WhisperdError as exc:
        raise _fail(exc.message) from None
    if failures:
        raise typer.Exit(1)


def _collect_with_progress(task: Any, total: float | None, path: Path, show: bool) -> Any:
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
        bar = progress.add_task(path.name, total=total)
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
            "--audio", help="Audio files or directories to send in turn [../shared/audio]."
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
    import contextlib
    import shlex

    import anyio

    from whisperd import bench as b
    from whisperd import bench_report

    _setup_logging("warning")
    try:
        levels = [int(part) for part in concurrency.split(",") if part.strip()]
    except ValueError:
        raise _fail(f"--concurrency takes numbers like 1,4,16, not {concurrency!r}", 2) from None
    if not levels or min(levels) < 1:
        raise _fail("--concurrency needs at least one level of 1 or more clients", 2)
    paths = audio_paths or [p for p in [b.default_audio_dir()] if p is not None]
    if not paths:
        raise _fail("no audio: pass --audio FILE_OR_DIR (../shared/audio is not here)", 2)
    starts = [spec.partition("=")[::2] for spec in start or ([] if url else ["whisperd"])]
    urls = [b.parse_named(spec, "") for spec in url or []]
    urls = [(name or address.split("//")[-1].rstrip("/"), address) for name, address in urls]
    names = [name for name, _ in starts + urls]
    if len(set(names)) != len(names) or not all(names):
        raise _fail(f"each server needs its own name (NAME=...); got {names}", 2)
    command = "whisperd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        clips = b.collect_clips(paths)
        with contextlib.ExitStack() as stack:
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
