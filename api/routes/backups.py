"""Backups over HTTP (runbook §3): list, take, verify and restore (rules enforced in core)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import (
    BackupCreate,
    BackupOut,
    ErrorBody,
    Items,
    RestoreBody,
    RestoreOut,
    VerificationOut,
)
from core.backups.service import BackupReason

router = APIRouter(prefix="/api/v1/backups", tags=["backups"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody, "description": "no such backup"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[BackupOut], responses=_ERRORS)
async def list_backups(
    plane: PlaneDep,
    _: ViewerDep,
    remote: Annotated[bool, Query(description="include off-site-only backups")] = False,
) -> Items[BackupOut]:
    """Every backup, newest first, with age, size and verification status."""
    found = await plane.backups.list(remote=remote)
    return Items[BackupOut](items=[BackupOut(**b.model_dump()) for b in found])


@router.post(
    "",
    response_model=BackupOut,
    status_code=201,
    responses={**_ERRORS, 400: {"model": ErrorBody, "description": "the backup failed"}},
)
async def create_backup(
    plane: PlaneDep, actor: ActorDep, body: Annotated[BackupCreate | None, Body()] = None
) -> BackupOut:
    """Take a backup now (operator)."""
    reason = BackupReason(body.reason) if body else BackupReason.MANUAL
    info = await plane.backups.create(actor, reason=reason)
    return BackupOut(**info.model_dump())


@router.post("/{backup_id}/verify", response_model=VerificationOut, responses=_ERRORS)
async def verify_backup(backup_id: str, plane: PlaneDep, actor: ActorDep) -> VerificationOut:
    """Check checksums, then trial-restore into a scratch store (operator); ``ok`` says."""
    verification = await plane.backups.verify(backup_id, actor)
    return VerificationOut(**verification.model_dump())


@router.post(
    "/{backup_id}/restore",
    response_model=RestoreOut,
    responses={
        **_ERRORS,
        400: {"model": ErrorBody, "description": "restore failed; the previous state was kept"},
        409: {"model": ErrorBody, "description": "confirmation required"},
    },
)
async def restore_backup(
    backup_id: str, plane: PlaneDep, actor: ActorDep, body: RestoreBody | None = None
) -> RestoreOut:
    """Replace all state with a backup (admin, ``"confirm": true``); a safety backup is taken
    first and put back if the restored state fails its checks."""
    report = await plane.backups.restore(backup_id, actor, confirm=body.confirm if body else False)
    return RestoreOut(**report.model_dump())
