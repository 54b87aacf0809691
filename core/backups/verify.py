"""Verifying a backup: its files against the manifest's checksums, then a trial restore into a
scratch store with an integrity check, row counts against the manifest and the audit chain."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path

from core.backups.catalog import BackupCatalog, sha256
from core.backups.models import MANIFEST, REMOTE, VERIFICATION, BackupManifest, Verification
from core.backups.offsite import OffsiteCopies, local_copy
from core.errors import LuniaError
from core.models import utcnow
from core.platform.files import write_atomically
from core.platform.metrics import Metrics
from core.security.audit import AuditLog
from core.store import Store
from core.store.portable import PORTABLE_FILE, read_portable

logger = logging.getLogger(__name__)


class Verifier:
    """Checks backups and writes each verdict next to the backup (``verification.json``)."""

    def __init__(
        self,
        store: Store,
        catalog: BackupCatalog,
        offsite: OffsiteCopies | None,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._offsite = offsite
        self._metrics = metrics

    async def verify(self, backup_id: str) -> Verification:
        """Check one backup (fetched from off-site first if only there) and record the verdict."""
        started = time.perf_counter()
        directory = await local_copy(self._catalog, self._offsite, backup_id)
        problems: list[str] = []
        counts: dict[str, int] = {}
        checked = 0
        manifest = await asyncio.to_thread(self._catalog.trusted_manifest, directory)
        if isinstance(manifest, str):
            problems.append(manifest)
        else:
            problems += await asyncio.to_thread(check_files, directory, manifest)
            problems += portable_problems(manifest, self._store.kind)
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
    ) -> tuple[dict[str, int], int, list[str]]:
        root = self._catalog.root
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".verify-", dir=root))
        trial = self._store.trial_store(workdir)
        problems: list[str] = []
        counts: dict[str, int] = {}
        checked = 0
        try:
            await trial.open()
            expected = manifest.counts
            if manifest.store == trial.kind:
                await trial.restore(directory)
            else:  # taken on the other kind of store: what a restore here would load
                portable = await asyncio.to_thread(read_portable, directory / PORTABLE_FILE)
                await trial.load_portable(portable)
                expected = portable.counts()
            problems += [f"integrity check: {p}" for p in await trial.integrity_problems()]
            counts = await trial.counts()
            problems += count_problems(expected, counts)
            report = await AuditLog(trial, self._metrics).verify()
            checked = report.checked
            if not report.ok:
                problems.append(f"audit chain: {report.problem}")
        except LuniaError as exc:
            problems.append(f"trial restore failed: {exc}")
        finally:
            await trial.close()
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        return counts, checked, problems


# Written beside a backup after it is sealed (its manifest, verdicts, where its copy went); none
# of them is ever restored.
_OWN_FILES = frozenset({MANIFEST, VERIFICATION, REMOTE})


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
        found = sha256(path)
        if found != entry.sha256:
            problems.append(
                f"{entry.name}: sha256 {found[:12]}… does not match the manifest's "
                f"{entry.sha256[:12]}… (the file was altered or damaged)"
            )
    if not manifest.files:
        problems.append(f"{MANIFEST}: lists no files")
    listed = {entry.name for entry in manifest.files} | _OWN_FILES
    problems += [
        f"{child.name}: not listed in the manifest (added after the backup was taken); "
        "a backup with unlisted files is not trusted"
        for child in sorted(directory.iterdir())
        if child.name not in listed
    ]
    return problems


def count_problems(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """Tables whose row count differs from what the manifest recorded."""
    return [
        f"{table}: manifest says {count} rows, the restored copy has {found.get(table, 0)}"
        for table, count in sorted(expected.items())
        if found.get(table, 0) != count
    ]


def portable_problems(manifest: BackupManifest, kind: str) -> list[str]:
    """Why a backup cannot be loaded into a store of ``kind`` (empty when it can): one taken
    on another kind of store needs its portable copy, listed in its signed manifest."""
    if manifest.store == kind or PORTABLE_FILE in {f.name for f in manifest.files}:
        return []
    return [
        f"it was taken on a {manifest.store} store before backups carried a portable copy, so "
        f"it restores only into a {manifest.store} store; take a new backup there first"
    ]
