"""Dependency aliases: routes take the app's typed services through these (see
:mod:`whisperd.api.services`), never from ``app.state``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Form, Query, Request
from pydantic import Field
from starlette.requests import HTTPConnection

from whisperd.api.pipeline import Pipeline
from whisperd.api.services import AppServices, app_services
from whisperd.engine import Transcriber
from whisperd.errors import InvalidValueError, ServiceUnavailableError, shown
from whisperd.jobs.owners import Owner
from whisperd.jobs.service import JobsService, jobs_unavailable
from whisperd.metrics import Metrics
from whisperd.realtime.sessions import LiveSessions
from whisperd.services import Services
from whisperd.settings import Settings
from whisperd.speakers.options import SpeakerFields
from whisperd.subtitles import SubtitleOptions
from whisperd.timings import Timings


def get_app_services(connection: HTTPConnection) -> AppServices:
    """The app's services holder: what exists before its lifespan starts (settings, lifecycle,
    metrics) and the running :class:`Services`. ``connection`` is a request or a WebSocket."""
    return app_services(connection.app)


def get_services(connection: HTTPConnection) -> Services:
    """The running app's services (503 before the lifespan has started them)."""
    return get_app_services(connection).services


def get_settings(connection: HTTPConnection) -> Settings:
    return get_app_services(connection).settings


def get_metrics(connection: HTTPConnection) -> Metrics:
    return get_app_services(connection).metrics


def get_engine(connection: HTTPConnection) -> Transcriber:
    return get_services(connection).engine


def get_pipeline(connection: HTTPConnection) -> Pipeline:
    pipeline = get_services(connection).pipeline
    assert pipeline is not None  # the app's services always have one
    return pipeline


def get_live(connection: HTTPConnection) -> LiveSessions:
    live = get_services(connection).live
    assert live is not None  # the app's services always have them
    return live


def get_jobs(connection: HTTPConnection) -> JobsService:
    """The jobs service; 503 ``jobs_disabled`` when jobs are off, ``jobs_unavailable`` while
    its Redis cannot be reached."""
    jobs = get_services(connection).jobs
    if jobs is None:
        raise ServiceUnavailableError(
            "Async jobs are off on this server (WHISPERD_JOBS_ENABLED=false); use the "
            "synchronous endpoints, or a server with jobs enabled.",
            code="jobs_disabled",
        )
    if not jobs.connected:
        raise jobs_unavailable()
    return jobs


def get_owner(request: Request) -> Owner:
    """Whose jobs the request may see: those of the key it was let in with (see
    ``ApiKeyMiddleware``), or, on a server with no keys, every job."""
    key: str | None = getattr(request.state, "api_key", None)
    return Owner.of(key, get_settings(request))


def get_timings(request: Request) -> Timings:
    """The request's timings; the body has been read by now, so "receive" ends here."""
    timings: Timings = request.state.timings
    if "receive" not in timings.stages:
        timings.add("receive", time.perf_counter() - request.state.started)
    return timings


def get_deadline(request: Request) -> float:
    """The monotonic instant the request must finish by: the setting, shortened by X-Timeout."""
    timeout = get_settings(request).request_timeout
    header = request.headers.get("x-timeout")
    if header:
        try:
            asked = float(header.removesuffix("s"))
        except ValueError:
            raise InvalidValueError(
                f"X-Timeout must be a number of seconds, not {shown(header)}.", param="X-Timeout"
            ) from None
        if not 0 < asked < float("inf"):
            raise InvalidValueError(
                "X-Timeout must be a positive number of seconds.", param="X-Timeout"
            )
        timeout = min(timeout, asked)
    return time.monotonic() + timeout


_WIDTH = "Extra (srt, vtt): characters per line; cues are cut at word boundaries."
_COUNT = "Extra (srt, vtt): lines per cue (with max_line_width or max_words_per_line)."
_WORDS = "Extra (srt, vtt): words per line."
_SECONDS = "Extra (srt, vtt): longest cue, in seconds."
_HIGHLIGHT = "Extra (srt, vtt): a cue per word, the spoken word underlined (karaoke)."
_Count = Annotated[int, Field(ge=1)]
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def subtitles_form(
    max_line_width: Annotated[_Count | None, Form(description=_WIDTH)] = None,
    max_line_count: Annotated[_Count | None, Form(description=_COUNT)] = None,
    max_words_per_line: Annotated[_Count | None, Form(description=_WORDS)] = None,
    max_cue_seconds: Annotated[_Seconds | None, Form(description=_SECONDS)] = None,
    highlight_words: Annotated[bool, Form(description=_HIGHLIGHT)] = False,
) -> SubtitleOptions:
    """How to cut SRT/VTT cues, from form fields (see ``whisperd.subtitles``)."""
    return SubtitleOptions(
        max_line_width, max_line_count, max_words_per_line, max_cue_seconds, highlight_words
    )


def subtitles_query(
    max_line_width: Annotated[_Count | None, Query(description=_WIDTH)] = None,
    max_line_count: Annotated[_Count | None, Query(description=_COUNT)] = None,
    max_words_per_line: Annotated[_Count | None, Query(description=_WORDS)] = None,
    max_cue_seconds: Annotated[_Seconds | None, Query(description=_SECONDS)] = None,
    highlight_words: Annotated[bool, Query(description=_HIGHLIGHT)] = False,
) -> SubtitleOptions:
    """How to cut SRT/VTT cues, from query parameters (the function routes' options)."""
    return SubtitleOptions(
        max_line_width, max_line_count, max_words_per_line, max_cue_seconds, highlight_words
    )


def speakers_form(
    diarize: Annotated[
        bool,
        Form(
            description="Extra: tell speakers apart by voice, labelled in verbose_json, srt, "
            "vtt and tsv (diarized_json always is)."
        ),
    ] = False,
    multichannel: Annotated[
        bool,
        Form(
            description="Extra: transcribe each channel on its own and merge them by time; "
            "the speaker is the channel (A for channel 0)."
        ),
    ] = False,
    known_speaker_names: Annotated[
        list[str] | None,
        Form(
            alias="known_speaker_names[]",
            description="Names of known speakers, one per reference (with multichannel: "
            "the channels' names, in order).",
        ),
    ] = None,
    known_speaker_references: Annotated[
        list[str] | None,
        Form(
            alias="known_speaker_references[]",
            description="Data URLs of 2-10 s of each known speaker's voice "
            "(data:audio/wav;base64,...).",
        ),
    ] = None,
    min_speakers: Annotated[
        int | None, Form(description="Extra: the fewest speakers to find.")
    ] = None,
    max_speakers: Annotated[
        int | None, Form(description="Extra: the most speakers to find.")
    ] = None,
    chunking_strategy: Annotated[
        str | None,
        Form(description="`auto` or a `server_vad` object; long audio is always cut at pauses."),
    ] = None,
) -> SpeakerFields:
    """Who said what, as the form asks (checked by :meth:`SpeakerFields.checked`)."""
    return SpeakerFields(
        diarize,
        multichannel,
        tuple(known_speaker_names or ()),
        tuple(known_speaker_references or ()),
        min_speakers,
        max_speakers,
        chunking_strategy,
    )


def speakers_query(
    diarize: Annotated[bool, Query(description="Tell speakers apart by voice.")] = False,
    multichannel: Annotated[
        bool, Query(description="Transcribe each channel on its own; the speaker is the channel.")
    ] = False,
    min_speakers: Annotated[int | None, Query(description="The fewest speakers to find.")] = None,
    max_speakers: Annotated[int | None, Query(description="The most speakers to find.")] = None,
) -> SpeakerFields:
    """Who said what, from query parameters (the function route's options)."""
    return SpeakerFields(
        diarize, multichannel, min_speakers=min_speakers, max_speakers=max_speakers
    )


AppServicesDep = Annotated[AppServices, Depends(get_app_services)]
ServicesDep = Annotated[Services, Depends(get_services)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LiveDep = Annotated[LiveSessions, Depends(get_live)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Transcriber, Depends(get_engine)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
JobsDep = Annotated[JobsService, Depends(get_jobs)]
OwnerDep = Annotated[Owner, Depends(get_owner)]
TimingsDep = Annotated[Timings, Depends(get_timings)]
DeadlineDep = Annotated[float, Depends(get_deadline)]
SubtitlesFormDep = Annotated[SubtitleOptions, Depends(subtitles_form)]
SubtitlesQueryDep = Annotated[SubtitleOptions, Depends(subtitles_query)]
SpeakersFormDep = Annotated[SpeakerFields, Depends(speakers_form)]
SpeakersQueryDep = Annotated[SpeakerFields, Depends(speakers_query)]
