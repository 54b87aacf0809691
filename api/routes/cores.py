"""Cores over HTTP: list them and switch them on or off (rules enforced in core)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.engine_schemas import CoreOut, ToggleIn
from api.schemas import ErrorBody, Items

router = APIRouter(prefix="/api/v1/cores", tags=["cores"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required (essential core)"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[CoreOut], responses=_ERRORS)
async def list_cores(plane: PlaneDep, _: ViewerDep) -> Items[CoreOut]:
    """Every core: enabled, running, essential, PnL and crashes."""
    return Items[CoreOut](items=[CoreOut(**c.model_dump()) for c in plane.trading.cores()])


@router.post("/{name}/toggle", response_model=CoreOut, responses=_ERRORS)
async def toggle_core(
    name: str, plane: PlaneDep, actor: ActorDep, body: Annotated[ToggleIn | None, Body()] = None
) -> CoreOut:
    """Switch a core off or on (operator; audited); flips it when ``enabled`` is omitted."""
    toggle = body or ToggleIn()
    core = await plane.trading.toggle_core(
        name, actor, enabled=toggle.enabled, confirm=toggle.confirm
    )
    return CoreOut(**core.model_dump())
