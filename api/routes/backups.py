"""Backups over HTTP (runbook §3): list, take, verify, sign and restore (rules in core)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from api.deps import ActorDep, PlaneDep, ViewerDep
from api.schemas import BackupCreate, ErrorBody, Items, RestoreBody
from core.backups import BackupInfo, BackupManifest, BackupReason, RestoreReport, Verification

router = APIRouter(prefix="/api/v1/backups", tags=["backups"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody, "description": "no such backup"},
    422: {"model": ErrorBody},
}


@router.get("", response_model=Items[BackupInfo], responses=_ERRORS)
async def list_backups(
    plane: PlaneDep,
    _: ViewerDep,
    remote: Annotated[bool, Query(description="include off-site-only backups")] = False,
) -> Items[BackupInfo]:
    """Every backup, newest first, with age, size and verification status."""
    return Items[BackupInfo](items=await plane.backups.list(remote=remote))


@router.post(
    "",
    response_model=BackupInfo,
    status_code=201,
    responses={**_ERRORS, 400: {"model": ErrorBody, "description": "the backup failed"}},
)
async def create_backup(
    plane: PlaneDep, actor: ActorDep, body: Annotated[BackupCreate | None, Body()] = None
) -> BackupInfo:
    """Take a backup now (operator)."""
    reason = BackupReason(body.reason) if body else BackupReason.MANUAL
    return await plane.backups.create(actor, reason=reason)


@router.post("/{backup_id}/verify", response_model=Verification, responses=_ERRORS)
async def verify_backup(backup_id: str, plane: PlaneDep, actor: ActorDep) -> Verification:
    """Check checksums, then trial-restore into a scratch store (operator); ``ok`` says."""
    return await plane.backups.verify(backup_id, actor)


@router.post(
    "/{backup_id}/sign",
    response_model=BackupManifest,
    responses={**_ERRORS, 400: {"model": ErrorBody, "description": "its files fail the check"}},
)
async def sign_backup(backup_id: str, plane: PlaneDep, actor: ActorDep) -> BackupManifest:
    """Sign an unsigned backup whose origin the admin trusts with BACKUP_SIGNING_KEY (admin;
    audited), after checking its files against its manifest."""
    return await plane.backups.sign(backup_id, actor)


@router.post(
    "/{backup_id}/restore",
    response_model=RestoreReport,
    responses={
        **_ERRORS,
        400: {"model": ErrorBody, "description": "restore failed; the previous state was kept"},
        409: {"model": ErrorBody, "description": "confirmation required"},
    },
)
async def restore_backup(
    backup_id: str, plane: PlaneDep, actor: ActorDep, body: RestoreBody | None = None
) -> RestoreReport:
    """Replace all state with a backup (admin, ``"confirm": true``); a safety backup is taken
    first and put back if the restored state fails its checks."""
    return await plane.backups.restore(backup_id, actor, confirm=body.confirm if body else False)
