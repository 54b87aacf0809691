"""The trading engine's vocabulary shared by every adapter: PnL windows and the trading mode."""

from __future__ import annotations

import enum
from datetime import timedelta

from core.errors import InvalidInput


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
