"""Feature flags over HTTP: list, read, override and clear (rules enforced in core)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, FlagClear, FlagOut, FlagUpdate, Items

router = APIRouter(prefix="/api/v1/flags", tags=["flags"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "confirmation required"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[FlagOut], responses=_ERRORS)
async def list_flags(plane: PlaneDep, _: ViewerDep) -> Items[FlagOut]:
    """Every flag with its effective value and source."""
    return Items[FlagOut](items=[FlagOut(**f.model_dump()) for f in plane.flags.states()])


@router.get("/{name}", response_model=FlagOut, responses=_ERRORS)
async def get_flag(name: str, plane: PlaneDep, _: ViewerDep) -> FlagOut:
    """One flag with its effective value and source."""
    return FlagOut(**plane.flags.get(name).model_dump())


@router.put("/{name}", response_model=FlagOut, responses=_ERRORS)
async def set_flag(name: str, body: FlagUpdate, plane: PlaneDep, actor: ActorDep) -> FlagOut:
    """Override a flag at runtime (operator; admin and ``confirm`` for dangerous values)."""
    state = await plane.flags.set(name, body.value, actor, confirm=body.confirm)
    return FlagOut(**state.model_dump())


@router.delete("/{name}", response_model=FlagOut, responses=_ERRORS)
async def clear_flag(
    name: str, plane: PlaneDep, actor: ActorDep, body: Annotated[FlagClear | None, Body()] = None
) -> FlagOut:
    """Clear a runtime override; the flag returns to its env value or default."""
    confirm = body.confirm if body else False
    state = await plane.flags.unset(name, actor, confirm=confirm)
    return FlagOut(**state.model_dump())
