"""The domain models, lowest of the layers: every other package may import them.

This module holds what every domain shares: who acts (``Actor``, ``Role``), what the audit log
records, outbox messages and durations. Each domain's own models are a module beside it
(``alerts``, ``incidents``, ``venues``, ``assistant``, ``ops``, ``audit``).
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidInput


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
    # The payload holds a secret (a new token's value): once the message is finished (delivered
    # or dropped) the store wipes it from disk, not only from the row (issue 16 point 4).
    sensitive: bool = False


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``4h``, ``1d`` → timedelta, or ``InvalidInput`` saying the format."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInput(f"duration {text!r} not understood; use e.g. 30m, 1h, 4h, 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
