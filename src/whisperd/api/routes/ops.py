"""Health and readiness probes (also under OpenFaaS's ``/_/`` paths)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from whisperd.api.deps import AppServicesDep
from whisperd.api.schemas import Health, error_responses

router = APIRouter(tags=["Health"])


@router.get("/healthz", summary="Liveness", response_model=Health)
@router.get("/_/health", include_in_schema=False)
async def healthz() -> Health:
    """200 while the process is alive and serving HTTP."""
    return Health(status="ok")


@router.get("/readyz", summary="Readiness", response_model=Health, responses=error_responses(503))
@router.get("/_/ready", include_in_schema=False)
async def readyz(held: AppServicesDep) -> JSONResponse:
    """200 when the model is loaded, the server is not draining and it has room for another
    request (a transcription place or a URL fetch); else 503."""
    lifecycle = held.lifecycle
    pipeline = None if held.current is None else held.current.pipeline
    if not lifecycle.ready or pipeline is None:
        status = "starting"
    elif lifecycle.draining:
        status = "draining"
    elif pipeline.admission.saturated or pipeline.fetcher.saturated:
        status = "saturated"
    else:
        return JSONResponse({"status": "ready"})
    body = {
        "status": status,
        "error": {
            "message": f"Not ready: {status}.",
            "type": "service_unavailable",
            "param": None,
            "code": status,
        },
    }
    return JSONResponse(body, status_code=503)
