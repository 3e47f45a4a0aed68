"""``GET /metrics``: the Prometheus exposition of :mod:`whisperd.metrics`."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from whisperd.api.deps import MetricsDep
from whisperd.api.schemas import error_responses
from whisperd.metrics import CONTENT_TYPE

router = APIRouter(tags=["Health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(401),
    },
)
async def metrics(registry: MetricsDep) -> Response:
    """Requests, latencies, stage times, audio seconds, real-time factor, admission, jobs,
    model load times, process and GPU memory. Needs the API key like every route except the
    health probes, unless WHISPERD_METRICS_PUBLIC is true."""
    body = await anyio.to_thread.run_sync(registry.render)
    return Response(body, media_type=CONTENT_TYPE)
