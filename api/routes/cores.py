"""Cores over HTTP: list them and switch them on or off (rules enforced in core)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, Items, ToggleIn
from core.trading.engine import CoreInfo

router = APIRouter(prefix="/api/v1/cores", tags=["cores"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required (essential core)"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[CoreInfo], responses=_ERRORS)
async def list_cores(plane: PlaneDep, _: ViewerDep) -> Items[CoreInfo]:
    """Every core: enabled, running, essential, PnL and crashes."""
    return Items[CoreInfo](items=plane.cluster.cores())


@router.post("/{name}/toggle", response_model=CoreInfo, responses=_ERRORS)
async def toggle_core(
    name: str, plane: PlaneDep, actor: ActorDep, body: Annotated[ToggleIn | None, Body()] = None
) -> CoreInfo:
    """Switch a core off or on (operator; audited); flips it when ``enabled`` is omitted."""
    toggle = body or ToggleIn()
    return await plane.trading.toggle_core(
        name, actor, enabled=toggle.enabled, confirm=toggle.confirm
    )
