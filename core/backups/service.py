"""Backups, verification and restore (runbook §3): the SmartBackupManager and recovery engine.

A backup is one directory under ``BACKUP_DIR`` named by its UTC creation time::

    20261128T093000Z/
        state.db            the store's snapshot (SQLite online backup API), mode 0600
        manifest.json       format, versions, reason, who, counts per table, sha256 of each file
        verification.json   the last verification's verdict (written by ``verify``)
        remote.json         where the off-site copy went (when BACKUP_S3_URL is set)

It is built in a hidden temporary directory, fsynced and renamed into place, so a directory with a
manifest is always a complete backup. The catalogue is the filesystem (no database table): the
backups must outlive the database they protect.

Restore takes a safety backup of the current state, copies the backup over the live store in one
transaction, checks the result (integrity, counts against the manifest, audit chain) and rolls
back to the safety backup if anything is wrong; the process keeps serving throughout.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from core import __version__
from core.config.settings import Settings
from core.errors import (
    ConfirmationRequired,
    InvalidInput,
    LuniaError,
    NotFound,
    OperationError,
)
from core.flags import FlagService
from core.incidents.service import IncidentService
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.models.alerts import Severity
from core.models.ops import ChecklistItem, Mark, StatusLine
from core.platform.files import write_atomically
from core.platform.health import ComponentHealth, Status
from core.platform.metrics import Metrics
from core.platform.s3 import S3Client, S3Location
from core.security.access import Guard
from core.security.audit import AuditLog
from core.store import Store

logger = logging.getLogger(__name__)

FORMAT = "lunia-backup/1"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
REMOTE = "remote.json"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^\d{8}T\d{6}Z(?:-\d{1,3})?$")
_TEMP_PREFIXES = (".tmp-", ".verify-", ".fetch-")
_STALE_TEMP = timedelta(hours=12)
# A backup is overdue once 1.5 intervals have passed (the BackupStale alert rule uses the same).
OVERDUE_FACTOR = 1.5

# Scheduled jobs whose failures this service reports as its own incidents (the scheduler's generic
# "job failing" incident would only repeat them).
JOB_BACKUP = "backup"
JOB_VERIFY = "backup-verify"
JOB_OVERDUE = "backup-overdue"
JOBS_WITH_OWN_INCIDENTS = frozenset({JOB_BACKUP, JOB_VERIFY})

_FAILED = ("backup:failed", "Backup failed")
_STALE = ("backup:stale", "Backup overdue")
_VERIFY = ("backup:verify", "Latest backup failed verification")
_OFFSITE = ("backup:offsite", "Off-site backup copy failed")
_ROLLBACK = ("backup:rollback", "Restore rollback failed: state may be inconsistent")

# Called around a restore with the restoring actor (pause jobs, trading read-only, reload).
Hook = Callable[[Actor], Awaitable[None]]


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


class FlagChange(BaseModel):
    """A flag whose effective value a restore changed."""

    name: str
    before: Any
    after: Any


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


class BackupStatus(BaseModel):
    """The backup schedule's health, for ``/status`` and the bot."""

    auto_enabled: bool
    interval_seconds: float
    last_success_at: datetime | None
    last_success_id: str | None
    overdue: bool
    last_error: str | None


class _Rejected(Exception):
    """A restored state failed its checks (internal: turns into a rollback)."""


def select_kept(
    created: Sequence[datetime], *, keep_last: int, keep_daily: int, keep_weekly: int
) -> set[int]:
    """Indexes of the backups a retention policy keeps.

    The ``keep_last`` newest; the newest of each of the ``keep_daily`` most recent days that have
    a backup; the newest of each of the ``keep_weekly`` most recent ISO weeks that have one.
    """
    order = sorted(range(len(created)), key=lambda i: created[i], reverse=True)
    kept = set(order[:keep_last])
    for count, bucket in ((keep_daily, _day), (keep_weekly, _week)):
        seen: set[tuple[int, ...]] = set()
        for index in order:
            key = bucket(created[index])
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(key)
            kept.add(index)
    return kept


def _day(ts: datetime) -> tuple[int, ...]:
    return (ts.year, ts.month, ts.day)


def _week(ts: datetime) -> tuple[int, ...]:
    year, week, _ = ts.isocalendar()
    return (year, week)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(tmp: Path, final: Path, manifest: BackupManifest) -> None:
    """Write the manifest last, fsync everything, then make the backup appear in one rename."""
    write_atomically(tmp / MANIFEST, manifest.model_dump_json(indent=2).encode(), mode=0o600)
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def check_files(directory: Path, manifest: BackupManifest) -> list[str]:
    """Problems with a backup's files against its manifest, each naming the file."""
    problems: list[str] = []
    for entry in manifest.files:
        path = directory / entry.name
        if not path.is_file():
            problems.append(f"{entry.name}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{entry.name}: size {size} bytes, manifest says {entry.size}")
            continue
        found = _sha256(path)
        if found != entry.sha256:
            problems.append(
                f"{entry.name}: sha256 {found[:12]}… does not match the manifest's "
                f"{entry.sha256[:12]}… (the file was altered or damaged)"
            )
    if not manifest.files:
        problems.append(f"{MANIFEST}: lists no files")
    return problems


def count_problems(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """Tables whose row count differs from what the manifest recorded."""
    return [
        f"{table}: manifest says {count} rows, the restored copy has {found.get(table, 0)}"
        for table, count in sorted(expected.items())
        if found.get(table, 0) != count
    ]


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
        s3: S3Client | None = None,
        before_restore: Hook | None = None,
        after_restore: Hook | None = None,
    ) -> None:
        self.root = settings.backup_path
        self._settings = settings
        self._store = store
        self._audit = audit
        self._flags = flags
        self._incidents = incidents
        self._metrics = metrics
        self._guard = Guard(audit, metrics)
        self._s3 = s3
        self._offsite = S3Location.parse(settings.backup_s3_url) if settings.backup_s3_url else None
        self._before_restore = before_restore
        self._after_restore = after_restore
        self._lock = asyncio.Lock()
        self._raised: set[str] = set()
        self._last_success: tuple[datetime, str] | None = None
        self._last_error: str | None = None
        self._started_at = utcnow()

    @property
    def interval(self) -> timedelta:
        """Time between scheduled backups."""
        return timedelta(minutes=self._settings.backup_interval_minutes)

    # -- lifecycle -------------------------------------------------------------------------

    schedules = True  # False in processes whose scheduler never runs (api, bot, CLI roles)

    async def start(self) -> None:
        """Prepare the backup directory and read the newest good backup into the metrics."""
        await asyncio.to_thread(self._prepare_root)
        self._started_at = utcnow()
        for info in await self.list():
            if info.status in ("verified", "unverified"):
                self._note_success(info.created_at, info.id, info.size_bytes)
                break
        self._export_schedule()
        await self._sync_raised()
        self._flags.subscribe(self._flag_changed)

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        cutoff = time.time() - _STALE_TEMP.total_seconds()
        for child in self.root.iterdir():
            # Leftovers of a crash; only old ones, another process may be mid-backup right now.
            if child.name.startswith(_TEMP_PREFIXES) and child.stat().st_mtime < cutoff:
                logger.warning("removing unfinished backup directory %s", child)
                shutil.rmtree(child, ignore_errors=True)

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
        found = await asyncio.to_thread(self._scan, now)
        if remote and self._offsite is not None:
            local = {b.id for b in found}
            for backup_id in await self._remote_ids():
                if backup_id in local:
                    continue
                found.append(await self._remote_info(backup_id, now))
            found.sort(key=lambda b: b.created_at, reverse=True)
        return found

    def _scan(self, now: datetime) -> builtins.list[BackupInfo]:
        if not self.root.is_dir():
            return []
        found = [
            self._describe(child, now)
            for child in self.root.iterdir()
            if _ID.match(child.name) and child.is_dir()
        ]
        found.sort(key=lambda b: b.created_at, reverse=True)
        return found

    def _describe(self, directory: Path, now: datetime) -> BackupInfo:
        try:
            manifest = BackupManifest.model_validate_json((directory / MANIFEST).read_bytes())
        except (OSError, ValidationError) as exc:
            created = _created_from_id(directory.name)
            return BackupInfo(
                id=directory.name,
                created_at=created,
                age_seconds=(now - created).total_seconds(),
                reason=None,
                created_by="",
                size_bytes=0,
                counts={},
                app_version="",
                schema_version=0,
                status="broken",
                problem=f"{MANIFEST} unreadable: {type(exc).__name__}",
            )
        verification = _read_model(directory / VERIFICATION, Verification)
        remote = _read_json(directory / REMOTE)
        status = "unverified"
        if verification is not None:
            status = "verified" if verification.ok else "failed"
        return BackupInfo(
            id=manifest.id,
            created_at=manifest.created_at,
            age_seconds=round((now - manifest.created_at).total_seconds(), 3),
            reason=manifest.reason,
            created_by=manifest.created_by,
            size_bytes=manifest.size_bytes,
            counts=manifest.counts,
            app_version=manifest.app_version,
            schema_version=manifest.schema_version,
            status=status,
            verification=verification,
            offsite=str(remote.get("url")) if remote else None,
        )

    async def get(self, backup_id: str) -> BackupInfo:
        """One local backup, or ``NotFound``."""
        directory = self.root / _valid_id(backup_id)
        if not (directory / MANIFEST).is_file():
            raise NotFound(f"no backup {backup_id!r} here; `lunia backup list` shows them")
        return await asyncio.to_thread(self._describe, directory, utcnow())

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
        """The ``backups`` component of ``/healthz`` (from memory, never slow)."""
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
        state = self.status()
        latest = newest(await self.list())
        if latest is None:
            return [StatusLine(label="Last backup", value="none yet", ok=not state.overdue)]
        value = f"{_ago(latest.age_seconds)} ago ({latest.status})"
        return [StatusLine(label="Last backup", value=value, ok=not state.overdue)]

    async def checklist_items(self) -> builtins.list[ChecklistItem]:
        """The daily checklist's backup line (runbook §1 and §3)."""
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
            info = await asyncio.to_thread(self._describe, self.root / manifest.id, utcnow())
            info = await self._ship(manifest, info)
            pruned = await self.prune()
        await self._record(
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
        backup_id = await asyncio.to_thread(self._new_id, created_at)
        tmp = self.root / f".tmp-{backup_id}-{secrets.token_hex(4)}"
        try:
            await asyncio.to_thread(tmp.mkdir, mode=0o700, parents=False)
            snapshot = await self._store.snapshot(tmp)
            files = [
                BackupFile(
                    name=name,
                    size=(tmp / name).stat().st_size,
                    sha256=await asyncio.to_thread(_sha256, tmp / name),
                )
                for name in snapshot.files
            ]
            manifest = BackupManifest(
                id=backup_id,
                app_version=__version__,
                created_at=created_at,
                reason=reason,
                created_by=actor.describe(),
                store=snapshot.kind,
                schema_version=snapshot.schema_version,
                counts=snapshot.counts,
                files=files,
                duration_seconds=round(time.perf_counter() - started, 4),
            )
            await asyncio.to_thread(_seal, tmp, self.root / backup_id, manifest)
        except (LuniaError, OSError) as exc:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            await self._failed(actor, reason, exc)
            raise OperationError(f"backup failed: {_reason(exc)}") from exc
        elapsed = time.perf_counter() - started
        self._metrics.backup_duration.labels("create").observe(elapsed)
        self._metrics.backup_operations.labels("create", "ok").inc()
        self._metrics.backup_size.set(manifest.size_bytes)
        self._note_success(created_at, backup_id, manifest.size_bytes)
        self._last_error = None
        await self._clear(_FAILED, f"backup {backup_id} succeeded")
        await self._clear(_STALE, f"backup {backup_id} succeeded")
        return manifest

    def _new_id(self, created_at: datetime) -> str:
        base = created_at.strftime(ID_FORMAT)
        candidate, n = base, 1
        while (self.root / candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _note_success(self, created_at: datetime, backup_id: str, size: int) -> None:
        if self._last_success is None or created_at >= self._last_success[0]:
            self._last_success = (created_at, backup_id)
            self._metrics.backup_last_success.set(created_at.timestamp())
            self._metrics.backup_size.set(size)

    async def _failed(self, actor: Actor, reason: BackupReason, exc: BaseException) -> None:
        self._last_error = _reason(exc)
        self._metrics.backup_operations.labels("create", "error").inc()
        logger.error("backup (%s) by %s failed: %s", reason.value, actor.describe(), exc)
        await self._raise(_FAILED, Severity.WARNING, f"{reason.value} backup failed: {exc}")
        try:
            await self._record(actor, "backup.create", "", outcome="failed", detail=_reason(exc))
        except LuniaError as audit_exc:  # the store itself may be what failed
            logger.error("could not audit the failed backup: %s", audit_exc)

    async def _ship(self, manifest: BackupManifest, info: BackupInfo) -> BackupInfo:
        """Copy a backup off-site (files first, manifest last, so a remote manifest means
        a complete copy); a failure keeps the local backup and raises an incident."""
        if self._offsite is None or self._s3 is None:
            return info
        directory = self.root / manifest.id
        try:
            for entry in manifest.files:
                await self._s3.put_file(
                    self._offsite,
                    self._offsite.key(manifest.id, entry.name),
                    directory / entry.name,
                )
            await self._s3.put_file(
                self._offsite, self._offsite.key(manifest.id, MANIFEST), directory / MANIFEST
            )
        except OperationError as exc:
            logger.error("off-site copy of backup %s failed: %s", manifest.id, exc.message)
            self._metrics.backup_operations.labels("offsite", "error").inc()
            await self._raise(_OFFSITE, Severity.WARNING, f"backup {manifest.id}: {exc.message}")
            return info.model_copy(update={"problem": f"off-site copy failed: {exc.message}"})
        url = self._offsite.url(manifest.id)
        remote = {"url": url, "uploaded_at": utcnow().isoformat()}
        await asyncio.to_thread(
            write_atomically, directory / REMOTE, json.dumps(remote).encode(), mode=0o600
        )
        self._metrics.backup_operations.labels("offsite", "ok").inc()
        await self._clear(_OFFSITE, f"backup {manifest.id} copied to {url}")
        return info.model_copy(update={"offsite": url})

    # -- retention -------------------------------------------------------------------------

    async def prune(self) -> builtins.list[str]:
        """Delete the backups the retention policy does not keep (here and off-site)."""
        backups = [b for b in await asyncio.to_thread(self._scan, utcnow()) if b.status != "broken"]
        s = self._settings
        kept = select_kept(
            [b.created_at for b in backups],
            keep_last=s.backup_keep_last,
            keep_daily=s.backup_keep_daily,
            keep_weekly=s.backup_keep_weekly,
        )
        doomed = [b for i, b in enumerate(backups) if i not in kept]
        for backup in doomed:
            await asyncio.to_thread(self._delete_local, backup.id)
            if backup.offsite and self._offsite is not None and self._s3 is not None:
                try:
                    for obj in await self._s3.list(
                        self._offsite, self._offsite.key(backup.id) + "/"
                    ):
                        await self._s3.delete(self._offsite, obj.key)
                except OperationError as exc:
                    logger.warning("off-site copy of %s not pruned: %s", backup.id, exc.message)
        return sorted(b.id for b in doomed)

    def _delete_local(self, backup_id: str) -> None:
        # Hide it first (one rename), so a half-deleted backup never looks complete.
        doomed = self.root / f".tmp-deleting-{backup_id}-{secrets.token_hex(4)}"
        os.rename(self.root / backup_id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- verify ----------------------------------------------------------------------------

    async def verify(self, backup_id: str, actor: Actor) -> Verification:
        """Check a backup (operator): checksums, then a trial restore into a scratch store with
        an integrity check, row counts against the manifest and the audit chain."""
        await self._authorize(
            actor, Role.OPERATOR, "verifying a backup", "backup.verify", backup_id
        )
        async with self._lock:
            verification = await self._verify(backup_id)
        await self._record(
            actor,
            "backup.verify",
            backup_id,
            outcome="ok" if verification.ok else "failed",
            detail="; ".join(verification.problems),
        )
        return verification

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
            await self._raise(_VERIFY, Severity.WARNING, summary)
            raise OperationError(f"latest backup failed verification: {summary}")
        await self._clear(_VERIFY, f"backup {latest.id} verified")
        return verification

    async def _verify(self, backup_id: str) -> Verification:
        started = time.perf_counter()
        directory = await self._local_dir(backup_id)
        problems: builtins.list[str] = []
        counts: dict[str, int] = {}
        checked = 0
        manifest = await asyncio.to_thread(_load_manifest, directory)
        if isinstance(manifest, str):
            problems.append(manifest)
        else:
            problems += await asyncio.to_thread(check_files, directory, manifest)
            if not problems:
                counts, checked, trial_problems = await self._trial_restore(directory, manifest)
                problems += trial_problems
        verification = Verification(
            backup_id=backup_id,
            ok=not problems,
            checked_at=utcnow(),
            problems=problems,
            counts=counts,
            audit_entries_checked=checked,
            duration_seconds=round(time.perf_counter() - started, 4),
        )
        await asyncio.to_thread(
            write_atomically,
            directory / VERIFICATION,
            verification.model_dump_json(indent=2).encode(),
            mode=0o600,
        )
        self._metrics.backup_duration.labels("verify").observe(verification.duration_seconds)
        self._metrics.backup_operations.labels("verify", "ok" if verification.ok else "error").inc()
        if verification.ok:
            self._metrics.backup_last_verified.set(verification.checked_at.timestamp())
        else:
            logger.error("backup %s failed verification: %s", backup_id, "; ".join(problems))
        return verification

    async def _trial_restore(
        self, directory: Path, manifest: BackupManifest
    ) -> tuple[dict[str, int], int, builtins.list[str]]:
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".verify-", dir=self.root))
        trial = self._store.trial_store(workdir)
        problems: builtins.list[str] = []
        counts: dict[str, int] = {}
        checked = 0
        try:
            await trial.open()
            await trial.restore(directory)
            problems += [f"integrity check: {p}" for p in await trial.integrity_problems()]
            counts = await trial.counts()
            problems += count_problems(manifest.counts, counts)
            report = await AuditLog(trial).verify()
            checked = report.checked
            if not report.ok:
                problems.append(f"audit chain: {report.problem}")
        except LuniaError as exc:
            problems.append(f"trial restore failed: {exc}")
        finally:
            await trial.close()
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        return counts, checked, problems

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
            return await self._restore(backup_id, actor)

    async def _restore(self, backup_id: str, actor: Actor) -> RestoreReport:
        started_at, started = utcnow(), time.perf_counter()
        directory = await self._local_dir(backup_id)
        manifest = await asyncio.to_thread(_load_manifest, directory)
        problems = (
            [manifest]
            if isinstance(manifest, str)
            else await asyncio.to_thread(check_files, directory, manifest)
        )
        if problems or isinstance(manifest, str):
            detail = "; ".join(problems)
            await self._record(actor, "backup.restore", backup_id, outcome="failed", detail=detail)
            self._metrics.backup_operations.labels("restore", "error").inc()
            raise OperationError(
                f"backup {backup_id} cannot be restored: {detail}; nothing changed"
            )
        logger.warning("restoring backup %s for %s", backup_id, actor.describe())
        flags_before = {s.name: s.value for s in self._flags.states()}
        counts_before = await self._store.counts()
        if self._before_restore is not None:
            await self._before_restore(actor)
        try:
            safety = await self._create(actor, BackupReason.SAFETY, None)
            try:
                checked = await self._replace_state(directory, manifest)
            except (LuniaError, _Rejected) as exc:
                await self._roll_back(backup_id, safety, actor, exc)
                raise AssertionError("unreachable") from exc  # _roll_back always raises
            await self._flags.load()
            await self._sync_raised()
            counts_after = await self._store.counts()
        finally:
            if self._after_restore is not None:
                await self._after_restore(actor)
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
        await self._record(
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
        reason = _reason(cause)
        logger.error("restore of %s failed (%s): rolling back to %s", backup_id, reason, safety.id)
        self._metrics.backup_operations.labels("restore", "error").inc()
        try:
            await self._replace_state(self.root / safety.id, safety)
            await self._flags.load()
        except (LuniaError, _Rejected) as exc:
            summary = (
                f"restore of {backup_id} failed ({reason}) and rolling back to safety backup "
                f"{safety.id} failed too ({_reason(exc)}); restore {safety.id} by hand"
            )
            await self._raise(_ROLLBACK, Severity.CRITICAL, summary)
            raise OperationError(summary) from exc
        await self._record(
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

    # -- off-site ----------------------------------------------------------------------------

    async def _local_dir(self, backup_id: str) -> Path:
        """The backup's local directory, fetched from off-site first if only there."""
        directory = self.root / _valid_id(backup_id)
        if (directory / MANIFEST).is_file():
            return directory
        if self._offsite is None or self._s3 is None:
            raise NotFound(f"no backup {backup_id!r}; `lunia backup list` shows them")
        if not await self._s3.exists(self._offsite, self._offsite.key(backup_id, MANIFEST)):
            raise NotFound(f"no backup {backup_id!r} here or in {self._offsite.url()}")
        return await self._fetch(backup_id)

    async def _fetch(self, backup_id: str) -> Path:
        assert self._offsite is not None and self._s3 is not None  # noqa: S101 - checked above
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".fetch-", dir=self.root))
        try:
            await self._s3.get_file(
                self._offsite, self._offsite.key(backup_id, MANIFEST), tmp / MANIFEST
            )
            manifest = await asyncio.to_thread(_load_manifest, tmp)
            if isinstance(manifest, str):
                raise OperationError(f"off-site backup {backup_id}: {manifest}")
            for entry in manifest.files:
                if "/" in entry.name or entry.name.startswith("."):
                    raise OperationError(f"off-site backup {backup_id}: bad file {entry.name!r}")
                await self._s3.get_file(
                    self._offsite, self._offsite.key(backup_id, entry.name), tmp / entry.name
                )
            remote = {"url": self._offsite.url(backup_id), "fetched_at": utcnow().isoformat()}
            await asyncio.to_thread(
                write_atomically, tmp / REMOTE, json.dumps(remote).encode(), mode=0o600
            )
            await asyncio.to_thread(_restrict, tmp)
            await asyncio.to_thread(os.rename, tmp, self.root / backup_id)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        logger.info("fetched backup %s from %s", backup_id, self._offsite.url(backup_id))
        return self.root / backup_id

    async def _remote_ids(self) -> builtins.list[str]:
        assert self._offsite is not None and self._s3 is not None  # noqa: S101
        prefix = self._offsite.key() + "/" if self._offsite.key() else ""
        ids = set()
        for obj in await self._s3.list(self._offsite, prefix):
            parts = obj.key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and _ID.match(parts[0]):
                ids.add(parts[0])
        return sorted(ids)

    async def _remote_info(self, backup_id: str, now: datetime) -> BackupInfo:
        assert self._offsite is not None and self._s3 is not None  # noqa: S101
        raw = await self._s3.get_bytes(self._offsite, self._offsite.key(backup_id, MANIFEST))
        manifest = BackupManifest.model_validate_json(raw)
        return BackupInfo(
            id=manifest.id,
            created_at=manifest.created_at,
            age_seconds=round((now - manifest.created_at).total_seconds(), 3),
            reason=manifest.reason,
            created_by=manifest.created_by,
            size_bytes=manifest.size_bytes,
            counts=manifest.counts,
            app_version=manifest.app_version,
            schema_version=manifest.schema_version,
            status="unverified",
            local=False,
            offsite=self._offsite.url(backup_id),
        )

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
        state = self.status(now)
        if state.overdue:
            last = state.last_success_at.isoformat() if state.last_success_at else "never"
            await self._raise(
                _STALE,
                Severity.WARNING,
                f"no successful backup for over {OVERDUE_FACTOR:g} x "
                f"{self._settings.backup_interval_minutes:g} min (last: {last})",
            )
        else:
            await self._clear(_STALE, "backups are current again")
        return state.overdue

    # -- plumbing ----------------------------------------------------------------------------

    async def _authorize(
        self, actor: Actor, needed: Role, what: str, action: str, target: str
    ) -> None:
        await self._guard.require(actor, needed, what, action=action, target=target)

    async def _record(
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

    async def _raise(self, which: tuple[str, str], severity: Severity, summary: str) -> None:
        key, title = which
        try:
            await self._incidents.raise_engine(key, title, severity, summary, labels={"job": key})
        except LuniaError as exc:
            logger.error("could not raise incident %s: %s", key, exc)
            return
        self._raised.add(key)

    async def _clear(self, which: tuple[str, str], summary: str) -> None:
        key, title = which
        if key not in self._raised:
            return
        try:
            await self._incidents.clear_engine(key, title, summary)
        except LuniaError as exc:
            logger.error("could not clear incident %s: %s", key, exc)
            return
        self._raised.discard(key)

    async def _sync_raised(self) -> None:
        """Learn which of our incidents are open (after a start, or a restore)."""
        ours = {k for k, _ in (_FAILED, _STALE, _VERIFY, _OFFSITE, _ROLLBACK)}
        open_ = await self._incidents.list(open_only=True, limit=500)
        self._raised = {i.fingerprint for i in open_ if i.fingerprint in ours}


def _valid_id(backup_id: str) -> str:
    if not _ID.match(backup_id):
        raise InvalidInput(f"{backup_id!r} is not a backup id (like 20261128T093000Z)")
    return backup_id


def _created_from_id(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], ID_FORMAT).replace(tzinfo=UTC)


def _load_manifest(directory: Path) -> BackupManifest | str:
    """The manifest, or a problem naming what is wrong with it."""
    try:
        manifest = BackupManifest.model_validate_json((directory / MANIFEST).read_bytes())
    except OSError as exc:
        return f"{MANIFEST}: cannot be read ({exc.strerror})"
    except ValidationError as exc:
        return f"{MANIFEST}: not a valid manifest ({exc.error_count()} errors)"
    if manifest.format != FORMAT:
        return f"{MANIFEST}: format {manifest.format!r}, this release reads {FORMAT!r}"
    if manifest.id != directory.name and not directory.name.startswith(".fetch-"):
        return f"{MANIFEST}: describes backup {manifest.id}, not {directory.name}"
    return manifest


def _read_model(path: Path, model: type[Verification]) -> Verification | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _restrict(directory: Path) -> None:
    os.chmod(directory, 0o700)
    for child in directory.iterdir():
        os.chmod(child, 0o600)


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, OperationError) else str(exc) or type(exc).__name__


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} d"


def _scheduler_actor(job: str) -> Actor:
    return Actor(kind=ActorKind.SCHEDULER, id=job, name=job, role=Role.ADMIN)


def newest(backups: Iterable[BackupInfo]) -> BackupInfo | None:
    """The newest backup that is not broken or failed."""
    return next((b for b in backups if b.status in ("verified", "unverified")), None)
