"""The local spool: writes that must not be lost while Redis is unreachable (runbook §2.2).

With ``ENABLE_REDIS=true`` the store is Redis. When it cannot be reached, received alerts and
incident acknowledgements are appended here instead — a small SQLite file in the state dir,
fsynced before the sender gets its 2xx — and replayed in order, oldest first, when Redis is
back. Replaying is safe to repeat: alerts carry their dedup key (a re-delivery changes nothing)
and acknowledging twice is a no-op, so a crash between replaying and forgetting an entry creates
no duplicates.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.models import utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class SpoolKind(StrEnum):
    """What a spooled entry replays as."""

    ALERTS = "alerts"  # payload: {"alerts": [Alert, ...]}
    ACKNOWLEDGE = "acknowledge"  # payload: {"incident_id": int, "actor": Actor}


class SpoolEntry(BaseModel):
    """One spooled write."""

    seq: int
    kind: SpoolKind
    payload: dict[str, Any]
    created_at: str


class LocalSpool:
    """An append-only queue in one SQLite file (synchronous=FULL: durable once ``add`` returns)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        return db

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = self._connect()
        try:
            with db:
                return db.execute(sql, args).fetchall()
        finally:
            db.close()

    async def add(self, kind: SpoolKind, payload: dict[str, Any]) -> int:
        """Append an entry durably; its sequence number."""
        body = json.dumps(payload, default=str)
        async with self._lock:
            rows = await asyncio.to_thread(
                self._run,
                "INSERT INTO spool (kind, payload, created_at) VALUES (?, ?, ?) RETURNING seq",
                (kind.value, body, utcnow().isoformat()),
            )
        return int(rows[0][0])

    async def entries(self, limit: int = 100) -> list[SpoolEntry]:
        """The oldest entries, in order."""
        rows = await asyncio.to_thread(
            self._run,
            "SELECT seq, kind, payload, created_at FROM spool ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [
            SpoolEntry(seq=r[0], kind=SpoolKind(r[1]), payload=json.loads(r[2]), created_at=r[3])
            for r in rows
        ]

    async def forget(self, seq: int) -> None:
        """Drop an entry once it has been replayed."""
        async with self._lock:
            await asyncio.to_thread(self._run, "DELETE FROM spool WHERE seq = ?", (seq,))

    async def depth(self) -> int:
        """How many entries wait to be replayed."""
        rows = await asyncio.to_thread(self._run, "SELECT COUNT(*) FROM spool")
        return int(rows[0][0])
