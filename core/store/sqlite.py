"""SQLite implementation of ``Store``: the embedded, single-node default.

WAL mode lets readers run while one writer commits. All writes go through one dedicated thread
and connection (SQLite allows one writer at a time anyway); reads use a small pool of threads, each
with its own connection, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from core.audit import GENESIS_HASH, seal
from core.errors import StoreError, StoreUnavailable
from core.models import Actor, AuditEntry, AuditRecord, utcnow
from core.store import FlagOverride

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Each migration moves the schema one version up; never edit a shipped one, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_ts ON audit (ts);
    CREATE TABLE flag_overrides (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        set_by TEXT NOT NULL,
        set_at TEXT NOT NULL
    );
    """,
]


def _connect(path: Path) -> sqlite3.Connection:
    # Each connection is used by one thread at a time; close() runs on the loop thread after the
    # pools have stopped, hence check_same_thread=False.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a killed process (the OS has the pages); only power loss can drop
    # the last commits, which is the usual trade for thousands of durable writes a second.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _ts(value: datetime) -> str:
    return value.isoformat()


class SqliteStore:
    """The embedded store: one SQLite file under ``LUNIA_STATE_DIR``."""

    def __init__(self, path: Path, *, readers: int = 4) -> None:
        self.path = path
        self._readers = readers
        self._writer: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, switch to WAL and run pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(
            max_workers=self._readers, thread_name_prefix="sqlite-reader"
        )
        await self._write(self._open_writer)

    def _open_writer(self) -> None:
        try:
            self._write_conn = _connect(self.path)
            self._migrate(self._write_conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state database is at schema {version}, newer than this release "
                f"({len(MIGRATIONS)}); upgrade the control plane"
            )
        for number in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            logger.info("state database migrated to schema %d", number + 1)

    async def close(self) -> None:
        """Close every connection and stop the threads; safe to call twice."""
        writer, readers = self._writer, self._reader_pool
        self._writer = self._reader_pool = None
        if writer is not None:
            await asyncio.get_running_loop().run_in_executor(writer, self._close_writer)
            writer.shutdown(wait=True)
        if readers is not None:
            readers.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _close_writer(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    # -- plumbing --------------------------------------------------------------------------

    async def _write(self, fn: Callable[[], T]) -> T:
        if self._writer is None:
            raise StoreUnavailable("the state store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_pool is None:
            raise StoreUnavailable("the state store is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_pool, self._with_reader, fn
        )

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        try:
            return fn(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database read failed: {exc}") from exc

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._write_conn
        if conn is None:
            raise StoreUnavailable("the state store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database write failed: {exc}") from exc
        return result

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless a read answers."""
        try:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def schema_version(self) -> int:
        """The schema version (SQLite ``user_version``)."""
        return int(await self._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]))

    # -- audit -----------------------------------------------------------------------------

    @staticmethod
    def _append_audit_tx(conn: sqlite3.Connection, record: AuditRecord) -> AuditEntry:
        row = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
        seq, prev_hash = (0, GENESIS_HASH) if row is None else json.loads(row["value"])
        entry = seal(record, seq=seq + 1, ts=utcnow(), prev_hash=prev_hash)
        conn.execute(
            "INSERT INTO audit (seq, ts, actor, action, target, before, after, outcome, detail,"
            " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                entry.seq,
                _ts(entry.ts),
                entry.actor.model_dump_json(),
                entry.action,
                entry.target,
                _dump(entry.before),
                _dump(entry.after),
                entry.outcome,
                entry.detail,
                entry.prev_hash,
                entry.hash,
            ),
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('audit_head', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_dump([entry.seq, entry.hash]),),
        )
        return entry

    async def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Seal ``record`` onto the end of the chain."""
        return await self._write(
            lambda: self._transaction(lambda c: self._append_audit_tx(c, record))
        )

    @staticmethod
    def _row_to_entry(row: sqlite3.Row) -> AuditEntry:
        return AuditEntry(
            seq=row["seq"],
            ts=datetime.fromisoformat(row["ts"]),
            actor=Actor.model_validate_json(row["actor"]),
            action=row["action"],
            target=row["target"],
            before=json.loads(row["before"]) if row["before"] is not None else None,
            after=json.loads(row["after"]) if row["after"] is not None else None,
            outcome=row["outcome"],
            detail=row["detail"],
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    async def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Entries after ``after_seq`` in chain order, optionally within [since, until)."""
        sql = "SELECT * FROM audit WHERE seq > ?"
        args: list[Any] = [after_seq]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(_ts(since))
        if until is not None:
            sql += " AND ts < ?"
            args.append(_ts(until))
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [self._row_to_entry(r) for r in rows]

    async def audit_tail(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [self._row_to_entry(r) for r in rows]

    async def audit_head(self) -> tuple[int, str] | None:
        """The chain head as recorded at the last append."""
        row = await self._read(
            lambda c: c.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()
        )
        if row is None:
            return None
        seq, digest = json.loads(row["value"])
        return int(seq), str(digest)

    # -- flags -----------------------------------------------------------------------------

    async def flag_overrides(self) -> dict[str, FlagOverride]:
        """Every runtime flag override by name."""
        rows = await self._read(lambda c: c.execute("SELECT * FROM flag_overrides").fetchall())
        return {
            r["name"]: FlagOverride(
                name=r["name"],
                value=json.loads(r["value"]),
                set_by=Actor.model_validate_json(r["set_by"]),
                set_at=datetime.fromisoformat(r["set_at"]),
            )
            for r in rows
        }

    async def put_flag_override(self, override: FlagOverride, audit: AuditRecord) -> AuditEntry:
        """Set an override and audit it in one transaction."""

        def tx(conn: sqlite3.Connection) -> AuditEntry:
            conn.execute(
                "INSERT INTO flag_overrides (name, value, set_by, set_at) VALUES (?,?,?,?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                " set_by = excluded.set_by, set_at = excluded.set_at",
                (
                    override.name,
                    _dump(override.value),
                    override.set_by.model_dump_json(),
                    _ts(override.set_at),
                ),
            )
            return self._append_audit_tx(conn, audit)

        return await self._write(lambda: self._transaction(tx))

    async def delete_flag_override(self, name: str, audit: AuditRecord) -> AuditEntry:
        """Clear an override and audit it in one transaction."""

        def tx(conn: sqlite3.Connection) -> AuditEntry:
            conn.execute("DELETE FROM flag_overrides WHERE name = ?", (name,))
            return self._append_audit_tx(conn, audit)

        return await self._write(lambda: self._transaction(tx))
