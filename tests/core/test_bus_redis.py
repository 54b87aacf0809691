"""The Redis Streams bus against a real redis-server: groups, broadcast, retries, reclaim, outages.

Two "processes" are two ``RedisStreamsBus`` objects (distinct consumer names) on one Redis; the
broadcast-pruning test kills a real subprocess with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.models import Actor
from core.models.alerts import AlertSource, Severity
from core.models.incidents import EventKind, Incident, IncidentEvent
from core.platform.bus_redis import RedisStreamsBus
from core.platform.metrics import Metrics
from tests.support.services import RedisServer

WAIT = 20.0  # generous: every wait below ends as soon as its condition holds
ROOT = Path(__file__).resolve().parents[2]


def event(seq: int) -> IncidentEvent:
    """A small incident event numbered ``seq``."""
    now = datetime.now(UTC)
    incident = Incident(
        id=seq,
        key=f"engine:fp{seq}",
        source=AlertSource.ENGINE,
        fingerprint=f"fp{seq}",
        title=f"Alert{seq}",
        severity=Severity.WARNING,
        first_seen=now,
        last_seen=now,
    )
    return IncidentEvent(
        seq=seq, ts=now, kind=EventKind.OPENED, incident=incident, actor=Actor.system("test")
    )


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds, failing the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at what the bus left in Redis."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


BusFactory = Callable[..., RedisStreamsBus]


@pytest.fixture
async def make_bus(redis_server: RedisServer) -> AsyncIterator[BusFactory]:
    """Build buses on the test Redis with quick timings; the ones still open close at teardown."""
    buses: list[RedisStreamsBus] = []

    def make(**options: Any) -> RedisStreamsBus:
        options.setdefault("retry_delay", 0.2)
        options.setdefault("block", 0.2)
        options.setdefault("max_backoff", 0.5)
        options.setdefault("drain_timeout", 2.0)
        bus = RedisStreamsBus(redis_server.url, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()  # a no-op for those a test closed


class Collector:
    """A handler that records the sequence numbers it handled."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    async def __call__(self, e: IncidentEvent) -> None:
        self.seqs.append(e.seq)


async def stats_of(bus: RedisStreamsBus, group: str) -> tuple[int, int | None]:
    """(pending, lag) of one consumer group."""
    for s in await bus.group_stats():
        if s.group == group:
            return s.pending, s.lag
    raise AssertionError(f"no group {group}")


async def test_shared_group_handles_each_event_once_across_two_processes(
    make_bus: BusFactory,
) -> None:
    first, second = Collector(), Collector()
    a, b = make_bus(), make_bus()
    assert a.consumer != b.consumer
    a.subscribe("notifier", first)
    b.subscribe("notifier", second)
    await a.start()
    await b.start()

    for seq in range(1, 61):
        await (a if seq % 2 else b).publish(event(seq))
    await until(lambda: len(first.seqs) + len(second.seqs) >= 60)

    # Everything is acknowledged, so nothing can be delivered again later.
    await until_async(lambda: stats_of(a, "notifier"), (0, 0))
    assert sorted(first.seqs + second.seqs) == list(range(1, 61))
    assert first.seqs == sorted(first.seqs)  # each consumer sees its share in order


async def test_broadcast_subscribers_each_see_every_event(
    make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    first, second = Collector(), Collector()
    a, b = make_bus(), make_bus()
    a.subscribe("cache", first, broadcast=True)
    b.subscribe("cache", second, broadcast=True)
    await a.start()
    await b.start()

    for seq in range(1, 21):
        await a.publish(event(seq))
    await until(lambda: len(first.seqs) == 20 and len(second.seqs) == 20)
    assert first.seqs == second.seqs == list(range(1, 21))

    groups = {s.group for s in await b.group_stats()}
    assert groups == {f"cache@{a.consumer}", f"cache@{b.consumer}"}
    await a.close()
    groups = {s.group for s in await b.group_stats()}
    assert groups == {f"cache@{b.consumer}"}  # a closed process leaves no group behind


@pytest.mark.slow
async def test_failing_handler_gets_the_event_redelivered(make_bus: BusFactory) -> None:
    attempts: list[int] = []

    async def flaky(e: IncidentEvent) -> None:
        attempts.append(e.seq)
        if len(attempts) < 3:
            raise RuntimeError("downstream hiccup")

    bus = make_bus()
    bus.subscribe("pager", flaky)
    await bus.start()
    await bus.publish(event(7))

    await until(lambda: len(attempts) >= 3)
    await until_async(lambda: stats_of(bus, "pager"), (0, 0))
    assert attempts == [7, 7, 7]


@pytest.mark.slow
async def test_handler_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    attempts: list[int] = []

    async def broken(e: IncidentEvent) -> None:
        attempts.append(e.seq)
        raise RuntimeError("cannot render")

    bus = make_bus(max_deliveries=3)
    bus.subscribe("pager", broken)
    await bus.start()
    await bus.publish(event(9))

    await until_async(lambda: raw.xlen(bus.dead_stream), 1)
    [(_, letter)] = await raw.xrange(bus.dead_stream)
    assert letter[b"group"] == b"pager"
    assert letter[b"deliveries"] == b"3"
    assert b"cannot render" in letter[b"error"]
    assert IncidentEvent.model_validate_json(letter[b"event"]).seq == 9
    assert await stats_of(bus, "pager") == (0, 0)
    assert attempts == [9, 9, 9]


@pytest.mark.slow
async def test_dead_consumers_pending_entries_are_reclaimed_by_another(
    make_bus: BusFactory,
) -> None:
    entered = asyncio.Event()

    async def hangs(_: IncidentEvent) -> None:
        entered.set()
        await asyncio.Event().wait()

    dying = make_bus(drain_timeout=0.2)
    dying.subscribe("worker", hangs)
    await dying.start()
    await dying.publish(event(1))
    async with asyncio.timeout(WAIT):
        await entered.wait()
    await dying.close()  # the handler is cancelled: the entry stays pending on its consumer

    survivor, handled = make_bus(claim_idle=1.0), Collector()
    assert (await stats_of(survivor, "worker"))[0] == 1  # left pending by the dead consumer
    survivor.subscribe("worker", handled)
    await survivor.start()

    await until(lambda: handled.seqs == [1])
    await until_async(lambda: stats_of(survivor, "worker"), (0, 0))


@pytest.mark.slow
async def test_bus_recovers_when_redis_restarts(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    shared, broadcast = Collector(), Collector()
    publisher, consumer = make_bus(), make_bus()
    consumer.subscribe("notifier", shared)
    consumer.subscribe("cache", broadcast, broadcast=True)
    await consumer.start()
    await publisher.publish(event(1))
    await until(lambda: shared.seqs == [1] and broadcast.seqs == [1])

    redis_server.stop()
    await publisher.publish(event(2))  # Redis is away: the event waits in the spool
    assert publisher.spooled() == 1
    await asyncio.sleep(0.5)  # the consumers notice and back off
    redis_server.start()  # no persistence: the stream and groups are gone

    await publisher.start()  # starts the spool sender (a publisher has no subscribers)
    await publisher.publish(event(3))
    await until(lambda: shared.seqs == [1, 2, 3] and broadcast.seqs == [1, 2, 3])
    assert publisher.spooled() == 0


async def test_publish_many_appends_a_batch_in_order_in_one_transaction(
    make_bus: BusFactory, raw: aioredis.Redis
) -> None:
    shared, broadcast = Collector(), Collector()
    publisher, consumer = make_bus(), make_bus()
    consumer.subscribe("notifier", shared)
    consumer.subscribe("cache", broadcast, broadcast=True)
    await consumer.start()
    await publisher.publish(event(1))
    await until(lambda: shared.seqs == [1] and broadcast.seqs == [1])

    await raw.config_resetstat()
    await publisher.publish_many([event(seq) for seq in range(2, 102)])
    stats = await raw.info("commandstats")
    # One MULTI/EXEC for the hundred appends: one round trip (and one fsync with AOF always).
    assert stats["cmdstat_exec"]["calls"] == 1
    assert stats["cmdstat_xadd"]["calls"] == 100

    await until(lambda: len(shared.seqs) == 101 and len(broadcast.seqs) == 101)
    assert shared.seqs == broadcast.seqs == list(range(1, 102))
    await until_async(lambda: stats_of(consumer, "notifier"), (0, 0))


async def test_publish_many_while_redis_is_away_spools_the_batch_in_order(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    handled = Collector()
    publisher, consumer = make_bus(), make_bus()
    consumer.subscribe("notifier", handled)
    await publisher.start()
    await consumer.start()
    await publisher.publish(event(1))
    await until(lambda: handled.seqs == [1])

    redis_server.stop()
    await publisher.publish_many([event(2), event(3), event(4)])
    assert publisher.spooled() == 3
    await publisher.publish_many([event(5), event(6)])  # behind the spool, not before it
    assert publisher.spooled() == 5
    redis_server.start()

    await until(lambda: handled.seqs == [1, 2, 3, 4, 5, 6])
    assert publisher.spooled() == 0


async def test_group_stats_and_metrics_report_lag_and_pending(make_bus: BusFactory) -> None:
    release = asyncio.Event()
    seen = Collector()

    async def slow(e: IncidentEvent) -> None:
        await seen(e)
        await release.wait()

    bus = make_bus()
    bus.subscribe("slow", slow)
    await bus.start()
    for seq in range(1, 4):
        await bus.publish(event(seq))
    await until(lambda: seen.seqs == [1])

    metrics = Metrics()
    await bus.export_metrics(metrics)
    pending = metrics.registry.get_sample_value("bus_pending", {"group": "slow"})
    lag = metrics.registry.get_sample_value("bus_lag", {"group": "slow"})
    # Event 1 is in the handler; 2 and 3 were read with it (pending) or wait in the stream (lag).
    assert pending is not None and lag is not None and pending >= 1
    assert pending + lag == 3

    release.set()
    await until_async(lambda: stats_of(bus, "slow"), (0, 0))
    await bus.export_metrics(metrics)
    assert metrics.registry.get_sample_value("bus_pending", {"group": "slow"}) == 0


_BROADCASTER = """
import asyncio, sys
from core.platform.bus_redis import RedisStreamsBus

async def main():
    bus = RedisStreamsBus(sys.argv[1], block=0.2, broadcast_expiry=1.0)
    async def ignore(_):
        pass
    bus.subscribe("cache", ignore, broadcast=True)
    await bus.start()
    print(bus.consumer, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_broadcast_group_of_a_killed_process_is_pruned(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _BROADCASTER, redis_server.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), WAIT)
        dead_group = f"cache@{line.decode().strip()}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    bus = make_bus()
    bus.subscribe("cache", Collector(), broadcast=True)
    await bus.start()
    assert dead_group in {s.group for s in await bus.group_stats()}

    pruned: list[str] = []

    async def prune_until_gone() -> None:
        while not pruned:
            pruned.extend(await bus.prune_broadcast_groups())
            await asyncio.sleep(0.1)

    await asyncio.wait_for(prune_until_gone(), WAIT)
    assert pruned == [dead_group]
    assert {s.group for s in await bus.group_stats()} == {f"cache@{bus.consumer}"}


async def until_async(probe: Callable[[], Any], expected: Any, timeout: float = WAIT) -> None:
    """Wait until the awaitable ``probe()`` returns ``expected``."""
    async with asyncio.timeout(timeout):
        while (await probe()) != expected:
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_closing_mid_batch_acknowledges_what_was_handled(make_bus: BusFactory) -> None:
    # Handled entries are acknowledged once per batch: a bus closed while a batch is under way
    # must still send that acknowledgement, or a restart would deliver them a second time.
    entered, release = asyncio.Event(), asyncio.Event()
    seen = Collector()

    async def slow_on_two(e: IncidentEvent) -> None:
        await seen(e)
        if e.seq == 2:
            entered.set()
            await release.wait()

    earlier = make_bus()
    earlier.subscribe("notifier", Collector())
    await earlier.start()  # the group exists from here on
    await earlier.close()
    bus = make_bus(drain_timeout=5.0)
    bus.subscribe("notifier", slow_on_two)
    for seq in range(1, 4):
        await bus.publish(event(seq))  # waiting in the stream: read as one batch of three
    await bus.start()
    async with asyncio.timeout(WAIT):
        await entered.wait()

    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.3)
    assert not closing.done()  # the batch is still being handled: close waits for it
    release.set()
    async with asyncio.timeout(WAIT):
        await closing

    again = make_bus()
    assert await stats_of(again, "notifier") == (0, 0)  # nothing left to deliver twice
    assert seen.seqs == [1, 2, 3]
