"""Restoring a backup over the live state, checked, and rolled back if the result is bad.

A restore takes a safety backup of the current state, copies the backup over the live store in
one transaction, checks the result (integrity, counts against the manifest, audit chain) and rolls
back to the safety backup if anything is wrong; the process keeps serving throughout. Hooks run
around it to quiesce the process (hold jobs, trading read-only) and to resume it afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.backups.catalog import BackupCatalog
from core.backups.journal import ROLLBACK, BackupJournal, reason_of
from core.backups.models import BackupManifest, FlagChange, RestoreReport
from core.backups.offsite import OffsiteCopies, local_copy
from core.backups.verify import check_files, count_problems
from core.errors import LuniaError, OperationError
from core.flags import FlagService
from core.models import Actor, utcnow
from core.models.alerts import Severity
from core.platform.metrics import Metrics
from core.security.audit import AuditLog
from core.store import Store

logger = logging.getLogger(__name__)

# Called around a restore with the restoring actor (pause jobs, trading read-only, reload).
Hook = Callable[[Actor], Awaitable[None]]
# Takes the safety backup of the current state, the way any backup is taken.
SafetyBackup = Callable[[Actor], Awaitable[BackupManifest]]


class _Rejected(Exception):
    """A restored state failed its checks (internal: turns into a rollback)."""


class Restorer:
    """Replaces the live state with a backup's, or puts the previous state back."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        flags: FlagService,
        metrics: Metrics,
        journal: BackupJournal,
        catalog: BackupCatalog,
        offsite: OffsiteCopies | None,
        *,
        safety_backup: SafetyBackup,
        before: Hook | None = None,
        after: Hook | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._flags = flags
        self._metrics = metrics
        self._journal = journal
        self._catalog = catalog
        self._offsite = offsite
        self._safety_backup = safety_backup
        self._before = before
        self._after = after

    async def restore(self, backup_id: str, actor: Actor) -> RestoreReport:
        """Restore one backup (fetched from off-site first if only there); the caller has
        authorized and confirmed it and holds the backups' lock."""
        started_at, started = utcnow(), time.perf_counter()
        directory = await local_copy(self._catalog, self._offsite, backup_id)
        # Signed with our key, then every file as the manifest lists it and nothing more.
        manifest = await asyncio.to_thread(self._catalog.trusted_manifest, directory)
        problems = (
            [manifest]
            if isinstance(manifest, str)
            else await asyncio.to_thread(check_files, directory, manifest)
        )
        if problems or isinstance(manifest, str):
            detail = "; ".join(problems)
            await self._journal.record(
                actor, "backup.restore", backup_id, outcome="failed", detail=detail
            )
            self._metrics.backup_operations.labels("restore", "error").inc()
            raise OperationError(
                f"backup {backup_id} cannot be restored: {detail}; nothing changed"
            )
        logger.warning("restoring backup %s for %s", backup_id, actor.describe())
        flags_before = {s.name: s.value for s in self._flags.states()}
        counts_before = await self._store.counts()
        if self._before is not None:
            await self._before(actor)
        try:
            safety = await self._safety_backup(actor)
            try:
                checked = await self._replace_state(directory, manifest)
            except (LuniaError, _Rejected) as exc:
                await self._roll_back(backup_id, safety, actor, exc)
                raise AssertionError("unreachable") from exc  # _roll_back always raises
            await self._flags.load()
            await self._journal.sync()
            counts_after = await self._store.counts()
        finally:
            if self._after is not None:
                await self._after(actor)
        flags_after = {s.name: s.value for s in self._flags.states()}
        report = RestoreReport(
            backup_id=backup_id,
            backup_created_at=manifest.created_at,
            safety_backup_id=safety.id,
            restored_by=actor.describe(),
            started_at=started_at,
            duration_seconds=round(time.perf_counter() - started, 4),
            counts_before=counts_before,
            counts_after=counts_after,
            flags_changed=[
                FlagChange(name=n, before=flags_before.get(n), after=v)
                for n, v in flags_after.items()
                if flags_before.get(n) != v
            ],
            audit_entries_verified=checked,
        )
        self._metrics.backup_duration.labels("restore").observe(report.duration_seconds)
        self._metrics.backup_operations.labels("restore", "ok").inc()
        await self._journal.record(
            actor,
            "backup.restore",
            backup_id,
            before=counts_before,
            after=counts_after,
            detail=f"safety backup {safety.id}; flags changed: "
            + (", ".join(f.name for f in report.flags_changed) or "none"),
        )
        logger.warning(
            "restored backup %s (taken %s) for %s in %.2fs; safety backup %s",
            backup_id,
            manifest.created_at.isoformat(),
            actor.describe(),
            report.duration_seconds,
            safety.id,
        )
        return report

    async def _replace_state(self, directory: Path, manifest: BackupManifest) -> int:
        """Copy the backup over the live store and check the result; ``_Rejected`` if bad."""
        found = await self._store.restore(directory)
        problems = count_problems(manifest.counts, found)
        problems += [f"integrity check: {p}" for p in await self._store.integrity_problems()]
        report = await self._audit.verify()
        if not report.ok:
            problems.append(f"audit chain: {report.problem}")
        if problems:
            raise _Rejected("; ".join(problems))
        return report.checked

    async def _roll_back(
        self, backup_id: str, safety: BackupManifest, actor: Actor, cause: BaseException
    ) -> None:
        reason = reason_of(cause)
        logger.error("restore of %s failed (%s): rolling back to %s", backup_id, reason, safety.id)
        self._metrics.backup_operations.labels("restore", "error").inc()
        try:
            await self._replace_state(self._catalog.root / safety.id, safety)
            await self._flags.load()
        except (LuniaError, _Rejected) as exc:
            summary = (
                f"restore of {backup_id} failed ({reason}) and rolling back to safety backup "
                f"{safety.id} failed too ({reason_of(exc)}); restore {safety.id} by hand"
            )
            await self._journal.raise_incident(ROLLBACK, Severity.CRITICAL, summary)
            raise OperationError(summary) from exc
        await self._journal.record(
            actor,
            "backup.restore",
            backup_id,
            outcome="failed",
            detail=f"{reason}; rolled back to safety backup {safety.id}",
        )
        raise OperationError(
            f"restore of backup {backup_id} failed: {reason}; the previous state was put back "
            f"from safety backup {safety.id}"
        ) from cause
