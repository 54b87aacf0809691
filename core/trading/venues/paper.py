"""``PaperVenue``: simulated fills and balances behind the ``Venue`` protocol.

Prices come from a ``PriceSource``: ``RandomWalkPrices`` (seeded, so a run is reproducible, and
never touching the network) or a real venue's public tickers (a ``CcxtVenue`` without keys).
Market orders fill at once at the touch; limit orders rest, with their funds reserved, until a
later ticker crosses their price.

A paper venue is its own exchange, so its account (balances, resting orders, the orders it
finished lately) is state: kept in the store through a ``PaperLedger`` after every change, read
back on first use after a restart or a takeover. A restore does not rewind it (an exchange does
not forget orders because we restored a backup): the live account is written back over the
restored one, and the engine's reconciliation then adopts what the backup did not know.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from core.errors import InsufficientFunds, InvalidInput, NotFound, OrderRejected
from core.models import utcnow
from core.models.trading import VenueAccount
from core.models.venues import (
    Balance,
    Order,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    Ticker,
    VenueMode,
)

DEFAULT_START_PRICES: dict[str, float] = {
    "BTC/USDT": 60000.0,
    "ETH/USDT": 3000.0,
    "SOL/USDT": 150.0,
}
_SPREAD = 0.0002  # half-spread around the mid, as a fraction
MAX_REMEMBERED_ORDERS = 10_000
# Finished orders written with the account, so a lost answer can be looked up after a restart
# (kept small: the account is written on every paper fill).
SAVED_FINISHED_ORDERS = 20


class PaperLedger(Protocol):
    """Where a paper venue keeps its account (the store)."""

    async def venue_account(self, venue: str) -> VenueAccount | None:
        """The saved account, or None."""

    async def save_venue_account(self, account: VenueAccount) -> None:
        """Save the account."""


class PriceSource(Protocol):
    """Where a paper venue reads its prices."""

    async def ticker(self, symbol: str) -> Ticker:
        """The current ticker of ``symbol``."""

    async def probe(self) -> None:
        """Raise a ``VenueError`` unless prices can be read."""


class RandomWalkPrices:
    """Seeded geometric random walk per symbol: one step per ticker read, reproducible."""

    def __init__(
        self,
        seed: int,
        start: dict[str, float] | None = None,
        *,
        volatility: float = 0.002,
    ) -> None:
        self._seed = seed
        self._prices = dict(start or DEFAULT_START_PRICES)
        self._volatility = volatility
        self._rngs: dict[str, random.Random] = {}

    async def ticker(self, symbol: str) -> Ticker:
        """Advance ``symbol`` one step and return its ticker."""
        if symbol not in self._prices:
            raise InvalidInput(f"no simulated prices for {symbol}")
        rng = self._rngs.get(symbol)
        if rng is None:
            # Not cryptographic: a reproducible simulation keyed by seed and symbol.
            rng = random.Random(self._seed * 1_000_003 + zlib.crc32(symbol.encode()))  # noqa: S311
            self._rngs[symbol] = rng
        mid = self._prices[symbol] * math.exp(rng.gauss(0.0, self._volatility))
        self._prices[symbol] = mid
        return Ticker(symbol=symbol, bid=mid * (1 - _SPREAD), ask=mid * (1 + _SPREAD), last=mid)

    async def probe(self) -> None:
        """Simulated prices are always available."""


class PaperVenue:
    """Fills and balances kept in memory, named after the venue it stands in for."""

    mode = VenueMode.PAPER

    def __init__(
        self,
        name: str,
        prices: PriceSource,
        *,
        start_balance: dict[str, float] | None = None,
        fee_rate: float = 0.001,
        ledger: PaperLedger | None = None,
    ) -> None:
        self.name = name
        self._prices = prices
        self._fee_rate = fee_rate
        self._free: dict[str, float] = dict(start_balance or {"USDT": 100000.0})
        self._used: dict[str, float] = {}
        self._orders: dict[str, Order] = {}
        self._placed = 0
        self._ledger = ledger
        self._loaded = ledger is None

    async def _load(self) -> None:
        """Read the saved account once, before the first call that uses it."""
        if self._loaded or self._ledger is None:
            return
        account = await self._ledger.venue_account(self.name)
        if account is not None:
            self._free, self._used = dict(account.free), dict(account.used)
            self._orders = {o.client_order_id: o for o in account.orders}
            self._placed = account.placed
        self._loaded = True

    async def persist(self) -> None:
        """Write the account as it is now (after every change; after a restore, over the
        restored one)."""
        if self._ledger is None or not self._loaded:
            return
        finished = [o for o in self._orders.values() if o.status is not OrderStatus.OPEN]
        kept = [o for o in self._orders.values() if o.status is OrderStatus.OPEN]
        await self._ledger.save_venue_account(
            VenueAccount(
                venue=self.name,
                free=self._free,
                used=self._used,
                orders=kept + finished[-SAVED_FINISHED_ORDERS:],
                placed=self._placed,
            )
        )

    async def filled_since(self, since: datetime, symbols: Sequence[str]) -> list[Order]:
        """Orders of ``symbols`` with fills updated at or after ``since``."""
        await self._load()
        return [
            o
            for o in self._orders.values()
            if o.filled > 0 and o.updated_at >= since and o.symbol in symbols
        ]

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ticker(self, symbol: str) -> Ticker:
        """The source's ticker; resting limit orders that it crosses fill."""
        await self._load()
        ticker = await self._prices.ticker(symbol)
        filled = False
        for order in [o for o in self._orders.values() if o.status is OrderStatus.OPEN]:
            if order.symbol == symbol:
                filled = self._maybe_fill_limit(order, ticker) or filled
        if filled:  # written on fills only, never per tick
            await self.persist()
        return ticker

    async def balances(self) -> dict[str, Balance]:
        """Simulated balances by asset."""
        await self._load()
        assets = {a for a in {*self._free, *self._used} if self._free.get(a) or self._used.get(a)}
        return {
            a: Balance(asset=a, free=self._free.get(a, 0.0), used=self._used.get(a, 0.0))
            for a in sorted(assets)
        }

    def _take(self, asset: str, amount: float, *, reserve: bool) -> None:
        if self._free.get(asset, 0.0) + 1e-12 < amount:
            raise InsufficientFunds(
                f"{self.name} (paper): {amount:.8g} {asset} needed, "
                f"{self._free.get(asset, 0.0):.8g} free"
            )
        self._free[asset] = self._free.get(asset, 0.0) - amount
        if reserve:
            self._used[asset] = self._used.get(asset, 0.0) + amount

    def _credit(self, asset: str, amount: float) -> None:
        self._free[asset] = self._free.get(asset, 0.0) + amount

    async def place(self, request: OrderRequest) -> Order:
        """Fill a market order at the touch, or rest a limit order with its funds reserved."""
        await self._load()
        if request.client_order_id in self._orders:
            raise OrderRejected(f"{self.name} (paper): duplicate client order id")
        base, _, quote = request.symbol.partition("/")
        ticker = await self._prices.ticker(request.symbol)
        now = utcnow()
        if request.type is OrderType.LIMIT:
            if request.price is None:
                raise InvalidInput("a limit order needs a price")
            if request.side is OrderSide.BUY:
                self._take(
                    quote, request.amount * request.price * (1 + self._fee_rate), reserve=True
                )
            else:
                self._take(base, request.amount, reserve=True)
            order = Order(
                client_order_id=request.client_order_id,
                venue_order_id=self._next_id(),
                venue=self.name,
                symbol=request.symbol,
                side=request.side,
                type=request.type,
                amount=request.amount,
                price=request.price,
                status=OrderStatus.OPEN,
                created_at=now,
                updated_at=now,
            )
            self._orders[order.client_order_id] = order
            self._maybe_fill_limit(order, ticker)
            await self.persist()
            return self._orders[order.client_order_id]
        price = ticker.ask if request.side is OrderSide.BUY else ticker.bid
        cost = request.amount * price
        fee = cost * self._fee_rate
        if request.side is OrderSide.BUY:
            self._take(quote, cost + fee, reserve=False)
            self._credit(base, request.amount)
        else:
            self._take(base, request.amount, reserve=False)
            self._credit(quote, cost - fee)
        order = Order(
            client_order_id=request.client_order_id,
            venue_order_id=self._next_id(),
            venue=self.name,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            amount=request.amount,
            filled=request.amount,
            average=price,
            fee=fee,
            status=OrderStatus.FILLED,
            created_at=now,
            updated_at=now,
        )
        self._orders[order.client_order_id] = order
        self._forget_old()
        await self.persist()
        return order

    def _next_id(self) -> str:
        self._placed += 1
        return f"paper-{self._placed}"

    def _forget_old(self) -> None:
        """Keep memory bounded in long runs: drop the oldest finished orders."""
        excess = len(self._orders) - MAX_REMEMBERED_ORDERS
        if excess <= 0:
            return
        finished = [k for k, o in self._orders.items() if o.status is not OrderStatus.OPEN]
        for key in finished[:excess]:
            del self._orders[key]

    def _maybe_fill_limit(self, order: Order, ticker: Ticker) -> bool:
        assert order.price is not None  # noqa: S101 - limit orders always have one
        crossed = (
            ticker.ask <= order.price if order.side is OrderSide.BUY else ticker.bid >= order.price
        )
        if not crossed:
            return False
        base, _, quote = order.symbol.partition("/")
        cost = order.amount * order.price
        fee = cost * self._fee_rate
        if order.side is OrderSide.BUY:
            self._used[quote] = self._used.get(quote, 0.0) - cost * (1 + self._fee_rate)
            self._credit(base, order.amount)
        else:
            self._used[base] = self._used.get(base, 0.0) - order.amount
            self._credit(quote, cost - fee)
        self._orders[order.client_order_id] = order.model_copy(
            update={
                "filled": order.amount,
                "average": order.price,
                "fee": fee,
                "status": OrderStatus.FILLED,
                "updated_at": utcnow(),
            }
        )
        return True

    async def fetch_order(self, symbol: str, client_order_id: str) -> Order | None:
        """A paper order by client order id."""
        await self._load()
        return self._orders.get(client_order_id)

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Resting paper orders."""
        await self._load()
        return [
            o
            for o in self._orders.values()
            if o.status is OrderStatus.OPEN and symbol in (None, o.symbol)
        ]

    async def cancel(self, order: Order) -> Order:
        """Cancel a resting paper order and release its funds."""
        await self._load()
        current = self._orders.get(order.client_order_id)
        if current is None:
            raise NotFound(f"{self.name} (paper): no order {order.client_order_id}")
        if current.status is not OrderStatus.OPEN:
            return current
        base, _, quote = current.symbol.partition("/")
        assert current.price is not None  # noqa: S101
        if current.side is OrderSide.BUY:
            reserved = current.amount * current.price * (1 + self._fee_rate)
            self._used[quote] = self._used.get(quote, 0.0) - reserved
            self._credit(quote, reserved)
        else:
            self._used[base] = self._used.get(base, 0.0) - current.amount
            self._credit(base, current.amount)
        canceled = current.model_copy(
            update={"status": OrderStatus.CANCELED, "updated_at": utcnow()}
        )
        self._orders[current.client_order_id] = canceled
        await self.persist()
        return canceled

    async def probe(self) -> None:
        """A paper venue is as available as its prices."""
        await self._prices.probe()
