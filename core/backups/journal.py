"""What backup operations leave for people: an audit entry for each, and the incidents backups
raise and clear themselves (failed, overdue, failed verification, off-site copy, rollback)."""

from __future__ import annotations

import logging
from typing import Any

from core.errors import LuniaError, OperationError
from core.incidents.service import IncidentService
from core.models import Actor, AuditRecord
from core.models.alerts import Severity
from core.platform.metrics import Metrics
from core.security.audit import AuditLog

logger = logging.getLogger(__name__)

# The incidents backups own: (fingerprint, title).
FAILED = ("backup:failed", "Backup failed")
STALE = ("backup:stale", "Backup overdue")
VERIFY = ("backup:verify", "Latest backup failed verification")
OFFSITE = ("backup:offsite", "Off-site backup copy failed")
ROLLBACK = ("backup:rollback", "Restore rollback failed: state may be inconsistent")
_OURS = frozenset(key for key, _ in (FAILED, STALE, VERIFY, OFFSITE, ROLLBACK))


class BackupJournal:
    """Audits backup operations and raises or clears the backups' own incidents."""

    def __init__(self, audit: AuditLog, incidents: IncidentService, metrics: Metrics) -> None:
        self._audit = audit
        self._incidents = incidents
        self._metrics = metrics
        self._raised: set[str] = set()

    async def record(
        self,
        actor: Actor,
        action: str,
        target: str,
        *,
        outcome: str = "ok",
        detail: str = "",
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Append one audit entry for a backup operation."""
        await self._audit.record(
            AuditRecord(
                actor=actor,
                action=action,
                target=target,
                before=before,
                after=after,
                outcome=outcome,
                detail=detail,
            )
        )
        self._metrics.audit_entries.labels(outcome).inc()

    async def raise_incident(
        self, which: tuple[str, str], severity: Severity, summary: str
    ) -> None:
        """Raise (or update) one of our incidents; a failure to do so is logged, not raised."""
        key, title = which
        try:
            await self._incidents.raise_engine(key, title, severity, summary, labels={"job": key})
        except LuniaError as exc:
            logger.error("could not raise incident %s: %s", key, exc)
            return
        self._raised.add(key)

    async def clear_incident(self, which: tuple[str, str], summary: str) -> None:
        """Resolve one of our incidents if we raised it."""
        key, title = which
        if key not in self._raised:
            return
        try:
            await self._incidents.clear_engine(key, title, summary)
        except LuniaError as exc:
            logger.error("could not clear incident %s: %s", key, exc)
            return
        self._raised.discard(key)

    async def sync(self) -> None:
        """Learn which of our incidents are open (after a start, or a restore)."""
        open_ = await self._incidents.list(open_only=True, limit=500)
        self._raised = {i.fingerprint for i in open_ if i.fingerprint in _OURS}


def reason_of(exc: BaseException) -> str:
    """An error as audit entries and incidents word it."""
    return exc.message if isinstance(exc, OperationError) else str(exc) or type(exc).__name__
