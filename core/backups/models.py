"""What a backup is on disk and what backup operations report (the lowest layer of backups).

A backup is one directory under ``BACKUP_DIR`` named by its UTC creation time::

    20261128T093000Z/
        state.db            the store's snapshot (SQLite online backup API), mode 0600
        manifest.json       format, versions, reason, who, counts per table, sha256 of each file,
                            signed (HMAC-SHA256, BACKUP_SIGNING_KEY); no other file may be added
        verification.json   the last verification's verdict (written by ``verify``)
        remote.json         where the off-site copy went (when BACKUP_S3_URL is set)
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.security.audit import ChainHead

FORMAT = "lunia-backup/1"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
REMOTE = "remote.json"
ID_FORMAT = "%Y%m%dT%H%M%SZ"


class BackupReason(enum.StrEnum):
    """Why a backup was taken."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    EMERGENCY = "emergency"
    SAFETY = "safety"  # taken by a restore just before it replaces the state


class BackupFile(BaseModel):
    """One file of a backup and its checksum."""

    name: str
    size: int
    sha256: str


class BackupManifest(BaseModel):
    """Everything needed to check a backup offline and to restore it."""

    format: str = FORMAT
    id: str
    app_version: str
    created_at: datetime
    reason: BackupReason
    created_by: str
    store: str
    schema_version: int
    counts: dict[str, int]
    files: list[BackupFile]
    duration_seconds: float
    # The audit chain's head when the backup was taken (the snapshot holds the chain at least
    # this far): an anchor kept outside the store, for ``lunia audit verify`` after a rollback.
    audit_head: ChainHead | None = None
    # HMAC-SHA256 of everything above under BACKUP_SIGNING_KEY (core/backups/signing.py): verify
    # and restore refuse a backup without a valid one.
    key_id: str | None = None
    signature_algorithm: str | None = None
    signature: str | None = None

    @property
    def size_bytes(self) -> int:
        """Total size of the backup's files."""
        return sum(f.size for f in self.files)


class Verification(BaseModel):
    """The verdict of checking one backup: checksums, then a trial restore."""

    backup_id: str
    ok: bool
    checked_at: datetime
    problems: list[str]
    counts: dict[str, int] = {}
    audit_entries_checked: int = 0
    duration_seconds: float = 0.0


class BackupInfo(BaseModel):
    """A backup as ``/backups`` lists it."""

    id: str
    created_at: datetime
    age_seconds: float
    reason: BackupReason | None
    created_by: str
    size_bytes: int
    counts: dict[str, int]
    app_version: str
    schema_version: int
    status: str  # verified | unverified | failed | broken
    verification: Verification | None = None
    local: bool = True
    offsite: str | None = None
    problem: str = ""

    @classmethod
    def of(cls, manifest: BackupManifest, now: datetime, **found: Any) -> BackupInfo:
        """The listing of the backup ``manifest`` describes, aged at ``now``; ``found`` holds
        what the manifest cannot say (status, verification, where its copies are)."""
        return cls(
            id=manifest.id,
            created_at=manifest.created_at,
            age_seconds=round((now - manifest.created_at).total_seconds(), 3),
            reason=manifest.reason,
            created_by=manifest.created_by,
            size_bytes=manifest.size_bytes,
            counts=manifest.counts,
            app_version=manifest.app_version,
            schema_version=manifest.schema_version,
            **found,
        )


class FlagChange(BaseModel):
    """A flag whose effective value a restore changed."""

    name: str
    before: Any
    after: Any


class KeptSafety(BaseModel):
    """A piece of safety state stricter before a restore than in the backup, kept as it was."""

    item: str  # halt, core.<name>, failover, token:<id> (<name>) revoked, or a flag's name
    backup: Any  # what the backup had
    kept: Any  # what stays in force
    why: str


class RestoreReport(BaseModel):
    """What a restore did, for the operator and the bot to show."""

    backup_id: str
    backup_created_at: datetime
    safety_backup_id: str
    restored_by: str
    started_at: datetime
    duration_seconds: float
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    flags_changed: list[FlagChange]
    audit_entries_verified: int
    # Safety state kept from before the restore (never loosened by it), and the audit fork: the
    # entry linking the chain's head before the swap (``replaced_head``) to the restored chain.
    kept: list[KeptSafety] = []
    audit_fork_seq: int | None = None
    replaced_head: ChainHead | None = None
    # The kind of store the backup was taken on and the one it went into: they differ when the
    # state moved between Redis and SQLite (runbook §2.2), loaded from the portable copy.
    backup_store: str = ""
    into_store: str = ""


class BackupStatus(BaseModel):
    """The backup schedule's health, for ``/status`` and the bot."""

    auto_enabled: bool
    interval_seconds: float
    last_success_at: datetime | None
    last_success_id: str | None
    overdue: bool
    last_error: str | None
