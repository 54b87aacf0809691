"""The health checks of the shared state: the store, Redis with its lease and bus, and the bot.

``/healthz`` reads what these report; with Redis they also keep the Redis, lease, bus and spool
gauges true, since other replicas change what those figures describe.
"""

from __future__ import annotations

import time

from core.config.settings import Settings
from core.errors import StoreError
from core.incidents.delivery import CHANNEL as TELEGRAM_CHANNEL
from core.incidents.service import IncidentService
from core.ops.redis_outage import RedisWatch
from core.platform.bus import Bus
from core.platform.bus_redis import RedisStreamsBus
from core.platform.health import Check, ComponentHealth, HealthService, Status
from core.platform.lease import Lease
from core.platform.metrics import Metrics
from core.platform.outbox import export_outbox_stats
from core.store import Store


class StoreHealth:
    """Checks the store and Redis, and says whether the Telegram bot runs in this process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        incidents: IncidentService,
        metrics: Metrics,
        bus: Bus,
        watch: RedisWatch | None,
        *,
        bot_elsewhere: Check | None = None,
    ) -> None:
        """``bot_elsewhere``: how the deployment's bot is doing when it runs in another process
        (from its heartbeat, ``core.ops.cluster``); used until a bot in this process reports."""
        self._settings = settings
        self._store = store
        self._incidents = incidents
        self._metrics = metrics
        self._bus = bus
        self._watch = watch
        self._lease: Lease | None = None
        self._bot_elsewhere = bot_elsewhere

    def register(self, health: HealthService) -> None:
        """Add the store (critical), Redis and Telegram checks to ``health``."""
        health.register("store", self.check_store)
        health.register("redis", self.check_redis, critical=False)
        health.register("telegram", self.check_telegram, critical=False)

    def follow_lease(self, lease: Lease) -> None:
        """Report ``lease`` (taken once the process starts) with the Redis check."""
        self._lease = lease

    async def check_store(self) -> ComponentHealth:
        """Ping the store; while Redis is lost the store is degraded (read-only, spooling)."""
        watch = self._watch
        if watch is not None and watch.down:
            # Degraded, not down: reads go on and writes are spooled, so orchestrators must not
            # restart the process over it.
            return ComponentHealth(
                status=Status.DEGRADED,
                detail=f"Redis unreachable: read-only, writes spooled ({watch.reason})",
            )
        await self._store.ping()
        if self._settings.enable_redis:  # other replicas change incidents: keep the gauge true
            await self._incidents.export_open_counts()
        if self._settings.telegram_bot_token is not None:
            # Every replica reports the Telegram queue (TelegramOutboxStuck reads the max), so
            # it goes on aging when no bot process sends, or the sender is stuck.
            await export_outbox_stats(self._store, self._metrics, TELEGRAM_CHANNEL)
        where = "redis" if self._settings.enable_redis else f"sqlite {self._settings.db_path}"
        return ComponentHealth(status=Status.OK, detail=where)

    async def check_redis(self) -> ComponentHealth:
        """Ping Redis (latency, errors, ``redis_status``) and export lease and bus figures."""
        if not self._settings.enable_redis:
            return ComponentHealth(
                status=Status.DISABLED, detail="ENABLE_REDIS=false: embedded mode"
            )
        watch = self._watch
        spooled = await watch.spool.depth() if watch is not None else 0
        self._metrics.spool_depth.labels("writes").set(spooled)
        # The lease's figures are this process's own (no Redis call): kept true during an
        # outage too, when the lease lapses (dashboards and the lease alerts read them).
        lease = None if self._lease is None else self._lease_figures(self._lease)
        started = time.perf_counter()
        try:
            await self._store.ping()
        except StoreError as exc:
            self._metrics.redis_errors.inc()
            return ComponentHealth(
                status=Status.DOWN,
                detail=f"unreachable ({exc}); trading read-only, {spooled} write(s) spooled",
            )
        latency = time.perf_counter() - started
        self._metrics.redis_latency.observe(latency)
        parts = [f"ping {latency * 1000:.1f} ms"]
        if spooled:
            parts.append(f"{spooled} spooled write(s) being replayed")
        if lease is not None:
            parts.append(lease)
        if isinstance(self._bus, RedisStreamsBus):
            await self._bus.export_metrics(self._metrics)
            self._metrics.spool_depth.labels("events").set(self._bus.spooled())
            stats = await self._bus.group_stats()
            if stats:
                parts.append(
                    "bus " + ", ".join(f"{g.group} lag {g.lag} pending {g.pending}" for g in stats)
                )
        return ComponentHealth(status=Status.OK, detail="; ".join(parts))

    def _lease_figures(self, lease: Lease) -> str:
        self._metrics.lease_leader.labels(lease.name).set(1 if lease.is_leader else 0)
        self._metrics.lease_term.labels(lease.name).set(lease.highest_term)
        holder = "this replica" if lease.is_leader else (lease.holder or "nobody")
        return f"{lease.name} lease: {holder} (term {lease.highest_term})"

    async def check_telegram(self) -> ComponentHealth:
        """Disabled without a bot token; the bot process's heartbeat in a split deployment;
        otherwise degraded until the bot registers its own check."""
        if self._settings.telegram_bot_token is None:
            return ComponentHealth(
                status=Status.DISABLED, detail="no TELEGRAM_BOT_TOKEN: the bot is off"
            )
        if self._bot_elsewhere is not None:
            return await self._bot_elsewhere()
        return ComponentHealth(status=Status.DEGRADED, detail="bot not started in this process")
