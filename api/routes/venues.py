"""Venues over HTTP: where the engine trades, failover, failback and the failover drill."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ConfirmIn, ErrorBody, FailoverIn
from core.trading.venues.service import VenuesStatus

router = APIRouter(prefix="/api/v1", tags=["venues"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required, or refused in this state"},
    422: {"model": ErrorBody},
}


@router.get("/venues", response_model=VenuesStatus, responses=_ERRORS)
async def list_venues(plane: PlaneDep, _: ViewerDep) -> VenuesStatus:
    """Primary, standby and active venue, with each venue's mode and health."""
    return plane.venues.status()


@router.post("/failover", response_model=VenuesStatus, responses=_ERRORS)
async def failover(body: FailoverIn, plane: PlaneDep, actor: ActorDep) -> VenuesStatus:
    """Fail over to a configured venue (operator; admin if it would trade live funds); 409 with
    the pre-check result until confirmed."""
    return await plane.venues.failover(actor, to=body.to, confirm=body.confirm, reason=body.reason)


@router.post("/failback", response_model=VenuesStatus, responses=_ERRORS)
async def failback(plane: PlaneDep, actor: ActorDep) -> VenuesStatus:
    """Return trading to the primary after a pre-check (operator); resolves the incident."""
    return await plane.venues.failback(actor)


@router.post("/chaos/exchange-failover", response_model=VenuesStatus, responses=_ERRORS)
async def chaos_exchange_failover(
    plane: PlaneDep, actor: ActorDep, body: Annotated[ConfirmIn | None, Body()] = None
) -> VenuesStatus:
    """Drill (admin, confirmed): inject a primary outage and let automatic failover act."""
    return await plane.venues.chaos_exchange_outage(actor, confirm=bool(body and body.confirm))
