"""The portfolio: positions per core and symbol, realized and unrealized PnL, and exposure.

Positions use average cost; fees reduce realized PnL. Marks (last prices) come from the tickers
the engine reads, so unrealized PnL and exposure move with the market between fills.

The portfolio is a cache of the store's booked positions (``Holding``): the engine computes a
fill's effect with ``fill``, saves it with the order in one transaction, then ``put``s it here;
``load`` rebuilds everything from the store at start, on takeover and after a restore.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from pydantic import BaseModel

from core.models.trading import Holding
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


def _unbooked(order: Order, booked: Order | None) -> tuple[float, float | None, float]:
    """Quantity, average price and fee of the part of ``order`` filled since ``booked``."""
    if booked is None or booked.filled <= 0 or booked.average is None:
        return order.filled, order.average, order.fee
    done = order.filled - booked.filled
    if done <= _EPSILON or order.average is None:
        return 0.0, None, 0.0
    price = (order.average * order.filled - booked.average * booked.filled) / done
    return done, price, order.fee - booked.fee


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

    def fill(self, core: str, order: Order, booked: Order | None = None) -> Holding | None:
        """``core``'s position in ``order``'s symbol once the part of ``order`` filled since
        ``booked`` (the same order as last booked) is applied; None when nothing new filled.
        Nothing changes here until the result is ``put`` (after the store has it)."""
        done, price, fee = _unbooked(order, booked)
        if done <= _EPSILON or price is None:
            return None
        holding = replace(self._holdings.get((core, order.symbol), _Holding()))
        signed = done if order.side is OrderSide.BUY else -done
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
        holding.realized -= fee
        return self._as_holding(core, order.symbol, holding, self._marks.get(order.symbol, price))

    def put(self, holding: Holding) -> None:
        """Adopt one booked position (as just saved to the store)."""
        self._holdings[(holding.core, holding.symbol)] = _Holding(
            holding.quantity, holding.average_cost, holding.realized
        )
        if holding.mark is not None:
            self._marks.setdefault(holding.symbol, holding.mark)

    def load(self, holdings: Iterable[Holding]) -> None:
        """Replace every position with the store's; a saved mark stands in until a ticker."""
        self._holdings = {}
        for holding in holdings:
            self.put(holding)

    def holdings(self) -> list[Holding]:
        """Every position as the store keeps it, with the latest marks."""
        return [
            self._as_holding(core, symbol, h, self._marks.get(symbol))
            for (core, symbol), h in sorted(self._holdings.items())
        ]

    @staticmethod
    def _as_holding(core: str, symbol: str, h: _Holding, mark: float | None) -> Holding:
        return Holding(
            core=core,
            symbol=symbol,
            quantity=h.quantity,
            average_cost=h.average_cost,
            realized=h.realized,
            mark=mark,
        )

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
