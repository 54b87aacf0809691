"""The in-process bus: each subscriber gets every event, in order, batches included."""

from __future__ import annotations

import asyncio

from core.platform.bus import InProcessBus
from tests.core.test_bus_redis import Collector, event, until


async def test_publish_many_reaches_every_subscriber_in_order() -> None:
    bus = InProcessBus()
    first, second = Collector(), Collector()
    bus.subscribe("notifier", first)
    bus.subscribe("cache", second)
    await bus.start()
    await bus.publish(event(1))
    await bus.publish_many([event(seq) for seq in range(2, 51)])
    await bus.publish(event(51))

    await until(lambda: len(first.seqs) == 51 and len(second.seqs) == 51)
    assert first.seqs == second.seqs == list(range(1, 52))
    await asyncio.wait_for(bus.close(), 5)
    assert bus.pending() == 0
