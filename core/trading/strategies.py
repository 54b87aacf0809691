"""Cores: the strategy plugins the engine runs, and the two that ship with it.

A core is registered by name, marked essential or not, and asked on each tick what it wants to
trade given the latest prices and its own positions. It decides; the engine places the orders
(through read-only, halt and risk checks), so a core never talks to a venue itself.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, Field

from core.models.venues import OrderSide, OrderType


class Intent(BaseModel):
    """An order a core wants placed."""

    symbol: str
    side: OrderSide
    amount: float = Field(gt=0)
    type: OrderType = OrderType.MARKET
    price: float | None = Field(default=None, gt=0)


class CoreContext(BaseModel):
    """What a core sees on one tick: last prices and its own positions."""

    prices: dict[str, float]
    positions: dict[str, float]


class Core(Protocol):
    """A strategy plugin."""

    name: str
    description: str
    essential: bool
    symbols: tuple[str, ...]

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        """The orders to place now (often none)."""


DEFAULT_LOTS: dict[str, float] = {"BTC/USDT": 0.002, "ETH/USDT": 0.05}


class _History:
    """The last ``size`` prices of each symbol."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._prices: dict[str, deque[float]] = {}

    def add(self, prices: dict[str, float]) -> None:
        for symbol, price in prices.items():
            self._prices.setdefault(symbol, deque(maxlen=self._size)).append(price)

    def of(self, symbol: str) -> list[float]:
        return list(self._prices.get(symbol, ()))


class MeanReversionCore:
    """Buys a lot when price is well below its recent mean, sells out when well above."""

    description = "Mean reversion on a rolling z-score; long only, small lots"

    def __init__(
        self,
        name: str = "mean_reversion",
        *,
        lots: dict[str, float] | None = None,
        window: int = 10,
        threshold: float = 1.0,
        max_lots: int = 3,
        essential: bool = True,
    ) -> None:
        self.name = name
        self.essential = essential
        self._lots = dict(lots or DEFAULT_LOTS)
        self.symbols = tuple(self._lots)
        self._history = _History(window)
        self._window = window
        self._threshold = threshold
        self._max_lots = max_lots

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        """Trade each symbol whose z-score crosses the threshold."""
        self._history.add(context.prices)
        intents = []
        for symbol, lot in self._lots.items():
            prices = self._history.of(symbol)
            if len(prices) < self._window or symbol not in context.prices:
                continue
            spread = statistics.pstdev(prices)
            if spread == 0:
                continue
            z = (context.prices[symbol] - statistics.fmean(prices)) / spread
            held = context.positions.get(symbol, 0.0)
            if z < -self._threshold and held < lot * self._max_lots - 1e-12:
                intents.append(Intent(symbol=symbol, side=OrderSide.BUY, amount=lot))
            elif z > self._threshold and held > 1e-12:
                intents.append(Intent(symbol=symbol, side=OrderSide.SELL, amount=held))
        return intents


class MomentumCore:
    """Holds one lot while the fast moving average is above the slow one."""

    description = "Momentum on a fast/slow moving-average cross; long only, one lot"

    def __init__(
        self,
        name: str = "momentum",
        *,
        lots: dict[str, float] | None = None,
        fast: int = 3,
        slow: int = 8,
        essential: bool = False,
    ) -> None:
        self.name = name
        self.essential = essential
        self._lots = dict(lots or DEFAULT_LOTS)
        self.symbols = tuple(self._lots)
        self._history = _History(slow)
        self._fast, self._slow = fast, slow

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        """Buy on an upward cross, sell out on a downward one."""
        self._history.add(context.prices)
        intents = []
        for symbol, lot in self._lots.items():
            prices = self._history.of(symbol)
            if len(prices) < self._slow:
                continue
            fast = statistics.fmean(prices[-self._fast :])
            slow = statistics.fmean(prices)
            held = context.positions.get(symbol, 0.0)
            if fast > slow and held < 1e-12:
                intents.append(Intent(symbol=symbol, side=OrderSide.BUY, amount=lot))
            elif fast < slow and held > 1e-12:
                intents.append(Intent(symbol=symbol, side=OrderSide.SELL, amount=held))
        return intents


def default_cores() -> list[Core]:
    """The cores a fresh engine runs."""
    return [MeanReversionCore(), MomentumCore()]
