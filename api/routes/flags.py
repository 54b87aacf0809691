"""Feature flags over HTTP: list, read, override and clear (rules enforced in core)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ConfirmIn, ErrorBody, FlagUpdate, Items
from core.flags import FlagState

router = APIRouter(prefix="/api/v1/flags", tags=["flags"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {
        "model": ErrorBody,
        "description": "confirmation required, or the flag changed since the version read",
    },
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[FlagState], responses=_ERRORS)
async def list_flags(plane: PlaneDep, _: ViewerDep) -> Items[FlagState]:
    """Every flag with its effective value and source."""
    return Items[FlagState](items=plane.flags.states())


@router.get("/{name}", response_model=FlagState, responses=_ERRORS)
async def get_flag(name: str, plane: PlaneDep, _: ViewerDep) -> FlagState:
    """One flag with its effective value and source."""
    return plane.flags.get(name)


@router.put("/{name}", response_model=FlagState, responses=_ERRORS)
async def set_flag(name: str, body: FlagUpdate, plane: PlaneDep, actor: ActorDep) -> FlagState:
    """Override a flag at runtime (operator; admin and ``confirm`` for dangerous values); 409
    naming who changed it if it is no longer at ``expected_version``."""
    return await plane.flags.set(
        name, body.value, actor, confirm=body.confirm, expected_version=body.expected_version
    )


@router.delete("/{name}", response_model=FlagState, responses=_ERRORS)
async def clear_flag(
    name: str, plane: PlaneDep, actor: ActorDep, body: Annotated[ConfirmIn | None, Body()] = None
) -> FlagState:
    """Clear a runtime override; the flag returns to its env value or default."""
    return await plane.flags.unset(name, actor, confirm=body.confirm if body else False)
