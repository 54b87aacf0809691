"""Trading over HTTP: PnL, exposure, orders, engine state, halt and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.engine_schemas import (
    ConfirmIn,
    EngineStateOut,
    ExposureOut,
    HaltIn,
    HaltOut,
    OrderOut,
    PnlOut,
)
from api.schemas import ErrorBody, Items
from core.models.venues import OrderStatus

router = APIRouter(prefix="/api/v1", tags=["trading"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required, or refused in this state"},
    422: {"model": ErrorBody},
}


@router.get("/pnl", response_model=PnlOut, responses=_ERRORS)
async def pnl(
    plane: PlaneDep,
    _: ViewerDep,
    window: Annotated[str, Query(pattern="^(24h|7d)$", description="24h or 7d")] = "24h",
) -> PnlOut:
    """PnL per core now, and its recorded history over the window."""
    return PnlOut(**(await plane.trading.pnl(window)).model_dump())


@router.get("/exposure", response_model=ExposureOut, responses=_ERRORS)
async def exposure(plane: PlaneDep, _: ViewerDep) -> ExposureOut:
    """Total and per-symbol exposure against the risk limits."""
    return ExposureOut(**plane.trading.exposure().model_dump())


@router.get("/orders", response_model=Items[OrderOut], responses=_ERRORS)
async def orders(
    plane: PlaneDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: OrderStatus | None = None,
    core: str | None = None,
) -> Items[OrderOut]:
    """Recent orders, newest first."""
    found = await plane.trading.orders(limit=limit, status=status, core=core)
    return Items[OrderOut](items=[OrderOut(**o.model_dump()) for o in found])


@router.get("/engine", response_model=EngineStateOut, responses=_ERRORS)
async def engine_state(plane: PlaneDep, _: ViewerDep) -> EngineStateOut:
    """Whether the engine may trade: halt, read-only mode, active venue."""
    return EngineStateOut(**plane.trading.state().model_dump())


@router.post("/halt", response_model=HaltOut, responses=_ERRORS)
async def halt(body: HaltIn, plane: PlaneDep, actor: ActorDep) -> HaltOut:
    """Kill switch (admin, confirmed): stop every core and cancel open orders."""
    report = await plane.trading.halt(actor, confirm=body.confirm, reason=body.reason)
    return HaltOut(**report.model_dump())


@router.post("/resume", response_model=EngineStateOut, responses=_ERRORS)
async def resume(body: ConfirmIn, plane: PlaneDep, actor: ActorDep) -> EngineStateOut:
    """Undo a halt (admin, confirmed)."""
    return EngineStateOut(**(await plane.trading.resume(actor, confirm=body.confirm)).model_dump())
