"""Incidents over HTTP: list, detail with timeline, and the on-call actions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, IncidentDetailOut, IncidentOut, Items
from core.models.alerts import Severity
from core.models.incidents import IncidentState

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "impossible in the incident's state"},
    422: {"model": ErrorBody},
}


class SilenceBody(BaseModel):
    """Body of ``POST /api/v1/incidents/{id}/silence``."""

    model_config = ConfigDict(extra="forbid")

    duration: str = Field(examples=["1h"], description="e.g. 30m, 1h, 4h, 1d (max 7d)")


@router.get("", response_model=Items[IncidentOut], responses=_ERRORS)
async def list_incidents(
    plane: PlaneDep,
    _: ViewerDep,
    state: IncidentState | None = None,
    severity: Severity | None = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Items[IncidentOut]:
    """Incidents newest first, filtered by state, severity, or open (not resolved)."""
    found = await plane.incidents.list(
        state=state, severity=severity, open_only=open_only, limit=limit
    )
    return Items[IncidentOut](items=[IncidentOut(**i.model_dump()) for i in found])


@router.get("/{incident_id}", response_model=IncidentDetailOut, responses=_ERRORS)
async def get_incident(incident_id: int, plane: PlaneDep, _: ViewerDep) -> IncidentDetailOut:
    """One incident with its newest alerts and its timeline."""
    detail = await plane.incidents.detail(incident_id)
    return IncidentDetailOut(**detail.model_dump())


@router.post("/{incident_id}/ack", response_model=IncidentOut, responses=_ERRORS)
async def acknowledge(incident_id: int, plane: PlaneDep, actor: ActorDep) -> IncidentOut:
    """Acknowledge: you are on it, escalation stops (operator)."""
    return IncidentOut(**(await plane.incidents.acknowledge(incident_id, actor)).model_dump())


@router.post("/{incident_id}/unack", response_model=IncidentOut, responses=_ERRORS)
async def unacknowledge(incident_id: int, plane: PlaneDep, actor: ActorDep) -> IncidentOut:
    """Hand it back: triggered again, escalation restarts (operator)."""
    return IncidentOut(**(await plane.incidents.unacknowledge(incident_id, actor)).model_dump())


@router.post("/{incident_id}/resolve", response_model=IncidentOut, responses=_ERRORS)
async def resolve(incident_id: int, plane: PlaneDep, actor: ActorDep) -> IncidentOut:
    """Resolve by hand (operator)."""
    return IncidentOut(**(await plane.incidents.resolve(incident_id, actor)).model_dump())


@router.post("/{incident_id}/silence", response_model=IncidentOut, responses=_ERRORS)
async def silence(
    incident_id: int, body: SilenceBody, plane: PlaneDep, actor: ActorDep
) -> IncidentOut:
    """Silence for a duration; Alertmanager incidents get a real silence (operator)."""
    incident = await plane.incidents.silence(incident_id, actor, body.duration)
    return IncidentOut(**incident.model_dump())


@router.post("/{incident_id}/unsilence", response_model=IncidentOut, responses=_ERRORS)
async def unsilence(incident_id: int, plane: PlaneDep, actor: ActorDep) -> IncidentOut:
    """Lift a silence early (operator)."""
    return IncidentOut(**(await plane.incidents.unsilence(incident_id, actor)).model_dump())
