"""The portfolio: positions per core and symbol, realized and unrealized PnL, and exposure.

Positions use average cost; fees reduce realized PnL. Marks (last prices) come from the tickers
the engine reads, so unrealized PnL and exposure move with the market between fills.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from core.models.venues import Order, OrderSide

_EPSILON = 1e-12


class Position(BaseModel):
    """One core's holding of one symbol."""

    core: str
    symbol: str
    quantity: float
    average_cost: float
    realized: float
    mark: float | None
    unrealized: float
    exposure: float


class CorePnl(BaseModel):
    """One core's PnL in USDT."""

    core: str
    realized: float
    unrealized: float
    total: float


@dataclass
class _Holding:
    quantity: float = 0.0
    average_cost: float = 0.0
    realized: float = 0.0


def _sign(value: float) -> int:
    return (value > _EPSILON) - (value < -_EPSILON)


class Portfolio:
    """Positions and PnL, updated from fills and marks."""

    def __init__(self) -> None:
        self._holdings: dict[tuple[str, str], _Holding] = {}
        self._marks: dict[str, float] = {}

    def mark(self, symbol: str, price: float) -> None:
        """Record the latest price of ``symbol``."""
        self._marks[symbol] = price

    def price(self, symbol: str) -> float | None:
        """The latest mark of ``symbol``, if any."""
        return self._marks.get(symbol)

    def apply_fill(self, core: str, order: Order) -> None:
        """Book the filled part of ``order`` against ``core``'s position."""
        if order.filled <= 0 or order.average is None:
            return
        holding = self._holdings.setdefault((core, order.symbol), _Holding())
        signed = order.filled if order.side is OrderSide.BUY else -order.filled
        price = order.average
        q = holding.quantity
        if _sign(q) == 0 or _sign(q) == _sign(signed):
            total = abs(q) + abs(signed)
            holding.average_cost = (holding.average_cost * abs(q) + price * abs(signed)) / total
            holding.quantity = q + signed
        else:
            closing = min(abs(signed), abs(q))
            holding.realized += closing * (price - holding.average_cost) * _sign(q)
            holding.quantity = q + signed
            if _sign(holding.quantity) == 0:
                holding.quantity, holding.average_cost = 0.0, 0.0
            elif _sign(holding.quantity) != _sign(q):
                holding.average_cost = price
        holding.realized -= order.fee
        self._marks.setdefault(order.symbol, price)

    def quantities(self, core: str) -> dict[str, float]:
        """``core``'s quantity per symbol."""
        return {s: h.quantity for (c, s), h in self._holdings.items() if c == core}

    def net_quantity(self, symbol: str) -> float:
        """All cores' quantity of ``symbol`` together."""
        return sum(h.quantity for (_, s), h in self._holdings.items() if s == symbol)

    def positions(self, core: str | None = None) -> list[Position]:
        """Every position (optionally of one core), with its unrealized PnL."""
        result = []
        for (c, symbol), h in sorted(self._holdings.items()):
            if core is not None and c != core:
                continue
            mark = self._marks.get(symbol)
            unrealized = h.quantity * (mark - h.average_cost) if mark is not None else 0.0
            result.append(
                Position(
                    core=c,
                    symbol=symbol,
                    quantity=h.quantity,
                    average_cost=h.average_cost,
                    realized=h.realized,
                    mark=mark,
                    unrealized=unrealized,
                    exposure=abs(h.quantity) * (mark or h.average_cost),
                )
            )
        return result

    def pnl(self, core: str) -> CorePnl:
        """``core``'s realized and unrealized PnL."""
        realized = unrealized = 0.0
        for p in self.positions(core):
            realized += p.realized
            unrealized += p.unrealized
        return CorePnl(
            core=core, realized=realized, unrealized=unrealized, total=realized + unrealized
        )

    def exposure_by_symbol(self) -> dict[str, float]:
        """Absolute net exposure per symbol in USDT at the latest marks."""
        symbols = {s for (_, s) in self._holdings}
        result = {}
        for symbol in sorted(symbols):
            net = self.net_quantity(symbol)
            price = self._marks.get(symbol, 0.0)
            result[symbol] = abs(net) * price
        return result

    def total_exposure(self) -> float:
        """Sum of every symbol's absolute net exposure."""
        return sum(self.exposure_by_symbol().values())
