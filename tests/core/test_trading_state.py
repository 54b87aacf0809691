"""Positions, orders, balances and PnL are state (issue 16 points 1 and 2): they survive a
restart, a worker takeover and a restore on both stores, PnL windows are changes from recorded
points, and the store is reconciled with the venue (paper, and ccxt against the Binance fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.control_plane import ControlPlane
from core.errors import RiskLimitExceeded
from core.models import Actor, ActorKind, Role, utcnow
from core.models.trading import PnlWindow
from core.models.venues import OrderSide, OrderStatus, OrderType
from core.platform.roles import ProcessRole
from core.store import PnlPoint
from core.trading.engine import ADOPTED_CORE
from core.trading.strategies import Intent
from tests.conftest import RedisFactory, SettingsFactory
from tests.fakes.exchanges import BinanceFake, credentials_env
from tests.support.waiting import eventually

ADMIN = Actor(kind=ActorKind.API, id="admin-1", name="admin-1", role=Role.ADMIN)
QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600, "pnl_snapshot_seconds": 3600}

Build = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture(params=["sqlite", "redis"])
async def build(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, make_redis: RedisFactory
) -> AsyncIterator[Build]:
    """Build control planes on one state dir (and, for Redis, one redis-server): each new one
    is a restart of the last (or, with ``state_dir``, another replica sharing Redis)."""
    shared: dict[str, Any] = {}
    if request.param == "redis":
        shared = {"enable_redis": True, "redis_url": make_redis().url, "lease_ttl_seconds": 2}
    opened: list[ControlPlane] = []

    async def make(*, lead: bool = True, **env: Any) -> ControlPlane:
        plane = ControlPlane(make_settings(**{**QUIET, **shared, **env}))
        await plane.start()
        opened.append(plane)
        if lead:
            await eventually(lambda: plane.duties.active)  # trading started (lease won with Redis)
        return plane

    yield make
    for plane in reversed(opened):
        await plane.close()


def buy(symbol: str, amount: float, **extra: Any) -> Intent:
    return Intent(symbol=symbol, side=OrderSide.BUY, amount=amount, **extra)


async def trade(plane: ControlPlane) -> None:
    """Fills on two symbols and two cores (a partial close realizes PnL), and a resting limit."""
    await plane.trading.place_order("momentum", buy("BTC/USDT", 0.002))
    await plane.trading.place_order("mean_reversion", buy("ETH/USDT", 0.02))
    await plane.trading.place_order(
        "momentum", Intent(symbol="BTC/USDT", side=OrderSide.SELL, amount=0.0005)
    )
    await plane.trading.place_order(
        "mean_reversion", buy("ETH/USDT", 0.1, type=OrderType.LIMIT, price=1000.0)
    )


async def picture(plane: ControlPlane) -> dict[str, Any]:
    """What must be equal before and after: exposure, positions, PnL, orders, paper account."""
    venue = plane.venues.active()
    return {
        "exposure": plane.trading.exposure().total,
        "positions": [
            (p.core, p.symbol, p.quantity, p.average_cost, p.realized)
            for p in plane.trading.positions()
        ],
        "pnl": {c.core: round(c.total, 9) for c in (await plane.trading.pnl()).cores},
        "orders": [(o.client_order_id, o.status) for o in await plane.trading.orders(limit=50)],
        "balances": await venue.balances(),
        "resting": [o.client_order_id for o in await venue.open_orders()],
    }


async def test_exposure_pnl_orders_and_paper_account_survive_a_restart(build: Build) -> None:
    plane = await build()
    await trade(plane)
    before = await picture(plane)
    assert before["exposure"] > 100  # about 120 USDT, as in the issue
    assert len(before["resting"]) == 1
    await plane.close()

    again = await build()
    after = await picture(again)
    assert after == before
    assert again.metrics.registry.get_sample_value("risk_exposure") == pytest.approx(
        before["exposure"]
    )
    # The resting paper order is still there, so the halt cancels it and frees its funds.
    report = await again.trading.halt(ADMIN, confirm=True, reason="test")
    assert [o.client_order_id for o in report.canceled] == before["resting"]
    assert (await again.venues.active().balances())["USDT"].used == pytest.approx(0.0)


async def test_risk_limits_hold_across_a_restart(build: Build) -> None:
    plane = await build(risk_max_total_exposure=200, risk_max_symbol_exposure=200)
    await plane.trading.place_order("momentum", buy("BTC/USDT", 0.002))  # ~120 USDT
    await plane.close()
    again = await build(risk_max_total_exposure=200, risk_max_symbol_exposure=200)
    # With the portfolio forgotten this would pass (0 + 120 < 200).
    with pytest.raises(RiskLimitExceeded):
        await again.trading.place_order("momentum", buy("BTC/USDT", 0.002))


async def test_pnl_windows_are_changes_from_recorded_points_across_a_restart(
    build: Build,
) -> None:
    plane = await build()
    await plane.trading.place_order("momentum", buy("BTC/USDT", 0.002))
    fresh = await plane.trading.pnl(PnlWindow.DAY)
    assert not fresh.full_window and fresh.change_since is None
    assert fresh.label == "24h: no history recorded yet"
    now = utcnow()
    # Recorded by an earlier run: 30 h ago momentum stood at +5, 3 h ago at +7 (7d: no older).
    await plane.store.add_pnl_points(
        [
            PnlPoint(core="momentum", ts=now - timedelta(hours=30), realized=5.0, unrealized=0),
            PnlPoint(core="momentum", ts=now - timedelta(hours=3), realized=7.0, unrealized=0),
        ]
    )
    await plane.close()
    again = await build()
    total = again.trading.portfolio.pnl("momentum").total
    day = await again.trading.pnl(PnlWindow.DAY)
    assert day.full_window and day.label == "last 24h"
    assert day.core_changes["momentum"] == pytest.approx(total - 5.0)
    assert day.change_since == now - timedelta(hours=30)
    week = await again.trading.pnl(PnlWindow.WEEK)
    assert not week.full_window  # history starts 30 h ago: said so, not called 7d
    assert week.change_since == now - timedelta(hours=30)
    assert week.label.startswith("since ") and "(history < 7d)" in week.label
    [line] = [s for s in await again.trading.status_lines() if s.label.startswith("PnL")]
    assert line.label == "PnL 24h" and f"{total - 5.0:+,.2f} USDT" in line.value


async def test_restore_keeps_what_the_venue_holds_and_adopts_orders_placed_after_the_backup(
    build: Build,
) -> None:
    plane = await build()
    await plane.trading.place_order("momentum", buy("BTC/USDT", 0.002))
    backup = await plane.backups.create(ADMIN)
    # After the backup: a fill and a resting order the backup does not know.
    late = await plane.trading.place_order("mean_reversion", buy("ETH/USDT", 0.02))
    resting = await plane.trading.place_order(
        "mean_reversion", buy("ETH/USDT", 0.1, type=OrderType.LIMIT, price=1000.0)
    )
    exposure = plane.trading.exposure().total
    balances = await plane.venues.active().balances()

    await plane.backups.restore(backup.id, ADMIN, confirm=True)
    await eventually(lambda: plane.trading.exposure().total > 0)

    assert plane.trading.exposure().total == pytest.approx(exposure)
    assert await plane.venues.active().balances() == balances  # the paper venue is not rewound
    orders = {o.client_order_id: o for o in await plane.trading.orders(limit=50)}
    assert orders[late.client_order_id].core == ADOPTED_CORE
    assert orders[late.client_order_id].status is OrderStatus.FILLED
    assert orders[resting.client_order_id].status is OrderStatus.OPEN
    [entry] = [e for e in await plane.audit.tail(30) if e.action == "trading.reconcile"]
    assert entry.actor.describe().startswith("system")
    assert "1 open order(s) adopted" in entry.detail
    assert resting.client_order_id in entry.after["adopted"]
    titles = [i.title for i in await plane.incidents.list(open_only=True)]
    assert "Venue reconciliation found differences" in titles
    # Adopted, so the halt cancels it.
    report = await plane.trading.halt(ADMIN, confirm=True, reason="after restore")
    assert [o.client_order_id for o in report.canceled] == [resting.client_order_id]
    assert await plane.venues.active().open_orders() == []


async def test_a_standby_taking_over_trades_on_the_leaders_positions(
    make_settings: SettingsFactory, make_redis: RedisFactory, tmp_path: Path
) -> None:
    """Redis only: with SQLite one process owns the state dir, and its takeover is a restart."""
    redis = make_redis()
    planes = []
    try:
        for name in ("one", "two"):
            plane = ControlPlane(
                make_settings(
                    **QUIET,
                    lunia_state_dir=tmp_path / name,
                    enable_redis=True,
                    redis_url=redis.url,
                    lease_ttl_seconds=2,
                )
            )
            await plane.start()
            planes.append(plane)
        leader, standby = planes
        await eventually(lambda: leader.duties.active)
        assert standby.standing_by
        await trade(leader)
        before = await picture(leader)
        # Standing by, it already shows the leader's booked positions (re-read every 2 s).
        await eventually(lambda: standby.trading.exposure().total == before["exposure"], timeout=10)
        await leader.close()  # hands the lease over
        await eventually(lambda: standby.duties.active)
        assert await picture(standby) == before
    finally:
        for plane in reversed(planes):
            await plane.close()


async def test_a_restore_through_an_api_replica_is_caught_up_by_the_trading_worker(
    make_settings: SettingsFactory, make_redis: RedisFactory, tmp_path: Path
) -> None:
    """Redis only: the worker learns of the restore before its next order (or within 2 s)."""
    redis = make_redis()
    planes = []
    try:
        for name, role in (("worker", ProcessRole.WORKER), ("api", ProcessRole.API)):
            plane = ControlPlane(
                make_settings(
                    **QUIET,
                    lunia_state_dir=tmp_path / name,
                    enable_redis=True,
                    redis_url=redis.url,
                    backup_signing_key="one-key-for-every-replica",
                ),
                role=role,
            )
            await plane.start()
            planes.append(plane)
        worker, api = planes
        await eventually(lambda: worker.duties.active)
        await worker.trading.place_order("momentum", buy("BTC/USDT", 0.002))
        backup = await api.backups.create(ADMIN)
        late = await worker.trading.place_order("mean_reversion", buy("ETH/USDT", 0.02))
        exposure = worker.trading.exposure().total

        await api.backups.restore(backup.id, ADMIN, confirm=True)
        # The very next order is checked against the caught-up positions, not the old memory.
        await worker.trading.place_order("momentum", buy("BTC/USDT", 0.001))
        positions = {(p.core, p.symbol): p.quantity for p in worker.trading.positions()}
        assert positions == {
            ("momentum", "BTC/USDT"): pytest.approx(0.003),
            (ADOPTED_CORE, "ETH/USDT"): pytest.approx(0.02),
        }
        assert worker.trading.exposure().total > exposure
        orders = {o.client_order_id: o for o in await worker.trading.orders(limit=50)}
        assert orders[late.client_order_id].core == ADOPTED_CORE
        actions = [e.action for e in await api.audit.tail(20)]
        assert "trading.rebuild" in actions and "trading.reconcile" in actions
    finally:
        for plane in reversed(planes):
            await plane.close()


# -- reconciling with a ccxt venue (the loopback Binance fake) -----------------------------------


@pytest.fixture
async def binance(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BinanceFake]:
    async with BinanceFake() as fake:
        for name, value in credentials_env(fake).items():
            monkeypatch.setenv(name, value)
        yield fake


async def test_start_adopts_unknown_open_orders_and_books_fills_missed_while_down(
    build: Build, binance: BinanceFake
) -> None:
    plane = await build(venue_timeout_seconds=2)
    assert plane.venues.active().mode.value == "live"
    resting = await plane.trading.place_order(
        "momentum", buy("BTC/USDT", 0.01, type=OrderType.LIMIT, price=59000.0)
    )
    await plane.close()
    # While down: our resting order fills, someone opens an order, another fills at once.
    ours = binance.orders[resting.client_order_id]
    ours.status, ours.filled, ours.average = "filled", 0.01, 59000.0
    stranger = binance.create("lcforeign0open", "BTC/USDT", "buy", "limit", 0.02, 58000.0)
    filled = binance.create("lcforeign0fill", "ETH/USDT", "buy", "market", 0.5, None)
    assert not isinstance(stranger, str) and not isinstance(filled, str)

    again = await build(venue_timeout_seconds=2)
    orders = {o.client_order_id: o for o in await again.trading.orders(limit=50)}
    assert orders[resting.client_order_id].status is OrderStatus.FILLED
    assert orders["lcforeign0open"].core == ADOPTED_CORE
    assert orders["lcforeign0open"].status is OrderStatus.OPEN
    [trade_only] = [o for o in orders.values() if o.venue_order_id == str(filled.order_id)]
    assert trade_only.core == ADOPTED_CORE and trade_only.filled == pytest.approx(0.5)
    positions = {(p.core, p.symbol): p.quantity for p in again.trading.positions()}
    assert positions == {
        ("momentum", "BTC/USDT"): pytest.approx(0.01),
        (ADOPTED_CORE, "ETH/USDT"): pytest.approx(0.5),
    }
    [entry] = [e for e in await again.audit.tail(30) if e.action == "trading.reconcile"]
    assert entry.after["adopted"] == ["lcforeign0open"]
    assert resting.client_order_id in entry.after["fills"]
    report = await again.trading.halt(ADMIN, confirm=True, reason="stranger order")
    assert [o.client_order_id for o in report.canceled] == ["lcforeign0open"]
    assert binance.orders["lcforeign0open"].status == "canceled"
    # A second start finds nothing new: nothing booked twice.
    await again.close()
    third = await build(venue_timeout_seconds=2)
    assert {(p.core, p.symbol): p.quantity for p in third.trading.positions()} == positions
    assert len([e for e in await third.audit.tail(50) if e.action == "trading.reconcile"]) == 1


async def test_a_venue_down_at_start_is_reported_and_trading_starts_on_the_stored_positions(
    build: Build, binance: BinanceFake
) -> None:
    plane = await build(venue_timeout_seconds=2)
    await plane.trading.place_order("momentum", buy("BTC/USDT", 0.002))
    exposure = plane.trading.exposure().total
    await plane.close()
    binance.fail(503)

    again = await build(venue_timeout_seconds=2)
    assert again.trading.exposure().total == pytest.approx(exposure)
    [incident] = [
        i
        for i in await again.incidents.list(open_only=True)
        if i.title == "Venue reconciliation could not check every venue"
    ]
    [entry] = [e for e in await again.audit.tail(30) if e.action == "trading.reconcile"]
    assert entry.after["errors"] and entry.after["errors"][0].startswith("binance: ")
    assert "could not check: binance" in entry.detail
