"""The catalogue of backups: one directory each under ``BACKUP_DIR``, no database table.

The backups must outlive the database they protect, so the filesystem is the catalogue. A backup
is built in a hidden temporary directory, fsynced and renamed into place, so a directory with a
manifest is always a complete backup. This module owns ids, listing, taking a snapshot into a new
directory, deleting, the retention policy and the cleanup of temp directories left by a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core import __version__
from core.backups.models import (
    FORMAT,
    ID_FORMAT,
    MANIFEST,
    REMOTE,
    VERIFICATION,
    BackupFile,
    BackupInfo,
    BackupManifest,
    BackupReason,
    Verification,
)
from core.backups.signing import ManifestSigner
from core.errors import InvalidInput, LuniaError
from core.platform.files import write_atomically
from core.security.audit import ChainHead
from core.store import Store

logger = logging.getLogger(__name__)

BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z(?:-\d{1,3})?$")
_TEMP_PREFIXES = (".tmp-", ".verify-", ".fetch-")
_STALE_TEMP = timedelta(hours=12)


class BackupCatalog:
    """The backups in one directory: list, describe, add (atomically, signed) and delete them."""

    def __init__(self, root: Path, signer: ManifestSigner) -> None:
        self.root = root
        self.signer = signer

    def prepare(self) -> None:
        """Create the directory owner-only and remove old temp directories left by a crash."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        cutoff = time.time() - _STALE_TEMP.total_seconds()
        for child in self.root.iterdir():
            # Leftovers of a crash; only old ones, another process may be mid-backup right now.
            if child.name.startswith(_TEMP_PREFIXES) and child.stat().st_mtime < cutoff:
                logger.warning("removing unfinished backup directory %s", child)
                shutil.rmtree(child, ignore_errors=True)

    def directory(self, backup_id: str) -> Path:
        """Where a backup lives (or would), after checking that the id is one."""
        return self.root / valid_id(backup_id)

    def scan(self, now: datetime) -> list[BackupInfo]:
        """Every local backup, newest first (blocking: run it in a thread)."""
        if not self.root.is_dir():
            return []
        found = [
            self.describe(child, now)
            for child in self.root.iterdir()
            if BACKUP_ID.match(child.name) and child.is_dir()
        ]
        found.sort(key=lambda b: b.created_at, reverse=True)
        return found

    def describe(self, directory: Path, now: datetime) -> BackupInfo:
        """One backup directory as ``/backups`` lists it; ``broken`` if its manifest is bad."""
        try:
            manifest = BackupManifest.model_validate_json((directory / MANIFEST).read_bytes())
        except (OSError, ValidationError) as exc:
            created = created_from_id(directory.name)
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
        return BackupInfo.of(
            manifest,
            now,
            status=status,
            verification=verification,
            offsite=str(remote.get("url")) if remote else None,
            # Listed with why verify and restore will refuse it (unsigned, another key...).
            problem=self.signer.problem(manifest) or "",
        )

    def trusted_manifest(self, directory: Path) -> BackupManifest | str:
        """The manifest if it is readable and signed with one of our keys, else the problem
        (blocking: run it in a thread). The files still need checking against it."""
        manifest = load_manifest(directory)
        if isinstance(manifest, str):
            return manifest
        return self.signer.problem(manifest) or manifest

    def write_signed(self, directory: Path, manifest: BackupManifest) -> BackupManifest:
        """Sign ``manifest`` with the current key and replace the backup's manifest with it."""
        signed = self.signer.sign(manifest)
        write_atomically(
            directory / MANIFEST, signed.model_dump_json(indent=2).encode(), mode=0o600
        )
        return signed

    async def take(
        self,
        store: Store,
        reason: BackupReason,
        created_by: str,
        created_at: datetime,
        *,
        audit_head: ChainHead | None = None,
    ) -> BackupManifest:
        """Snapshot the store into a new backup: checksums, manifest last, one rename."""
        started = time.perf_counter()
        backup_id = await asyncio.to_thread(self._new_id, created_at)
        tmp = self.root / f".tmp-{backup_id}-{secrets.token_hex(4)}"
        try:
            await asyncio.to_thread(tmp.mkdir, mode=0o700, parents=False)
            snapshot = await store.snapshot(tmp)
            files = [
                BackupFile(
                    name=name,
                    size=(tmp / name).stat().st_size,
                    sha256=await asyncio.to_thread(sha256, tmp / name),
                )
                for name in snapshot.files
            ]
            manifest = BackupManifest(
                id=backup_id,
                app_version=__version__,
                created_at=created_at,
                reason=reason,
                created_by=created_by,
                store=snapshot.kind,
                schema_version=snapshot.schema_version,
                counts=snapshot.counts,
                files=files,
                duration_seconds=round(time.perf_counter() - started, 4),
                audit_head=audit_head,
            )
            manifest = self.signer.sign(manifest)
            await asyncio.to_thread(_seal, tmp, self.root / backup_id, manifest)
        except (LuniaError, OSError):
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        return manifest

    def _new_id(self, created_at: datetime) -> str:
        base = created_at.strftime(ID_FORMAT)
        candidate, n = base, 1
        while (self.root / candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def expired(
        self, now: datetime, *, keep_last: int, keep_daily: int, keep_weekly: int
    ) -> list[BackupInfo]:
        """The backups a retention policy does not keep (broken ones are left for a person)."""
        backups = [b for b in self.scan(now) if b.status != "broken"]
        kept = select_kept(
            [b.created_at for b in backups],
            keep_last=keep_last,
            keep_daily=keep_daily,
            keep_weekly=keep_weekly,
        )
        return [b for i, b in enumerate(backups) if i not in kept]

    def delete(self, backup_id: str) -> None:
        """Delete one local backup (blocking: run it in a thread)."""
        # Hide it first (one rename), so a half-deleted backup never looks complete.
        doomed = self.root / f".tmp-deleting-{backup_id}-{secrets.token_hex(4)}"
        os.rename(self.root / backup_id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


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


def newest(backups: Iterable[BackupInfo]) -> BackupInfo | None:
    """The newest backup that is not broken or failed."""
    return next((b for b in backups if b.status in ("verified", "unverified")), None)


def valid_id(backup_id: str) -> str:
    """The id unchanged, or ``InvalidInput`` (ids become paths: nothing else may pass)."""
    if not BACKUP_ID.match(backup_id):
        raise InvalidInput(f"{backup_id!r} is not a backup id (like 20261128T093000Z)")
    return backup_id


def created_from_id(backup_id: str) -> datetime:
    """A backup's creation time read from its id (for backups whose manifest is unreadable)."""
    return datetime.strptime(backup_id[:16], ID_FORMAT).replace(tzinfo=UTC)


def load_manifest(directory: Path) -> BackupManifest | str:
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


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None if it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_model(path: Path, model: type[Verification]) -> Verification | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


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
