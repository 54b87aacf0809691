"""Alert webhooks: Alertmanager (v4), Grafana unified alerting, falcosidekick.

A 2xx is returned only after the alerts are durably stored; a malformed body gets a 4xx naming
the bad field and nothing is stored; a store outage answers 503 so the sender retries. Hostile
bodies are refused before parsing: over 1 MiB (413, in api/app.py) or nested deeper than 64
levels (422), which would otherwise exhaust the JSON parser's recursion.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from api.deps import Credentials, PlaneDep, caller_of, mark_authenticated, unauthorized
from api.schemas import ErrorBody
from core.errors import Unauthenticated
from core.incidents.receivers import check_nesting, parse_alertmanager, parse_falco, parse_grafana
from core.incidents.service import IngestResult
from core.models.alerts import Alert

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "body is not JSON"},
    401: {"model": ErrorBody, "description": "missing or wrong ALERT_WEBHOOK_TOKEN"},
    413: {"model": ErrorBody, "description": "body over 1 MiB"},
    422: {
        "model": ErrorBody,
        "description": "payload invalid (the message names the field) or nested too deep",
    },
    503: {"model": ErrorBody, "description": "not stored; retry"},
}


async def webhook_auth(plane: PlaneDep, request: Request, credentials: Credentials) -> None:
    """Require ``Authorization: Bearer <ALERT_WEBHOOK_TOKEN>``, compared in constant time."""
    try:
        await plane.authenticator.check_secret(
            credentials.credentials if credentials else None,
            plane.secrets.alert_webhook_token.get_secret_value(),
            channel="webhook",
            caller=caller_of(request),
            message="missing or invalid webhook bearer token (ALERT_WEBHOOK_TOKEN)",
        )
    except Unauthenticated as exc:
        raise unauthorized(exc) from None
    mark_authenticated(request)


WebhookAuth = Annotated[None, Depends(webhook_auth)]


async def json_body(request: Request) -> Any:
    """The request body as JSON, or 400 saying why not."""
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(400, "empty body: expected a JSON alert payload")
    check_nesting(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:  # also an integer literal past Python's 4,300-digit limit
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None


async def _ingest(
    plane: PlaneDep, request: Request, parse: Callable[[Any], list[Alert]]
) -> IngestResult:
    return await plane.incidents.ingest(parse(await json_body(request)))


@router.post("/alertmanager", response_model=IngestResult, responses=_RESPONSES)
async def alertmanager_webhook(request: Request, plane: PlaneDep, _: WebhookAuth) -> IngestResult:
    """Receive an Alertmanager webhook (version 4) notification."""
    return await _ingest(plane, request, parse_alertmanager)


@router.post("/grafana", response_model=IngestResult, responses=_RESPONSES)
async def grafana_webhook(request: Request, plane: PlaneDep, _: WebhookAuth) -> IngestResult:
    """Receive a Grafana unified-alerting webhook notification."""
    return await _ingest(plane, request, parse_grafana)


@router.post("/falco", response_model=IngestResult, responses=_RESPONSES)
async def falco_webhook(request: Request, plane: PlaneDep, _: WebhookAuth) -> IngestResult:
    """Receive a Falco event from falcosidekick's webhook output."""
    return await _ingest(plane, request, parse_falco)
