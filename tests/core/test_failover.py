"""Failover: probes of real ccxt clients against loopback Binance (primary) and OKX (standby)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from core.control_plane import ControlPlane
from core.errors import (
    ConfigError,
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    PermissionDenied,
    VenueUnavailable,
)
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.models.incidents import IncidentState
from core.models.venues import OrderSide, OrderStatus, OrderType, VenueMode
from core.trading.strategies import Intent
from tests.conftest import PlaneFactory, SettingsFactory
from tests.fakes.exchanges import BinanceFake, OkxFake, credentials_env

pytestmark = pytest.mark.slow  # failover drills wait out probe runs and cooldowns

OPERATOR = Actor(kind=ActorKind.API, id="operator-1", name="operator-1", role=Role.OPERATOR)
VIEWER = Actor(kind=ActorKind.API, id="viewer-1", name="viewer-1", role=Role.VIEWER)
ADMIN = Actor(kind=ActorKind.API, id="admin-1", name="admin-1", role=Role.ADMIN)
BUY = Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)


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
    )


async def failover_incidents(plane: ControlPlane) -> list[str]:
    return [i.title for i in await plane.incidents.list(open_only=True) if "failed over" in i.title]


async def audit_actions(plane: ControlPlane) -> list[str]:
    return [e.action for e in await plane.audit.tail(50)]


def failover_metric(plane: ControlPlane) -> float:
    value = plane.metrics.registry.get_sample_value("exchange_failover")
    assert value is not None
    return value


async def test_venues_with_credentials_trade_live_through_ccxt(
    plane: ControlPlane, fakes: Venues
) -> None:
    status = plane.venues.status()
    assert (status.primary, status.standby, status.active) == ("binance", "okx", "binance")
    assert {v.name: v.mode for v in status.items} == {
        "binance": VenueMode.LIVE,
        "okx": VenueMode.LIVE,
    }
    order = await plane.trading.place_order("manual", BUY)
    assert order.status is OrderStatus.FILLED and order.venue == "binance"
    assert fakes.binance.calls("POST", "/api/v3/order")


async def test_primary_503_fails_over_after_the_configured_run_of_failures(
    plane: ControlPlane, fakes: Venues
) -> None:
    fakes.binance.fail(503)
    await plane.venues.probe()
    await plane.venues.probe()
    assert not plane.venues.failed_over  # two failures: below FAILOVER_AFTER_FAILURES=3
    assert failover_metric(plane) == 0
    status = await plane.venues.probe()
    assert status.failed_over and status.active == "okx"
    assert failover_metric(plane) == 1
    assert await failover_incidents(plane) == ["Trading failed over to okx"]
    [entry] = [e for e in await plane.audit.tail(50) if e.action == "venue.failover"]
    assert entry.before == {"active": "binance"} and entry.after == {"active": "okx"}
    assert entry.actor.kind is ActorKind.SYSTEM
    # the standby was pre-checked before the switch: reachable and balances read
    assert fakes.okx.calls("GET", "/api/v5/account/balance")

    posts_before = len(fakes.binance.calls("POST", "/api/v3/order"))
    order = await plane.trading.place_order("manual", BUY)
    assert order.venue == "okx" and order.status is OrderStatus.FILLED
    assert [o.client_order_id for o in fakes.okx.created_orders()] == [order.client_order_id]
    assert len(fakes.binance.calls("POST", "/api/v3/order")) == posts_before


async def test_a_418_ban_fails_over_on_the_first_probe(plane: ControlPlane, fakes: Venues) -> None:
    fakes.binance.fail(418)
    status = await plane.venues.probe()
    assert status.failed_over and status.active == "okx"
    assert next(v for v in status.items if v.name == "binance").banned
    assert failover_metric(plane) == 1
    assert "venue.failover" in await audit_actions(plane)
    assert await failover_incidents(plane)
    order = await plane.trading.place_order("manual", BUY)
    assert order.venue == "okx"


async def test_failed_orders_count_toward_failover_too(plane: ControlPlane, fakes: Venues) -> None:
    await plane.trading.place_order("manual", BUY)  # marks BTC/USDT
    fakes.binance.fail(503)
    for _ in range(3):
        with pytest.raises(VenueUnavailable):
            await plane.trading.place_order("manual", BUY)
    assert plane.venues.active_name == "okx"
    failed = await plane.trading.orders(status=OrderStatus.FAILED)
    assert len(failed) == 3 and all(o.venue == "binance" for o in failed)


async def test_no_failover_when_the_standby_fails_its_precheck(
    plane: ControlPlane, fakes: Venues
) -> None:
    fakes.binance.fail(503)
    fakes.okx.fail(503)
    for _ in range(3):
        await plane.venues.probe()
    assert plane.venues.active_name == "binance"
    assert failover_metric(plane) == 0
    titles = [i.title for i in await plane.incidents.list(open_only=True)]
    assert "binance is down and failover to okx is blocked" in titles


async def test_failback_clears_the_metric_and_resolves_the_incident(
    plane: ControlPlane, fakes: Venues
) -> None:
    fakes.binance.fail(418)
    await plane.venues.probe()
    with pytest.raises(Conflict, match="not failing back"):
        await plane.venues.failback(OPERATOR)  # the primary still fails its pre-check
    fakes.binance.recover()
    status = await plane.venues.failback(OPERATOR)
    assert not status.failed_over and status.active == "binance"
    assert failover_metric(plane) == 0
    assert await failover_incidents(plane) == []
    resolved = await plane.incidents.list(state=IncidentState.RESOLVED)
    assert any(i.title == "Trading failed over to okx" for i in resolved)
    assert "venue.failback" in await audit_actions(plane)


async def test_manual_failover_to_a_live_venue_needs_an_admin_and_confirmation(
    plane: ControlPlane, fakes: Venues
) -> None:
    with pytest.raises(PermissionDenied):
        await plane.venues.failover(VIEWER)
    denied = [e for e in await plane.audit.tail(10) if e.outcome == "denied"]
    assert denied and denied[0].action == "venue.failover"
    # okx has API keys and is neither sandbox nor mock: an operator may not move funds there
    with pytest.raises(PermissionDenied):
        await plane.venues.failover(OPERATOR, confirm=True)
    assert not plane.venues.failed_over
    with pytest.raises(ConfirmationRequired, match="pre-check of okx .* passed.*live funds"):
        await plane.venues.failover(ADMIN)
    assert not plane.venues.failed_over
    status = await plane.venues.failover(ADMIN, confirm=True, reason="binance degraded")
    assert status.active == "okx" and failover_metric(plane) == 1
    with pytest.raises(Conflict, match="already trading on okx"):
        await plane.venues.failover(ADMIN, to="okx", confirm=True)


async def test_failover_only_to_configured_venues(plane: ControlPlane, fakes: Venues) -> None:
    with pytest.raises(InvalidInput, match="'kraken' is not a configured venue.*binance, okx"):
        await plane.venues.failover(ADMIN, to="kraken", confirm=True)
    assert plane.venues.active_name == "binance"


async def test_standby_flag_takes_configured_venues_and_live_ones_need_an_admin(
    plane: ControlPlane, fakes: Venues
) -> None:
    with pytest.raises(InvalidInput, match="configured venues \\(binance, okx\\)"):
        await plane.flags.set("EXCHANGE_FAILOVER", "kraken", ADMIN, confirm=True)
    await plane.flags.set("EXCHANGE_FAILOVER", "binance", OPERATOR)  # no standby: primary only
    with pytest.raises(PermissionDenied):
        await plane.flags.set("EXCHANGE_FAILOVER", "okx", OPERATOR, confirm=True)
    with pytest.raises(ConfirmationRequired, match="okx has API keys and would trade live"):
        await plane.flags.set("EXCHANGE_FAILOVER", "okx", ADMIN)
    assert (await plane.flags.set("EXCHANGE_FAILOVER", "okx", ADMIN, confirm=True)).value == "okx"


async def test_paper_standby_needs_only_an_operator(make_plane: PlaneFactory) -> None:
    plane = await make_plane(venue_probe_seconds=3600, core_tick_seconds=3600)  # no keys: paper
    with pytest.raises(ConfirmationRequired, match="pre-check of okx \\(paper\\) passed"):
        await plane.venues.failover(OPERATOR)
    assert (await plane.venues.failover(OPERATOR, confirm=True)).active == "okx"


async def test_a_bad_venue_in_the_environment_stops_startup_naming_the_variable(
    make_settings: SettingsFactory,
) -> None:
    plane = ControlPlane(make_settings(exchange_failover="nosuchexchange"))
    with pytest.raises(ConfigError, match="^EXCHANGE_FAILOVER: 'nosuchexchange' is not a ccxt"):
        await plane.venues.start()


async def test_failover_survives_a_restart(
    make_plane: PlaneFactory, plane: ControlPlane, fakes: Venues
) -> None:
    await plane.venues.failover(ADMIN, confirm=True)
    await plane.close()
    again = await make_plane(venue_probe_seconds=3600, core_tick_seconds=3600)
    assert again.venues.active_name == "okx"
    assert failover_metric(again) == 1


async def test_order_in_flight_when_the_halt_lands_is_canceled_when_it_returns(
    plane: ControlPlane, fakes: Venues
) -> None:
    await plane.venues.active().ticker("ETH/USDT")  # markets loaded: the next call is the order
    fakes.binance.delay_next_orders(0.3)  # created at once, answered 0.3 s later
    placing = asyncio.create_task(
        plane.trading.place_order(
            "manual",
            Intent(
                symbol="ETH/USDT", side=OrderSide.SELL, amount=0.1, type=OrderType.LIMIT, price=9000
            ),
        )
    )
    while not fakes.binance.created_orders():
        await asyncio.sleep(0.01)
    # Another replica's halt lands in the shared store while the answer is still out.
    await plane.store.put_engine_state(
        "engine.halt",
        {"halted": True, "by": "api:other", "at": utcnow().isoformat(), "reason": "elsewhere"},
        AuditRecord(actor=ADMIN, action="engine.halt", target="engine"),
    )
    record = await placing
    assert record.status is OrderStatus.CANCELED
    [created] = fakes.binance.created_orders()
    assert created.status == "canceled"
    [stored] = await plane.trading.orders(core="manual")
    assert stored.status is OrderStatus.CANCELED


async def test_halt_cancels_open_orders_on_the_venue(plane: ControlPlane, fakes: Venues) -> None:
    resting = await plane.trading.place_order(
        "manual",
        Intent(
            symbol="ETH/USDT", side=OrderSide.SELL, amount=0.1, type=OrderType.LIMIT, price=9000
        ),
    )
    assert resting.status is OrderStatus.OPEN
    report = await plane.trading.halt(ADMIN, confirm=True, reason="drill")
    assert [o.client_order_id for o in report.canceled] == [resting.client_order_id]
    assert fakes.binance.orders[resting.client_order_id].status == "canceled"
    assert fakes.binance.calls("DELETE", "/api/v3/order")
    [stored] = await plane.trading.orders(core="manual")
    assert stored.status is OrderStatus.CANCELED


async def test_chaos_drill_fails_over_and_failback_ends_it(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(venue_probe_seconds=3600, core_tick_seconds=3600)
    with pytest.raises(ConfirmationRequired):
        await plane.venues.chaos_exchange_outage(ADMIN)
    with pytest.raises(PermissionDenied):
        await plane.venues.chaos_exchange_outage(OPERATOR, confirm=True)
    status = await plane.venues.chaos_exchange_outage(ADMIN, confirm=True)
    assert status.failed_over and status.active == "okx"
    assert next(v for v in status.items if v.name == "binance").chaos
    assert "chaos.exchange-failover" in await audit_actions(plane)
    status = await plane.venues.failback(OPERATOR)
    assert not status.failed_over and not any(v.chaos for v in status.items)


async def test_chaos_drill_is_refused_while_infra_prod_is_on(make_plane: PlaneFactory) -> None:
    plane = await make_plane(infra_prod_enabled=True, core_tick_seconds=3600)
    with pytest.raises(Conflict, match="INFRA_PROD_ENABLED"):
        await plane.venues.chaos_exchange_outage(ADMIN, confirm=True)
    assert not plane.venues.failed_over
