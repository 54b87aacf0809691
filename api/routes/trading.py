"""Trading over HTTP: PnL, exposure, orders, engine state, halt and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ConfirmIn, ErrorBody, HaltIn, Items
from core.models.trading import PnlWindow
from core.models.venues import OrderRecord, OrderStatus
from core.trading.engine import ORDER_LIST_MAX, EngineState, HaltReport, PnlReport
from core.trading.risk import ExposureReport

router = APIRouter(prefix="/api/v1", tags=["trading"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required, or refused in this state"},
    422: {"model": ErrorBody},
}


@router.get("/pnl", response_model=PnlReport, responses=_ERRORS)
async def pnl(
    plane: PlaneDep,
    _: ViewerDep,
    # Parsed by core's own parser, so a bad window is refused with the message the bot gives.
    window: Annotated[
        PnlWindow, BeforeValidator(PnlWindow.parse), Query(description="how far back to look")
    ] = PnlWindow.DAY,
) -> PnlReport:
    """PnL per core now, and its recorded history over the window."""
    return await plane.trading.pnl(window)


@router.get("/exposure", response_model=ExposureReport, responses=_ERRORS)
async def exposure(plane: PlaneDep, _: ViewerDep) -> ExposureReport:
    """Total and per-symbol exposure against the risk limits."""
    return plane.trading.exposure()


@router.get("/orders", response_model=Items[OrderRecord], responses=_ERRORS)
async def orders(
    plane: PlaneDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=ORDER_LIST_MAX)] = 50,
    status: OrderStatus | None = None,
    core: str | None = None,
) -> Items[OrderRecord]:
    """Recent orders, newest first."""
    found = await plane.trading.orders(limit=limit, status=status, core=core)
    return Items[OrderRecord](items=found)


@router.get("/engine", response_model=EngineState, responses=_ERRORS)
async def engine_state(plane: PlaneDep, _: ViewerDep) -> EngineState:
    """Whether the engine may trade: halt, read-only mode, active venue."""
    return plane.trading.state()


@router.post("/halt", response_model=HaltReport, responses=_ERRORS)
async def halt(body: HaltIn, plane: PlaneDep, actor: ActorDep) -> HaltReport:
    """Kill switch (any operator, confirmed): stop every core and cancel every open order."""
    return await plane.trading.halt(actor, confirm=body.confirm, reason=body.reason)


@router.post("/resume", response_model=EngineState, responses=_ERRORS)
async def resume(body: ConfirmIn, plane: PlaneDep, actor: ActorDep) -> EngineState:
    """Undo a halt (admin only, confirmed)."""
    return await plane.trading.resume(actor, confirm=body.confirm)
