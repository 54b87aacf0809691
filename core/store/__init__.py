"""The ``Store`` protocol: where all durable control-plane state lives.

Two implementations are held to one contract suite (``tests/core/test_store_contract.py``):
``SqliteStore`` (embedded default) and, later, a Redis store shared by replicas. Every mutating
method that changes state on behalf of an actor takes the ``AuditRecord`` describing it and writes
both in one transaction, so no change is ever left unaudited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

from core.models import Actor, AuditEntry, AuditRecord


class FlagOverride(BaseModel):
    """A runtime flag value set from chat, API or CLI; it wins over env and default."""

    name: str
    value: Any
    set_by: Actor
    set_at: datetime


class Store(Protocol):
    """Durable state of the control plane."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def schema_version(self) -> int:
        """The schema version the store is at."""

    async def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Seal ``record`` onto the end of the hash chain and return the entry."""

    async def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Entries with ``seq > after_seq`` in chain order, optionally within a time range."""

    async def audit_tail(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""

    async def audit_head(self) -> tuple[int, str] | None:
        """The (seq, hash) recorded as the chain's head, or None when the log is empty."""

    async def flag_overrides(self) -> dict[str, FlagOverride]:
        """Every runtime flag override by name."""

    async def put_flag_override(self, override: FlagOverride, audit: AuditRecord) -> AuditEntry:
        """Set an override and audit it atomically."""

    async def delete_flag_override(self, name: str, audit: AuditRecord) -> AuditEntry:
        """Clear an override (no-op if absent) and audit it atomically."""
