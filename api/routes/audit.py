"""The audit log over HTTP: the newest entries and a chain verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import OperatorDep, PlaneDep
from api.schemas import AuditEntryOut, ErrorBody, Items
from core.security.audit import VerifyReport

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get(
    "",
    response_model=Items[AuditEntryOut],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def audit_tail(
    plane: PlaneDep, _: OperatorDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> Items[AuditEntryOut]:
    """The newest audit entries, newest first."""
    entries = await plane.audit.tail(limit)
    return Items[AuditEntryOut](items=[AuditEntryOut.of(e) for e in entries])


@router.get(
    "/verify",
    response_model=VerifyReport,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def audit_verify(plane: PlaneDep, _: OperatorDep) -> VerifyReport:
    """Walk the hash chain and report the first bad entry, if any."""
    return await plane.audit.verify()
