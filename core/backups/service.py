"""Backups, verification and restore (runbook §3): the facade the rest of core uses.

``BackupService`` takes, lists, verifies, prunes, ships and restores backups, runs their
scheduled jobs and reports their health to ``/healthz``, ``/status`` and the daily checklist.
The work itself lives beside it: ``catalog`` (the backups directory), ``offsite`` (S3 copies),
``verify``, ``restore`` and ``journal`` (audit entries and the backups' own incidents).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.backups.catalog import BackupCatalog, load_manifest, newest
from core.backups.journal import FAILED, OFFSITE, STALE, VERIFY, BackupJournal, reason_of
from core.backups.models import (
    MANIFEST,
    BackupInfo,
    BackupManifest,
    BackupReason,
    BackupStatus,
    RestoreReport,
    Verification,
)
from core.backups.offsite import OffsiteCopies
from core.backups.restore import Hook, Restorer
from core.backups.signing import ManifestSigner
from core.backups.verify import Verifier, check_files
from core.config.settings import Settings
from core.errors import ConfirmationRequired, InvalidInput, LuniaError, NotFound, OperationError
from core.flags import FlagService
from core.incidents.service import IncidentService
from core.models import Actor, ActorKind, Role, utcnow
from core.models.alerts import Severity
from core.models.ops import ChecklistItem, Mark, StatusLine
from core.platform.health import ComponentHealth, Status
from core.platform.metrics import Metrics
from core.platform.s3 import S3Client, S3Location
from core.security.access import Guard
from core.security.audit import AuditLog
from core.store import Store

logger = logging.getLogger(__name__)

# A backup is overdue once 1.5 intervals have passed (the BackupStale alert rule uses the same).
OVERDUE_FACTOR = 1.5

# Scheduled jobs whose failures this service reports as its own incidents (the scheduler's generic
# "job failing" incident would only repeat them).
JOB_BACKUP = "backup"
JOB_VERIFY = "backup-verify"
JOB_OVERDUE = "backup-overdue"
JOBS_WITH_OWN_INCIDENTS = frozenset({JOB_BACKUP, JOB_VERIFY})

# The backups directory is shared by every process of a deployment (one volume), and a backup
# taken by one is news to the others: they re-read it when it changes, and at least this often.
CATALOG_REFRESH_SECONDS = 60.0


class BackupService:
    """Takes, lists, verifies, prunes, ships and restores backups of the whole state."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        audit: AuditLog,
        flags: FlagService,
        incidents: IncidentService,
        metrics: Metrics,
        *,
        signer: ManifestSigner,
        s3: S3Client | None = None,
        before_restore: Hook | None = None,
        after_restore: Hook | None = None,
    ) -> None:
        self.root = settings.backup_path
        self._settings = settings
        self._store = store
        self._audit = audit
        self._flags = flags
        self._metrics = metrics
        self._guard = Guard(audit, metrics)
        self._catalog = BackupCatalog(self.root, signer)
        location = S3Location.parse(settings.backup_s3_url) if settings.backup_s3_url else None
        self._offsite = (
            OffsiteCopies(s3, location, self._catalog)
            if location is not None and s3 is not None
            else None
        )
        self._journal = BackupJournal(audit, incidents, metrics)
        self._verifier = Verifier(store, self._catalog, self._offsite, metrics)
        self._restorer = Restorer(
            store,
            audit,
            flags,
            metrics,
            self._journal,
            self._catalog,
            self._offsite,
            safety_backup=self._safety_backup,
            before=before_restore,
            after=after_restore,
        )
        self._lock = asyncio.Lock()
        self._last_success: tuple[datetime, str] | None = None
        self._last_error: str | None = None
        self._started_at = utcnow()
        self._catalog_seen: tuple[int, float] | None = None  # (directory mtime, when read)

    @property
    def interval(self) -> timedelta:
        """Time between scheduled backups."""
        return timedelta(minutes=self._settings.backup_interval_minutes)

    # -- lifecycle -------------------------------------------------------------------------

    schedules = True  # False in processes whose scheduler never runs (api, bot, CLI roles)

    async def start(self) -> None:
        """Prepare the backup directory and read the newest good backup into the metrics."""
        await asyncio.to_thread(self._catalog.prepare)
        self._started_at = utcnow()
        await self.refresh()
        self._export_schedule()
        await self._journal.sync()
        self._flags.subscribe(self._flag_changed)

    async def _flag_changed(self, state: Any, actor: Actor) -> None:
        if getattr(state, "name", None) == "AUTO_BACKUP_ENABLED":
            self._export_schedule()

    def _export_schedule(self) -> None:
        # Only the process that runs the schedule says there is one, so the backup alerts judge
        # its figures and not those of an API replica that never takes scheduled backups.
        enabled = self.schedules and self._flags.enabled("AUTO_BACKUP_ENABLED")
        self._metrics.backup_interval.set(self.interval.total_seconds() if enabled else 0)

    # -- reading ---------------------------------------------------------------------------

    async def list(
        self, *, remote: bool = False, now: datetime | None = None
    ) -> builtins.list[BackupInfo]:
        """Every backup, newest first, with its age and verification status; ``remote`` adds
        the ones only present off-site."""
        now = now or utcnow()
        found = await asyncio.to_thread(self._catalog.scan, now)
        if remote and self._offsite is not None:
            local = {b.id for b in found}
            for backup_id in await self._offsite.ids():
                if backup_id in local:
                    continue
                found.append(await self._offsite.info(backup_id, now))
            found.sort(key=lambda b: b.created_at, reverse=True)
        return found

    async def get(self, backup_id: str) -> BackupInfo:
        """One local backup, or ``NotFound``."""
        directory = self._catalog.directory(backup_id)
        if not (directory / MANIFEST).is_file():
            raise NotFound(f"no backup {backup_id!r} here; `lunia backup list` shows them")
        return await asyncio.to_thread(self._catalog.describe, directory, utcnow())

    async def refresh(self) -> None:
        """Adopt the newest good backup of the shared catalog as the last success (whichever
        process took it), re-reading the directory only when it changed or once a minute."""
        stamp = await asyncio.to_thread(_mtime_ns, self.root)
        seen = self._catalog_seen
        if (
            seen is not None
            and seen[0] == stamp
            and time.monotonic() - seen[1] < CATALOG_REFRESH_SECONDS
        ):
            return
        latest = newest(await self.list())
        self._catalog_seen = (stamp, time.monotonic())
        if latest is not None:
            self._note_success(latest.created_at, latest.id, latest.size_bytes)

    def status(self, now: datetime | None = None) -> BackupStatus:
        """Whether scheduled backups are on, the last success and whether one is overdue."""
        now = now or utcnow()
        enabled = self._flags.enabled("AUTO_BACKUP_ENABLED")
        reference = self._last_success[0] if self._last_success else self._started_at
        overdue = enabled and now - reference > self.interval * OVERDUE_FACTOR
        return BackupStatus(
            auto_enabled=enabled,
            interval_seconds=self.interval.total_seconds(),
            last_success_at=self._last_success[0] if self._last_success else None,
            last_success_id=self._last_success[1] if self._last_success else None,
            overdue=overdue,
            last_error=self._last_error,
        )

    async def health(self) -> ComponentHealth:
        """The ``backups`` component of ``/healthz`` (from memory and the catalog's newest
        backup, re-read only when the directory changed)."""
        await self.refresh()
        state = self.status()
        last = state.last_success_at.isoformat() if state.last_success_at else "never"
        if state.last_error:
            return ComponentHealth(
                status=Status.DEGRADED, detail=f"last backup failed: {state.last_error}"
            )
        if state.overdue:
            return ComponentHealth(status=Status.DEGRADED, detail=f"overdue; last success {last}")
        if not state.auto_enabled:
            return ComponentHealth(
                status=Status.DISABLED, detail=f"AUTO_BACKUP_ENABLED is off; last backup {last}"
            )
        return ComponentHealth(status=Status.OK, detail=f"last backup {last}")

    async def status_lines(self) -> builtins.list[StatusLine]:
        """The backup line of ``/status``."""
        await self.refresh()
        state = self.status()
        latest = newest(await self.list())
        if latest is None:
            return [StatusLine(label="Last backup", value="none yet", ok=not state.overdue)]
        value = f"{_ago(latest.age_seconds)} ago ({latest.status})"
        return [StatusLine(label="Last backup", value=value, ok=not state.overdue)]

    async def checklist_items(self) -> builtins.list[ChecklistItem]:
        """The daily checklist's backup line (runbook §1 and §3)."""
        await self.refresh()
        state = self.status()
        backups = await self.list()
        latest = newest(backups)
        if state.last_error:
            return [ChecklistItem(name="backups", mark=Mark.FAIL, reason=state.last_error)]
        if latest is None:
            mark = Mark.FAIL if state.overdue else Mark.WARN
            why = "no backup exists" + ("" if state.auto_enabled else " (AUTO_BACKUP_ENABLED off)")
            return [ChecklistItem(name="backups", mark=mark, reason=why)]
        reason = f"last backup {latest.id}, {_ago(latest.age_seconds)} ago, {latest.status}"
        if state.overdue or (backups and backups[0].status == "failed"):
            return [ChecklistItem(name="backups", mark=Mark.FAIL, reason=reason)]
        mark = Mark.OK if latest.status == "verified" else Mark.WARN
        return [ChecklistItem(name="backups", mark=mark, reason=reason)]

    # -- create ----------------------------------------------------------------------------

    async def create(
        self,
        actor: Actor,
        *,
        reason: BackupReason = BackupReason.MANUAL,
        now: datetime | None = None,
    ) -> BackupInfo:
        """Take a backup now (operator): snapshot, manifest, atomic rename, off-site copy,
        then retention. ``now`` sets its timestamp (tests and imports)."""
        await self._authorize(actor, Role.OPERATOR, "taking a backup", "backup.create", "")
        if reason is BackupReason.SAFETY:
            raise InvalidInput("safety backups are taken by restores only")
        async with self._lock:
            manifest = await self._create(actor, reason, now)
            info = await asyncio.to_thread(
                self._catalog.describe, self.root / manifest.id, utcnow()
            )
            info = await self._ship(manifest, info)
            pruned = await self.prune()
        await self._journal.record(
            actor,
            "backup.create",
            manifest.id,
            after={
                "reason": reason.value,
                "size_bytes": manifest.size_bytes,
                "counts": manifest.counts,
                "offsite": info.offsite,
                "pruned": pruned,
            },
        )
        logger.info(
            "backup %s taken by %s (%d bytes, %.2fs)%s",
            manifest.id,
            actor.describe(),
            manifest.size_bytes,
            manifest.duration_seconds,
            f"; pruned {', '.join(pruned)}" if pruned else "",
        )
        return info

    async def _create(
        self, actor: Actor, reason: BackupReason, now: datetime | None
    ) -> BackupManifest:
        started = time.perf_counter()
        created_at = now or utcnow()
        try:
            # Anchored first, so the snapshot holds the chain at least as far as the manifest says.
            head = await self._audit.anchor_head()
            manifest = await self._catalog.take(
                self._store, reason, actor.describe(), created_at, audit_head=head
            )
        except (LuniaError, OSError) as exc:
            await self._failed(actor, reason, exc)
            raise OperationError(f"backup failed: {reason_of(exc)}") from exc
        elapsed = time.perf_counter() - started
        self._metrics.backup_duration.labels("create").observe(elapsed)
        self._metrics.backup_operations.labels("create", "ok").inc()
        self._metrics.backup_size.set(manifest.size_bytes)
        self._note_success(created_at, manifest.id, manifest.size_bytes)
        self._last_error = None
        await self._journal.clear_incident(FAILED, f"backup {manifest.id} succeeded")
        await self._journal.clear_incident(STALE, f"backup {manifest.id} succeeded")
        return manifest

    async def _safety_backup(self, actor: Actor) -> BackupManifest:
        """The backup a restore takes of the state it is about to replace."""
        return await self._create(actor, BackupReason.SAFETY, None)

    def _note_success(self, created_at: datetime, backup_id: str, size: int) -> None:
        if self._last_success is None or created_at >= self._last_success[0]:
            self._last_success = (created_at, backup_id)
            self._metrics.backup_last_success.set(created_at.timestamp())
            self._metrics.backup_size.set(size)

    async def _failed(self, actor: Actor, reason: BackupReason, exc: BaseException) -> None:
        self._last_error = reason_of(exc)
        self._metrics.backup_operations.labels("create", "error").inc()
        logger.error("backup (%s) by %s failed: %s", reason.value, actor.describe(), exc)
        await self._journal.raise_incident(
            FAILED, Severity.WARNING, f"{reason.value} backup failed: {exc}"
        )
        try:
            await self._journal.record(
                actor, "backup.create", "", outcome="failed", detail=reason_of(exc)
            )
        except LuniaError as audit_exc:  # the store itself may be what failed
            logger.error("could not audit the failed backup: %s", audit_exc)

    async def _ship(self, manifest: BackupManifest, info: BackupInfo) -> BackupInfo:
        """Copy a backup off-site; a failure keeps the local backup and raises an incident."""
        if self._offsite is None:
            return info
        try:
            url = await self._offsite.ship(manifest)
        except OperationError as exc:
            logger.error("off-site copy of backup %s failed: %s", manifest.id, exc.message)
            self._metrics.backup_operations.labels("offsite", "error").inc()
            await self._journal.raise_incident(
                OFFSITE, Severity.WARNING, f"backup {manifest.id}: {exc.message}"
            )
            return info.model_copy(update={"problem": f"off-site copy failed: {exc.message}"})
        self._metrics.backup_operations.labels("offsite", "ok").inc()
        await self._journal.clear_incident(OFFSITE, f"backup {manifest.id} copied to {url}")
        return info.model_copy(update={"offsite": url})

    # -- retention -------------------------------------------------------------------------

    async def prune(self) -> builtins.list[str]:
        """Delete the backups the retention policy does not keep (here and off-site)."""
        s = self._settings
        doomed = await asyncio.to_thread(
            self._catalog.expired,
            utcnow(),
            keep_last=s.backup_keep_last,
            keep_daily=s.backup_keep_daily,
            keep_weekly=s.backup_keep_weekly,
        )
        for backup in doomed:
            await asyncio.to_thread(self._catalog.delete, backup.id)
            if backup.offsite and self._offsite is not None:
                await self._offsite.delete(backup.id)
        return sorted(b.id for b in doomed)

    # -- verify ----------------------------------------------------------------------------

    async def verify(self, backup_id: str, actor: Actor) -> Verification:
        """Check a backup (operator): checksums, then a trial restore into a scratch store with
        an integrity check, row counts against the manifest and the audit chain."""
        await self._authorize(
            actor, Role.OPERATOR, "verifying a backup", "backup.verify", backup_id
        )
        async with self._lock:
            verification = await self._verifier.verify(backup_id)
        await self._journal.record(
            actor,
            "backup.verify",
            backup_id,
            outcome="ok" if verification.ok else "failed",
            detail="; ".join(verification.problems),
        )
        return verification

    async def sign(self, backup_id: str, actor: Actor) -> BackupManifest:
        """Sign an unsigned (or differently signed) local backup with the current key (admin),
        after checking its files against its manifest: for backups whose origin the admin
        trusts, e.g. taken before backups were signed. Audited either way."""
        await self._authorize(actor, Role.ADMIN, "signing a backup", "backup.sign", backup_id)
        directory = self._catalog.directory(backup_id)
        async with self._lock:
            manifest = await asyncio.to_thread(load_manifest, directory)
            problems = (
                [manifest]
                if isinstance(manifest, str)
                else await asyncio.to_thread(check_files, directory, manifest)
            )
            if problems or isinstance(manifest, str):
                detail = "; ".join(problems)
                await self._journal.record(
                    actor, "backup.sign", backup_id, outcome="failed", detail=detail
                )
                raise OperationError(f"backup {backup_id} was not signed: {detail}")
            before = manifest.key_id
            signed = await asyncio.to_thread(self._catalog.write_signed, directory, manifest)
        await self._journal.record(
            actor,
            "backup.sign",
            backup_id,
            detail=f"checksums of {len(signed.files)} files match; signed with key {signed.key_id}",
            before={"key_id": before},
            after={"key_id": signed.key_id},
        )
        return signed

    async def verify_latest(self) -> Verification | None:
        """The daily job: verify the newest backup; a failure raises an incident."""
        backups = await self.list()
        if not backups:
            logger.info("no backup to verify yet")
            return None
        latest = backups[0]
        actor = _scheduler_actor("backup-verify")
        verification = await self.verify(latest.id, actor)
        if not verification.ok:
            summary = f"backup {latest.id}: {'; '.join(verification.problems)}"
            await self._journal.raise_incident(VERIFY, Severity.WARNING, summary)
            raise OperationError(f"latest backup failed verification: {summary}")
        await self._journal.clear_incident(VERIFY, f"backup {latest.id} verified")
        return verification

    # -- restore ---------------------------------------------------------------------------

    async def restore(
        self, backup_id: str, actor: Actor, *, confirm: bool = False
    ) -> RestoreReport:
        """Replace all state with a backup (admin, confirmed). A safety backup is taken first;
        if the restored state fails its checks, the safety backup is put back."""
        await self._authorize(actor, Role.ADMIN, "restoring a backup", "backup.restore", backup_id)
        if not confirm:
            raise ConfirmationRequired(
                f"restoring backup {backup_id} replaces every flag override, incident and audit "
                "entry with the backup's (a safety backup is taken first); repeat with "
                "confirmation to proceed"
            )
        async with self._lock:
            return await self._restorer.restore(backup_id, actor)

    # -- scheduled jobs ----------------------------------------------------------------------

    async def scheduled_backup(self) -> BackupInfo | None:
        """The interval job: a backup while AUTO_BACKUP_ENABLED is on (read live)."""
        if not self._flags.enabled("AUTO_BACKUP_ENABLED"):
            logger.debug("AUTO_BACKUP_ENABLED is off: no scheduled backup")
            return None
        return await self.create(_scheduler_actor(JOB_BACKUP), reason=BackupReason.SCHEDULED)

    async def check_overdue(self, now: datetime | None = None) -> bool:
        """Raise the "Backup overdue" incident while the newest backup is older than 1.5
        intervals (scheduled backups on), and clear it once one succeeds; True when overdue."""
        self._export_schedule()
        await self.refresh()
        state = self.status(now)
        if state.overdue:
            last = state.last_success_at.isoformat() if state.last_success_at else "never"
            await self._journal.raise_incident(
                STALE,
                Severity.WARNING,
                f"no successful backup for over {OVERDUE_FACTOR:g} x "
                f"{self._settings.backup_interval_minutes:g} min (last: {last})",
            )
        else:
            await self._journal.clear_incident(STALE, "backups are current again")
        return state.overdue

    async def _authorize(
        self, actor: Actor, needed: Role, what: str, action: str, target: str
    ) -> None:
        await self._guard.require(actor, needed, what, action=action, target=target)


def _mtime_ns(path: Path) -> int:
    """The directory's modification time (a backup added or removed changes it); 0 if absent."""
    try:
        return int(path.stat().st_mtime_ns)
    except OSError:
        return 0


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} d"


def _scheduler_actor(job: str) -> Actor:
    return Actor(kind=ActorKind.SCHEDULER, id=job, name=job, role=Role.ADMIN)
