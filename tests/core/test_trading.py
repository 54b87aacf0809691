"""The trading engine on paper venues: cores, risk, read-only, halt, crashes and PnL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from core.control_plane import ControlPlane
from core.errors import (
    ConfirmationRequired,
    InvalidInput,
    OrderRejected,
    PermissionDenied,
    RiskLimitExceeded,
)
from core.models import Actor, ActorKind, Role, utcnow
from core.models.trading import PnlWindow, TradingMode
from core.models.venues import (
    OrderRecord,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    VenueMode,
)
from core.store import PnlPoint
from core.trading.strategies import CoreContext, Intent, MeanReversionCore, MomentumCore
from tests.conftest import PlaneFactory, SettingsFactory
from tests.support.cores import BuyEveryTick, CrashTwice

ADMIN = Actor(kind=ActorKind.TELEGRAM, id="1", name="alice", role=Role.ADMIN)
OPERATOR = Actor(kind=ActorKind.TELEGRAM, id="2", name="bob", role=Role.OPERATOR)
QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600}


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    return await make_plane(**QUIET)


def metric(plane: ControlPlane, name: str, **labels: str) -> float:
    value = plane.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_fresh_engine_trades_on_paper_without_keys(plane: ControlPlane) -> None:
    assert {v.mode for v in plane.venues.status().items} == {VenueMode.PAPER}
    assert {c.name for c in plane.trading.cores()} == {"mean_reversion", "momentum"}
    for _ in range(30):
        await plane.trading.tick()
    orders = await plane.trading.orders(limit=500)
    assert orders, "the shipped cores placed no order in 30 ticks"
    assert all(o.mode is VenueMode.PAPER and o.venue == "binance" for o in orders)
    assert metric(plane, "orders_total", venue="binance", side="buy", status="filled") > 0
    pnl = {c.core: c.total for c in (await plane.trading.pnl()).cores}
    assert any(value != 0 for value in pnl.values())
    assert metric(plane, "core_pnl", core="momentum") == pytest.approx(pnl["momentum"])


async def test_shipped_cores_buy_low_and_follow_trends() -> None:
    reversion, momentum = MeanReversionCore(window=4), MomentumCore(fast=2, slow=4)
    flat = {"BTC/USDT": 100.0, "ETH/USDT": 10.0}
    for _ in range(3):
        await reversion.decide(CoreContext(prices=flat, positions={}))
    dip = await reversion.decide(
        CoreContext(prices={"BTC/USDT": 90.0, "ETH/USDT": 10.0}, positions={})
    )
    assert [(i.symbol, i.side) for i in dip] == [("BTC/USDT", OrderSide.BUY)]
    rising = [100.0, 101.0, 102.0, 103.0]
    intents: Sequence[Intent] = []
    for price in rising:
        intents = await momentum.decide(
            CoreContext(prices={"BTC/USDT": price, "ETH/USDT": 10.0}, positions={})
        )
    assert [(i.symbol, i.side) for i in intents] == [("BTC/USDT", OrderSide.BUY)]


async def test_risk_manager_refuses_orders_over_the_limits(make_plane: PlaneFactory) -> None:
    plane = await make_plane(risk_max_symbol_exposure=1000, risk_max_total_exposure=1500, **QUIET)
    with pytest.raises(RiskLimitExceeded, match="RISK_MAX_SYMBOL_EXPOSURE"):
        await plane.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.1)
        )
    await plane.trading.place_order(
        "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.015)
    )  # ~900 USDT
    await plane.trading.place_order(
        "manual", Intent(symbol="ETH/USDT", side=OrderSide.BUY, amount=0.15)
    )  # ~450 USDT
    with pytest.raises(RiskLimitExceeded, match="RISK_MAX_TOTAL_EXPOSURE"):
        await plane.trading.place_order(
            "manual", Intent(symbol="ETH/USDT", side=OrderSide.BUY, amount=0.1)
        )
    # reducing exposure is always allowed
    await plane.trading.place_order(
        "manual", Intent(symbol="BTC/USDT", side=OrderSide.SELL, amount=0.015)
    )
    exposure = plane.trading.exposure()
    eth = next(s for s in exposure.symbols if s.symbol == "ETH/USDT")
    assert eth.price is not None
    assert exposure.total == pytest.approx(0.15 * eth.price)
    assert metric(plane, "orders_total", venue="binance", side="buy", status="rejected") == 2


async def test_read_only_mode_refuses_orders_with_a_clear_message(plane: ControlPlane) -> None:
    await plane.trading.enter_read_only("Redis is down", Actor.system("redis"))
    assert plane.trading.state().read_only
    with pytest.raises(OrderRejected, match=r"read-only mode \(Redis is down\): no new orders"):
        await plane.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
        )
    await plane.trading.leave_read_only(Actor.system("redis"))
    order = await plane.trading.place_order(
        "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
    )
    assert order.status is OrderStatus.FILLED
    actions = [e.action for e in await plane.audit.tail(5)]
    assert actions.count("engine.read_only") == 2


async def test_operator_halts_confirmed_cancels_orders_and_only_an_admin_resumes(
    plane: ControlPlane,
) -> None:
    resting = await plane.trading.place_order(
        "manual",
        Intent(symbol="ETH/USDT", side=OrderSide.BUY, amount=0.1, type=OrderType.LIMIT, price=1.0),
    )
    assert resting.status is OrderStatus.OPEN
    with pytest.raises(ConfirmationRequired, match="cancels 1 open order"):
        await plane.trading.halt(OPERATOR)
    report = await plane.trading.halt(OPERATOR, confirm=True, reason="runaway")
    assert report.state.halted and [o.status for o in report.canceled] == [OrderStatus.CANCELED]
    assert await plane.venues.active().open_orders() == []
    assert not any(c.running for c in plane.trading.cores())
    with pytest.raises(OrderRejected, match="halted"):
        await plane.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
        )
    with pytest.raises(PermissionDenied):
        await plane.trading.resume(OPERATOR, confirm=True)
    assert plane.trading.state().halted
    state = await plane.trading.resume(ADMIN, confirm=True)
    assert not state.halted and all(c.running for c in plane.trading.cores())
    actions = [e.action for e in await plane.audit.tail(10)]
    assert {"engine.halt", "engine.resume"} <= set(actions)


@pytest.mark.slow
async def test_halt_cancels_every_open_order_past_one_page(plane: ControlPlane) -> None:
    venue = plane.venues.active()
    for _ in range(1200):  # straight onto the paper venue and into the store: quicker
        order = await venue.place(
            OrderRequest(
                symbol="ETH/USDT", side=OrderSide.BUY, amount=0.001, type=OrderType.LIMIT, price=1
            )
        )
        fields = order.model_dump(exclude={"core", "mode", "error"})
        await plane.store.save_order(OrderRecord(**fields, core="manual", mode=VenueMode.PAPER))
    assert len(await venue.open_orders()) == 1200
    report = await plane.trading.halt(OPERATOR, confirm=True, reason="runaway")
    assert len(report.canceled) == 1200 and report.failed == []
    assert await venue.open_orders() == []
    assert await plane.store.list_orders(limit=5000, statuses=[OrderStatus.OPEN]) == []


async def test_halt_through_another_replica_blocks_the_next_order_at_once(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**QUIET)
    here = await make_plane(settings=settings)
    other = await make_plane(settings=settings)  # another replica on the same store
    await here.trading.place_order(
        "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
    )
    await other.trading.halt(OPERATOR, confirm=True, reason="from the other replica")
    with pytest.raises(OrderRejected, match="halted"):  # no reload of shared state ran here
        await here.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
        )
    assert here.trading.state().halted


async def test_halt_with_a_stale_view_is_still_persisted(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**QUIET)
    here = await make_plane(settings=settings)
    other = await make_plane(settings=settings)
    await here.trading.halt(OPERATOR, confirm=True)
    await other.trading.resume(ADMIN, confirm=True)  # `here` still believes it is halted
    await here.trading.halt(OPERATOR, confirm=True, reason="again")
    with pytest.raises(OrderRejected, match="halted"):
        await other.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
        )


async def test_halt_and_core_switches_survive_a_restart(
    make_plane: PlaneFactory, plane: ControlPlane
) -> None:
    await plane.trading.toggle_core("momentum", OPERATOR, enabled=False)
    await plane.trading.halt(ADMIN, confirm=True)
    await plane.close()
    again = await make_plane(**QUIET)
    assert again.trading.state().halted
    assert not again.trading.core("momentum").enabled


async def test_essential_core_needs_confirmation_to_switch_off(plane: ControlPlane) -> None:
    with pytest.raises(ConfirmationRequired, match="essential"):
        await plane.trading.toggle_core("mean_reversion", OPERATOR, enabled=False)
    core = await plane.trading.toggle_core("mean_reversion", OPERATOR, confirm=True)
    assert not core.enabled and not core.running


async def test_crashing_core_raises_an_incident_restarts_with_backoff_and_engine_survives(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(
        core_tick_seconds=0.01,
        core_restart_backoff_seconds=0.01,
        venue_probe_seconds=3600,
    )
    crashy, buyer = CrashTwice(), BuyEveryTick()
    plane.trading.register(crashy)
    plane.trading.register(buyer)
    async with asyncio.timeout(10):
        while crashy.calls < 3 or plane.trading.core("crashy").last_error is not None:
            await asyncio.sleep(0.01)
    info = plane.trading.core("crashy")
    assert info.crashes == 2 and info.running
    incidents = await plane.incidents.list()
    crashed = [i for i in incidents if i.title == "Core crashy crashed"]
    assert crashed and not crashed[0].is_open  # raised, then resolved once it ran again
    assert await plane.trading.orders(core="buyer")  # the engine kept trading meanwhile


async def test_pnl_history_is_persisted_and_windowed(plane: ControlPlane) -> None:
    plane.trading.register(BuyEveryTick())
    await plane.trading.tick()
    points = await plane.trading.record_pnl()
    assert {p.core for p in points} == {"buyer", "mean_reversion", "momentum"}
    old = PnlPoint(core="buyer", ts=utcnow() - timedelta(days=3), realized=1.0, unrealized=0.0)
    await plane.store.add_pnl_points([old])
    day = await plane.trading.pnl("24h")
    week = await plane.trading.pnl("7d")
    assert len(week.points) == len(day.points) + 1
    buyer = next(c for c in day.cores if c.core == "buyer")
    assert buyer.realized < 0  # the fee of its one fill
    assert metric(plane, "risk_exposure") > 0


async def test_pnl_window_is_one_vocabulary_refused_with_one_message(plane: ControlPlane) -> None:
    assert PnlWindow.parse(" 7D ") is PnlWindow.WEEK
    assert PnlWindow.WEEK.delta == timedelta(days=7) and PnlWindow.DAY.delta == timedelta(hours=24)
    assert (await plane.trading.pnl("7d")).window is PnlWindow.WEEK
    with pytest.raises(InvalidInput) as refused:
        await plane.trading.pnl("1y")
    assert refused.value.message == "window must be one of 24h, 7d, not '1y'"


async def test_mode_is_derived_once_halt_outranking_read_only(plane: ControlPlane) -> None:
    redis = Actor.system("redis")

    async def trading_line() -> str | None:
        lines = (await plane.status.summary()).lines
        return next((line.value for line in lines if line.label == "trading"), None)

    assert plane.trading.mode is TradingMode.TRADING and await trading_line() is None
    await plane.trading.enter_read_only("Redis is down", redis)
    assert plane.trading.state().mode is TradingMode.READ_ONLY
    assert await trading_line() == "READ-ONLY: Redis is down"
    await plane.trading.halt(ADMIN, confirm=True, reason="drill")
    assert plane.trading.mode is TradingMode.HALTED
    assert await trading_line() == "HALTED: drill"
    checklist = {i.name: i for i in (await plane.checklist.run()).items}
    assert checklist["key metrics: trading"].reason == "HALTED: drill"
    await plane.trading.resume(ADMIN, confirm=True)
    assert plane.trading.mode is TradingMode.READ_ONLY
    await plane.trading.leave_read_only(redis)
    assert plane.trading.state().mode is TradingMode.TRADING and await trading_line() is None
