"""The audit log over HTTP: the newest entries, a chain verification and an export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from api.deps import ActorDep, PlaneDep
from api.schemas import AuditEntryOut, AuditExportIn, ErrorBody, Items
from core.security.audit import AUDIT_LIST_MAX, VerifyReport
from core.security.exports import ExportResult

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get(
    "",
    response_model=Items[AuditEntryOut],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def audit_tail(
    plane: PlaneDep, actor: ActorDep, limit: Annotated[int, Query(ge=1, le=AUDIT_LIST_MAX)] = 50
) -> Items[AuditEntryOut]:
    """The newest audit entries, newest first (operator; core decides)."""
    entries = await plane.audit.read(actor, limit)
    return Items[AuditEntryOut](items=[AuditEntryOut.of(e) for e in entries])


@router.get(
    "/verify",
    response_model=VerifyReport,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def audit_verify(plane: PlaneDep, actor: ActorDep) -> VerifyReport:
    """Walk the hash chain and report the first bad entry, if any (operator)."""
    return await plane.audit.verify_for(actor)


@router.post(
    "/export",
    response_model=ExportResult,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def audit_export(
    plane: PlaneDep, actor: ActorDep, body: Annotated[AuditExportIn | None, Body()] = None
) -> ExportResult:
    """Export the audit log (a time range of it) as JSONL plus manifest to S3 or the server's
    AUDIT_EXPORT_DEST (operator; audited)."""
    export = body or AuditExportIn()
    return await plane.exports.export(actor, export.dest, since=export.since, until=export.until)
