"""Durable delivery to outside services: messages are stored first, then sent at least once.

A finished message drops its payload at once, and a delivered one is deleted after
``OUTBOX_RETENTION`` (``OutboxRetention``): a token's value or a chart does not rest in the store,
its backups or their off-site copies (issue 16 point 4).

Each channel (``pagerduty``, ``telegram``) has one worker. Messages with the same ``key`` (a chat,
a PagerDuty dedup key) are delivered strictly in order: only the oldest pending message of a key
is eligible, so an acknowledge can never overtake the trigger it follows. A failed attempt is
retried with capped exponential backoff, or exactly when the service said (``retry_after``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from core.errors import LuniaError
from core.models import OutboxItem, OutboxStats, utcnow
from core.platform.metrics import Metrics
from core.platform.tasks import cancel_and_wait
from core.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """What happened to one attempt."""

    outcome: str  # "ok" | "retry" | "deferred" | "failed"
    error: str | None = None
    retry_after: float | None = None

    @classmethod
    def ok(cls) -> Delivery:
        """Delivered."""
        return cls("ok")

    @classmethod
    def retry(cls, error: str, after: float | None = None) -> Delivery:
        """Try again later (``after`` seconds, or by backoff)."""
        return cls("retry", error, after)

    @classmethod
    def defer(cls, after: float) -> Delivery:
        """Not an error: the channel's pacing says wait ``after`` seconds."""
        return cls("deferred", "paced", after)

    @classmethod
    def failed(cls, error: str) -> Delivery:
        """Will never succeed (e.g. rejected as invalid): stop trying."""
        return cls("failed", error)


Deliver = Callable[[OutboxItem], Awaitable[Delivery]]


async def export_outbox_stats(store: Store, metrics: Metrics, channel: str) -> OutboxStats:
    """Set ``channel``'s depth and oldest-message age gauges from the store, and return them.

    The store is shared, so any process can report a channel, including one whose worker runs
    elsewhere or nowhere (a stuck delivery keeps aging in every replica's figures).
    """
    stats = await store.outbox_stats(channel)
    metrics.outbox_depth.labels(channel).set(stats.depth)
    age = (utcnow() - stats.oldest).total_seconds() if stats.oldest else 0.0
    metrics.outbox_oldest_age.labels(channel).set(max(age, 0.0))
    return stats


class OutboxRetention:
    """Deletes delivered messages once they are older than the retention."""

    def __init__(self, store: Store, retention: timedelta) -> None:
        self._store = store
        self.retention = retention

    async def prune(self) -> int:
        """Delete delivered messages finished more than the retention ago (a scheduled job)."""
        pruned = await self._store.outbox_prune(utcnow() - self.retention)
        if pruned:
            logger.info("outbox: pruned %d delivered messages", pruned)
        return pruned


class OutboxWorker:
    """Sends one channel's queued messages, in order per key, with retries."""

    def __init__(
        self,
        store: Store,
        channel: str,
        deliver: Deliver,
        metrics: Metrics,
        *,
        batch: int = 50,
        idle_poll: float = 1.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
    ) -> None:
        self._store = store
        self.channel = channel
        self._deliver = deliver
        self._metrics = metrics
        self._batch = batch
        self._idle_poll = idle_poll
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for work now (called right after something was queued)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the delivery loop."""
        self._task = asyncio.create_task(self._loop(), name=f"outbox-{self.channel}")

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Deliver what is due (bounded by ``drain_timeout``), then stop."""
        if self._task is None:
            return
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if drain_timeout <= 0:  # stopped because another replica took over: it delivers
            return
        try:
            async with asyncio.timeout(drain_timeout):
                while await self.run_once():
                    pass
        except (TimeoutError, LuniaError) as exc:
            logger.warning("outbox %s not fully drained at shutdown: %s", self.channel, exc)
        stats = await self._store.outbox_stats(self.channel)
        if stats.depth:
            logger.info("outbox %s: %d messages kept for the next start", self.channel, stats.depth)

    async def _loop(self) -> None:
        while True:
            # Cleared before looking, not after: a wake() that comes while run_once is reading
            # (a message queued just after its query) must end the wait below at once; cleared
            # after, it was lost and the message waited for the next idle poll (up to 1 s).
            self._wake.clear()
            try:
                sent = await self.run_once()
            except LuniaError as exc:
                logger.warning("outbox %s: %s", self.channel, exc)
                sent = 0
            if sent:
                continue
            try:
                async with asyncio.timeout(self._idle_poll):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Attempt every message that is due now; returns how many were attempted."""
        items = await self._store.outbox_due(self.channel, utcnow(), self._batch)
        for item in items:
            await self._attempt(item)
        await self._export_stats()
        return len(items)

    async def _attempt(self, item: OutboxItem) -> None:
        try:
            result = await self._deliver(item)
        except Exception as exc:  # a bug in a deliver function must not stop the queue
            logger.exception("outbox %s: delivering #%d crashed", self.channel, item.id)
            result = Delivery.retry(f"{type(exc).__name__}: {exc}")
        self._metrics.outbox_sends.labels(self.channel, result.outcome).inc()
        if result.outcome == "ok":
            await self._store.outbox_finish(item.id)
        elif result.outcome in ("retry", "deferred"):
            delay = result.retry_after if result.retry_after is not None else self._backoff(item)
            await self._store.outbox_finish(
                item.id, error=result.error, retry_at=utcnow() + timedelta(seconds=delay)
            )
            # Wake exactly when it is due (retry_after is honoured to the moment, not to the
            # next idle poll).
            asyncio.get_running_loop().call_later(delay, self.wake)
            (logger.debug if result.outcome == "deferred" else logger.info)(
                "outbox %s: #%d retry in %.1fs (%s)", self.channel, item.id, delay, result.error
            )
        else:
            await self._store.outbox_finish(item.id, error=result.error or "failed")
            logger.error(
                "outbox %s: #%d dropped as undeliverable: %s", self.channel, item.id, result.error
            )

    def _backoff(self, item: OutboxItem) -> float:
        delay = min(self._backoff_cap, self._backoff_base * 2 ** min(item.attempts, 16))
        jitter = 0.8 + 0.4 * random.random()  # noqa: S311 - jitter, not crypto
        return float(delay * jitter)

    async def _export_stats(self) -> None:
        await export_outbox_stats(self._store, self._metrics, self.channel)
