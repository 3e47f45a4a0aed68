"""The ``whisperd`` command line: serve, worker, transcribe, models, bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
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
err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

FORMAT_CHOICES = ("text", "json", "verbose_json", "srt", "vtt", "tsv")


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
    model: Annotated[
        str | None, typer.Option("-m", "--model", help="Default model [WHISPERD_MODEL].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda [WHISPERD_DEVICE].")] = None,
    compute_type: Annotated[
        str | None, typer.Option(help="auto, int8, float16, ... [WHISPERD_COMPUTE_TYPE].")
    ] = None,
    slots: Annotated[
        int | None, typer.Option(help="Parallel inference workers [WHISPERD_SLOTS].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Waiting requests before 429 [WHISPERD_MAX_QUEUE].")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Accepted API key; repeatable [WHISPERD_API_KEYS].")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="External Redis for jobs [WHISPERD_REDIS_URL].")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="[WHISPERD_LOG_LEVEL]")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text or json [WHISPERD_LOG_FORMAT].")
    ] = None,
) -> None:
    """Run the HTTP server (OpenAI API, function and upload endpoints, jobs)."""
    from whisperd.server import serve as run_server

    settings = _settings(
        host=host,
        port=port,
        model=model,
        device=device,
        compute_type=compute_type,
        slots=slots,
        max_queue=max_queue,
        api_keys=tuple(api_key) if api_key else None,
        redis_url=redis_url,
        log_level=log_level,
        log_format=log_format,
    )
    _setup_logging(settings.log_level, settings.log_format)
    raise typer.Exit(run_server(settings))


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
    from whisperd import audio, formats
    from whisperd.engine import TranscribeOptions, Transcriber, available_cores

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
    # One file at a time gets every core; several run side by side, one per slot.
    single = len(files) == 1
    settings = _settings(
        model=model,
        device=device,
        compute_type=compute_type,
        slots=1 if single else None,
        cpu_threads=available_cores() if single else None,
        preload_models=(),
    )
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
            for path in files:
                try:
                    samples = audio.decode(path, max_seconds=settings.max_audio_seconds)
                    result = _run_with_progress(engine, samples, options, path.name)
                except WhisperdError as exc:
                    err.print(f"[bold red]error:[/] {path}: {exc.message}", highlight=False)
                    failures += 1
                    continue
                text = formats.render(result, fmt)
                if output_dir is None:
                    sys.stdout.write(text if text.endswith("\n") else text + "\n")
                else:
                    target = output_dir / f"{path.stem}.{formats.EXTENSIONS[fmt]}"
                    target.write_text(text, encoding="utf-8")
                    err.print(f"wrote {target}", highlight=False)
    except WhisperdError as exc:
        raise _fail(exc.message) from None
    if failures:
        raise typer.Exit(1)


def _run_with_progress(engine: Any, samples: Any, options: Any, label: str) -> Any:
    from whisperd.audio import duration

    total = duration(samples)
    if total < 60 or not err.is_terminal:
        return engine.transcribe(samples, options)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        bar = progress.add_task(label, total=total)
        return engine.transcribe(
            samples, options, on_segment=lambda s: progress.update(bar, completed=s.end)
        )


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List each model: source, whether it is on this machine, size, languages."""
    if ctx.invoked_subcommand is not None:
        return
    from whisperd import models

    settings = _settings()
    table = Table("name", "source", "local", "size", "languages", "from")
    for row in models.list_models(settings.model_cache_dir):
        table.add_row(
            row.name,
            row.source,
            "yes" if row.available else "no",
            f"{row.size_mib} MiB",
            "multilingual" if row.multilingual else "English-only",
            row.detail,
        )
    out.print(table)
    aliases = ", ".join(f"{a} -> {n}" for a, n in models.ALIASES.items())
    out.print(f"aliases: {aliases}; any directory with a CTranslate2 Whisper model works too.")


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str], typer.Argument(help="Model names to make local.")],
) -> None:
    """Make models local: assemble/verify bundled ones, download others (needs a network)."""
    from whisperd import models

    settings = _settings()
    for name in names:
        try:
            resolved = models.resolve(name, settings.model_cache_dir, offline=settings.offline)
        except WhisperdError as exc:
            raise _fail(exc.message) from None
        out.print(f"{resolved.name}: {resolved.path} ({resolved.source})")


def main() -> None:
    """Entry point of the ``whisperd`` script."""
    app()
