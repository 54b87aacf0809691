"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics`` (no auth, never slow)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from api.deps import PlaneDep
from api.schemas import Ready
from core.platform.health import HealthReport, Status
from core.platform.metrics import CONTENT_TYPE

router = APIRouter(tags=["probes"])


@router.get(
    "/healthz",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "a critical component is down"}},
)
async def healthz(plane: PlaneDep) -> JSONResponse:
    """Overall and per-component health from cached checks (503 when down)."""
    report = plane.health.snapshot()
    status = 503 if report.status == Status.DOWN else 200
    return JSONResponse(report.model_dump(mode="json"), status_code=status)


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(plane: PlaneDep) -> JSONResponse:
    """200 once the control plane has started and until it begins shutting down."""
    ready = plane.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
)
async def metrics(plane: PlaneDep) -> Response:
    """Prometheus exposition of every control-plane metric."""
    return Response(plane.metrics.render(), media_type=CONTENT_TYPE)
