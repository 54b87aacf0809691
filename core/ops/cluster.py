"""The whole deployment as any replica sees it: who is alive, who leads, what the worker saw.

A split deployment (``lunia api|bot|worker`` over Redis) runs its work in several processes, yet
every replica must answer ``/healthz``, ``/status``, the checklist, Signal Health and ``/venues``
for all of it. So every process beats into the shared store every ``HEARTBEAT_SECONDS``
(``core.models.cluster.Heartbeat``: role, instance, version, start, last beat, whether it leads
its role), and the leading worker publishes in its beat what only it observes: the venues' probe
health and the cores' signal freshness. A process that misses ``HEARTBEAT_MISSED`` beats is
absent for everyone (its record expires); one that shuts down cleanly drops its record at once.

The same loop reads every beat back into a cached view, so probes never wait on the store: the
``telegram`` (bot) and ``worker`` health components, status and checklist lines and the Signal
Health page read memory. It also adopts the published venue health into this process's
``VenueService`` (so ``/venues``, the assistant and ``venue_healthy{venue}`` agree on every
replica) and exports ``cluster_processes{process_role}`` and ``cluster_leaders{process_role}``.

``lunia run`` on SQLite is one process holding every role: nothing is written, the view is the
process itself, and only the metrics are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from core.config.settings import Settings
from core.errors import StoreError
from core.models import utcnow
from core.models.cluster import Heartbeat
from core.models.ops import StatusLine
from core.platform.health import ComponentHealth, Status
from core.platform.metrics import Metrics
from core.platform.roles import ProcessRole
from core.platform.tasks import cancel_and_wait
from core.store import Store
from core.trading.engine import CoreInfo, TradingEngine
from core.trading.venues.service import VenueService, VenuesStatus

logger = logging.getLogger(__name__)

HEARTBEAT_MISSED = 3  # beats a process may miss before every replica reports it absent

# Which roles do each kind of leader-only work (``lunia run`` is every role at once).
BOT_ROLES = (ProcessRole.BOT.value, ProcessRole.ALL.value)
WORKER_ROLES = (ProcessRole.WORKER.value, ProcessRole.ALL.value)
METRIC_ROLES = tuple(r.value for r in ProcessRole if r is not ProcessRole.TOOL)

Leads = Callable[[], bool]


class ProcessInfo(BaseModel):
    """One live process of the deployment."""

    role: str
    instance: str
    version: str
    started_at: datetime
    seen_at: datetime
    leads: bool
    this_process: bool


class Deployment(BaseModel):
    """Every live process, as this replica last read them."""

    generated_at: datetime | None  # None until the first read
    shared: bool  # read from the shared store (False: one process holding every role)
    heartbeat_seconds: float
    processes: list[ProcessInfo]

    def alive(self, roles: tuple[str, ...]) -> list[ProcessInfo]:
        """Live processes of ``roles``."""
        return [p for p in self.processes if p.role in roles]

    def leader(self, roles: tuple[str, ...]) -> ProcessInfo | None:
        """The live process of ``roles`` that leads, if any."""
        return next((p for p in self.alive(roles) if p.leads), None)


class ClusterService:
    """Beats for this process, and keeps the cached view of every process's beat."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        role: ProcessRole,
        instance: str,
        version: str,
        leads: Leads,
        venues: VenueService,
        trading: TradingEngine,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self.role = role
        self.instance = instance
        self._version = version
        self._leads = leads
        self._venues = venues
        self._trading = trading
        self.interval = settings.heartbeat_seconds
        self.shared = settings.enable_redis
        self._started_at = utcnow()
        self._beats: list[Heartbeat] = []
        self._read_at: datetime | None = None
        self._published_cores: list[CoreInfo] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the store refused the last beat (logged once per outage)
        self._published: dict[str, Callable[[], dict[str, Any]]] = {}
        self._unreadable: str | None = None  # the leader whose published views we cannot read

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def beats(self) -> bool:
        """Whether this process writes heartbeats (split deployments; CLI tools never do)."""
        return self.shared and self.role is not ProcessRole.TOOL

    async def start(self) -> None:
        """Beat and read once (so the first probe already knows the deployment), then loop."""
        self._started_at = utcnow()
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name="cluster-heartbeat")

    async def close(self) -> None:
        """Stop beating and drop this process's record, so replicas see it gone at once."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.beats:
            try:
                await self._store.drop_heartbeat(self.instance)
            except StoreError as exc:
                logger.warning("could not drop this process's heartbeat (it expires): %s", exc)

    async def _loop(self) -> None:
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()
            if task is not None and task.cancelling():
                # A cancellation swallowed inside a Redis call (Python 3.11): honour it here.
                raise asyncio.CancelledError

    async def tick(self) -> None:
        """One beat and one read of every beat; a store failure keeps the last view."""
        try:
            if self.beats:
                await self._store.put_heartbeat(self._beat())
            if self.shared:
                await self._read()
        except StoreError as exc:
            if not self._failing:
                logger.warning("heartbeat: %s (the last view is kept until beats expire)", exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("heartbeat: the store answers again")
            self._failing = False
        self._export()

    # -- writing -----------------------------------------------------------------------------

    def publish(self, name: str, view: Callable[[], dict[str, Any]]) -> None:
        """Also put ``view()`` under ``name`` in this process's beat while it leads (the bot
        publishes its own ``telegram`` health, so other replicas report it as it is)."""
        self._published[name] = view

    def _beat(self, *, views: bool = True) -> Heartbeat:
        now = utcnow()
        leads = self._leads()
        published: dict[str, Any] = {}
        if views and leads:
            if self.role.runs_engine:
                published.update(self._views())
            published.update({name: view() for name, view in self._published.items()})
        return Heartbeat(
            role=self.role.value,
            instance=self.instance,
            version=self._version,
            started_at=self._started_at,
            seen_at=now,
            expires_at=now + timedelta(seconds=self.interval * HEARTBEAT_MISSED),
            leads=leads,
            views=published,
        )

    def _views(self) -> dict[str, Any]:
        """What the leading worker observes and the others cannot: venue probes, core ticks."""
        return {
            "venues": self._venues.status().model_dump(mode="json"),
            "cores": [c.model_dump(mode="json") for c in self._trading.cores()],
        }

    # -- reading -----------------------------------------------------------------------------

    @property
    def _observes_itself(self) -> bool:
        """True while this process runs the trading loop and the probes (or nothing is shared)."""
        return not self.shared or (self.role.runs_engine and self._leads())

    async def _read(self) -> None:
        now = utcnow()
        self._beats = await self._store.heartbeats(now)
        self._read_at = now
        if self._observes_itself:
            self._published_cores = None
            return
        leader = next(
            (b for b in self._beats if b.role in WORKER_ROLES and b.leads and b.views), None
        )
        if leader is None:
            self._published_cores = None
            return
        try:
            venues = VenuesStatus.model_validate(leader.views["venues"])
            cores = [CoreInfo.model_validate(c) for c in leader.views["cores"]]
        except (KeyError, TypeError, ValidationError) as exc:  # a newer or older release
            if self._unreadable != leader.instance:  # once per leader, not every beat
                logger.warning("heartbeat of %s: unreadable views (%s)", leader.instance, exc)
            self._unreadable = leader.instance
            return
        self._unreadable = None
        self._venues.adopt_health(venues)
        self._published_cores = cores

    def deployment(self) -> Deployment:
        """Every live process as last read (this process alone without a shared store)."""
        now = utcnow()
        # Beats read before a store outage still expire here: no process is reported alive on
        # the strength of a read that can no longer be repeated.
        beats = (
            [b for b in self._beats if b.expires_at > now]
            if self.shared
            else [self._beat(views=False)]
        )
        return Deployment(
            generated_at=self._read_at if self.shared else now,
            shared=self.shared,
            heartbeat_seconds=self.interval,
            processes=[
                ProcessInfo(
                    role=b.role,
                    instance=b.instance,
                    version=b.version,
                    started_at=b.started_at,
                    seen_at=b.seen_at,
                    leads=b.leads,
                    this_process=b.instance == self.instance,
                )
                for b in beats
            ],
        )

    def cores(self) -> list[CoreInfo]:
        """The cores as the process running them reports them (here, or the leading worker)."""
        if self._observes_itself or self._published_cores is None:
            return self._trading.cores()
        return self._published_cores

    # -- health, status ------------------------------------------------------------------------

    def _expiry(self) -> str:
        return f"{self.interval * HEARTBEAT_MISSED:g} s"

    async def bot_health(self) -> ComponentHealth:
        """The Telegram bot of the deployment, from its heartbeat (for replicas not running it)."""
        if self._settings.telegram_bot_token is None:
            return ComponentHealth(
                status=Status.DISABLED, detail="no TELEGRAM_BOT_TOKEN: the bot is off"
            )
        health = self._role_health(
            BOT_ROLES,
            "bot",
            "polls and sends Telegram",
            "nothing polls or sends Telegram (start `lunia bot`)",
        )
        leader = self.deployment().leader(BOT_ROLES)
        if health.status is not Status.OK or leader is None or leader.this_process:
            return health
        # The leading bot's own word on itself (a release that publishes it): still starting,
        # or unable to reach Telegram, is not "polls and sends".
        own = next(
            (b.views.get("telegram") for b in self._beats if b.instance == leader.instance), None
        )
        if not isinstance(own, dict) or own.get("status") in (None, Status.OK.value):
            return health
        return ComponentHealth(
            status=Status.DOWN if own.get("status") == Status.DOWN.value else Status.DEGRADED,
            detail=f"{leader.instance} leads; its bot: {own.get('detail', '')}",
        )

    async def worker_health(self) -> ComponentHealth:
        """The worker of the deployment (trading loop, scheduler, outboxes), from heartbeats."""
        return self._role_health(
            WORKER_ROLES,
            "worker",
            "runs trading, the scheduler and the outboxes",
            "no trading loop and no scheduled jobs (backups, escalation, daily checklist): "
            "start `lunia worker`",
        )

    def _role_health(
        self, roles: tuple[str, ...], name: str, does: str, missing: str
    ) -> ComponentHealth:
        view = self.deployment()
        if view.generated_at is None:
            return ComponentHealth(status=Status.DEGRADED, detail="heartbeats not read yet")
        alive = view.alive(roles)
        leader = view.leader(roles)
        standby = len(alive) - (leader is not None)
        if leader is not None:
            where = "this process" if leader.this_process else leader.instance
            age = max(0.0, (utcnow() - leader.seen_at).total_seconds())
            detail = f"{where} {does} (last beat {age:.0f} s ago)"
            return ComponentHealth(
                status=Status.OK, detail=detail + (f"; {standby} standby" if standby else "")
            )
        if alive:
            return ComponentHealth(
                status=Status.DEGRADED,
                detail=f"{len(alive)} {name} process(es) alive but none leads (taking over?)",
            )
        return ComponentHealth(
            status=Status.DEGRADED,
            detail=f"no live {name} process: none beat within {self._expiry()}; {missing}",
        )

    async def status_lines(self) -> list[StatusLine]:
        """One ``/status`` line naming every role's live processes and leaders."""
        view = self.deployment()
        parts = []
        ok = True
        for role in (ProcessRole.API, ProcessRole.BOT, ProcessRole.WORKER, ProcessRole.ALL):
            alive = view.alive((role.value,))
            if not alive:
                continue
            leader = next((p.instance for p in alive if p.leads), None)
            lead = f" (leader {leader})" if leader and role is not ProcessRole.API else ""
            parts.append(f"{role.value}×{len(alive)}{lead}")
        if view.leader(WORKER_ROLES) is None:
            ok = False
            parts.append("no worker leads")
        if self._settings.telegram_bot_token is not None and view.leader(BOT_ROLES) is None:
            ok = False
            parts.append("no bot leads")
        return [StatusLine(label="processes", value=", ".join(parts) or "none seen", ok=ok)]

    # -- metrics -------------------------------------------------------------------------------

    def _export(self) -> None:
        view = self.deployment()
        # One process holding every role reports just that (``/metrics`` stays short).
        for role in METRIC_ROLES if self.shared else (ProcessRole.ALL.value,):
            alive = view.alive((role,))
            self._metrics.cluster_processes.labels(role).set(len(alive))
            self._metrics.cluster_leaders.labels(role).set(sum(p.leads for p in alive))
        for venue in self._venues.status().items:
            if venue.healthy is not None:
                self._metrics.venue_healthy.labels(venue.name).set(1 if venue.healthy else 0)
