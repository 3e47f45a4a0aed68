"""``whisperd worker``: a process that only runs jobs, and its metrics exporter."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from whisperd.engine import Transcriber
from whisperd.jobs.service import JobsService
from whisperd.metrics import Metrics
from whisperd.services import Lifecycle, Services
from whisperd.settings import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """``whisperd worker``: load the model, run job consumers until SIGTERM/SIGINT; exit status.

    The first signal drains (no new jobs; running ones get ``drain_timeout`` seconds to
    finish, then go back to the queue); a second one stops at once.
    """
    if settings.redis_url is None:
        logger.error(
            "whisperd worker needs WHISPERD_REDIS_URL: the Redis the API servers use "
            "(a redis:// URL, or unix:///path/to/redis.sock for a local embedded one)."
        )
        return 2
    signals = (signal.SIGTERM, signal.SIGINT)
    received: list[float] = []
    wake = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(time.monotonic())
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        with Transcriber(settings) as engine:
            lifecycle = Lifecycle()
            jobs = JobsService(settings, engine=engine, consumers=True, lifecycle=lifecycle).start()
            services = Services(
                settings=settings,
                lifecycle=lifecycle,
                metrics=Metrics(),
                engine=engine,
                jobs=jobs,
            )
            lifecycle.started()
            exporter = _serve_metrics(services) if settings.metrics_port else None
            try:
                logger.info("Worker %s taking jobs", jobs.worker_id)
                while not received:
                    wake.wait(1.0)
                logger.info("Signal received: draining (up to %.0f s)", settings.drain_timeout)
                lifecycle.drain()
                deadline = received[0] + settings.drain_timeout
                while jobs.running and len(received) < 2 and time.monotonic() < deadline:
                    wake.clear()
                    wake.wait(0.1)
                if jobs.running:
                    logger.warning(
                        "Stopping with %d job(s) running: back to the queue", jobs.running
                    )
            finally:
                lifecycle.stopped()
                if exporter is not None:
                    exporter.shutdown()
                jobs.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("Worker stopped")
    return 0


def _serve_metrics(services: Services) -> WSGIServer:
    """The worker's metrics (engine, jobs, process) on ``metrics_port``, from a thread."""
    settings = services.settings
    services.metrics.watch(services)
    server, _ = start_http_server(
        settings.metrics_port, addr=settings.host, registry=services.metrics.registry
    )
    logger.info("Metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    return server
