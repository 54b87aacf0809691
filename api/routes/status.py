"""The one-screen status summary and the daily checklist over HTTP."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PlaneDep, ViewerDep
from api.schemas import ErrorBody
from core.models.ops import Checklist
from core.ops.status import StatusSummary

router = APIRouter(prefix="/api/v1", tags=["status"])


@router.get("/status", response_model=StatusSummary, responses={401: {"model": ErrorBody}})
async def status(plane: PlaneDep, _: ViewerDep) -> StatusSummary:
    """What the bot's /status shows: health, incidents, engine figures, changed flags."""
    return await plane.status.summary()


@router.get("/checklist", response_model=Checklist, responses={401: {"model": ErrorBody}})
async def checklist(plane: PlaneDep, _: ViewerDep) -> Checklist:
    """Run the daily checklist (runbook §1) now."""
    return await plane.checklist.run()
