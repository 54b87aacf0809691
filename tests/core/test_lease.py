"""The leader lease against a real redis-server: one leader, takeover, fencing, Redis loss.

The takeover test runs the leader in a subprocess and kills it with SIGKILL, so it cannot release.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.platform.lease import Lease, NotLeader
from tests.support.services import RedisServer

WAIT = 20.0  # generous: every wait below ends as soon as its condition holds
ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """The lease callbacks: records terms acquired and losses, in one shared log."""

    def __init__(self, name: str, log: list[str] | None = None) -> None:
        self.name = name
        self.log = log if log is not None else []
        self.terms: list[int] = []
        self.losses = 0
        self.lost_at: float | None = None
        self.acquired = asyncio.Event()
        self.lost = asyncio.Event()

    async def on_acquired(self, term: int) -> None:
        self.terms.append(term)
        self.log.append(f"{self.name} acquired {term}")
        self.lost.clear()
        self.acquired.set()

    async def on_lost(self) -> None:
        self.losses += 1
        self.lost_at = time.monotonic()
        self.log.append(f"{self.name} lost")
        self.acquired.clear()
        self.lost.set()


async def wait(event: asyncio.Event) -> None:
    """Wait for ``event``, failing the test after ``WAIT`` seconds."""
    async with asyncio.timeout(WAIT):
        await event.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, failing the test after ``WAIT`` seconds."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.02)


LeaseFactory = Callable[..., tuple[Lease, Recorder]]


@pytest.fixture
async def make_lease(redis_server: RedisServer) -> AsyncIterator[LeaseFactory]:
    """Build leases on one name with callbacks recorded; all are closed at teardown."""
    leases: list[Lease] = []

    def make(name: str, log: list[str] | None = None, **options: Any) -> tuple[Lease, Recorder]:
        recorder = Recorder(name, log)
        options.setdefault("ttl", 30.0)
        options.setdefault("renew_interval", 0.2)
        lease = Lease(
            redis_server.url,
            "trading",
            holder=name,
            on_acquired=recorder.on_acquired,
            on_lost=recorder.on_lost,
            **options,
        )
        leases.append(lease)
        return lease, recorder

    yield make
    for lease in leases:
        await lease.close()


@pytest.mark.slow
async def test_only_one_of_several_leases_leads(make_lease: LeaseFactory) -> None:
    contenders = [make_lease(f"node{i}", ttl=3.0, renew_interval=0.1) for i in range(3)]
    for lease, _ in contenders:
        await lease.start()
    await until(lambda: any(lease.is_leader for lease, _ in contenders))

    # Over many renewals, leadership never splits nor moves.
    for _ in range(50):
        assert sum(lease.is_leader for lease, _ in contenders) == 1
        await asyncio.sleep(0.02)
    assert sum(len(r.terms) for _, r in contenders) == 1
    leader = next(lease for lease, _ in contenders if lease.is_leader)
    for lease, _ in contenders:
        if lease is not leader:
            assert lease.holder == leader.holder_id
            with pytest.raises(NotLeader):
                lease.check()
    assert leader.check() == leader.term
    assert await leader.fence() == leader.term


async def test_release_hands_the_lease_over_at_once(make_lease: LeaseFactory) -> None:
    log: list[str] = []
    first, first_calls = make_lease("first", log)  # ttl 30 s: only a release explains a handover
    second, second_calls = make_lease("second", log)
    await first.start()
    await wait(first_calls.acquired)
    first_term = first.term
    await second.start()
    await until(lambda: second.holder == "first")

    await first.close()
    await wait(second_calls.acquired)

    assert log == [f"first acquired {first_term}", "first lost", f"second acquired {second.term}"]
    assert first_term is not None and second.term is not None
    assert second.term > first_term


@pytest.mark.slow
async def test_leader_stops_acting_before_its_ttl_when_redis_goes_away(
    make_lease: LeaseFactory, redis_server: RedisServer
) -> None:
    ttl = 5.0
    lease, calls = make_lease("leader", ttl=ttl, renew_interval=0.25)
    await lease.start()
    await wait(calls.acquired)
    old_term = lease.term
    assert old_term is not None

    went_away = time.monotonic()
    redis_server.stop()
    await wait(calls.lost)

    assert calls.lost_at is not None
    assert calls.lost_at - went_away < ttl  # before the key could have expired anywhere
    assert not lease.is_leader and lease.term is None
    with pytest.raises(NotLeader):
        lease.check()

    # Redis comes back empty (no persistence): the term still only goes up.
    redis_server.start()
    await wait(calls.acquired)
    assert lease.term is not None and lease.term > old_term


async def test_fence_rejects_a_leader_whose_lease_was_taken(
    make_lease: LeaseFactory, redis_server: RedisServer
) -> None:
    # The old leader renews rarely, so it still believes in its lease when the key vanishes
    # (an operator deleted it, or Redis lost it): exactly what fencing must catch.
    old, old_calls = make_lease("old", ttl=30.0, renew_interval=10.0)
    new, new_calls = make_lease("new", ttl=30.0, renew_interval=0.1)
    await old.start()
    await wait(old_calls.acquired)
    stale_term = old.check()

    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.delete("lunia:lease:trading")
    finally:
        await raw.aclose()
    await new.start()
    await wait(new_calls.acquired)
    new_term = new.check()

    assert new_term > stale_term
    assert not await new.is_current(stale_term)
    assert await new.is_current(new_term)
    with pytest.raises(NotLeader, match="stale"):
        await old.fence()
    assert not old.is_leader  # at once, not at the next renewal
    with pytest.raises(NotLeader):
        old.check()
    await wait(old_calls.lost)


_LEADER = """
import asyncio, sys
from core.platform.lease import Lease

async def main():
    async def acquired(term):
        print(term, lease.holder_id, flush=True)
    lease = Lease(sys.argv[1], "trading", ttl=float(sys.argv[2]),
                  renew_interval=float(sys.argv[3]), on_acquired=acquired)
    await lease.run()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_standby_takes_over_from_a_killed_leader_within_ttl_plus_renew_interval(
    make_lease: LeaseFactory, redis_server: RedisServer
) -> None:
    ttl, renew = 2.0, 0.25
    child = subprocess.Popen(
        [sys.executable, "-c", _LEADER, redis_server.url, str(ttl), str(renew)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), WAIT)
        child_term, child_holder = line.decode().split()

        standby, calls = make_lease("standby", ttl=ttl, renew_interval=renew)
        await standby.start()
        await until(lambda: standby.holder == child_holder)
        assert not standby.is_leader  # a live leader keeps its lease
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    killed = time.monotonic()

    await wait(calls.acquired)
    took = time.monotonic() - killed
    assert took < ttl + renew + 1.5  # the bound, plus generous room for a busy machine
    assert standby.term is not None and standby.term > int(child_term)
    assert not await standby.is_current(int(child_term))


async def test_lease_refuses_timings_that_cannot_keep_it(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="renew_interval"):
        Lease(redis_server.url, "trading", ttl=1.0, renew_interval=0.9)
