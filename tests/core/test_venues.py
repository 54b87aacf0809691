"""Venues: real ccxt code against loopback Binance/OKX fakes, error translation, paper fills."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ccxt.async_support as ccxt_async
import pytest
from pydantic import SecretStr

from core.config.settings import VenueCredentials
from core.errors import InsufficientFunds, VenueBanned, VenueRateLimited, VenueUnavailable
from core.models.venues import OrderRequest, OrderSide, OrderStatus, OrderType
from core.trading.venues.ccxt import CcxtVenue, known_exchange, rewrite_urls, translate
from core.trading.venues.paper import PaperVenue, RandomWalkPrices
from tests.fakes.exchanges import BinanceFake, FakeExchange, OkxFake

ORDER_PATHS = {"binance": "/api/v3/order", "okx": "/api/v5/trade/batch-orders"}
LOOKUP_PATHS = {"binance": "/api/v3/order", "okx": "/api/v5/trade/order"}


@pytest.fixture(params=["binance", "okx"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeExchange]:
    exchange: FakeExchange = BinanceFake() if request.param == "binance" else OkxFake()
    async with exchange:
        yield exchange


@pytest.fixture
async def venue(fake: FakeExchange) -> AsyncIterator[CcxtVenue]:
    creds = VenueCredentials(
        api_key=SecretStr("key-must-not-leak"),
        secret=SecretStr("secret-must-not-leak"),
        password=SecretStr("pass-must-not-leak"),
        api_url=fake.url,
    )
    v = CcxtVenue(fake.name, creds, timeout_seconds=0.4)
    await v.start()
    yield v
    await v.close()


@pytest.mark.slow
async def test_markets_tickers_balances_and_a_market_order_round_trip(
    fake: FakeExchange, venue: CcxtVenue
) -> None:
    ticker = await venue.ticker("BTC/USDT")
    assert ticker.last == pytest.approx(60000.0)
    assert ticker.bid < ticker.last < ticker.ask
    balances = await venue.balances()
    assert balances["USDT"].free == pytest.approx(100000.0)
    order = await venue.place(OrderRequest(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.01))
    assert order.status is OrderStatus.FILLED
    assert order.filled == pytest.approx(0.01)
    assert order.average == pytest.approx(60006.0)
    [created] = fake.created_orders()
    assert created.client_order_id == order.client_order_id  # ours, not the broker's prefix
    fetched = await venue.fetch_order("BTC/USDT", order.client_order_id)
    assert fetched is not None and fetched.status is OrderStatus.FILLED
    assert await venue.fetch_order("BTC/USDT", "lcunknown") is None
    assert (await venue.balances())["BTC"].free == pytest.approx(1.01)


async def test_limit_order_rests_and_cancels(fake: FakeExchange, venue: CcxtVenue) -> None:
    order = await venue.place(
        OrderRequest(
            symbol="ETH/USDT", side=OrderSide.SELL, amount=0.1, type=OrderType.LIMIT, price=9000
        )
    )
    assert order.status is OrderStatus.OPEN
    assert [o.client_order_id for o in await venue.open_orders("ETH/USDT")] == [
        order.client_order_id
    ]
    canceled = await venue.cancel(order)
    assert canceled.status is OrderStatus.CANCELED
    assert fake.orders[order.client_order_id].status == "canceled"


@pytest.mark.slow
async def test_order_post_timeout_is_looked_up_not_sent_twice(
    fake: FakeExchange, venue: CcxtVenue
) -> None:
    await venue.ticker("BTC/USDT")  # markets loaded
    fake.delay_next_orders(1.0)
    order = await venue.place(OrderRequest(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.02))
    assert order.status is OrderStatus.FILLED
    assert len(fake.created_orders()) == 1
    assert len(fake.calls("POST", ORDER_PATHS[fake.name])) == 1
    lookups = [
        r
        for r in fake.calls("GET", LOOKUP_PATHS[fake.name])
        if order.client_order_id in r.params.values()
    ]
    assert lookups, "the timed-out order was not looked up by its client order id"


@pytest.mark.slow
async def test_outage_and_ban_translate_into_the_error_tree(
    fake: FakeExchange, venue: CcxtVenue
) -> None:
    await venue.ticker("BTC/USDT")
    fake.fail(503)
    with pytest.raises(VenueUnavailable) as outage:
        await venue.probe()
    assert outage.value.retryable
    assert "503" in outage.value.message
    fake.fail(418)
    with pytest.raises(VenueBanned) as ban:
        await venue.probe()
    assert not ban.value.retryable
    for error in (outage.value, ban.value):
        assert "must-not-leak" not in str(error)
        assert "127.0.0.1" not in str(error)


def test_binance_429_is_a_rate_limit_and_418_a_ban() -> None:
    limited = translate("binance", ccxt_async.DDoSProtection("binance 429 Too Many Requests {}"))
    banned = translate("binance", ccxt_async.DDoSProtection("binance 418 I'm a teapot {}"))
    assert isinstance(limited, VenueRateLimited)
    assert isinstance(banned, VenueBanned)


def test_known_exchange_agrees_with_ccxts_exchange_list() -> None:
    assert all(known_exchange(name) for name in ccxt_async.exchanges)
    assert not any(known_exchange(name) for name in ("nosuchexchange", "base", "__init__", ""))


def test_api_url_replaces_scheme_and_host_of_every_rest_url_keeping_paths() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "sapi": "https://api.binance.com/sapi/v1",
        "nested": {"rest": "https://{hostname}"},
        "name": "not-a-url",
    }
    moved = rewrite_urls(urls, "http://127.0.0.1:9999")
    assert moved == {
        "public": "http://127.0.0.1:9999/api/v3",
        "sapi": "http://127.0.0.1:9999/sapi/v1",
        "nested": {"rest": "http://127.0.0.1:9999"},
        "name": "not-a-url",
    }


async def test_random_walk_is_reproducible_per_seed() -> None:
    a, b, c = RandomWalkPrices(7), RandomWalkPrices(7), RandomWalkPrices(8)
    first = [(await a.ticker("BTC/USDT")).last for _ in range(5)]
    second = [(await b.ticker("BTC/USDT")).last for _ in range(5)]
    other = [(await c.ticker("BTC/USDT")).last for _ in range(5)]
    assert first == second
    assert first != other
    assert len(set(first)) == 5  # it moves


async def test_paper_venue_fills_market_orders_and_keeps_balances() -> None:
    paper = PaperVenue("binance", RandomWalkPrices(1), start_balance={"USDT": 1000.0})
    order = await paper.place(OrderRequest(symbol="ETH/USDT", side=OrderSide.BUY, amount=0.1))
    assert order.status is OrderStatus.FILLED
    balances = await paper.balances()
    assert balances["ETH"].free == pytest.approx(0.1)
    assert balances["USDT"].free == pytest.approx(1000 - 0.1 * order.average * 1.001)  # type: ignore[operator]
    with pytest.raises(InsufficientFunds):
        await paper.place(OrderRequest(symbol="BTC/USDT", side=OrderSide.BUY, amount=1))
    resting = await paper.place(
        OrderRequest(
            symbol="ETH/USDT", side=OrderSide.SELL, amount=0.1, type=OrderType.LIMIT, price=1e6
        )
    )
    assert (await paper.balances())["ETH"].used == pytest.approx(0.1)
    await paper.cancel(resting)
    assert (await paper.balances())["ETH"].free == pytest.approx(0.1)
    assert await paper.open_orders() == []
