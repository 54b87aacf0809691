"""Request and response bodies of the HTTP API, kept apart from core models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.backups.service import BackupInfo, RestoreReport, Verification
from core.flags import FlagState
from core.incidents.service import IncidentDetail, IngestResult
from core.models.incidents import Incident
from core.platform.scheduler import JobInfo

T = TypeVar("T")


class ErrorDetail(BaseModel):
    """Machine code plus a message fit to show a person."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the API returns."""

    error: ErrorDetail


class Items(BaseModel, Generic[T]):
    """A list response."""

    items: list[T]


class FlagOut(FlagState):
    """A flag as the API shows it."""


class FlagUpdate(BaseModel):
    """Body of ``PUT /api/v1/flags/{name}``."""

    model_config = ConfigDict(extra="forbid")

    value: bool | str = Field(description="new value: true/false, or a venue id")
    confirm: bool = Field(default=False, description="required for dangerous changes")


class FlagClear(BaseModel):
    """Optional body of ``DELETE /api/v1/flags/{name}``."""

    model_config = ConfigDict(extra="forbid")

    confirm: bool = False


class AuditEntryOut(BaseModel):
    """One audit entry."""

    seq: int
    ts: datetime
    actor: dict[str, Any]
    action: str
    target: str
    before: Any
    after: Any
    outcome: str
    detail: str
    hash: str


class Ready(BaseModel):
    """Readiness probe answer."""

    ready: bool


class IngestOut(IngestResult):
    """What a webhook delivery did: new alerts, re-deliveries, incidents touched."""


class IncidentOut(Incident):
    """An incident as the API shows it."""


class IncidentDetailOut(IncidentDetail):
    """An incident with its newest alerts and timeline."""


class JobOut(JobInfo):
    """A scheduled job as the API shows it."""


class BackupOut(BackupInfo):
    """A backup with its age and verification status."""


class BackupCreate(BaseModel):
    """Optional body of ``POST /api/v1/backups``."""

    model_config = ConfigDict(extra="forbid")

    reason: Literal["manual", "emergency"] = "manual"


class VerificationOut(Verification):
    """The verdict of a backup verification (checksums, then a trial restore)."""


class RestoreBody(BaseModel):
    """Body of ``POST /api/v1/backups/{id}/restore``."""

    model_config = ConfigDict(extra="forbid")

    confirm: bool = Field(default=False, description="required: restoring replaces all state")


class RestoreOut(RestoreReport):
    """What a restore changed."""
