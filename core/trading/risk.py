"""The risk manager: refuses orders that would take exposure over the configured limits.

Limits are per symbol (``RISK_MAX_SYMBOL_EXPOSURE``) and in total (``RISK_MAX_TOTAL_EXPOSURE``),
in USDT at the latest price. An order that reduces exposure is always allowed, so a position
over a lowered limit can still be closed.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.errors import RiskLimitExceeded
from core.models.venues import OrderSide
from core.trading.portfolio import Portfolio


class SymbolExposure(BaseModel):
    """Net position and exposure of one symbol across every core."""

    symbol: str
    quantity: float
    price: float | None
    exposure: float
    limit: float


class ExposureReport(BaseModel):
    """Total and per-symbol exposure against the limits (USDT)."""

    total: float
    limit: float
    symbols: list[SymbolExposure]


class RiskManager:
    """Checks each order against per-symbol and total exposure limits."""

    def __init__(
        self, portfolio: Portfolio, *, max_symbol_exposure: float, max_total_exposure: float
    ) -> None:
        self._portfolio = portfolio
        self.max_symbol = max_symbol_exposure
        self.max_total = max_total_exposure

    def check(self, symbol: str, side: OrderSide, amount: float, price: float) -> None:
        """Raise ``RiskLimitExceeded`` if the order would breach a limit."""
        current = self._portfolio.net_quantity(symbol)
        after = current + (amount if side is OrderSide.BUY else -amount)
        now_exposure, new_exposure = abs(current) * price, abs(after) * price
        if new_exposure <= now_exposure:
            return
        if new_exposure > self.max_symbol:
            raise RiskLimitExceeded(
                f"order refused: {symbol} exposure would be {new_exposure:.2f} USDT, over the "
                f"per-symbol limit of {self.max_symbol:.2f} USDT (RISK_MAX_SYMBOL_EXPOSURE)"
            )
        others = sum(v for s, v in self._portfolio.exposure_by_symbol().items() if s != symbol)
        if others + new_exposure > self.max_total:
            raise RiskLimitExceeded(
                f"order refused: total exposure would be {others + new_exposure:.2f} USDT, over "
                f"the limit of {self.max_total:.2f} USDT (RISK_MAX_TOTAL_EXPOSURE)"
            )

    def report(self) -> ExposureReport:
        """Exposure now, per symbol and in total."""
        symbols = [
            SymbolExposure(
                symbol=symbol,
                quantity=self._portfolio.net_quantity(symbol),
                price=self._portfolio.price(symbol),
                exposure=exposure,
                limit=self.max_symbol,
            )
            for symbol, exposure in self._portfolio.exposure_by_symbol().items()
        ]
        return ExposureReport(
            total=sum(s.exposure for s in symbols), limit=self.max_total, symbols=symbols
        )
