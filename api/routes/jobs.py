"""Scheduled jobs over HTTP: what runs when, and how it went last time."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import ErrorBody, Items, JobOut

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.post(
    "/{name}/run",
    response_model=JobOut,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def run_job(name: str, plane: PlaneDep, actor: ActorDep) -> JobOut:
    """Run a scheduled job now, out of schedule (admin); the answer carries its outcome."""
    return JobOut(**(await plane.jobs.run(name, actor)).model_dump())


@router.get("", response_model=Items[JobOut], responses={401: {"model": ErrorBody}})
async def list_jobs(plane: PlaneDep, _: ViewerDep) -> Items[JobOut]:
    """Every scheduled job with its last and next run."""
    return Items[JobOut](items=[JobOut(**j.model_dump()) for j in plane.scheduler.jobs()])
