"""The one-screen status summary, the daily checklist and the access review over HTTP."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody
from core.models.ops import Checklist
from core.ops.access_review import AccessReview
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


@router.get(
    "/access-review",
    response_model=AccessReview,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def access_review(plane: PlaneDep, actor: AdminDep) -> AccessReview:
    """The quarterly access review (runbook §4; admin: it names every role holder); recorded
    in the audit log as evidence."""
    return await plane.access_review.review(actor)
