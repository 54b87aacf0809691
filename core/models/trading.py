"""The trading engine's vocabulary shared by every adapter and the store: PnL windows, the
trading mode, and the booked positions and paper accounts kept as state."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from core.models import utcnow
from core.models.venues import Order


class PnlWindow(enum.StrEnum):
    """How far back a PnL report looks (``/pnl 24h``, ``GET /api/v1/pnl?window=7d``)."""

    DAY = "24h"
    WEEK = "7d"

    @property
    def delta(self) -> timedelta:
        """The window's length."""
        return _DELTAS[self]

    @classmethod
    def parse(cls, text: str) -> PnlWindow:
        """The window named by ``text`` (case and spaces ignored), or the one refusal message."""
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise InvalidInput(f"window must be one of {', '.join(cls)}, not {text!r}") from None


_DELTAS = {PnlWindow.DAY: timedelta(hours=24), PnlWindow.WEEK: timedelta(days=7)}


class TradingMode(enum.StrEnum):
    """Whether the engine takes new orders; a halt outranks read-only mode."""

    TRADING = "trading"
    READ_ONLY = "read-only"
    HALTED = "halted"


class Holding(BaseModel):
    """One core's booked position in one symbol, as the store keeps it: quantity at average
    cost, the PnL realized so far (fees taken off), and the last mark seen (for exposure before
    the first ticker after a restart)."""

    core: str
    symbol: str
    quantity: float
    average_cost: float
    realized: float
    mark: float | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class VenueAccount(BaseModel):
    """A paper venue's account as the store keeps it: balances, resting orders and the orders
    it finished lately (a paper venue is its own exchange: without this a restart forgets it)."""

    venue: str
    free: dict[str, float]
    used: dict[str, float] = Field(default_factory=dict)
    orders: list[Order] = Field(default_factory=list)
    placed: int = 0  # orders placed so far (numbers the venue's order ids)
    updated_at: datetime = Field(default_factory=utcnow)
