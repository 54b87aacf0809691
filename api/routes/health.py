"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics`` (never slow).

``/healthz`` answers bytes serialised when the checks last ran; under ``INFRA_PROD_ENABLED`` they
carry no component details (those can name chats, paths and lease holders). ``/metrics`` asks
for the bearer token ``METRICS_TOKEN`` whenever one is in force (always in production) and answers
from a snapshot at most ``SNAPSHOT_SECONDS`` old (core/platform/metrics.py), so a flood of scrapes
costs one render per snapshot.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import PlaneDep, caller_of, get_plane, unauthorized
from api.schemas import Ready
from core.errors import Unauthenticated
from core.platform.health import HealthReport, Status
from core.platform.metrics import CONTENT_TYPE

router = APIRouter(tags=["probes"])


@router.get(
    "/healthz",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "a critical component is down"}},
)
async def healthz(request: Request) -> Response:
    """Overall and per-component health from cached checks (503 when down)."""
    plane = get_plane(request)
    report = plane.health.encoded(redacted=plane.settings.infra_prod_enabled)
    status = 503 if report.status == Status.DOWN else 200
    return Response(report.body, status_code=status, media_type="application/json")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(plane: PlaneDep) -> JSONResponse:
    """200 once the control plane has started and until it begins shutting down."""
    ready = plane.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"},
        401: {"description": "METRICS_TOKEN is in force and the bearer token is not it"},
    },
)
async def metrics(plane: PlaneDep, request: Request) -> Response:
    """Prometheus exposition of every control-plane metric (bearer ``METRICS_TOKEN`` if set)."""
    expected = plane.secrets.metrics_token
    if expected is not None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        try:
            await plane.authenticator.check_secret(
                presented.strip() if scheme.lower() == "bearer" else None,
                expected.get_secret_value(),
                channel="http",
                caller=caller_of(request),
                message="metrics need the bearer token METRICS_TOKEN",
                reason="metrics_token",
            )
        except Unauthenticated as exc:
            raise unauthorized(exc) from None
    return Response(plane.metrics.exposition(), media_type=CONTENT_TYPE)
