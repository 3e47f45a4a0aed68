"""Dependency aliases: routes take the app's typed services through these (see
:mod:`whisperd.api.services`), never from ``app.state``."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from whisperd.api.inputs import request_call
from whisperd.api.pipeline import Call, Pipeline
from whisperd.api.services import AppServices, app_services
from whisperd.engine import Transcriber
from whisperd.errors import InvalidValueError, ServiceUnavailableError, shown
from whisperd.jobs.owners import Owner
from whisperd.jobs.service import JobsService, jobs_unavailable
from whisperd.metrics import Metrics
from whisperd.realtime.sessions import LiveSessions
from whisperd.services import Services
from whisperd.settings import Settings
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


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A request answered while the client waits: the pipeline, the request's timings and
    deadline, and the :class:`Call` they make (see :func:`~whisperd.api.inputs.request_call`)."""

    pipeline: Pipeline
    timings: Timings
    deadline: float
    request: Request

    def call(self) -> AbstractAsyncContextManager[Call]:
        return request_call(self.request, self.deadline, self.timings)


def get_sync(
    request: Request, pipeline: PipelineDep, timings: TimingsDep, deadline: DeadlineDep
) -> SyncRequest:
    return SyncRequest(pipeline, timings, deadline, request)


SyncDep = Annotated[SyncRequest, Depends(get_sync)]
