"""The composition root: builds every core service from ``Settings`` and owns their lifecycle.

Adapters (API, bot, CLI, scheduler jobs) receive a started ``ControlPlane`` and call its services;
nothing in core reaches for a global.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import timedelta

from core import __version__, pagerduty
from core.access import TokenAuthority
from core.alertmanager import AlertmanagerClient
from core.alerts import Severity
from core.audit import AuditLog
from core.bus import Bus, InProcessBus
from core.flags import FlagService, FlagState
from core.health import ComponentHealth, HealthService, Status
from core.incident_model import Rules
from core.incidents import IncidentService
from core.metrics import Metrics
from core.models import Actor
from core.outbox import OutboxWorker
from core.scheduler import Scheduler
from core.secrets import RuntimeSecrets, resolve_secrets
from core.settings import Settings
from core.store import Store
from core.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)

# How quickly a flag flipped by the CLI (or another replica) reaches this process.
FLAG_RELOAD_SECONDS = 2.0


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class ControlPlane:
    """Every core service of one process, wired together."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.version = __version__
        self.metrics = Metrics()
        self.secrets: RuntimeSecrets = resolve_secrets(settings)
        self.tokens = TokenAuthority(self.secrets.api_tokens)
        self.store: Store = store or SqliteStore(settings.db_path)
        self.audit = AuditLog(self.store)
        self.flags = FlagService(settings, self.store, self.metrics)
        self.bus: Bus = InProcessBus()
        self.scheduler = Scheduler(self.metrics)
        self.alertmanager = (
            AlertmanagerClient(settings.alertmanager_url) if settings.alertmanager_url else None
        )
        self.pagerduty: pagerduty.PagerDutySender | None = None
        self.pagerduty_outbox: OutboxWorker | None = None
        if settings.pagerduty_routing_key is not None:
            self.pagerduty = pagerduty.PagerDutySender(
                settings.pagerduty_events_url, settings.pagerduty_routing_key, self.metrics
            )
            self.pagerduty_outbox = OutboxWorker(
                self.store, pagerduty.CHANNEL, self.pagerduty.deliver, self.metrics
            )
        self.incidents = IncidentService(
            self.store,
            self.bus,
            self.metrics,
            Rules(
                reopen_window=timedelta(minutes=settings.incident_reopen_minutes),
                escalation=settings.escalation_policy,
            ),
            alertmanager=self.alertmanager,
            pagerduty_outbox=self.pagerduty_outbox,
        )
        self.scheduler.every(
            "escalation", settings.escalation_check_seconds, self.incidents.run_deadlines
        )
        if self.alertmanager is not None:
            self.scheduler.every(
                "alertmanager-silences",
                settings.silence_sync_seconds,
                self.incidents.sync_silences,
            )
        self.scheduler.on_outcome_change(self._job_outcome)
        self.flags.subscribe(self._flag_changed)
        self.health = HealthService(self.metrics, interval=settings.health_check_interval_seconds)
        self.health.register("store", self._check_store)
        self.health.register("redis", self._check_redis, critical=False)
        self.health.register("telegram", self._check_telegram, critical=False)
        self.ready = False
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Open the store, load state and start background work, in dependency order."""
        try:
            await self.store.open()
            self._stack.push_async_callback(self.store.close)
            await self.flags.load()
            self.metrics.llm_rate_limited.set(1 if self.flags.enabled("LLM_RATE_LIMITED") else 0)
            watcher = asyncio.create_task(self.flags.watch(FLAG_RELOAD_SECONDS), name="flags")
            self._stack.push_async_callback(_cancel, watcher)
            self.metrics.redis_status.state("disabled")
            await self.bus.start()
            self._stack.push_async_callback(self.bus.close)
            for client in (self.alertmanager, self.pagerduty):
                if client is not None:
                    self._stack.push_async_callback(client.close)
            if self.pagerduty_outbox is not None:
                await self.pagerduty_outbox.start()
                self._stack.push_async_callback(self.pagerduty_outbox.close)
            await self.scheduler.start()
            self._stack.push_async_callback(self.scheduler.close)
            await self.health.start()
            self._stack.push_async_callback(self.health.close)
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = True
        logger.info(
            "control plane %s started (state in %s)", self.version, self.settings.lunia_state_dir
        )

    async def close(self) -> None:
        """Stop everything started, in reverse order; safe to call twice."""
        self.ready = False
        await self._stack.aclose()

    async def _flag_changed(self, state: FlagState, actor: Actor) -> None:
        """Flags whose effect the control plane itself carries out."""
        if state.name == "LLM_RATE_LIMITED":
            self.metrics.llm_rate_limited.set(1 if state.value else 0)

    async def _job_outcome(self, job: str, error: BaseException | None) -> None:
        """A failing scheduled job is an incident; its next success resolves it."""
        key, title = f"job:{job}", f"Scheduled job {job} failing"
        if error is None:
            await self.incidents.clear_engine(key, title, "the job succeeded again")
        else:
            await self.incidents.raise_engine(
                key,
                title,
                Severity.WARNING,
                f"{type(error).__name__}: {error}",
                labels={"job": job},
            )

    async def _check_store(self) -> ComponentHealth:
        await self.store.ping()
        return ComponentHealth(status=Status.OK, detail=f"sqlite {self.settings.db_path}")

    async def _check_redis(self) -> ComponentHealth:
        return ComponentHealth(status=Status.DISABLED, detail="ENABLE_REDIS=false: embedded mode")

    async def _check_telegram(self) -> ComponentHealth:
        if self.settings.telegram_bot_token is None:
            return ComponentHealth(
                status=Status.DISABLED, detail="no TELEGRAM_BOT_TOKEN: the bot is off"
            )
        return ComponentHealth(status=Status.DEGRADED, detail="bot not started in this process")
