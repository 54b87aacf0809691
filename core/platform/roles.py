"""Process roles and leader duties: what one process runs when the control plane is split.

``lunia run`` is every role in one process (``ProcessRole.ALL``). With Redis the work can be
split over processes that share the store and the bus:

- ``api``: the HTTP API (any number of replicas; Telegram webhook updates are handled here too);
- ``bot``: the Telegram poller, the notifier and the outbox sender (one active, standbys wait);
- ``worker``: the trading loop, the scheduler and the PagerDuty/email outboxes (one active).

Work only one replica may do at a time is a *duty*. Duties start when the process wins its
Redis lease (``core.platform.lease``) and stop the moment it loses it; without Redis (one process,
the embedded default) they simply start with the process.

A process that serves (any role but ``tool``) leaves a *served marker* in its state dir, naming
its role and store: the ``lunia`` CLI acts on a local state only where a control plane has served
from it, so a host that never ran one cannot be mistaken for the deployment (docs/DEPLOY.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from core.platform.files import write_atomically

logger = logging.getLogger(__name__)

Start = Callable[[], Awaitable[None]]
Stop = Callable[[bool], Awaitable[None]]  # argument: drain (a clean shutdown) or not (lease lost)


class ProcessRole(StrEnum):
    """What a process of the control plane does."""

    ALL = "all"
    API = "api"
    BOT = "bot"
    WORKER = "worker"
    TOOL = "tool"  # a CLI command: reads and changes state, never takes up duties

    @property
    def needs_redis(self) -> bool:
        """Split roles share state through Redis; ``run`` and CLI tools work on either store."""
        return self in (ProcessRole.API, ProcessRole.BOT, ProcessRole.WORKER)

    @property
    def runs_engine(self) -> bool:
        """Trading loop, scheduler and engine outboxes."""
        return self in (ProcessRole.ALL, ProcessRole.WORKER)

    @property
    def runs_bot(self) -> bool:
        """Telegram poller, notifier and sender."""
        return self in (ProcessRole.ALL, ProcessRole.BOT)

    @property
    def serves_api(self) -> bool:
        """The full HTTP API (the other roles serve only probes and metrics)."""
        return self in (ProcessRole.ALL, ProcessRole.API)

    @property
    def lease_name(self) -> str | None:
        """The Redis lease that decides which replica of this role is active."""
        return {ProcessRole.BOT: "bot"}.get(self, "worker" if self.runs_engine else None)


@dataclass(frozen=True)
class _Duty:
    name: str
    start: Start
    stop: Stop


class Duties:
    """Named pieces of leader-only work, started and stopped together, in order."""

    def __init__(self) -> None:
        self._duties: list[_Duty] = []
        self._running: list[_Duty] = []
        self._lock = asyncio.Lock()

    def add(self, name: str, start: Start, stop: Stop) -> None:
        """Register a duty (before ``start``)."""
        self._duties.append(_Duty(name, start, stop))

    @property
    def active(self) -> bool:
        """True while the duties run in this process."""
        return bool(self._running)

    @property
    def names(self) -> list[str]:
        """The registered duties, in start order."""
        return [d.name for d in self._duties]

    async def start(self) -> None:
        """Start every duty in order; one that fails is logged and the rest still start."""
        async with self._lock:
            if self._running:
                return
            for duty in self._duties:
                try:
                    await duty.start()
                except Exception:
                    logger.exception("duty %s failed to start", duty.name)
                    continue
                self._running.append(duty)
            logger.info("leader duties started: %s", ", ".join(d.name for d in self._running))

    async def stop(self, *, drain: bool) -> None:
        """Stop the running duties in reverse order (``drain``: finish queued work first)."""
        async with self._lock:
            running, self._running = self._running, []
            for duty in reversed(running):
                try:
                    await duty.stop(drain)
                except Exception:
                    logger.exception("duty %s failed to stop cleanly", duty.name)
            if running:
                logger.info("leader duties stopped (%s)", "drained" if drain else "at once")


SERVED_MARKER = "served-by.json"


@dataclass(frozen=True)
class Served:
    """What the served marker says: the last serving role and the store it served from."""

    role: str
    store: str  # "sqlite" or "redis"
    at: str


def store_kind(enable_redis: bool) -> str:
    """The store a process with these settings works on, in the marker's words."""
    return "redis" if enable_redis else "sqlite"


def mark_served(state_dir: Path, role: ProcessRole, store: str) -> None:
    """Record that a control plane serves from ``state_dir`` (a CLI tool does not count)."""
    if role is ProcessRole.TOOL:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    body = {"role": role.value, "store": store, "at": at}
    write_atomically(state_dir / SERVED_MARKER, json.dumps(body).encode())


def read_served(state_dir: Path) -> Served | None:
    """The served marker of ``state_dir``, or None if no control plane has served from it."""
    try:
        body = json.loads((state_dir / SERVED_MARKER).read_text(encoding="utf-8"))
        return Served(role=str(body["role"]), store=str(body["store"]), at=str(body["at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
