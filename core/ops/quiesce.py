"""Quiescing for a restore (runbook §3): nothing may write the state while it is swapped.

This holds the restoring process; every other replica is paused by the restore's mark in the
store, which the trading engine reads before each tick and order.
"""

from __future__ import annotations

from core.incidents.service import IncidentService
from core.models import Actor
from core.platform.scheduler import Scheduler
from core.trading.engine import TradingEngine
from core.trading.venues.service import VenueService


class RestoreQuiesce:
    """Holds scheduled jobs and new orders during a restore, and lets them go after it."""

    def __init__(
        self,
        scheduler: Scheduler,
        trading: TradingEngine,
        incidents: IncidentService,
        venues: VenueService | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._trading = trading
        self._venues = venues
        self._incidents = incidents
        self._set_read_only = False

    async def before(self, actor: Actor) -> None:
        """Hold scheduled jobs; refuse new orders while state is swapped."""
        self._scheduler.pause()
        # Read-only itself, not the mode (a halt outranks it): an engine already read-only
        # (Redis lost) is left so after the restore.
        self._set_read_only = not self._trading.state().read_only
        if self._set_read_only:
            await self._trading.enter_read_only("a backup is being restored", actor)

    async def after(self, actor: Actor) -> None:
        """Resume after a restore (restored or rolled back): adopt the halt, core switches and
        active venue now in the store, rebuild positions and reconcile the venues, then orders,
        jobs, gauges."""
        await self._trading.reload()
        if self._venues is not None:
            await self._venues.reload()
        # Positions and orders came back as the backup had them: the trading leader rebuilds
        # them and reconciles with the venues (adopting orders placed after the backup).
        await self._trading.note_restore(actor)
        if self._set_read_only:
            self._set_read_only = False
            await self._trading.leave_read_only(actor)
        await self._incidents.export_open_counts()
        self._scheduler.resume()
