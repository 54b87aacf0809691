"""Venues over HTTP: where the engine trades, failover, failback and the failover drill."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.engine_schemas import ConfirmIn, FailoverIn, VenuesOut
from api.schemas import ErrorBody

router = APIRouter(prefix="/api/v1", tags=["venues"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required, or refused in this state"},
    422: {"model": ErrorBody},
}


@router.get("/venues", response_model=VenuesOut, responses=_ERRORS)
async def list_venues(plane: PlaneDep, _: ViewerDep) -> VenuesOut:
    """Primary, standby and active venue, with each venue's mode and health."""
    return VenuesOut(**plane.venues.status().model_dump())


@router.post("/failover", response_model=VenuesOut, responses=_ERRORS)
async def failover(body: FailoverIn, plane: PlaneDep, actor: ActorDep) -> VenuesOut:
    """Fail over to the standby (operator); 409 with the pre-check result until confirmed."""
    status = await plane.venues.failover(
        actor, to=body.to, confirm=body.confirm, reason=body.reason
    )
    return VenuesOut(**status.model_dump())


@router.post("/failback", response_model=VenuesOut, responses=_ERRORS)
async def failback(plane: PlaneDep, actor: ActorDep) -> VenuesOut:
    """Return trading to the primary after a pre-check (operator); resolves the incident."""
    return VenuesOut(**(await plane.venues.failback(actor)).model_dump())


@router.post("/chaos/exchange-failover", response_model=VenuesOut, responses=_ERRORS)
async def chaos_exchange_failover(
    plane: PlaneDep, actor: ActorDep, body: Annotated[ConfirmIn | None, Body()] = None
) -> VenuesOut:
    """Drill (admin, confirmed): inject a primary outage and let automatic failover act."""
    status = await plane.venues.chaos_exchange_outage(actor, confirm=bool(body and body.confirm))
    return VenuesOut(**status.model_dump())
