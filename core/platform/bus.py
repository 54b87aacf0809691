"""The event bus: how a change in one service reaches the others (and the bot).

``InProcessBus`` hands each event to every subscriber through its own queue and task, so a slow
subscriber never delays the publisher or the other subscribers. Events are also stored (the
incident event log), so a subscriber that needs at-least-once delivery replays from its saved
cursor at start; the bus itself is the fast path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from core.models.incidents import IncidentEvent
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

Handler = Callable[[IncidentEvent], Awaitable[None]]


class Bus(Protocol):
    """Publishes incident events to subscribers."""

    def subscribe(self, name: str, handler: Handler, *, broadcast: bool = False) -> None:
        """Deliver every later event to ``handler``.

        Subscribers sharing ``name`` across processes share the work (each event is handled by
        one of them); with ``broadcast`` every process handling ``name`` gets every event.
        """

    async def publish(self, event: IncidentEvent) -> None:
        """Hand ``event`` to every subscriber without waiting for them."""

    async def publish_many(self, events: Sequence[IncidentEvent]) -> None:
        """Hand ``events`` to every subscriber in their order, as one batch."""

    async def start(self) -> None:
        """Start delivering."""

    async def close(self) -> None:
        """Deliver what is queued, then stop."""


class InProcessBus:
    """A bus inside one process: a queue and a task per subscriber."""

    def __init__(self, *, drain_timeout: float = 5.0) -> None:
        self._subscribers: dict[str, tuple[Handler, asyncio.Queue[IncidentEvent]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_timeout = drain_timeout
        self._started = False

    def subscribe(self, name: str, handler: Handler, *, broadcast: bool = False) -> None:
        """Deliver every later event to ``handler`` (in order, one at a time).

        In one process every subscriber sees every event, so ``broadcast`` changes nothing here.
        """
        if name in self._subscribers:
            raise ValueError(f"subscriber {name!r} already registered")
        self._subscribers[name] = (handler, asyncio.Queue())
        if self._started:
            self._tasks.append(asyncio.create_task(self._deliver(name), name=f"bus-{name}"))

    async def publish(self, event: IncidentEvent) -> None:
        """Queue ``event`` for every subscriber."""
        for _, queue in self._subscribers.values():
            queue.put_nowait(event)

    async def publish_many(self, events: Sequence[IncidentEvent]) -> None:
        """Queue ``events`` for every subscriber, in order."""
        for _, queue in self._subscribers.values():
            for event in events:
                queue.put_nowait(event)

    async def start(self) -> None:
        """Start one delivery task per subscriber."""
        self._started = True
        self._tasks = [
            asyncio.create_task(self._deliver(n), name=f"bus-{n}") for n in self._subscribers
        ]

    async def _deliver(self, name: str) -> None:
        handler, queue = self._subscribers[name]
        while True:
            event = await queue.get()
            try:
                await handler(event)
            except Exception:
                logger.exception("bus subscriber %s failed on event %d", name, event.seq)
            finally:
                queue.task_done()

    def pending(self) -> int:
        """Events queued but not yet handled, over all subscribers."""
        return sum(q.qsize() for _, q in self._subscribers.values())

    async def close(self) -> None:
        """Let subscribers finish what is queued (bounded), then stop them."""
        try:
            async with asyncio.timeout(self._drain_timeout):
                for _, queue in self._subscribers.values():
                    await queue.join()
        except TimeoutError:
            logger.warning("bus closed with %d undelivered events", self.pending())
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        self._started = False
