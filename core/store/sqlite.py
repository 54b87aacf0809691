"""SQLite implementation of ``Store``: the embedded, single-node default.

WAL mode lets readers run while one writer commits. All writes go through one dedicated thread
and connection (SQLite allows one writer at a time anyway); reads use a small pool of threads, each
with its own connection, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from core.errors import NotFound, StoreError, StoreUnavailable
from core.models import (
    Actor,
    AuditEntry,
    AuditRecord,
    OutboxItem,
    OutboxMessage,
    OutboxStats,
    utcnow,
)
from core.models.alerts import Alert, Severity
from core.models.audit import GENESIS_HASH, seal
from core.models.cluster import Heartbeat
from core.models.incidents import (
    Change,
    EventKind,
    Incident,
    IncidentEvent,
    IncidentState,
    incident_key,
    legacy_key,
)
from core.models.trading import Holding, VenueAccount
from core.models.venues import OrderRecord, OrderStatus
from core.store import (
    AlertPlanner,
    Confirmation,
    ConfirmationTake,
    FlagOverride,
    FlagVersion,
    HeldChange,
    HeldChanges,
    IncidentMutation,
    IngestOutcome,
    PnlPoint,
    RateLimitHit,
    RestoreGuard,
    Store,
    StoredAlert,
    StoreSnapshot,
    flag_version_conflict,
    splice_incident,
)
from core.store.group_commit import GroupCommit
from core.store.portable import PORTABLE_FILE, TABLES, PortableState, write_portable

logger = logging.getLogger(__name__)

# The one file a snapshot of this store consists of.
SNAPSHOT_FILE = "state.db"
# How much of the database file each connection reads through a memory map (address space,
# not memory: the pages are the OS's page cache).
MMAP_BYTES = 1 << 30
# The WAL is copied back into the database by a thread of its own, at most this often while
# writes come, instead of by whichever commit crosses SQLite's threshold: the copy ends in
# fsyncs (tens of ms here) that would stall that commit and every webhook waiting behind it.
CHECKPOINT_SECONDS = 1.0
# SQLite's own checkpoint on commit stays as a backstop, should the thread fall behind (pages).
BACKSTOP_CHECKPOINT_PAGES = 16_000

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
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        deadline TEXT,
        resolved_at TEXT,
        updated_at TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE UNIQUE INDEX incidents_one_open_per_key ON incidents (key) WHERE state != 'resolved';
    CREATE INDEX incidents_by_key ON incidents (key, id);
    CREATE INDEX incidents_by_deadline ON incidents (deadline) WHERE deadline IS NOT NULL;
    CREATE INDEX incidents_by_state ON incidents (state, severity, id);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        dedup TEXT NOT NULL UNIQUE,
        incident_id INTEGER,
        received_at TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX alerts_by_incident ON alerts (incident_id, id);
    CREATE TABLE incident_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX events_by_incident ON incident_events (incident_id, seq);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        next_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (channel, status, next_at, id);
    CREATE INDEX outbox_by_key ON outbox (channel, key, status, id);
    CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    """
    CREATE TABLE engine_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE orders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client_order_id TEXT NOT NULL UNIQUE,
        core TEXT NOT NULL,
        venue TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX orders_by_status ON orders (status, id);
    CREATE TABLE pnl_points (
        core TEXT NOT NULL,
        ts TEXT NOT NULL,
        realized REAL NOT NULL,
        unrealized REAL NOT NULL,
        PRIMARY KEY (core, ts)
    );
    CREATE INDEX pnl_points_by_ts ON pnl_points (ts);
    """,
    # -- security state: short-lived, so neither counted nor worth restoring (EPHEMERAL_TABLES)
    """
    CREATE TABLE rate_limit_hits (key TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL);
    CREATE INDEX rate_limit_hits_by_key ON rate_limit_hits (key, at);
    CREATE INDEX rate_limit_hits_by_expiry ON rate_limit_hits (expires);
    CREATE TABLE confirmations (
        token TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    """,
    # -- flag versions for compare-and-set changes (issue 17 point 9); kept when overrides go
    """
    CREATE TABLE flag_versions (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at TEXT NOT NULL
    );
    """,
    # -- open incidents per severity as a running count, kept by triggers inside the very
    # transaction that changes an incident: counting costs the same at 10 or 200k incidents
    # (issue 18 point 2) and cannot drift from the rows, whoever writes them (restores included).
    # One row per Severity value; a new severity needs a migration adding its row.
    """
    CREATE TABLE incident_counts (severity TEXT PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO incident_counts (severity, n) VALUES ('critical', 0), ('warning', 0), ('info', 0);
    UPDATE incident_counts SET n = (SELECT COUNT(*) FROM incidents
        WHERE state != 'resolved' AND incidents.severity = incident_counts.severity);
    CREATE TRIGGER incident_counts_insert AFTER INSERT ON incidents
    WHEN new.state != 'resolved' BEGIN
        UPDATE incident_counts SET n = n + 1 WHERE severity = new.severity;
    END;
    CREATE TRIGGER incident_counts_update AFTER UPDATE OF state, severity ON incidents BEGIN
        UPDATE incident_counts SET n = n - 1
            WHERE old.state != 'resolved' AND severity = old.severity;
        UPDATE incident_counts SET n = n + 1
            WHERE new.state != 'resolved' AND severity = new.severity;
    END;
    CREATE TRIGGER incident_counts_delete AFTER DELETE ON incidents
    WHEN old.state != 'resolved' BEGIN
        UPDATE incident_counts SET n = n - 1 WHERE severity = old.severity;
    END;
    """,
    # -- incidents are alert groups (issue 15 point 3): each incident stored before gets its
    # member list from its stored alerts, the newest alert of each fingerprint; its key stays.
    """
    UPDATE incidents SET doc = json_set(doc, '$.members', json((
        SELECT json_group_array(json_object(
            'fingerprint', json_extract(a.doc, '$.fingerprint'),
            'status', json_extract(a.doc, '$.status'),
            'severity', json_extract(a.doc, '$.severity'),
            'labels', json(COALESCE(json_extract(a.doc, '$.labels'), '{}')),
            'last_seen', a.received_at))
        FROM (SELECT doc, received_at FROM alerts WHERE id IN (
            SELECT MAX(id) FROM alerts WHERE incident_id = incidents.id
            GROUP BY json_extract(doc, '$.fingerprint')) ORDER BY id) AS a)))
    WHERE json_extract(doc, '$.members') IS NULL;
    """,
    # -- secrets never rest (issue 16 point 4): a finished outbox message drops its payload and
    # a delivered one is pruned after OUTBOX_RETENTION; payloads already delivered go now.
    """
    ALTER TABLE outbox ADD COLUMN sensitive INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN finished_at TEXT;
    UPDATE outbox SET payload = '{}', finished_at = next_at WHERE status != 'pending';
    CREATE INDEX outbox_finished ON outbox (status, finished_at);
    """,
    # -- positions and paper accounts are state, not memory (issue 16 point 1)
    """
    CREATE TABLE holdings (
        core TEXT NOT NULL,
        symbol TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (core, symbol)
    );
    CREATE TABLE venue_accounts (venue TEXT PRIMARY KEY, doc TEXT NOT NULL);
    """,
]

# Tables of short-lived security state: left out of ``counts`` (a backup's figures describe the
# durable state; these come and go with every API request).
# The meta row marking a restore under way (``put_restore_guard``).
_RESTORE_GUARD = "restore-guard"
# The prefix of the meta rows holding processes' heartbeats (``put_heartbeat``).
_HEARTBEAT = "heartbeat:"
EPHEMERAL_TABLES = ("rate_limit_hits", "confirmations")
# Tables derived from others (running counts kept by triggers): not state of their own.
DERIVED_TABLES = ("incident_counts",)


def _connect(path: Path, on_statement: Callable[[str], object] | None = None) -> sqlite3.Connection:
    # Each connection is used by one thread at a time; close() runs on the loop thread after the
    # pools have stopped, hence check_same_thread=False.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.set_trace_callback(on_statement)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a killed process (the OS has the pages); only power loss can drop
    # the last commits, which is the usual trade for thousands of durable writes a second.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    # Deleted and overwritten content is zeroed, not left in free space: a delivered message's
    # payload (a token's value, a chart) must not survive in the file (issue 16 point 4).
    conn.execute("PRAGMA secure_delete=ON")
    # The indexes a webhook searches (dedup keys, incident keys) are read at random places that
    # spread as history grows: read them mapped from the OS's page cache (shared by every
    # connection) instead of copied in through read() calls into each connection's own cache.
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


def _statements(script: str) -> list[str]:
    """Split a migration into statements (a trigger's body holds semicolons of its own)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    return statements


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _ts(value: datetime) -> str:
    # One fixed-width UTC format, so text comparison in SQL orders times correctly.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _opt_ts(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _pnl_point(row: sqlite3.Row) -> PnlPoint:
    return PnlPoint(
        core=row["core"],
        ts=datetime.fromisoformat(row["ts"]),
        realized=row["realized"],
        unrealized=row["unrealized"],
    )


class _EventHead(BaseModel):
    """How an incident event is stored, but for its ``incident`` (``splice_incident``)."""

    kind: EventKind
    actor: Actor
    detail: str


_IngestJob = tuple[Sequence[Alert], AlertPlanner]
# Bound variables per statement: far below SQLite's limit (32766), so any build accepts it.
_CHUNK = 500


def _existing(conn: sqlite3.Connection, select_in: str, values: Sequence[str]) -> set[str]:
    """Which of ``values`` the query ``select_in (...)`` (one text column) finds."""
    found: set[str] = set()
    unique = list(dict.fromkeys(values))
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i : i + _CHUNK]
        sql = f"{select_in} ({','.join('?' * len(chunk))})"
        found.update(r[0] for r in conn.execute(sql, chunk))
    return found


class _IncidentsByKey:
    """The open incident and the last resolved one of each incident key of a webhook, read in
    a few queries (open ones by the partial unique index, the newest by ``incidents_by_key``)
    and kept current as the webhook's changes are saved."""

    def __init__(self, conn: sqlite3.Connection, keys: Sequence[str]) -> None:
        unique = list(dict.fromkeys(keys))
        self.open: dict[str, Incident | None] = dict.fromkeys(unique)
        self.resolved: dict[str, Incident | None] = dict.fromkeys(unique)
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT doc FROM incidents WHERE state != 'resolved' AND key IN ({marks})",  # noqa: S608
                chunk,
            ).fetchall()
            for row in rows:
                incident = Incident.model_validate_json(row["doc"])
                self.open[incident.key] = incident
            rows = conn.execute(
                # By primary key only: a filter on state here would make SQLite walk every
                # resolved incident through incidents_by_state (cost growing with history).
                "SELECT doc FROM incidents WHERE id IN (SELECT MAX(id) FROM incidents"  # noqa: S608
                f" WHERE key IN ({marks}) GROUP BY key)",
                chunk,
            ).fetchall()
            for row in rows:
                incident = Incident.model_validate_json(row["doc"])
                if not incident.is_open:
                    self.resolved[incident.key] = incident

    def saved(self, incident: Incident) -> None:
        """Take in an incident the webhook just saved."""
        key = incident.key
        current, latest = self.open.get(key), self.resolved.get(key)
        if incident.is_open:
            self.open[key] = incident
        elif current is not None and current.id == incident.id:
            self.open[key] = None
        # Only the newest incident of a key counts as its last resolved one.
        if latest is None or incident.id >= latest.id:
            self.resolved[key] = None if incident.is_open else incident


class SqliteStore:
    """The embedded store: one SQLite file under ``LUNIA_STATE_DIR``."""

    kind = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        readers: int = 4,
        on_statement: Callable[[str], object] | None = None,
    ) -> None:
        """``on_statement`` is shown every SQL statement any connection runs, values bound
        (SQLite's trace; tests use it to read the query plans of the hot paths)."""
        self.path = path
        self._on_statement = on_statement
        self._readers = readers
        self._writer: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._ingests = GroupCommit[_IngestJob, IngestOutcome](self._commit_ingests)
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_due = 0.0  # monotonic time the next checkpoint may start
        # One checkpoint at a time: a secret's wipe (``_wipe_wal``) must not find the WAL busy
        # with a background one, or the frames holding the secret would stay.
        self._checkpoint_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, switch to WAL and run pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-checkpoint"
        )
        self._reader_pool = ThreadPoolExecutor(
            max_workers=self._readers, thread_name_prefix="sqlite-reader"
        )
        await self._write(self._open_writer)

    def _open_writer(self) -> None:
        try:
            self._write_conn = _connect(self.path, self._on_statement)
            self._write_conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
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
                for statement in _statements(MIGRATIONS[number]):
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
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.shutdown(wait=True)
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
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
            conn = _connect(self.path, self._on_statement)
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
        self._schedule_checkpoint()
        return result

    def _schedule_checkpoint(self) -> None:
        """Have the checkpoint thread copy the WAL back, unless it did so less than
        ``CHECKPOINT_SECONDS`` ago (called by the writer thread after each commit)."""
        now = time.monotonic()
        checkpointer = self._checkpointer
        if checkpointer is None or now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_SECONDS
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: closing checkpoints
            checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint on a connection of its own: it copies what no reader still
        needs and waits for nobody, so the writer and the readers go on meanwhile."""
        try:
            with self._checkpoint_lock:
                if self._checkpoint_conn is None:
                    self._checkpoint_conn = _connect(self.path, self._on_statement)
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.DatabaseError as exc:  # the backstop checkpoint on commit remains
            logger.warning("background WAL checkpoint failed: %s", exc)

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

    async def flag_versions(self) -> dict[str, FlagVersion]:
        """Every flag's version by name."""
        rows = await self._read(lambda c: c.execute("SELECT * FROM flag_versions").fetchall())
        return {r["name"]: self._row_to_flag_version(r) for r in rows}

    @staticmethod
    def _row_to_flag_version(row: sqlite3.Row) -> FlagVersion:
        return FlagVersion(
            name=row["name"],
            version=row["version"],
            changed_by=Actor.model_validate_json(row["changed_by"]),
            changed_at=datetime.fromisoformat(row["changed_at"]),
        )

    def _bump_flag_version(
        self, conn: sqlite3.Connection, name: str, audit: AuditRecord, expected: int | None
    ) -> None:
        """Check ``expected`` against the flag's version and bump it, inside the caller's
        transaction (the single writer makes the check and the write one step)."""
        row = conn.execute("SELECT * FROM flag_versions WHERE name = ?", (name,)).fetchone()
        current = None if row is None else self._row_to_flag_version(row)
        version = 0 if current is None else current.version
        if expected is not None and expected != version:
            raise flag_version_conflict(name, current, expected)
        conn.execute(
            "INSERT INTO flag_versions (name, version, changed_by, changed_at) VALUES (?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
            " changed_by = excluded.changed_by, changed_at = excluded.changed_at",
            (name, version + 1, audit.actor.model_dump_json(), _ts(utcnow())),
        )

    async def put_flag_override(
        self, override: FlagOverride, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Set an override, bump its version and audit it in one transaction."""

        def tx(conn: sqlite3.Connection) -> AuditEntry:
            self._bump_flag_version(conn, override.name, audit, expected_version)
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

    async def delete_flag_override(
        self, name: str, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Clear an override, bump its version and audit it in one transaction."""

        def tx(conn: sqlite3.Connection) -> AuditEntry:
            self._bump_flag_version(conn, name, audit, expected_version)
            conn.execute("DELETE FROM flag_overrides WHERE name = ?", (name,))
            return self._append_audit_tx(conn, audit)

        return await self._write(lambda: self._transaction(tx))

    # -- incidents -------------------------------------------------------------------------

    @staticmethod
    def _incident_by_id(conn: sqlite3.Connection, incident_id: int) -> Incident | None:
        row = conn.execute("SELECT doc FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else Incident.model_validate_json(row["doc"])

    @staticmethod
    def _save_incident(conn: sqlite3.Connection, incident: Incident) -> tuple[Incident, str]:
        """Insert (id 0) or update an incident; returns it with its id and new version, and
        the JSON stored for it."""
        now = utcnow()
        if incident.id == 0:
            # Only the writer thread inserts, inside BEGIN IMMEDIATE: the next id is ours.
            row = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM incidents").fetchone()
            incident = incident.model_copy(update={"id": int(row[0]), "version": 1})
        else:
            incident = incident.model_copy(update={"version": incident.version + 1})
        conn.execute(
            "INSERT INTO incidents (key, state, severity, deadline, resolved_at, updated_at, doc,"
            " id) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET key = excluded.key,"
            " state = excluded.state, severity = excluded.severity,"
            " deadline = excluded.deadline, resolved_at = excluded.resolved_at,"
            " updated_at = excluded.updated_at, doc = excluded.doc",
            (
                incident.key,
                incident.state.value,
                incident.severity.value,
                _opt_ts(incident.deadline),
                _opt_ts(incident.resolved_at),
                _ts(now),
                doc := incident.model_dump_json(),
                incident.id,
            ),
        )
        return incident, doc

    def _apply_change(
        self, conn: sqlite3.Connection, change: Change, before: IncidentState | None
    ) -> IncidentEvent:
        incident, incident_json = self._save_incident(conn, change.incident)
        now = utcnow()
        head = _EventHead(kind=change.kind, actor=change.actor, detail=change.detail)
        doc = splice_incident(head.model_dump_json(), incident_json)
        cursor = conn.execute(
            "INSERT INTO incident_events (incident_id, ts, kind, doc) VALUES (?,?,?,?)",
            (incident.id, _ts(now), change.kind.value, doc),
        )
        if change.audit:
            self._append_audit_tx(
                conn,
                AuditRecord(
                    actor=change.actor,
                    action=f"incident.{change.kind.value}",
                    target=incident.describe(),
                    before={"state": before.value} if before else None,
                    after={"state": incident.state.value},
                    detail=change.detail,
                ),
            )
        if change.outbox:
            # A message about a brand-new incident names it as id 0: give it the real id.
            messages = [
                m.model_copy(update={"payload": {**m.payload, "incident_id": incident.id}})
                if m.payload.get("incident_id") == 0
                else m
                for m in change.outbox
            ]
            self._outbox_add_tx(conn, messages, now)
        return IncidentEvent(
            seq=int(cursor.lastrowid or 0),
            ts=now,
            kind=change.kind,
            incident=incident,
            actor=change.actor,
            detail=change.detail,
        )

    def _ingest_tx(
        self, conn: sqlite3.Connection, alerts: Sequence[Alert], plan: AlertPlanner
    ) -> IngestOutcome:
        """One webhook's alerts: the lookups batched per webhook, the inserts in one go."""
        received = _ts(utcnow())
        dedups = [f"{alert.source.value}:{alert.dedup_key}" for alert in alerts]
        seen = _existing(conn, "SELECT dedup FROM alerts WHERE dedup IN", dedups)
        fresh: dict[str, Alert] = {}  # not stored yet, by dedup key (the first if sent twice)
        for alert, dedup in zip(alerts, dedups, strict=True):
            if dedup not in seen:
                fresh.setdefault(dedup, alert)
        keys = [(incident_key(a), legacy_key(a)) for a in fresh.values()]
        incidents = _IncidentsByKey(conn, [key for pair in keys for key in pair])
        events: list[IncidentEvent] = []
        rows: list[list[Any]] = []
        held = HeldChanges()

        def apply(hold: HeldChange) -> Incident:
            event = self._apply_change(conn, hold.final(), hold.before)
            events.append(event)
            incidents.saved(event.incident)
            for row in hold.rows:
                row[1] = event.incident.id
            return event.incident

        for (dedup, alert), (key, legacy) in zip(fresh.items(), keys, strict=True):
            row: list[Any] = [dedup, None, received, alert.model_dump_json()]
            rows.append(row)
            # An open incident stored before groups keeps taking its own fingerprint's alerts.
            candidates = (legacy if incidents.open[legacy] else key, legacy)
            hold = held.open_one(*candidates)
            if hold is not None:
                open_incident: Incident | None = hold.change.incident
            else:
                for taken in held.take(key, legacy):
                    apply(taken)
                open_incident = incidents.open[legacy] or incidents.open[key]
            last_resolved = incidents.resolved[key]
            change = plan(alert, open_incident, last_resolved)
            target = open_incident or last_resolved
            row[1] = target.id if target else None
            if change is None:
                continue
            hold = held.get(change.incident.key)
            if hold is not None and hold.absorb(change):
                hold.rows.append(row)
                continue
            before = None if change.incident.id == 0 else (target or change.incident).state
            if hold is not None:  # the held incident changes otherwise (e.g. resolves): apply
                saved = apply(hold)
                change, before = hold.rebase(change, saved), hold.change.incident.state
            held[change.incident.key] = HeldChange(change, before)
            held[change.incident.key].rows.append(row)
        for hold in held.values():
            apply(hold)
        conn.executemany(
            "INSERT INTO alerts (dedup, incident_id, received_at, doc) VALUES (?,?,?,?)",
            [tuple(row) for row in rows],
        )
        return IngestOutcome(
            accepted=len(fresh), duplicates=len(alerts) - len(fresh), events=events
        )

    def _ingest_batch_tx(
        self, conn: sqlite3.Connection, jobs: Sequence[_IngestJob]
    ) -> list[IngestOutcome | BaseException]:
        """Several webhooks in one transaction, each all or nothing (a savepoint each)."""
        outcomes: list[IngestOutcome | BaseException] = []
        for alerts, plan in jobs:
            conn.execute("SAVEPOINT webhook")
            try:
                outcomes.append(self._ingest_tx(conn, alerts, plan))
            except Exception as exc:  # this webhook's own failure: the others still commit
                conn.execute("ROLLBACK TO webhook")
                if isinstance(exc, sqlite3.DatabaseError):
                    exc = StoreError(f"state database write failed: {exc}")
                outcomes.append(exc)
            conn.execute("RELEASE webhook")
        return outcomes

    async def _commit_ingests(
        self, jobs: Sequence[_IngestJob]
    ) -> list[IngestOutcome | BaseException]:
        return await self._write(
            lambda: self._transaction(lambda c: self._ingest_batch_tx(c, jobs))
        )

    async def ingest_alerts(
        self, alerts: Sequence[Alert], plan: AlertPlanner, now: datetime
    ) -> IngestOutcome:
        """Store new alerts and apply ``plan`` to their incidents in one transaction; webhooks
        arriving while one commits share the next transaction (group commit)."""
        return await self._ingests.submit((alerts, plan))

    async def change_incident(
        self, incident_id: int, mutate: IncidentMutation
    ) -> tuple[Incident, IncidentEvent | None]:
        """Read-modify-write one incident atomically."""

        def tx(conn: sqlite3.Connection) -> tuple[Incident, IncidentEvent | None]:
            current = self._incident_by_id(conn, incident_id)
            if current is None:
                raise NotFound(f"no incident #{incident_id}")
            change = mutate(current)
            if change is None:
                return current, None
            event = self._apply_change(conn, change, current.state)
            return event.incident, event

        return await self._write(lambda: self._transaction(tx))

    async def get_incident(self, incident_id: int) -> Incident | None:
        """One incident by id."""
        return await self._read(lambda c: self._incident_by_id(c, incident_id))

    async def list_incidents(
        self,
        *,
        states: Sequence[IncidentState] | None = None,
        severity: Severity | None = None,
        due_before: datetime | None = None,
        limit: int = 50,
    ) -> list[Incident]:
        """Incidents newest first, filtered."""
        sql = "SELECT doc FROM incidents WHERE 1 = 1"
        args: list[Any] = []
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(s.value for s in states)
        if severity is not None:
            sql += " AND severity = ?"
            args.append(severity.value)
        if due_before is not None:
            sql += " AND deadline IS NOT NULL AND deadline <= ?"
            args.append(_ts(due_before))
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [Incident.model_validate_json(r["doc"]) for r in rows]

    async def count_open_incidents(self) -> dict[Severity, int]:
        """Open incidents by severity."""
        rows = await self._read(
            lambda c: c.execute("SELECT severity, n FROM incident_counts").fetchall()
        )
        counts = dict.fromkeys(Severity, 0)
        for row in rows:
            counts[Severity(row["severity"])] = int(row["n"])
        return counts

    async def incident_alerts(self, incident_id: int, limit: int = 50) -> list[StoredAlert]:
        """The newest alerts of an incident."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT id, incident_id, received_at, doc FROM alerts WHERE incident_id = ?"
                " ORDER BY id DESC LIMIT ?",
                (incident_id, limit),
            ).fetchall()
        )
        return [
            StoredAlert(
                id=r["id"],
                incident_id=r["incident_id"],
                received_at=datetime.fromisoformat(r["received_at"]),
                alert=Alert.model_validate_json(r["doc"]),
            )
            for r in rows
        ]

    async def incident_events(
        self, *, incident_id: int | None = None, after_seq: int = 0, limit: int = 100
    ) -> list[IncidentEvent]:
        """Incident events in order."""
        sql = "SELECT seq, ts, doc FROM incident_events WHERE seq > ?"
        args: list[Any] = [after_seq]
        if incident_id is not None:
            sql += " AND incident_id = ?"
            args.append(incident_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [
            IncidentEvent(seq=r["seq"], ts=datetime.fromisoformat(r["ts"]), **json.loads(r["doc"]))
            for r in rows
        ]

    # -- outbox and cursors ----------------------------------------------------------------

    @staticmethod
    def _outbox_add_tx(
        conn: sqlite3.Connection, messages: Sequence[OutboxMessage], now: datetime
    ) -> None:
        conn.executemany(
            "INSERT INTO outbox (channel, key, payload, created_at, next_at, sensitive)"
            " VALUES (?,?,?,?,?,?)",
            [
                (m.channel, m.key, _dump(m.payload), _ts(now), _ts(now), int(m.sensitive))
                for m in messages
            ],
        )

    async def outbox_add(
        self, messages: Sequence[OutboxMessage], *, cursor: tuple[str, int] | None = None
    ) -> None:
        """Queue messages for delivery, saving ``cursor`` in the same transaction."""

        def tx(conn: sqlite3.Connection) -> None:
            self._outbox_add_tx(conn, messages, utcnow())
            if cursor is not None:
                conn.execute(
                    "INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT (name)"
                    " DO UPDATE SET value = excluded.value",
                    cursor,
                )

        await self._write(lambda: self._transaction(tx))

    async def get_value(self, key: str) -> Any:
        """A small JSON value saved by an adapter, or None."""
        row = await self._read(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (f"kv:{key}",)).fetchone()
        )
        return None if row is None else json.loads(row["value"])

    async def set_value(self, key: str, value: Any) -> None:
        """Save (or, with None, delete) a small JSON value."""
        args: tuple[Any, ...]
        if value is None:
            sql, args = "DELETE FROM meta WHERE key = ?", (f"kv:{key}",)
        else:
            sql = (
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value"
            )
            args = (f"kv:{key}", _dump(value))
        await self._write(lambda: self._transaction(lambda c: c.execute(sql, args)))

    async def outbox_due(self, channel: str, now: datetime, limit: int) -> list[OutboxItem]:
        """Pending messages of ``channel`` whose time has come, oldest first."""
        rows = await self._read(
            lambda c: c.execute(
                # Only the oldest pending message of each key is eligible: strict order per key.
                "SELECT * FROM outbox AS o WHERE channel = ? AND status = 'pending'"
                " AND next_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox AS p"
                " WHERE p.channel = o.channel AND p.key = o.key AND p.status = 'pending'"
                " AND p.id < o.id) ORDER BY id LIMIT ?",
                (channel, _ts(now), limit),
            ).fetchall()
        )
        return [
            OutboxItem(
                id=r["id"],
                channel=r["channel"],
                key=r["key"],
                payload=json.loads(r["payload"]),
                created_at=datetime.fromisoformat(r["created_at"]),
                next_at=datetime.fromisoformat(r["next_at"]),
                attempts=r["attempts"],
                last_error=r["last_error"],
                sensitive=bool(r["sensitive"]),
            )
            for r in rows
        ]

    async def outbox_finish(
        self, item_id: int, *, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """Mark delivered, rescheduled or failed for good; a finished message drops its
        payload, and a sensitive one's is wiped from the WAL too."""
        args: tuple[Any, ...]
        finished = ", payload = '{}', finished_at = ?"
        if error is None:
            sql = "UPDATE outbox SET status = 'done', attempts = attempts + 1, last_error = NULL"
            sql, args = sql + finished, (_ts(utcnow()), item_id)
        elif retry_at is not None:
            sql = "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ?"
            args = (error, _ts(retry_at), item_id)
        else:
            sql = "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?"
            sql, args = sql + finished, (error, _ts(utcnow()), item_id)
        sql += " WHERE id = ? RETURNING sensitive"

        def write() -> None:
            row = self._transaction(lambda c: c.execute(sql, args).fetchone())
            if row is not None and row["sensitive"] and retry_at is None:
                self._wipe_wal()

        await self._write(write)

    def _wipe_wal(self) -> None:
        """Copy the WAL into the database and truncate it: the frames that still held a
        secret's bytes (written when it was queued) go; secure_delete zeroed the row itself."""
        conn = self._write_conn
        if conn is None:
            return
        try:
            with self._checkpoint_lock:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            logger.warning("could not truncate the WAL after wiping a secret: %s", exc)
            return
        if busy:  # a reader held an old snapshot; the frames are overwritten later instead
            logger.warning("WAL not truncated after wiping a secret (readers busy)")

    async def outbox_prune(self, before: datetime) -> int:
        """Delete delivered messages finished before ``before``; never a pending or failed one."""

        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM outbox WHERE status = 'done' AND finished_at < ?", (_ts(before),)
            ).rowcount

        return await self._write(lambda: self._transaction(tx))

    async def outbox_stats(self, channel: str) -> OutboxStats:
        """Depth and oldest pending message of ``channel``."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox"
                " WHERE channel = ? AND status = 'pending'",
                (channel,),
            ).fetchone()
        )
        oldest = datetime.fromisoformat(row["oldest"]) if row["oldest"] else None
        return OutboxStats(depth=int(row["n"]), oldest=oldest)

    async def get_cursor(self, name: str) -> int:
        """A consumer's saved position (0 when new)."""
        row = await self._read(
            lambda c: c.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        )
        return 0 if row is None else int(row["value"])

    async def set_cursor(self, name: str, value: int) -> None:
        """Save a consumer's position."""
        await self._write(
            lambda: self._transaction(
                lambda c: c.execute(
                    "INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT (name)"
                    " DO UPDATE SET value = excluded.value",
                    (name, value),
                )
            )
        )

    # -- trading engine --------------------------------------------------------------------

    async def engine_state(self) -> dict[str, Any]:
        """Every persisted engine setting by key."""
        rows = await self._read(lambda c: c.execute("SELECT * FROM engine_state").fetchall())
        return {r["key"]: json.loads(r["value"]) for r in rows}

    async def put_engine_state(self, key: str, value: Any, audit: AuditRecord) -> AuditEntry:
        """Set one engine setting and audit it in one transaction."""

        def tx(conn: sqlite3.Connection) -> AuditEntry:
            conn.execute(
                "INSERT INTO engine_state (key, value, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, _dump(value), _ts(utcnow())),
            )
            return self._append_audit_tx(conn, audit)

        return await self._write(lambda: self._transaction(tx))

    async def save_order(self, order: OrderRecord, holdings: Sequence[Holding] = ()) -> None:
        """Insert or update an order by client order id, with the positions its fill changed."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO orders (client_order_id, core, venue, status, created_at, doc)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (client_order_id) DO UPDATE SET"
                " venue = excluded.venue, status = excluded.status, doc = excluded.doc",
                (
                    order.client_order_id,
                    order.core,
                    order.venue,
                    order.status.value,
                    _ts(order.created_at),
                    order.model_dump_json(),
                ),
            )
            _put_holdings(conn, holdings)

        await self._write(lambda: self._transaction(tx))

    async def holdings(self) -> list[Holding]:
        """Every booked position by core and symbol."""
        rows = await self._read(
            lambda c: c.execute("SELECT doc FROM holdings ORDER BY core, symbol").fetchall()
        )
        return [Holding.model_validate_json(r["doc"]) for r in rows]

    async def save_holdings(self, holdings: Sequence[Holding]) -> None:
        """Insert or replace positions by core and symbol."""
        if holdings:
            await self._write(lambda: self._transaction(lambda c: _put_holdings(c, holdings)))

    async def venue_account(self, venue: str) -> VenueAccount | None:
        """A paper venue's saved account."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT doc FROM venue_accounts WHERE venue = ?", (venue,)
            ).fetchone()
        )
        return None if row is None else VenueAccount.model_validate_json(row["doc"])

    async def save_venue_account(self, account: VenueAccount) -> None:
        """Save a paper venue's account."""
        await self._write(
            lambda: self._transaction(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO venue_accounts (venue, doc) VALUES (?, ?)",
                    (account.venue, account.model_dump_json()),
                )
            )
        )

    async def list_orders(
        self,
        *,
        limit: int = 100,
        statuses: Sequence[OrderStatus] | None = None,
        core: str | None = None,
    ) -> list[OrderRecord]:
        """Orders newest first, optionally by status and core."""
        sql = "SELECT doc FROM orders WHERE 1 = 1"
        args: list[Any] = []
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(s.value for s in statuses)
        if core is not None:
            sql += " AND core = ?"
            args.append(core)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [OrderRecord.model_validate_json(r["doc"]) for r in rows]

    async def add_pnl_points(self, points: Sequence[PnlPoint]) -> None:
        """Append PnL points; the same core and time replaces the earlier point."""
        rows = [(p.core, _ts(p.ts), p.realized, p.unrealized) for p in points]
        await self._write(
            lambda: self._transaction(
                lambda c: c.executemany(
                    "INSERT OR REPLACE INTO pnl_points (core, ts, realized, unrealized)"
                    " VALUES (?,?,?,?)",
                    rows,
                )
            )
        )

    async def pnl_points(self, *, since: datetime, core: str | None = None) -> list[PnlPoint]:
        """PnL points at or after ``since``, oldest first."""
        sql = "SELECT * FROM pnl_points WHERE ts >= ?"
        args: list[Any] = [_ts(since)]
        if core is not None:
            sql += " AND core = ?"
            args.append(core)
        sql += " ORDER BY ts, core"
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [_pnl_point(r) for r in rows]

    async def pnl_baseline(self, at: datetime, cores: Sequence[str]) -> list[PnlPoint]:
        """Each core's latest PnL point at or before ``at`` (one indexed lookup per core)."""
        if not cores:
            return []

        def read(c: sqlite3.Connection) -> list[sqlite3.Row]:
            return [
                row
                for core in cores
                if (
                    row := c.execute(
                        "SELECT * FROM pnl_points WHERE core = ? AND ts <= ?"
                        " ORDER BY ts DESC LIMIT 1",
                        (core, _ts(at)),
                    ).fetchone()
                )
                is not None
            ]

        rows = await self._read(read)
        return [_pnl_point(r) for r in rows]

    async def prune_pnl_points(self, before: datetime) -> int:
        """Delete PnL points older than ``before``."""
        cursor = await self._write(
            lambda: self._transaction(
                lambda c: c.execute("DELETE FROM pnl_points WHERE ts < ?", (_ts(before),))
            )
        )
        return int(cursor.rowcount)

    # -- backups ---------------------------------------------------------------------------

    async def snapshot(self, dest_dir: Path) -> StoreSnapshot:
        """Copy the database with SQLite's online backup API in one read transaction (writers
        carry on meanwhile) into ``dest_dir/state.db``, a self-contained file of mode 0600."""
        if self._writer is None:
            raise StoreUnavailable("the state store is closed")
        return await asyncio.to_thread(self._snapshot_to, dest_dir / SNAPSHOT_FILE)

    def _snapshot_to(self, dest: Path) -> StoreSnapshot:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            source = _connect(self.path, self._on_statement)
            try:
                target = sqlite3.connect(dest, isolation_level=None)
                try:
                    source.backup(target)  # all pages in one step: one consistent snapshot
                    target.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
                    version = int(target.execute("PRAGMA user_version").fetchone()[0])
                    counts = _count_rows(target)
                    portable = _portable_state(target)
                finally:
                    target.close()
            finally:
                source.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"snapshot of {self.path} failed: {exc}") from exc
        with open(dest, "rb") as written:
            os.fsync(written.fileno())
        write_portable(dest.with_name(PORTABLE_FILE), portable)
        return StoreSnapshot(
            kind="sqlite",
            schema_version=version,
            files=[SNAPSHOT_FILE, PORTABLE_FILE],
            counts=counts,
        )

    async def export_portable(self) -> PortableState:
        """All durable state as a store-neutral copy, from one read transaction."""
        return await self._read(_portable_state)

    async def load_portable(self, state: PortableState) -> dict[str, int]:
        """Replace all state with a portable copy (from any kind of store), in one step.

        The rows go into a fresh database of this release's schema beside the live one, which
        then replaces the live state the way ``restore`` does (one transaction, the restore mark
        kept, the counts as loaded returned).
        """
        problems = state.problems()
        if problems:
            raise StoreError("portable copy cannot be loaded: " + "; ".join(problems))
        workdir = Path(
            await asyncio.to_thread(tempfile.mkdtemp, prefix=".portable-", dir=self.path.parent)
        )
        try:
            await asyncio.to_thread(self._build_from_portable, workdir / SNAPSHOT_FILE, state)
            return await self.restore(workdir)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _build_from_portable(self, dest: Path, state: PortableState) -> None:
        conn = sqlite3.connect(dest, isolation_level=None)
        try:
            self._migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            for table, columns in TABLES.items():
                for row in state.rows(table):
                    names = [c for c in columns if c in row]  # checked against the schema
                    conn.execute(
                        f'INSERT INTO "{table}" ({", ".join(names)})'  # noqa: S608
                        f" VALUES ({', '.join('?' * len(names))})",
                        [row[c] for c in names],
                    )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"portable copy cannot be loaded: {exc}") from exc
        finally:
            conn.close()

    async def restore(self, source_dir: Path) -> dict[str, int]:
        """Copy the snapshot over the live database on the writer thread, in one transaction.

        No writer can interleave (they queue on the same thread), a failure part way rolls the
        whole copy back, and reader connections simply see the new state on their next query, so
        the store never closes and the process keeps serving.
        """
        source = source_dir / SNAPSHOT_FILE
        if not source.is_file():
            raise StoreError(f"snapshot file {SNAPSHOT_FILE} is missing from {source_dir}")
        return await self._write(lambda: self._restore_from(source))

    def _restore_from(self, source: Path) -> dict[str, int]:
        conn = self._write_conn
        if conn is None:
            raise StoreUnavailable("the state store is closed")
        try:
            snapshot = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
            try:
                version = int(snapshot.execute("PRAGMA user_version").fetchone()[0])
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"snapshot is at schema {version}, newer than this release "
                        f"({len(MIGRATIONS)}); restore it with a newer control plane"
                    )
                guard = conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (_RESTORE_GUARD,)
                ).fetchone()
                snapshot.backup(conn)
            finally:
                snapshot.close()
            self._migrate(conn)  # an older snapshot is brought up to this release's schema
            counts = _count_rows(conn)  # still on the writer thread: no other write landed yet
            # The restore-under-way mark is the live one, never the snapshot's.
            conn.execute("DELETE FROM meta WHERE key = ?", (_RESTORE_GUARD,))
            if guard is not None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", (_RESTORE_GUARD, guard[0])
                )
            return counts
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"restore from {source.name} failed: {exc}") from exc

    async def counts(self) -> dict[str, int]:
        """Rows per table."""
        return await self._read(_count_rows)

    async def integrity_problems(self) -> list[str]:
        """What ``PRAGMA integrity_check`` reports (empty when the database is sound)."""
        rows = await self._read(lambda c: c.execute("PRAGMA integrity_check").fetchall())
        found = [str(r[0]) for r in rows]
        return [] if found == ["ok"] else found

    def trial_store(self, workdir: Path) -> Store:
        """An empty SQLite store under ``workdir`` (restores are tried there first)."""
        return SqliteStore(workdir / "trial.db", readers=1)

    async def put_restore_guard(self, guard: RestoreGuard | None) -> None:
        """A row of ``meta`` that ``restore`` carries over from the live database."""
        args: tuple[str, ...]
        if guard is None:
            sql, args = "DELETE FROM meta WHERE key = ?", (_RESTORE_GUARD,)
        else:
            sql = (
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value"
            )
            args = (_RESTORE_GUARD, guard.model_dump_json())

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(sql, args)

        await self._write(lambda: self._transaction(tx))

    async def restore_guard(self, now: datetime) -> RestoreGuard | None:
        """The mark, unless it expired."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT value FROM meta WHERE key = ?", (_RESTORE_GUARD,)
            ).fetchone()
        )
        guard = None if row is None else RestoreGuard.model_validate_json(row["value"])
        return guard if guard is not None and guard.expires_at > now else None

    # -- heartbeats ------------------------------------------------------------------------
    # Rows of ``meta`` keyed ``heartbeat:{instance}`` (no migration needed); expired ones are
    # deleted by the next beat.

    async def put_heartbeat(self, beat: Heartbeat) -> None:
        """Upsert the beat and drop the expired ones, in one write transaction."""
        key = f"{_HEARTBEAT}{beat.instance}"
        now = utcnow()

        def tx(conn: sqlite3.Connection) -> None:
            for row in conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE ?", (f"{_HEARTBEAT}%",)
            ).fetchall():
                if Heartbeat.model_validate_json(row["value"]).expires_at <= now:
                    conn.execute("DELETE FROM meta WHERE key = ?", (row["key"],))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value",
                (key, beat.model_dump_json()),
            )

        await self._write(lambda: self._transaction(tx))

    async def heartbeats(self, now: datetime) -> list[Heartbeat]:
        """The ``heartbeat:`` rows not yet expired at ``now``."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT value FROM meta WHERE key LIKE ?", (f"{_HEARTBEAT}%",)
            ).fetchall()
        )
        beats = [Heartbeat.model_validate_json(r["value"]) for r in rows]
        return sorted((b for b in beats if b.expires_at > now), key=lambda b: (b.role, b.instance))

    async def drop_heartbeat(self, instance: str) -> None:
        """Delete the process's row."""
        key = f"{_HEARTBEAT}{instance}"

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))

        await self._write(lambda: self._transaction(tx))

    # -- security state --------------------------------------------------------------------

    async def hit_rate_limit(
        self, key: str, *, limit: int, window: timedelta, now: datetime
    ) -> RateLimitHit:
        """A sliding log of hit times per key, checked and appended in one write transaction."""
        at, span = now.timestamp(), window.total_seconds()

        def tx(conn: sqlite3.Connection) -> RateLimitHit:
            # Every key's expired hits go, so callers that never come back leave nothing behind.
            conn.execute("DELETE FROM rate_limit_hits WHERE expires <= ?", (at,))
            row = conn.execute(
                "SELECT COUNT(*), MIN(at) FROM rate_limit_hits WHERE key = ?", (key,)
            ).fetchone()
            if int(row[0]) >= limit:
                return RateLimitHit(allowed=False, retry_after=max(0.0, row[1] + span - at))
            conn.execute(
                "INSERT INTO rate_limit_hits (key, at, expires) VALUES (?, ?, ?)",
                (key, at, at + span),
            )
            return RateLimitHit(allowed=True)

        return await self._write(lambda: self._transaction(tx))

    async def put_confirmation(self, confirmation: Confirmation) -> None:
        """Keep a pending confirmation (and drop the ones that expired)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM confirmations WHERE expires_at <= ?", (_ts(utcnow()),))
            conn.execute(
                "INSERT INTO confirmations (token, owner, expires_at, doc) VALUES (?, ?, ?, ?)",
                (
                    confirmation.token,
                    confirmation.owner,
                    _ts(confirmation.expires_at),
                    confirmation.model_dump_json(),
                ),
            )

        await self._write(lambda: self._transaction(tx))

    async def take_confirmation(self, token: str, owner: str, now: datetime) -> ConfirmationTake:
        """Read, check and delete in one write transaction (writes are serialised)."""

        def tx(conn: sqlite3.Connection) -> ConfirmationTake:
            row = conn.execute("SELECT doc FROM confirmations WHERE token = ?", (token,)).fetchone()
            if row is None:
                return ConfirmationTake(outcome="missing")
            found = Confirmation.model_validate_json(row["doc"])
            if found.owner != owner:
                return ConfirmationTake(outcome="not_owner")
            conn.execute("DELETE FROM confirmations WHERE token = ?", (token,))
            if found.expires_at <= now:
                return ConfirmationTake(outcome="expired")
            return ConfirmationTake(outcome="taken", confirmation=found)

        return await self._write(lambda: self._transaction(tx))


def _put_holdings(conn: sqlite3.Connection, holdings: Sequence[Holding]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO holdings (core, symbol, doc) VALUES (?,?,?)",
        [(h.core, h.symbol, h.model_dump_json()) for h in holdings],
    )


def _portable_state(conn: sqlite3.Connection) -> PortableState:
    """The durable tables' rows as a portable copy (the restore mark left out)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, columns in TABLES.items():
        # Table and column names are the module's own constants: nothing user-supplied.
        rows = conn.execute(f'SELECT {", ".join(columns)} FROM "{table}"')  # noqa: S608
        tables[table] = [dict(zip(columns, row, strict=True)) for row in rows]
    tables["meta"] = [r for r in tables["meta"] if r["key"] != _RESTORE_GUARD]
    return PortableState(source="sqlite", tables=tables)


def _count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
        if r[0] not in EPHEMERAL_TABLES + DERIVED_TABLES
    ]
    # Table names come from sqlite_master itself, quoted: nothing user-supplied reaches the SQL.
    return {
        t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0])  # noqa: S608
        for t in tables
    }
