"""The composition root: builds every core service from ``Settings`` and owns their lifecycle.

Adapters (API, bot, CLI, scheduler jobs) receive a started ``ControlPlane`` and call its services;
nothing in core reaches for a global.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from core import __version__
from core.access import TokenAuthority
from core.audit import AuditLog
from core.flags import FlagService
from core.health import ComponentHealth, HealthService, Status
from core.metrics import Metrics
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
            watcher = asyncio.create_task(self.flags.watch(FLAG_RELOAD_SECONDS), name="flags")
            self._stack.push_async_callback(_cancel, watcher)
            self.metrics.redis_status.state("disabled")
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
