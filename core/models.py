"""Shared domain models: who acts (``Actor``, ``Role``) and what the audit log records."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Role(enum.StrEnum):
    """What a person or token may do; each role includes the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Order of privilege: viewer < operator < admin."""
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """True when this role is at least ``needed``."""
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class ActorKind(enum.StrEnum):
    """Which adapter or automation an action came through."""

    TELEGRAM = "telegram"
    API = "api"
    CLI = "cli"
    SCHEDULER = "scheduler"
    SELF_HEALING = "self_healing"
    SYSTEM = "system"


class Actor(BaseModel):
    """Who performs an operation; every mutating core method takes one."""

    model_config = ConfigDict(frozen=True)

    kind: ActorKind
    id: str
    name: str
    role: Role | None = None

    @classmethod
    def system(cls, component: str) -> Actor:
        """The engine itself acting (startup, automatic reactions)."""
        return cls(kind=ActorKind.SYSTEM, id=component, name=component, role=Role.ADMIN)

    def describe(self) -> str:
        """Short human form: ``telegram:12345 (alice)``."""
        return f"{self.kind.value}:{self.id} ({self.name})"


class AuditRecord(BaseModel):
    """What an adapter or service asks the audit log to record."""

    actor: Actor
    action: str
    target: str = ""
    before: Any = None
    after: Any = None
    outcome: str = "ok"
    detail: str = ""


class AuditEntry(AuditRecord):
    """One sealed entry of the hash-chained audit log."""

    seq: int
    ts: datetime
    prev_hash: str
    hash: str = Field(min_length=64, max_length=64)


class OutboxMessage(BaseModel):
    """A message to deliver to an outside service, written with the change that caused it."""

    channel: str
    key: str = ""
    payload: dict[str, Any]


class OutboxItem(OutboxMessage):
    """A queued outbox message as stored, with its delivery bookkeeping."""

    id: int
    created_at: datetime
    next_at: datetime
    attempts: int = 0
    last_error: str | None = None


class OutboxStats(BaseModel):
    """How much is waiting in one outbox channel."""

    depth: int
    oldest: datetime | None
