"""Scheduled jobs over HTTP: what runs when, and how it went last time."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, Items
from core.platform.scheduler import JobInfo

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.post(
    "/{name}/run",
    response_model=JobInfo,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def run_job(name: str, plane: PlaneDep, actor: ActorDep) -> JobInfo:
    """Run a scheduled job now, out of schedule (admin); the answer carries its outcome."""
    return await plane.jobs.run(name, actor)


@router.get("", response_model=Items[JobInfo], responses={401: {"model": ErrorBody}})
async def list_jobs(plane: PlaneDep, _: ViewerDep) -> Items[JobInfo]:
    """Every scheduled job with its last and next run."""
    return Items[JobInfo](items=plane.jobs.list())
