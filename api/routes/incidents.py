"""Incidents over HTTP: list, detail with timeline, and the on-call actions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, Items, SilenceBody
from core.incidents.service import INCIDENT_LIST_MAX, IncidentDetail
from core.models.alerts import Severity
from core.models.incidents import Incident, IncidentState

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "impossible in the incident's state"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[Incident], responses=_ERRORS)
async def list_incidents(
    plane: PlaneDep,
    _: ViewerDep,
    state: IncidentState | None = None,
    severity: Severity | None = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=INCIDENT_LIST_MAX)] = 50,
) -> Items[Incident]:
    """Incidents newest first, filtered by state, severity, or open (not resolved)."""
    found = await plane.incidents.list(
        state=state, severity=severity, open_only=open_only, limit=limit
    )
    return Items[Incident](items=found)


@router.get("/{incident_id}", response_model=IncidentDetail, responses=_ERRORS)
async def get_incident(incident_id: int, plane: PlaneDep, _: ViewerDep) -> IncidentDetail:
    """One incident with its newest alerts and its timeline."""
    return await plane.incidents.detail(incident_id)


@router.post("/{incident_id}/ack", response_model=Incident, responses=_ERRORS)
async def acknowledge(incident_id: int, plane: PlaneDep, actor: ActorDep) -> Incident:
    """Acknowledge: you are on it, escalation stops (operator)."""
    return await plane.incidents.acknowledge(incident_id, actor)


@router.post("/{incident_id}/unack", response_model=Incident, responses=_ERRORS)
async def unacknowledge(incident_id: int, plane: PlaneDep, actor: ActorDep) -> Incident:
    """Hand it back: triggered again, escalation restarts (operator)."""
    return await plane.incidents.unacknowledge(incident_id, actor)


@router.post("/{incident_id}/resolve", response_model=Incident, responses=_ERRORS)
async def resolve(incident_id: int, plane: PlaneDep, actor: ActorDep) -> Incident:
    """Resolve by hand (operator)."""
    return await plane.incidents.resolve(incident_id, actor)


@router.post("/{incident_id}/silence", response_model=Incident, responses=_ERRORS)
async def silence(
    incident_id: int, body: SilenceBody, plane: PlaneDep, actor: ActorDep
) -> Incident:
    """Silence for a duration; Alertmanager incidents get a real silence (operator)."""
    return await plane.incidents.silence(incident_id, actor, body.duration)


@router.post("/{incident_id}/unsilence", response_model=Incident, responses=_ERRORS)
async def unsilence(incident_id: int, plane: PlaneDep, actor: ActorDep) -> Incident:
    """Lift a silence early (operator)."""
    return await plane.incidents.unsilence(incident_id, actor)
