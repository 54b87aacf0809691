"""Backup, verify and restore times on a realistic state, beside a raw copy of the same file.

Builds a state of 100,000 audit entries and 10,000 incidents through the public services, then
times: ``backups.create`` (online snapshot + sha256 + manifest + fsync), ``backups.verify``
(checksums + trial restore + integrity check + counts + audit chain) and ``backups.restore``
(safety backup + swap + integrity check + counts + audit chain), against ``shutil.copyfile`` of
the checkpointed database file (no consistency, no checks).

    .venv/bin/python bench/backup.py [--audit 100000] [--incidents 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.models.alerts import Alert, AlertSource, AlertStatus, Severity

ADMIN = Actor(kind=ActorKind.CLI, id="bench", name="bench", role=Role.ADMIN)


async def fill(plane: ControlPlane, audit: int, incidents: int) -> None:
    """Incidents through the alert path (each opens with its audit entry), then audit entries."""
    batch = 500
    for start in range(0, incidents, batch):
        alerts = [
            Alert(
                source=AlertSource.ENGINE,
                fingerprint=f"bench:{n}",
                dedup_key=uuid.uuid4().hex,
                status=AlertStatus.FIRING,
                severity=Severity.WARNING,
                title=f"Bench condition {n}",
                summary="synthetic",
                starts_at=utcnow(),
            )
            for n in range(start, min(start + batch, incidents))
        ]
        await plane.incidents.ingest(alerts)
    have = (await plane.store.audit_head() or (0, ""))[0]
    pending: list[asyncio.Future[object]] = []
    for n in range(have, audit):
        record = AuditRecord(actor=ADMIN, action="bench.note", target=str(n), after={"n": n})
        pending.append(asyncio.ensure_future(plane.audit.record(record)))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


def raw_copy(db: Path, dest: Path) -> float:
    """Checkpoint the WAL into the file, then time a plain file copy."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    started = time.perf_counter()
    shutil.copyfile(db, dest)
    return time.perf_counter() - started


async def main(audit: int, incidents: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="lunia-bench-") as work:
        settings = Settings(_env_file=None, lunia_state_dir=Path(work) / "state")  # type: ignore[call-arg]
        plane = ControlPlane(settings)
        await plane.start()
        try:
            started = time.perf_counter()
            await fill(plane, audit, incidents)
            counts = await plane.store.counts()
            size = settings.db_path.stat().st_size
            print(
                f"state: {counts['audit']} audit entries, {counts['incidents']} incidents, "
                f"{counts['alerts']} alerts (built in {time.perf_counter() - started:.1f}s)"
            )

            copy = raw_copy(settings.db_path, Path(work) / "raw-copy.db")
            size = settings.db_path.stat().st_size

            started = time.perf_counter()
            info = await plane.backups.create(ADMIN)
            create = time.perf_counter() - started

            started = time.perf_counter()
            verification = await plane.backups.verify(info.id, ADMIN)
            verify = time.perf_counter() - started
            assert verification.ok, verification.problems

            started = time.perf_counter()
            report = await plane.backups.restore(info.id, ADMIN, confirm=True)
            restore = time.perf_counter() - started
        finally:
            await plane.close()

    print(f"database file: {size / 1e6:.1f} MB")
    print(f"raw copy of the file (cp, no checks):       {copy * 1000:8.0f} ms   1.0x")
    print(
        f"backup create (snapshot+sha256+manifest):   {create * 1000:8.0f} ms {create / copy:6.1f}x"
    )
    print(
        f"backup verify (checksums+trial restore):    {verify * 1000:8.0f} ms "
        f"{verify / copy:6.1f}x  ({verification.audit_entries_checked} entries chained)"
    )
    print(
        f"restore (safety backup+swap+all checks):    {restore * 1000:8.0f} ms "
        f"{restore / copy:6.1f}x  ({report.audit_entries_verified} entries chained)"
    )
    print(
        f"restore + verify:                           {(restore + verify) * 1000:8.0f} ms "
        f"{(restore + verify) / copy:6.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=int, default=100_000)
    parser.add_argument("--incidents", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.audit, args.incidents))
