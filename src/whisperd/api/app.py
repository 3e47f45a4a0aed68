"""``create_app(settings)``: the FastAPI application, its lifespan and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from whisperd import __version__
from whisperd.api.fetching import Fetcher
from whisperd.api.middleware import (
    PUBLIC_PATHS,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from whisperd.api.pipeline import Pipeline
from whisperd.api.routes import compat, jobs, language, metrics, openai, ops, realtime, ui
from whisperd.api.services import AppServices
from whisperd.engine import Transcriber
from whisperd.errors import (
    MAX_MESSAGE,
    InvalidRequestError,
    InvalidValueError,
    PayloadTooLargeError,
    RateLimitError,
    WhisperdError,
    shown,
)
from whisperd.jobs.service import JobsService
from whisperd.logs import printable
from whisperd.metrics import Metrics
from whisperd.realtime.sessions import LiveSessions
from whisperd.scheduler import Admission
from whisperd.services import Lifecycle, Services
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Self-hosted Whisper speech-to-text.

* **OpenAI audio API** under `/v1`: the official `openai` client works with
  `base_url="http://HOST:PORT/v1"`.
* **OpenFaaS function**: `POST /function/whisper` (or `POST /`) with an audio URL as the body.
* **Upload endpoints**: `POST /translate/` and the `/check-*` probes.
* **Async jobs**: `POST /v1/jobs` (or OpenFaaS's `POST /async-function/whisper`) answers 202
  at once; poll `GET /v1/jobs/{id}` or have the result POSTed to a callback URL.

Every error is OpenAI's JSON: `{"error": {"message", "type", "param", "code"}}`.
When API keys are configured, send `Authorization: Bearer KEY` (health probes are open).
"""

MAX_FORM_FIELDS = 64
"""Most text fields in one form (OpenAI's requests send about a dozen); more get 400."""
MAX_FORM_FILES = 2
"""Most files in one form (every route takes one); more get 400."""


def _error_response(error: WhisperdError) -> JSONResponse:
    headers = {}
    if isinstance(error, RateLimitError):
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=headers)


async def _whisperd_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WhisperdError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return _error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    param = loc[0] if loc else None
    if first.get("type") == "missing":
        error: WhisperdError = InvalidRequestError(
            f"Missing required field {param!r}.", param=param, code="missing_field"
        )
    else:
        error = InvalidValueError(f"Invalid value for {param!r}: {first.get('msg')}.", param=param)
    return _error_response(error)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = str(exc.detail)[:MAX_MESSAGE]
    if status == 404:
        message = f"No route {request.method} {shown(request.url.path)}; see /docs."
    error_type = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = {
        "error": {
            "message": message,
            "type": error_type,
            "param": "file" if status == 413 else None,
            "code": PayloadTooLargeError.default_code if status == 413 else None,
        }
    }
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, printable(request.url.path))
    return _error_response(WhisperdError("Internal server error; see the server log."))


def create_app(settings: Settings, *, engine: Transcriber | None = None) -> FastAPI:
    """Build the application. The engine loads in the lifespan unless one is given.

    Its services are typed and in one place: :func:`whisperd.api.services.services_of` (the
    routes take them through the dependencies in :mod:`whisperd.api.deps`).
    """
    held = AppServices(settings, Lifecycle(), Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        running = engine or Transcriber(settings)
        if owned:
            await anyio.to_thread.run_sync(running.start)
        # URL downloads spool here; so do uploads, `whisperd serve` making it the temp dir.
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        jobs_service: JobsService | None = None
        try:
            if settings.jobs_enabled:
                jobs_service = _jobs_service(settings, running, held.lifecycle)
                await anyio.to_thread.run_sync(jobs_service.start)
            held.current = _services(held, running, jobs_service)
            held.metrics.watch(held.current)
            held.lifecycle.started()
            yield
        finally:
            held.lifecycle.stopped()
            if jobs_service is not None:
                # Before the engine closes: running jobs go back to the queue.
                await anyio.to_thread.run_sync(jobs_service.stop)
            if owned:
                await anyio.to_thread.run_sync(running.close)

    app = FastAPIOffline(
        title="whisperd",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        form_limits={"max_fields": MAX_FORM_FIELDS, "max_files": MAX_FORM_FILES},
    )
    app.state.services = held
    app.add_exception_handler(WhisperdError, _whisperd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    routers = (ops, openai, language, realtime, compat, jobs, metrics, ui)
    for module in routers:
        app.include_router(module.router)
    # the docs pages' routes are the app's own; the rest are the routers'
    held.metrics.routes.learn([*app.router.routes, *(r for m in routers for r in m.router.routes)])
    # Added last = outermost: context first, then keys, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    keys = settings.all_api_keys()
    if keys:
        public = PUBLIC_PATHS | {"/metrics"} if settings.metrics_public else PUBLIC_PATHS
        app.add_middleware(ApiKeyMiddleware, keys=keys, public=public)
    app.add_middleware(RequestContextMiddleware, metrics=held.metrics)
    return app


def _jobs_service(settings: Settings, engine: Transcriber, lifecycle: Lifecycle) -> JobsService:
    """The jobs machinery; with queue consumers, they share ``engine``'s batches."""
    consumers = settings.queue_consumers
    return JobsService(
        settings, engine=engine if consumers else None, consumers=consumers, lifecycle=lifecycle
    )


def _services(held: AppServices, engine: Transcriber, jobs: JobsService | None) -> Services:
    """The running app's services (built in the event loop: live sessions wake there)."""
    settings, lifecycle = held.settings, held.lifecycle
    admission = Admission(
        engine.plan.max_active, settings.max_queue, engine.speed, lifecycle=lifecycle
    )
    return Services(
        settings=settings,
        lifecycle=lifecycle,
        metrics=held.metrics,
        engine=engine,
        jobs=jobs,
        admission=admission,
        pipeline=Pipeline(settings, engine, admission, Fetcher(settings)),
        live=LiveSessions(settings, engine, held.metrics.observe_live, lifecycle=lifecycle),
    )
