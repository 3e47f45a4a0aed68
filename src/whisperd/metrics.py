"""Prometheus metrics: one registry per app, filled by the request middleware and at scrape time.

Recorded once per HTTP request, by :class:`~whisperd.api.middleware.RequestContextMiddleware`
(labels use the route template, never the raw path, so their number stays bounded):

=========================================== ========= ===========================================
``whisperd_http_requests_total``            counter   by ``method``, ``route``, ``status``
``whisperd_http_request_duration_seconds``  histogram by ``method``, ``route``
``whisperd_request_stage_seconds``          histogram by ``stage``: receive, fetch, decode,
                                                      queue, inference, format
``whisperd_audio_seconds_total``            counter   audio transcribed by successful requests
``whisperd_real_time_factor``               histogram inference wall seconds per audio second
=========================================== ========= ===========================================

Read from the running server at each scrape (this process only):
``whisperd_requests_active`` / ``_queued`` and their ``_limit``\\s (admission),
``whisperd_ready``, ``whisperd_engine_batch_size``, ``whisperd_engine_speed`` (the scheduler's
measured audio seconds per busy engine-second), the counters ``whisperd_engine_transcriptions``,
``_audio_seconds`` and ``_busy_seconds`` (everything this process's engine finished: requests,
jobs and job chunks), ``whisperd_model_load_seconds`` per loaded model,
``whisperd_jobs`` by ``state`` with ``whisperd_jobs_queue_depth``,
``whisperd_jobs_delayed_messages`` and ``whisperd_jobs_running`` (when jobs are on; the
counts come from the shared Redis, so every replica reports the same queue),
``whisperd_gpu_memory_used_bytes`` / ``_total_bytes`` / ``whisperd_gpu_process_memory_bytes``
(on CUDA only, from ``nvidia-smi``), and prometheus_client's ``process_*`` (resident memory,
CPU, open files) and ``python_*`` collectors.

Several processes: when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (set before the process
starts; prometheus_client reads it at import), counters and histograms are written there by
every process and ``/metrics`` sums all the files (prometheus_client's multiprocess mode). Wipe
the directory when the processes start afresh. The scrape-time gauges and ``process_*`` still
describe the process that answered the scrape.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

from whisperd import __version__
from whisperd.timings import Timings

if TYPE_CHECKING:
    from whisperd.engine import Transcriber
    from whisperd.jobs.service import JobsService
    from whisperd.services import Services

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
"""The ``route`` label of a request that matched no route (a 404): never the raw path."""

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)
_GPU_CACHE_S = 5.0
# Any token is a valid HTTP method to uvicorn: others share one label value.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteLabels:
    """The route template of a request (``/v1/jobs/{job_id}``), for a bounded ``route`` label.

    Requests routed by FastAPI carry their route in ``scope["route"]``. Others (401 from the
    key check, 413 from the body limit, the docs pages' routes) are matched against the HTTP
    routes given to :meth:`learn` (a mount's files under ``{path:path}``); anything else is
    :data:`UNMATCHED`, never the raw path.
    """

    def __init__(self) -> None:
        self._patterns: list[tuple[re.Pattern[str], str]] = []

    def learn(self, routes: Iterable[BaseRoute]) -> None:
        self._patterns = []
        for route in routes:
            if isinstance(route, Route):
                self._patterns.append((route.path_regex, route.path))
            elif isinstance(route, Mount):  # the docs pages' files
                self._patterns.append((route.path_regex, f"{route.path}/{{path:path}}"))

    def __call__(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        raw = scope.get("path", "")
        for regex, template in self._patterns:
            if regex.match(raw):
                return template
        return UNMATCHED


class Metrics:
    """A process's metrics; the scrape-time gauges read the :class:`~whisperd.services.Services`
    given to :meth:`watch`.

    ``multiprocess_dir`` (default: ``PROMETHEUS_MULTIPROC_DIR``) turns on multiprocess mode.
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is None:
            multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.multiprocess_dir = multiprocess_dir
        self.routes = RouteLabels()
        self.registry = CollectorRegistry()
        """What ``/metrics`` exposes."""
        # In multiprocess mode the metric objects write to files and are read back through
        # MultiProcessCollector; registering them too would export them twice.
        own: CollectorRegistry | None = self.registry
        if multiprocess_dir is not None:
            Path(multiprocess_dir).mkdir(parents=True, exist_ok=True)
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            own = None

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=own)

        def histogram(
            name: str, documentation: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(name, documentation, labels, buckets=buckets, registry=own)

        self.requests = counter(
            "whisperd_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
        )
        self.latency = histogram(
            "whisperd_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, in seconds.",
            LATENCY_BUCKETS,
            ("method", "route"),
        )
        self.stages = histogram(
            "whisperd_request_stage_seconds",
            "Seconds a request spent in each stage: receive, fetch, decode, queue, inference, "
            "format (the stages of its Server-Timing header).",
            STAGE_BUCKETS,
            ("stage",),
        )
        self.audio_seconds = counter(
            "whisperd_audio_seconds", "Seconds of audio transcribed by successful requests."
        )
        self.real_time_factor = histogram(
            "whisperd_real_time_factor",
            "Inference wall seconds per second of audio, per successful request (lower is "
            "faster; includes waiting for a turn between windows while others run).",
            RTF_BUCKETS,
        )
        self.live_sessions = counter(
            "whisperd_realtime_sessions",
            "Live transcription sessions run (refused ones not counted).",
        )
        self.live_audio_seconds = counter(
            "whisperd_realtime_audio_seconds", "Seconds of audio live sessions sent."
        )
        self.live_latency = histogram(
            "whisperd_realtime_latency_seconds",
            "Live transcription latency: for a partial, from the start of the decode to its "
            "delta; for a final, from the end of speech (or the commit) to its transcript.",
            STAGE_BUCKETS,
            ("kind",),
        )
        self._server = ServerCollector()
        self.registry.register(self._server)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def watch(self, services: Services | None) -> None:
        """Read the scrape-time gauges from ``services`` (None: the process is not running
        any; only the build info and ``whisperd_ready`` 0 are reported)."""
        self._server.services = services

    def observe(self, scope: Scope, status: int, seconds: float, timings: Timings) -> None:
        """Record one finished request (called once, by the request-context middleware)."""
        method = scope.get("method", "")
        method = method if method in _METHODS else "other"
        route = self.routes(scope)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        for stage, spent in timings.stages.items():
            self.stages.labels(stage).observe(spent)
        if 200 <= status < 400 and timings.audio_seconds > 0:
            self.audio_seconds.inc(timings.audio_seconds)
            inference = timings.stages.get("inference")
            if inference is not None:
                self.real_time_factor.observe(inference / timings.audio_seconds)

    def observe_live(self, kind: str, value: float) -> None:
        """Record a live session's event: ``session`` (one opened), ``audio`` (seconds
        received), ``partial`` or ``final`` (a latency, in seconds)."""
        if kind == "session":
            self.live_sessions.inc()
        elif kind == "audio":
            self.live_audio_seconds.inc(value)
        else:
            self.live_latency.labels(kind).observe(value)

    def render(self) -> bytes:
        """The exposition text (blocking: jobs counts come from Redis; run it in a thread)."""
        return generate_latest(self.registry)


class ServerCollector(Collector):
    """Gauges read from the live server at each scrape: admission, engine, models, jobs, GPU."""

    def __init__(self) -> None:
        self.services: Services | None = None
        self._gpu = GpuMemory()

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration; the names are unique to whisperd

    def collect(self) -> Iterator[Metric]:
        services = self.services
        info = GaugeMetricFamily("whisperd_build_info", "whisperd's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge(
            "whisperd_ready",
            "1 when ready for requests (/readyz is 200), else 0.",
            1.0 if services is not None and services.lifecycle.serving else 0.0,
        )
        if services is None:
            return
        admission = services.admission
        if admission is not None:
            yield _gauge(
                "whisperd_requests_active",
                "Synchronous requests admitted: decoding or being transcribed.",
                admission.active,
            )
            yield _gauge(
                "whisperd_requests_queued",
                "Synchronous requests waiting for an active place.",
                admission.waiting,
            )
            yield _gauge(
                "whisperd_requests_active_limit",
                "Most requests active at once (WHISPERD_MAX_ACTIVE).",
                admission.max_active,
            )
            yield _gauge(
                "whisperd_requests_queued_limit",
                "Most requests waiting; beyond it they get 429 (WHISPERD_MAX_QUEUE).",
                admission.max_queue,
            )
        if services.live is not None:
            yield _gauge(
                "whisperd_realtime_sessions_open",
                "Live transcription sessions open now.",
                services.live.active,
            )
        yield from self._engine(services.engine)
        if services.jobs is not None:
            yield from _jobs(services.jobs)

    def _engine(self, engine: Transcriber) -> Iterator[Metric]:
        yield _gauge(
            "whisperd_engine_batch_size",
            "Most windows decoded in one batch (WHISPERD_BATCH_SIZE).",
            engine.plan.batch_size,
        )
        speed = engine.speed
        yield _gauge(
            "whisperd_engine_speed",
            "Measured engine speed: audio seconds per busy engine-second (moving average).",
            speed.speed,
        )
        for name, documentation, value in (
            ("transcriptions", "Transcriptions finished", speed.transcriptions),
            (
                "audio_seconds",
                "Seconds of audio in the transcriptions finished",
                speed.audio_seconds,
            ),
            (
                "busy_seconds",
                "Engine-seconds spent on the transcriptions finished (their share of each batch)",
                speed.busy_seconds,
            ),
        ):
            yield CounterMetricFamily(
                f"whisperd_engine_{name}",
                f"{documentation} by this process's engine: requests, jobs and job chunks.",
                value=value,
            )
        loaded = GaugeMetricFamily(
            "whisperd_model_load_seconds",
            "Seconds it took to load each model in memory.",
            labels=["model", "device", "compute_type"],
        )
        for name, model in engine.loaded.items():
            loaded.add_metric([name, model.device, model.compute_type], model.load_seconds)
        yield loaded
        if engine.plan.device == "cuda":
            yield from self._gpu.collect()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _jobs(jobs: JobsService) -> Iterator[Metric]:
    yield _gauge("whisperd_jobs_running", "Jobs running in this process.", jobs.running)
    try:
        stats = jobs.queue_stats()
    except Exception as exc:  # Redis down: the scrape still answers, without the queue
        logger.debug("No job queue counts for /metrics: %s", exc)
        yield _gauge("whisperd_jobs_queue_up", "1 when the job queue's Redis answered.", 0)
        return
    yield _gauge("whisperd_jobs_queue_up", "1 when the job queue's Redis answered.", 1)
    by_state = GaugeMetricFamily(
        "whisperd_jobs", "Jobs stored, by state (all replicas).", labels=["state"]
    )
    for key, value in stats.items():
        if key not in ("waiting_messages", "delayed_messages"):
            by_state.add_metric([str(key)], float(value))
    yield by_state
    yield _gauge(
        "whisperd_jobs_queue_depth",
        "Job messages waiting for a worker (what autoscaling watches).",
        stats.get("waiting_messages", 0),
    )
    yield _gauge(
        "whisperd_jobs_delayed_messages",
        "Job messages waiting for their retry time.",
        stats.get("delayed_messages", 0),
    )


class GpuMemory:
    """GPU memory from ``nvidia-smi`` (best effort; cached a few seconds; nothing without it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -_GPU_CACHE_S
        self._metrics: list[Metric] = []

    def collect(self) -> list[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= _GPU_CACHE_S:
                self._metrics = self._query()
                self._at = time.monotonic()
            return self._metrics

    def _query(self) -> list[Metric]:
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return []
        try:
            gpus = _smi(smi, "--query-gpu=index,uuid,name,memory.used,memory.total")
            apps = _smi(smi, "--query-compute-apps=pid,gpu_uuid,used_memory")
        except (OSError, subprocess.SubprocessError) as exc:
            logger.debug("nvidia-smi failed: %s", exc)
            return []
        return gpu_metrics(gpus, apps, os.getpid())


def _smi(smi: str, query: str) -> list[list[str]]:
    done = subprocess.run(
        [smi, query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    return [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line]


def gpu_metrics(gpus: list[list[str]], apps: list[list[str]], pid: int) -> list[Metric]:
    """Metrics from ``nvidia-smi``'s CSV rows (MiB figures): per GPU, and this process's use."""
    mib = 1024 * 1024
    used = GaugeMetricFamily(
        "whisperd_gpu_memory_used_bytes",
        "GPU memory in use (all processes).",
        labels=["gpu", "name"],
    )
    total = GaugeMetricFamily(
        "whisperd_gpu_memory_total_bytes", "GPU memory in total.", labels=["gpu", "name"]
    )
    mine = GaugeMetricFamily(
        "whisperd_gpu_process_memory_bytes", "GPU memory used by this process.", labels=["gpu"]
    )
    index_of: dict[str, str] = {}
    for row in gpus:
        try:
            index, uuid, name, used_mib, total_mib = row[:5]
            used.add_metric([index, name], float(used_mib) * mib)
            total.add_metric([index, name], float(total_mib) * mib)
        except ValueError:  # "[N/A]", or a row of the wrong shape
            continue
        index_of[uuid] = index
    for row in apps:
        try:
            app_pid, uuid, used_mib = row[:3]
            if int(app_pid) == pid and uuid in index_of:
                mine.add_metric([index_of[uuid]], float(used_mib) * mib)
        except ValueError:
            continue
    return [used, total, mine]
