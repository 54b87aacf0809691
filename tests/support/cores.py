"""Small trading cores for tests: one that always signals, one that crashes then recovers."""

from __future__ import annotations

from collections.abc import Sequence

from core.models.venues import OrderSide
from core.trading.strategies import CoreContext, Intent


class BuyEveryTick:
    """A test core: buys one small lot of BTC on every tick."""

    description = "test core"
    essential = False
    symbols = ("BTC/USDT",)

    def __init__(self, name: str = "buyer") -> None:
        self.name = name

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        return [Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)]


class CrashTwice:
    """A test core that raises on its first two ticks, then works."""

    description = "crashes"
    essential = False
    symbols = ("ETH/USDT",)
    name = "crashy"

    def __init__(self) -> None:
        self.calls = 0

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError(f"boom {self.calls}")
        return []
