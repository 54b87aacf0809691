"""Backups, verification, restore and off-site copies (runbook §3).

What the rest of the code may use; the modules inside are layered, lowest first: ``models``
(the on-disk format and the reports), ``catalog`` (the backups directory and retention),
``journal`` (audit entries and the backups' own incidents), ``offsite`` (S3 copies), ``verify``,
``restore`` and ``service`` (``BackupService``, the facade).
"""

from core.backups.catalog import newest, select_kept
from core.backups.models import (
    BackupFile,
    BackupInfo,
    BackupManifest,
    BackupReason,
    BackupStatus,
    FlagChange,
    RestoreReport,
    Verification,
)
from core.backups.restore import Hook
from core.backups.service import (
    JOB_BACKUP,
    JOB_OVERDUE,
    JOB_VERIFY,
    JOBS_WITH_OWN_INCIDENTS,
    OVERDUE_FACTOR,
    BackupService,
)
from core.backups.signing import ManifestSigner

__all__ = [
    "JOBS_WITH_OWN_INCIDENTS",
    "JOB_BACKUP",
    "JOB_OVERDUE",
    "JOB_VERIFY",
    "OVERDUE_FACTOR",
    "BackupFile",
    "BackupInfo",
    "BackupManifest",
    "BackupReason",
    "BackupService",
    "BackupStatus",
    "FlagChange",
    "Hook",
    "ManifestSigner",
    "RestoreReport",
    "Verification",
    "newest",
    "select_kept",
]
