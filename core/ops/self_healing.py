"""Self-healing (runbook §5 ``SELF_HEALING_ENABLED``): the monitor loop and its safe remedies.

While the flag is on, every ``SELF_HEALING_INTERVAL_SECONDS`` the loop looks at the components
and takes only safe, reversible remedies, each through the ordinary, audited operation and acting
as the ``self_healing`` actor:

- a primary venue that keeps failing while trading still runs on it is failed over to the
  standby (``/failback`` undoes it); once failed over there is nothing more to do;
- a core that should be running but whose loop has stopped is restarted, when the engine
  exposes that (``RestartsCores``); the engine's own supervisor restarts crashed ticks;
- an outbox whose messages sit far past their due time has its worker woken;
- an open LLM circuit is only reported: the assistant already falls back by itself.

Each remedy runs at most once per ``SELF_HEALING_COOLDOWN_SECONDS`` for the same target, so it
cannot flap; a remedy that fails raises an engine incident, cleared by its next success.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from core.assistant.service import AssistantService
from core.config.settings import Settings
from core.errors import LuniaError
from core.flags import FlagService
from core.incidents.service import IncidentService
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.models.alerts import Severity
from core.platform.circuit import CircuitState
from core.platform.metrics import Metrics
from core.platform.outbox import OutboxWorker
from core.security.audit import AuditLog
from core.store import Store
from core.trading.engine import CoreInfo, TradingEngine
from core.trading.venues.service import VenueService

logger = logging.getLogger(__name__)

FLAG = "SELF_HEALING_ENABLED"
ACTOR = Actor(kind=ActorKind.SELF_HEALING, id="monitor", name="self-healing", role=Role.OPERATOR)

VENUE_FAILOVER = "venue-failover"
CORE_RESTART = "core-restart"
OUTBOX_WAKE = "outbox-wake"
LLM_CIRCUIT = "llm-circuit"


class Remedy(BaseModel):
    """One thing a self-healing run did (or only reported)."""

    action: str
    target: str
    outcome: Literal["done", "failed", "reported"]
    detail: str


@runtime_checkable
class RestartsCores(Protocol):
    """An engine that can tell which core loops stopped and start them again."""

    def stopped_cores(self) -> list[str]:
        """Cores that should be running but whose loop is not."""
        ...

    async def restart_core(self, name: str, actor: Actor) -> CoreInfo:
        """Start the core's loop again (audited by the engine)."""
        ...


class SelfHealingService:
    """The health monitor loop: looks at components, applies rate-limited remedies."""

    def __init__(
        self,
        settings: Settings,
        flags: FlagService,
        store: Store,
        audit: AuditLog,
        incidents: IncidentService,
        metrics: Metrics,
        *,
        venues: VenueService,
        trading: TradingEngine,
        assistant: AssistantService,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._flags = flags
        self._store = store
        self._audit = audit
        self._incidents = incidents
        self._metrics = metrics
        self._venues = venues
        self._trading = trading
        self._assistant = assistant
        self._clock = clock
        self._outboxes: list[OutboxWorker] = []
        self._last: dict[tuple[str, str], float] = {}
        self._failing: set[tuple[str, str]] = set()

    def watch_outbox(self, worker: OutboxWorker) -> None:
        """Look after ``worker``'s queue (call once it is started)."""
        self._outboxes.append(worker)

    def forget_outbox(self, worker: OutboxWorker) -> None:
        """Stop looking after ``worker`` (call before it is closed)."""
        if worker in self._outboxes:
            self._outboxes.remove(worker)

    async def run_once(self) -> list[Remedy]:
        """One monitor pass; returns what it did. Does nothing while the flag is off."""
        if not self._flags.enabled(FLAG):
            logger.debug("self-healing: %s is off, nothing done", FLAG)
            return []
        remedies: list[Remedy] = []
        remedies += await self._heal_venue()
        remedies += await self._heal_cores()
        remedies += await self._heal_outboxes()
        remedies += self._report_llm()
        return remedies

    # -- remedies ---------------------------------------------------------------------------

    async def _heal_venue(self) -> list[Remedy]:
        status = self._venues.status()
        if status.failed_over or status.primary == status.standby:
            return []  # already healed (by the venue service, an operator or an earlier run)
        primary = next(v for v in status.items if v.name == status.primary)
        keeps_failing = (
            primary.banned
            or primary.maintenance
            or primary.consecutive_failures >= self._settings.failover_after_failures
        )
        if not keeps_failing or self._cooling(VENUE_FAILOVER, primary.name):
            return []
        reason = (
            f"self-healing: {primary.name} failed {primary.consecutive_failures} times in a row "
            f"({primary.last_error})"
        )
        try:
            await self._venues.failover(ACTOR, to=status.standby, confirm=True, reason=reason)
        except LuniaError as exc:
            return [await self._failed(VENUE_FAILOVER, primary.name, str(exc))]
        return [
            await self._done(
                VENUE_FAILOVER, primary.name, f"failed over to {status.standby}; {reason}"
            )
        ]

    async def _heal_cores(self) -> list[Remedy]:
        if not isinstance(self._trading, RestartsCores):
            return []  # the engine's supervisor restarts crashed ticks itself
        remedies = []
        for name in self._trading.stopped_cores():
            if self._cooling(CORE_RESTART, name):
                continue
            try:
                await self._trading.restart_core(name, ACTOR)
            except LuniaError as exc:
                remedies.append(await self._failed(CORE_RESTART, name, str(exc)))
            else:
                remedies.append(await self._done(CORE_RESTART, name, "core loop restarted"))
        return remedies

    async def _heal_outboxes(self) -> list[Remedy]:
        remedies = []
        stuck_for = self._settings.self_healing_outbox_stuck_seconds
        for worker in list(self._outboxes):
            overdue = await self._store.outbox_due(
                worker.channel, utcnow() - timedelta(seconds=stuck_for), 1
            )
            if not overdue or self._cooling(OUTBOX_WAKE, worker.channel):
                continue
            item = overdue[0]
            late = (utcnow() - item.next_at).total_seconds()
            worker.wake()
            detail = f"message #{item.id} was due {late:.0f}s ago; worker woken"
            await self._audit.record(
                AuditRecord(
                    actor=ACTOR,
                    action="self_healing.outbox-wake",
                    target=worker.channel,
                    detail=detail,
                )
            )
            remedies.append(await self._done(OUTBOX_WAKE, worker.channel, detail))
        return remedies

    def _report_llm(self) -> list[Remedy]:
        status = self._assistant.status()
        if not status.configured or status.circuit is CircuitState.CLOSED:
            return []
        return [
            Remedy(
                action=LLM_CIRCUIT,
                target="assistant",
                outcome="reported",
                detail=(
                    f"LLM circuit {status.circuit.value} ({status.last_error}); the rule-based "
                    f"assistant answers, next probe in {status.open_for_seconds:.0f}s"
                ),
            )
        ]

    # -- bookkeeping ------------------------------------------------------------------------

    def _cooling(self, action: str, target: str) -> bool:
        """True while ``action`` on ``target`` ran less than the cooldown ago; else claim it."""
        now = self._clock()
        last = self._last.get((action, target))
        if last is not None and now - last < self._settings.self_healing_cooldown_seconds:
            logger.info("self-healing: %s %s skipped (cooling down)", action, target)
            return True
        self._last[(action, target)] = now
        return False

    async def _done(self, action: str, target: str, detail: str) -> Remedy:
        self._metrics.self_healing_actions.labels(action).inc()
        logger.warning("self-healing: %s %s: %s", action, target, detail)
        if (action, target) in self._failing:
            self._failing.discard((action, target))
            await self._announce_clear(action, target)
        return Remedy(action=action, target=target, outcome="done", detail=detail)

    async def _failed(self, action: str, target: str, error: str) -> Remedy:
        logger.error("self-healing: %s %s failed: %s", action, target, error)
        self._failing.add((action, target))
        try:
            await self._incidents.raise_engine(
                f"self-healing:{action}:{target}",
                f"Self-healing could not {action} {target}",
                Severity.WARNING,
                f"{error}; retried after the cooldown "
                f"({self._settings.self_healing_cooldown_seconds:g}s)",
                labels={"action": action, "target": target},
            )
        except LuniaError as exc:
            logger.error("could not raise the self-healing incident: %s", exc)
        return Remedy(action=action, target=target, outcome="failed", detail=error)

    async def _announce_clear(self, action: str, target: str) -> None:
        try:
            await self._incidents.clear_engine(
                f"self-healing:{action}:{target}",
                f"Self-healing could not {action} {target}",
                "the remedy succeeded",
            )
        except LuniaError as exc:
            logger.error("could not resolve the self-healing incident: %s", exc)
