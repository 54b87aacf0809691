"""Venues: the one protocol every exchange connection speaks, and the order models it trades in.

Two implementations live beside it: ``CcxtVenue`` (any ccxt exchange, live or sandbox) and
``PaperVenue`` (simulated fills and balances on simulated or real public prices). Every order
carries a client order id chosen by us, so a request whose answer was lost can be looked up
instead of being sent twice.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

from core.models import utcnow


class OrderSide(enum.StrEnum):
    """Buy or sell."""

    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    """Market (fill now) or limit (rest at a price)."""

    MARKET = "market"
    LIMIT = "limit"


class OrderStatus(enum.StrEnum):
    """Where an order is in its life."""

    NEW = "new"  # recorded, not yet acknowledged by the venue
    OPEN = "open"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    FAILED = "failed"  # the venue could not be reached; nothing is known to have traded


class VenueMode(enum.StrEnum):
    """How a venue trades right now."""

    LIVE = "live"
    SANDBOX = "sandbox"
    PAPER = "paper"


class Ticker(BaseModel):
    """Best bid/ask and last price of one symbol."""

    symbol: str
    bid: float
    ask: float
    last: float
    ts: datetime = Field(default_factory=utcnow)


class Balance(BaseModel):
    """One asset's balance on a venue."""

    asset: str
    free: float
    used: float = 0.0

    @property
    def total(self) -> float:
        """Free plus locked in orders."""
        return self.free + self.used


class OrderRequest(BaseModel):
    """What to send: the client order id makes the request safe to look up after a timeout."""

    symbol: str
    side: OrderSide
    amount: float = Field(gt=0)
    type: OrderType = OrderType.MARKET
    price: float | None = Field(default=None, gt=0)
    client_order_id: str = Field(default_factory=lambda: new_client_order_id())


class Order(BaseModel):
    """An order as the venue reports it."""

    client_order_id: str
    venue_order_id: str | None = None
    venue: str
    symbol: str
    side: OrderSide
    type: OrderType
    amount: float
    price: float | None = None
    filled: float = 0.0
    average: float | None = None
    fee: float = 0.0
    status: OrderStatus
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Venue(Protocol):
    """One exchange connection, live or paper."""

    name: str
    mode: VenueMode

    async def start(self) -> None:
        """Open connections (no network I/O is needed to start)."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def ticker(self, symbol: str) -> Ticker:
        """The current ticker of ``symbol``."""

    async def balances(self) -> dict[str, Balance]:
        """Non-zero balances by asset."""

    async def place(self, request: OrderRequest) -> Order:
        """Send an order once; after a timeout, look it up before anything is resent."""

    async def fetch_order(self, symbol: str, client_order_id: str) -> Order | None:
        """An order by our client order id, or None when the venue does not know it."""

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders resting on the venue."""

    async def cancel(self, order: Order) -> Order:
        """Cancel a resting order and return its final state."""

    async def filled_since(self, since: datetime, symbols: Sequence[str]) -> list[Order]:
        """Orders (of ``symbols``) with fills at or after ``since``, one per order: how fills
        missed while the engine was down are found."""

    async def probe(self) -> None:
        """Raise a ``VenueError`` unless markets and prices can be read."""


def new_client_order_id() -> str:
    """A client order id valid on binance and okx alike (32 alphanumerics, leading letter)."""
    return "lc" + uuid.uuid4().hex[:30]


class OrderRecord(Order):
    """An order as the engine records it: which core sent it, how, and what went wrong."""

    core: str
    mode: VenueMode
    error: str = ""
