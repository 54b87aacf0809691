"""Redis loss and return, handled by the engine itself (runbook §2.2, ``ENABLE_REDIS=true``).

Every ``REDIS_CHECK_SECONDS`` the watch pings the store. On the first failed ping:

- ``redis_status`` becomes ``down``;
- the engine enters read-only mode (no new orders; reads are still answered);
- received alerts and acknowledgements go to the local spool (``core.platform.spool``);
- a ``RedisDown`` incident is recorded (spooled like any alert, so it is in the history) and,
  because the outbox lives in Redis too, the people are told directly (``on_notice`` hooks:
  the Telegram bot sends one message straight to the ops chat).

When a ping succeeds again, the spool is replayed in order, read-only mode ends, the incident
resolves, and a second notice says what was replayed. Setting ``ENABLE_REDIS=false`` and
restarting, as the runbook says, switches to the embedded SQLite store instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from core.errors import StoreError
from core.incidents.service import IncidentService
from core.models import Actor
from core.models.alerts import Severity
from core.platform.metrics import Metrics
from core.platform.spool import LocalSpool
from core.store import Store
from core.trading.engine import TradingEngine

logger = logging.getLogger(__name__)

INCIDENT_KEY = "redis"
TITLE = "RedisDown"
ACTOR = Actor.system("redis-watch")

Notice = Callable[[str], Awaitable[None]]


class RedisWatch:
    """Notices Redis going away and coming back, and does what the runbook says about it."""

    def __init__(
        self,
        store: Store,
        incidents: IncidentService,
        trading: TradingEngine,
        metrics: Metrics,
        spool: LocalSpool,
        *,
        interval: float,
    ) -> None:
        self._store = store
        self._incidents = incidents
        self._trading = trading
        self._metrics = metrics
        self.spool = spool
        self.interval = interval
        self.down = False
        self.reason = ""
        self._notices: list[Notice] = []
        self._lock = asyncio.Lock()

    def on_notice(self, notice: Notice) -> None:
        """Also tell ``notice(text)`` (a direct message: Redis, hence the outbox, is down)."""
        self._notices.append(notice)

    async def run(self) -> None:
        """Check forever (a task of the control plane)."""
        while True:
            try:
                await self.check()
            except Exception:
                logger.exception("redis watch check failed")
            await asyncio.sleep(self.interval)

    async def check(self) -> bool:
        """Ping once and act on a change; True while Redis answers."""
        async with self._lock:
            try:
                await self._store.ping()
            except StoreError as exc:
                if not self.down:
                    await self._went_down(str(exc))
                return False
            if self.down:
                await self._came_back()
            else:
                await self._replay()  # entries left by a replay that Redis cut short
            return True

    async def _went_down(self, reason: str) -> None:
        self.down, self.reason = True, reason
        self._metrics.redis_status.state("down")
        logger.error("Redis is unreachable (%s): read-only mode, writes spooled locally", reason)
        await self._trading.enter_read_only(f"Redis is unreachable: {reason}", ACTOR)
        await self._incidents.raise_engine(  # spooled: lands in the history once Redis is back
            INCIDENT_KEY,
            TITLE,
            Severity.CRITICAL,
            f"the shared store is unreachable ({reason}); trading is read-only and alerts and "
            "acknowledgements are kept locally until it is back",
        )
        await self._tell(
            "🚨 <b>Redis is unreachable</b>: trading is READ-ONLY (no new orders; reads still "
            "answered). Alerts and acknowledgements are kept locally and replayed when it is "
            "back. Runbook §2.2: restart Redis, or set ENABLE_REDIS=false and restart."
        )

    async def _came_back(self) -> None:
        # ``down`` stays true until recovery is complete, so whoever sees it false also sees
        # trading writable and the incident resolved; a step Redis cuts short is retried whole.
        alerts, acks = await self._replay()
        await self._trading.leave_read_only(ACTOR)
        await self._incidents.clear_engine(INCIDENT_KEY, TITLE, "Redis answers again")
        self.down, self.reason = False, ""
        self._metrics.redis_status.state("ok")
        logger.warning("Redis is back: replayed %d alert(s), %d ack(s)", alerts, acks)
        await self._tell(
            f"✅ <b>Redis is back</b>: replayed {alerts} alert(s) and {acks} acknowledgement(s) "
            "kept meanwhile; read-only mode is over."
        )

    async def _replay(self) -> tuple[int, int]:
        replayed = await self._incidents.replay_spool()
        self._metrics.spool_depth.labels("writes").set(await self.spool.depth())
        return replayed

    async def _tell(self, text: str) -> None:
        for notice in self._notices:
            try:
                await notice(text)
            except Exception as exc:  # a notice is best effort; the incident is the record
                logger.error("Redis notice not delivered: %s", exc)
