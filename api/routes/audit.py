"""The audit log over HTTP: the newest entries and a chain verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ActorDep, PlaneDep
from api.schemas import AuditEntryOut, ErrorBody, Items
from core.security.audit import AUDIT_LIST_MAX, VerifyReport

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
