"""The one-screen summary behind the bot's ``/status`` and ``GET /api/v1/status``.

Capabilities contribute lines through providers (the trading engine adds PnL, exposure and the
active venue), so the summary grows without this module knowing them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from pydantic import BaseModel

from core.flags import FlagService, FlagState
from core.incidents.service import IncidentService
from core.models import utcnow
from core.models.alerts import Severity
from core.models.incidents import IncidentState
from core.models.ops import StatusLine
from core.platform.health import HealthService, Status

logger = logging.getLogger(__name__)


class StatusSummary(BaseModel):
    """Health, open incidents, engine figures and non-default flags at a glance."""

    generated_at: datetime
    health: Status
    unhealthy: dict[str, str]
    open_incidents: dict[Severity, int]
    unacknowledged: int
    lines: list[StatusLine]
    flags_changed: list[FlagState]


Provider = Callable[[], Awaitable[list[StatusLine]]]


class StatusService:
    """Builds the status summary."""

    def __init__(
        self, health: HealthService, incidents: IncidentService, flags: FlagService
    ) -> None:
        self._health = health
        self._incidents = incidents
        self._flags = flags
        self._providers: list[tuple[str, Provider]] = []

    def register(self, name: str, provider: Provider) -> None:
        """Add lines from another capability (engine figures, backups, ...)."""
        self._providers.append((name, provider))

    async def summary(self) -> StatusSummary:
        """The summary now; a failing provider shows as a line, never an error."""
        report = self._health.snapshot()
        open_ = await self._incidents.list(open_only=True, limit=500)
        counts = dict.fromkeys(Severity, 0)
        for incident in open_:
            counts[incident.severity] += 1
        lines: list[StatusLine] = []
        for name, provider in self._providers:
            try:
                lines.extend(await provider())
            except Exception as exc:
                logger.warning("status provider %s failed: %s", name, exc)
                lines.append(StatusLine(label=name, value=f"unavailable ({exc})", ok=False))
        return StatusSummary(
            generated_at=utcnow(),
            health=report.status,
            unhealthy={
                n: f"{c.status.value}: {c.detail}"
                for n, c in report.components.items()
                if c.status in (Status.DOWN, Status.DEGRADED)
            },
            open_incidents=counts,
            unacknowledged=sum(1 for i in open_ if i.state is IncidentState.TRIGGERED),
            lines=lines,
            flags_changed=self._flags.differing_from_default(),
        )
