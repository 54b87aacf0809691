"""Self-healing: the monitor loop's remedies against loopback Binance and OKX."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from core.control_plane import ControlPlane
from core.models import Actor, ActorKind, OutboxItem, OutboxMessage, Role
from core.models.incidents import IncidentState
from core.platform.outbox import Delivery, OutboxWorker
from tests.conftest import PlaneFactory
from tests.fakes.exchanges import BinanceFake, OkxFake, credentials_env

OPERATOR = Actor(kind=ActorKind.API, id="operator-1", name="operator-1", role=Role.OPERATOR)


@dataclass
class Venues:
    binance: BinanceFake
    okx: OkxFake


@pytest.fixture
async def fakes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Venues]:
    async with BinanceFake() as binance, OkxFake() as okx:
        for name, value in credentials_env(binance, okx).items():
            monkeypatch.setenv(name, value)
        yield Venues(binance, okx)


@pytest.fixture
async def plane(make_plane: PlaneFactory, fakes: Venues) -> ControlPlane:
    return await make_plane(
        failover_after_failures=3,
        venue_probe_seconds=3600,
        core_tick_seconds=3600,
        venue_timeout_seconds=0.5,
        self_healing_interval_seconds=3600,
        slo_check_seconds=3600,
    )


async def primary_keeps_failing_while_standby_was_down(plane: ControlPlane, fakes: Venues) -> None:
    """The venue service's own failover was blocked (standby down); then the standby recovers."""
    fakes.binance.fail(503)
    fakes.okx.fail(503)
    for _ in range(3):
        await plane.venues.probe()
    assert not plane.venues.failed_over
    fakes.okx.recover()


def actions_metric(plane: ControlPlane, action: str) -> float:
    value = plane.metrics.registry.get_sample_value(
        "self_healing_actions_total", {"action": action}
    )
    return value or 0.0


async def failovers(plane: ControlPlane) -> list[Actor]:
    return [e.actor for e in await plane.audit.tail(100) if e.action == "venue.failover"]


@pytest.mark.slow
async def test_a_failing_primary_is_failed_over_once_not_on_every_run(
    plane: ControlPlane, fakes: Venues
) -> None:
    await primary_keeps_failing_while_standby_was_down(plane, fakes)

    [remedy] = await plane.self_healing.run_once()
    assert (remedy.action, remedy.target, remedy.outcome) == ("venue-failover", "binance", "done")
    assert plane.venues.active_name == "okx"
    assert "failed over to okx" in remedy.detail

    for _ in range(3):  # the primary keeps failing: nothing more to heal
        await plane.venues.probe()
        assert await plane.self_healing.run_once() == []
    assert plane.venues.active_name == "okx"
    [actor] = await failovers(plane)
    assert actor.kind is ActorKind.SELF_HEALING
    assert actions_metric(plane, "venue-failover") == 1
    titles = [i.title for i in await plane.incidents.list(open_only=True)]
    assert "Trading failed over to okx" in titles


@pytest.mark.slow
async def test_flag_off_means_no_remedy(plane: ControlPlane, fakes: Venues) -> None:
    await plane.flags.set("SELF_HEALING_ENABLED", False, OPERATOR)
    await primary_keeps_failing_while_standby_was_down(plane, fakes)

    assert await plane.self_healing.run_once() == []
    assert await plane.scheduler.run_now("self-healing")  # the scheduled job does nothing too
    assert not plane.venues.failed_over
    assert await failovers(plane) == []
    assert actions_metric(plane, "venue-failover") == 0

    await plane.flags.set("SELF_HEALING_ENABLED", True, OPERATOR)
    [remedy] = await plane.self_healing.run_once()
    assert remedy.outcome == "done" and plane.venues.active_name == "okx"


@pytest.mark.slow
async def test_a_blocked_failover_is_tried_once_per_cooldown_and_raises_an_incident(
    plane: ControlPlane, fakes: Venues
) -> None:
    await primary_keeps_failing_while_standby_was_down(plane, fakes)
    fakes.okx.fail(503)  # the standby is down again: the remedy cannot work

    [remedy] = await plane.self_healing.run_once()
    assert (remedy.action, remedy.outcome) == ("venue-failover", "failed")
    assert "okx" in remedy.detail
    [incident] = [
        i
        for i in await plane.incidents.list(open_only=True)
        if i.title == "Self-healing could not venue-failover binance"
    ]
    assert incident.state is IncidentState.TRIGGERED

    fakes.okx.recover()
    assert await plane.self_healing.run_once() == []  # cooling down: no flapping
    assert not plane.venues.failed_over
    assert actions_metric(plane, "venue-failover") == 0


async def test_a_stuck_outbox_has_its_worker_woken_and_the_wake_is_audited(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(
        self_healing_interval_seconds=3600,
        slo_check_seconds=3600,
        core_tick_seconds=3600,
        venue_probe_seconds=3600,
        self_healing_outbox_stuck_seconds=0.05,
    )
    delivered: list[int] = []
    arrived = asyncio.Event()

    async def deliver(item: OutboxItem) -> Delivery:
        delivered.append(item.id)
        arrived.set()
        return Delivery.ok()

    # A worker that only looks when woken: a message queued without a wake sits there.
    worker = OutboxWorker(plane.store, "drill", deliver, plane.metrics, idle_poll=3600)
    await worker.start()
    try:
        await asyncio.sleep(0.05)  # let the worker reach its idle wait
        plane.self_healing.watch_outbox(worker)
        await plane.store.outbox_add([OutboxMessage(channel="drill", payload={"text": "hi"})])
        await asyncio.sleep(0.1)
        [remedy] = await plane.self_healing.run_once()
        assert (remedy.action, remedy.target, remedy.outcome) == ("outbox-wake", "drill", "done")
        async with asyncio.timeout(5):
            await arrived.wait()
        assert len(delivered) == 1
        [entry] = [e for e in await plane.audit.tail(20) if e.action == "self_healing.outbox-wake"]
        assert entry.actor.kind is ActorKind.SELF_HEALING and entry.target == "drill"
        assert actions_metric(plane, "outbox-wake") == 1
        assert await plane.self_healing.run_once() == []  # delivered: nothing stuck any more
    finally:
        plane.self_healing.forget_outbox(worker)
        await worker.close()
