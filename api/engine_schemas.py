"""Request and response bodies of the engine's HTTP routes (venues, cores, trading)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.models.venues import OrderRecord
from core.trading.engine import CoreInfo, EngineState, HaltReport, PnlReport
from core.trading.risk import ExposureReport
from core.trading.venues.service import VenuesStatus


class VenuesOut(VenuesStatus):
    """Primary, standby, the active venue and each venue's health."""


class FailoverIn(BaseModel):
    """Body of ``POST /api/v1/failover``."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(default=None, description="ccxt id; default: the EXCHANGE_FAILOVER flag")
    confirm: bool = Field(default=False, description="required; without it, 409 with the pre-check")
    reason: str = Field(default="", max_length=500)


class ConfirmIn(BaseModel):
    """A body that only confirms a dangerous action."""

    model_config = ConfigDict(extra="forbid")

    confirm: bool = False


class HaltIn(ConfirmIn):
    """Body of ``POST /api/v1/halt``."""

    reason: str = Field(default="", max_length=500)


class ToggleIn(BaseModel):
    """Optional body of ``POST /api/v1/cores/{name}/toggle``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, description="set this state; omitted: flip")
    confirm: bool = Field(default=False, description="needed to switch off an essential core")


class CoreOut(CoreInfo):
    """A core with its switch, health and PnL."""


class OrderOut(OrderRecord):
    """An order as recorded by the engine."""


class PnlOut(PnlReport):
    """PnL per core now, and its history over the window."""


class ExposureOut(ExposureReport):
    """Exposure against the risk limits."""


class EngineStateOut(EngineState):
    """Halt and read-only state."""


class HaltOut(HaltReport):
    """What a halt did."""
