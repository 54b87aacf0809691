"""The store-neutral copy of all durable state, so a backup of one kind of store restores into
the other (runbook §2.2: Redis lost for good, go to the embedded SQLite store, and back).

Every snapshot writes ``portable.json`` beside its own file, from the same consistent read. It
holds the durable state as rows named and shaped like the SQLite store's tables (times as fixed-
width UTC ISO text, values as compact JSON: the encoding both stores already use), so the SQLite
store loads it as it is and the Redis store rebuilds its keys and indexes from it. Short-lived
security state (rate-limit hits, pending confirmations) and the restore-under-way mark are left
out, as in any restore.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

PORTABLE_FILE = "portable.json"
PORTABLE_FORMAT = "lunia-portable-state/1"

# The tables a portable copy carries, with their columns (the SQLite store's current schema).
TABLES: dict[str, tuple[str, ...]] = {
    "alerts": ("id", "dedup", "incident_id", "received_at", "doc"),
    "audit": (
        "seq",
        "ts",
        "actor",
        "action",
        "target",
        "before",
        "after",
        "outcome",
        "detail",
        "prev_hash",
        "hash",
    ),
    "cursors": ("name", "value"),
    "engine_state": ("key", "value", "updated_at"),
    "flag_overrides": ("name", "value", "set_by", "set_at"),
    "flag_versions": ("name", "version", "changed_by", "changed_at"),
    "incident_events": ("seq", "incident_id", "ts", "kind", "doc"),
    "incidents": ("id", "key", "state", "severity", "deadline", "resolved_at", "updated_at", "doc"),
    "meta": ("key", "value"),
    "orders": ("id", "client_order_id", "core", "venue", "status", "created_at", "doc"),
    "outbox": (
        "id",
        "channel",
        "key",
        "payload",
        "created_at",
        "next_at",
        "attempts",
        "status",
        "last_error",
        "sensitive",
        "finished_at",
    ),
    "pnl_points": ("core", "ts", "realized", "unrealized"),
    # Positions and paper venue accounts (issue 16): moved with the rest, or a move between
    # stores would rebuild an empty portfolio.
    "holdings": ("core", "symbol", "doc"),
    "venue_accounts": ("venue", "doc"),
}
# Rows of ``meta`` that are state: the audit head and adapters' values (``kv:`` + their key).
AUDIT_HEAD = "audit_head"
KV_PREFIX = "kv:"

Row = dict[str, Any]


class PortableState(BaseModel):
    """All durable state of one store, in rows every kind of store can load."""

    format: Literal["lunia-portable-state/1"] = "lunia-portable-state/1"
    source: str  # the kind of store it was read from
    tables: dict[str, list[Row]]

    def counts(self) -> dict[str, int]:
        """Rows per table, named as both stores name them in ``Store.counts``."""
        return {table: len(self.tables.get(table, [])) for table in TABLES}

    def rows(self, table: str) -> list[Row]:
        """The rows of ``table`` (none when the copy has none)."""
        return self.tables.get(table, [])

    def problems(self) -> list[str]:
        """What makes this copy unloadable: unknown tables or columns (empty when sound)."""
        found = []
        for table, rows in self.tables.items():
            columns = TABLES.get(table)
            if columns is None:
                found.append(f"unknown table {table!r}")
                continue
            for row in rows:
                extra = set(row) - set(columns)
                if extra:
                    found.append(f"{table}: unknown columns {sorted(extra)}")
                    break
        return found


def write_portable(path: Path, state: PortableState) -> None:
    """Write ``state`` to ``path`` (mode 0600, created, never replaced)."""
    data = state.model_dump_json().encode()
    with open(path, "xb", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def read_portable(path: Path) -> PortableState:
    """Read a portable copy written by ``write_portable``."""
    return PortableState.model_validate(json.loads(path.read_bytes()))
