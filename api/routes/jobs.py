"""Scheduled jobs over HTTP: what runs when, and how it went last time."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PlaneDep, ViewerDep
from api.schemas import ErrorBody, Items, JobOut

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.get("", response_model=Items[JobOut], responses={401: {"model": ErrorBody}})
async def list_jobs(plane: PlaneDep, _: ViewerDep) -> Items[JobOut]:
    """Every scheduled job with its last and next run."""
    return Items[JobOut](items=[JobOut(**j.model_dump()) for j in plane.scheduler.jobs()])
