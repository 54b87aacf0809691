"""Audit exports (runbook §4): time-ranged, chained, to a directory or S3, weekly on schedule.

Each export is a JSONL file of audit entries plus a manifest
(``core.security.audit.ExportManifest``) with
its sha256 and the hash the first entry links to, so an auditor can check it offline with
``lunia audit verify --file`` and check that consecutive exports join without a gap. The weekly
job exports everything since the previous scheduled export (its end is kept as a store cursor).
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from core.config.settings import Settings
from core.errors import InvalidInput, PermissionDenied, StoreError
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.platform.health import ComponentHealth, Status
from core.platform.metrics import Metrics
from core.platform.s3 import S3Client, S3Location
from core.security.access import require
from core.security.audit import AuditLog, ExportManifest, VerifyReport, verify_export
from core.store import Store

logger = logging.getLogger(__name__)

JOB_EXPORT = "audit-export"
CURSOR = "audit-export-until-us"
# When the audit log was last exported (any export, scheduled or by hand), in the store so every
# replica reports it and a restart does not forget it.
LAST_EXPORT = "audit-export-last-us"
# Runbook §4 exports weekly; past this the `audit_export` component is degraded and the
# AuditExportStale rule (deploy/prometheus/rules/lunia.rules.yml) fires.
EXPORT_MAX_AGE = timedelta(days=8)
# Entries are stamped just before they commit; stopping a little short of "now" keeps an entry
# stamped before the cut but committed after the read from falling between two exports.
SETTLE = timedelta(seconds=2)


class ExportResult(BaseModel):
    """Where an export went and its manifest."""

    destination: str
    files: list[str]
    manifest: ExportManifest


def parse_destination(dest: str) -> Path | S3Location:
    """A directory (plain path or ``file://``) or an ``s3://bucket/prefix``."""
    dest = dest.strip()
    if dest.startswith("s3://"):
        return S3Location.parse(dest)
    if dest.startswith("file://"):
        return Path(dest.removeprefix("file://"))
    if "://" in dest:
        raise InvalidInput(
            f"unsupported destination {dest!r}: use a directory, file://PATH or s3://bucket/prefix"
        )
    if not dest:
        raise InvalidInput("the destination is empty")
    return Path(dest)


def verify_exports(paths: list[Path]) -> VerifyReport:
    """Verify exports offline, each against its manifest, and that each one continues the
    chain of the one before it (give them oldest first)."""
    total = 0
    previous: ExportManifest | None = None
    for path in paths:
        report = verify_export(path)
        if not report.ok:
            return report.model_copy(update={"problem": f"{path.name}: {report.problem}"})
        total += report.checked
        manifest = ExportManifest.model_validate_json(
            path.with_name(path.name + ".manifest.json").read_bytes()
        )
        if previous is not None and manifest.count and previous.count:
            joined = manifest.first_prev_hash == previous.last_hash and manifest.first_seq == (
                (previous.last_seq or 0) + 1
            )
            if not joined:
                return VerifyReport(
                    ok=False,
                    checked=total,
                    first_bad_seq=manifest.first_seq,
                    problem=(
                        f"{path.name} does not continue the previous export (ends at entry "
                        f"{previous.last_seq}, this one starts at {manifest.first_seq}): a gap "
                        "or a rewritten chain"
                    ),
                )
        previous = manifest if manifest.count else previous
    return VerifyReport(ok=True, checked=total)


class AuditExportService:
    """Exports the audit log on demand and weekly."""

    def __init__(
        self, settings: Settings, audit: AuditLog, store: Store, metrics: Metrics, s3: S3Client
    ) -> None:
        self._settings = settings
        self._audit = audit
        self._store = store
        self._metrics = metrics
        self._s3 = s3

    async def export(
        self,
        actor: Actor,
        dest: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ExportResult:
        """Export the entries stamped in [since, until) to ``dest`` (default AUDIT_EXPORT_DEST)
        as JSONL plus manifest (operator); audited."""
        try:
            require(actor, Role.OPERATOR, "exporting the audit log")
        except PermissionDenied as exc:
            await self._audit.record(
                AuditRecord(
                    actor=actor, action="audit.export", outcome="denied", detail=exc.message
                )
            )
            raise
        since, until = _aware(since), _aware(until)
        if since is not None and until is not None and since >= until:
            raise InvalidInput("--since must be before --until")
        text = dest or self._settings.audit_export_target
        target = parse_destination(text)
        if isinstance(target, Path):
            manifest = await self._audit.export(target, since=since, until=until)
            files = [str(target / manifest.file), str(target / f"{manifest.file}.manifest.json")]
        else:
            manifest, files = await self._export_to_s3(target, since, until)
        await self._audit.record(
            AuditRecord(
                actor=actor,
                action="audit.export",
                target=files[0],
                after={
                    "count": manifest.count,
                    "first_seq": manifest.first_seq,
                    "last_seq": manifest.last_seq,
                    "sha256": manifest.sha256,
                    "since": since.isoformat() if since else None,
                    "until": until.isoformat() if until else None,
                },
            )
        )
        self._metrics.audit_entries.labels("ok").inc()
        await self._store.set_cursor(LAST_EXPORT, int(manifest.created_at.timestamp() * 1e6))
        self._metrics.audit_export_last_success.set(manifest.created_at.timestamp())
        logger.info("exported %d audit entries to %s", manifest.count, files[0])
        return ExportResult(destination=text, files=files, manifest=manifest)

    async def _export_to_s3(
        self, loc: S3Location, since: datetime | None, until: datetime | None
    ) -> tuple[ExportManifest, list[str]]:
        with tempfile.TemporaryDirectory(prefix="lunia-export-") as work:
            staging = Path(work)
            manifest = await self._audit.export(staging, since=since, until=until)
            names = [manifest.file, f"{manifest.file}.manifest.json"]
            for name in names:  # the manifest last: its presence means the export is complete
                await self._s3.put_file(loc, loc.key(name), staging / name)
        return manifest, [loc.url(name) for name in names]

    async def last_export_at(self) -> datetime | None:
        """When the audit log was last exported, by anyone (None before the first export)."""
        micros = await self._store.get_cursor(LAST_EXPORT)
        return datetime.fromtimestamp(micros / 1e6, UTC) if micros else None

    async def health(self) -> ComponentHealth:
        """The ``audit_export`` component of ``/healthz``: how old the last export is; also
        refreshes ``audit_export_last_success_timestamp_seconds`` from the store (0: never)."""
        try:
            last = await self.last_export_at()
        except StoreError as exc:  # the gauge keeps its last reading while the store is away
            return ComponentHealth(status=Status.DEGRADED, detail=f"store unreachable: {exc}")
        self._metrics.audit_export_last_success.set(last.timestamp() if last else 0)
        if last is None:
            return ComponentHealth(
                status=Status.OK, detail="no export yet (the weekly job runs Mondays 04:00 UTC)"
            )
        age = utcnow() - last
        shown = f"last export {last.isoformat(timespec='seconds')} ({age.days} d ago)"
        if age > EXPORT_MAX_AGE:
            return ComponentHealth(
                status=Status.DEGRADED,
                detail=f"{shown}, over {EXPORT_MAX_AGE.days} d: run `lunia audit export`",
            )
        return ComponentHealth(status=Status.OK, detail=shown)

    async def last_scheduled_until(self) -> datetime | None:
        """Where the previous scheduled export stopped (None before the first one)."""
        micros = await self._store.get_cursor(CURSOR)
        return datetime.fromtimestamp(micros / 1e6, UTC) if micros else None

    async def scheduled_export(self, now: datetime | None = None) -> ExportResult:
        """The weekly job: export everything since the previous scheduled export."""
        until = (now or utcnow()) - SETTLE
        since = await self.last_scheduled_until()
        actor = Actor(kind=ActorKind.SCHEDULER, id=JOB_EXPORT, name=JOB_EXPORT, role=Role.ADMIN)
        result = await self.export(actor, since=since, until=until)
        await self._store.set_cursor(CURSOR, int(until.timestamp() * 1e6))
        return result


def _aware(value: datetime | None) -> datetime | None:
    """Times without a zone are UTC (what the CLI's --since/--until mean)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
