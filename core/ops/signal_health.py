"""Signal Health (runbook §5, ``FRONTEND_SIGNAL_HEALTH_ENABLED``): is every part producing signals?

One read-only report over what the engine already knows: per core, how fresh its last tick and
last signal are and how many it produces per minute; per venue, its probe health; the assistant's
LLM-versus-fallback split; and the open incidents. The API renders it as a page and as JSON.

A running core is *fresh* when its last completed tick is no older than ``STALE_TICKS`` tick
intervals, *stale* when it is older (or it has never ticked), *crashing* while its last tick
crashed, and *off* when switched off or halted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from core.assistant.service import AssistantService
from core.config.settings import Settings
from core.incidents.service import IncidentService
from core.models import utcnow
from core.models.alerts import Severity
from core.models.incidents import IncidentState
from core.models.ops import ChecklistItem, Mark
from core.platform.circuit import CircuitState
from core.trading.engine import CoreInfo, EngineState, TradingEngine
from core.trading.venues.service import VenueInfo, VenueService

STALE_TICKS = 3  # a running core that missed this many ticks is stale
MAX_INCIDENTS = 20


class Freshness(StrEnum):
    """How current a core's signals are."""

    FRESH = "fresh"
    STALE = "stale"
    CRASHING = "crashing"
    OFF = "off"


class CoreSignal(BaseModel):
    """One core's signal freshness and rates."""

    name: str
    essential: bool
    freshness: Freshness
    last_tick_at: datetime | None
    tick_age_seconds: float | None
    last_signal_at: datetime | None
    signal_age_seconds: float | None
    ticks_per_minute: float
    signals_per_minute: float
    crashes: int
    last_error: str | None


class AssistantSignal(BaseModel):
    """Who answers questions now, and the split of answers since start."""

    answering_with: str
    circuit: CircuitState
    llm_answers: int
    fallback_answers: int
    llm_share: float | None  # None until the first answer


class IncidentLine(BaseModel):
    """An open incident, as one line of the page."""

    id: int
    severity: Severity
    state: IncidentState
    title: str
    source: str
    count: int
    first_seen: datetime
    age_seconds: float


class SignalHealth(BaseModel):
    """The whole report."""

    generated_at: datetime
    status: str  # ok | degraded (a core stale or crashing, or a venue unhealthy)
    engine: EngineState
    cores: list[CoreSignal]
    venues: list[VenueInfo]
    assistant: AssistantSignal
    open_incidents: dict[Severity, int]
    incidents: list[IncidentLine]
    refresh_seconds: int


def _age(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 1)


class SignalHealthService:
    """Builds the Signal Health report from the engine, venues, assistant and incidents."""

    def __init__(
        self,
        settings: Settings,
        trading: TradingEngine,
        venues: VenueService,
        assistant: AssistantService,
        incidents: IncidentService,
        cores: Callable[[], list[CoreInfo]] | None = None,
    ) -> None:
        """``cores``: where the cores' ticks are known (the process running them, or the leading
        worker's heartbeat on other replicas); the local engine by default."""
        self._settings = settings
        self._cores = cores or trading.cores
        self._trading = trading
        self._venues = venues
        self._assistant = assistant
        self._incidents = incidents

    def freshness(self, core: CoreInfo, now: datetime) -> Freshness:
        """The freshness rule of the module docstring."""
        if not core.running:
            return Freshness.OFF
        if core.crashing:
            return Freshness.CRASHING
        limit = STALE_TICKS * self._settings.core_tick_seconds
        if core.last_run_at is None or (now - core.last_run_at).total_seconds() > limit:
            return Freshness.STALE
        return Freshness.FRESH

    async def report(self) -> SignalHealth:
        """The report as of now (reads only)."""
        now = utcnow()
        cores = [
            CoreSignal(
                name=c.name,
                essential=c.essential,
                freshness=self.freshness(c, now),
                last_tick_at=c.last_run_at,
                tick_age_seconds=_age(c.last_run_at, now),
                last_signal_at=c.last_signal_at,
                signal_age_seconds=_age(c.last_signal_at, now),
                ticks_per_minute=c.ticks_per_minute,
                signals_per_minute=c.signals_per_minute,
                crashes=c.crashes,
                last_error=c.last_error,
            )
            for c in self._cores()
        ]
        venues = self._venues.status().items
        answers = self._assistant.answers
        total = answers["llm"] + answers["fallback"]
        status = self._assistant.status()
        open_items = await self._incidents.list(open_only=True, limit=MAX_INCIDENTS)
        degraded = any(c.freshness in (Freshness.STALE, Freshness.CRASHING) for c in cores) or any(
            v.active and v.healthy is False for v in venues
        )
        return SignalHealth(
            generated_at=now,
            status="degraded" if degraded else "ok",
            engine=self._trading.state(),
            cores=cores,
            venues=venues,
            assistant=AssistantSignal(
                answering_with=status.answering_with,
                circuit=status.circuit,
                llm_answers=answers["llm"],
                fallback_answers=answers["fallback"],
                llm_share=round(answers["llm"] / total, 3) if total else None,
            ),
            open_incidents=await self._incidents.count_open(),
            incidents=[
                IncidentLine(
                    id=i.id,
                    severity=i.severity,
                    state=i.state,
                    title=i.title,
                    source=i.source.value,
                    count=i.count,
                    first_seen=i.first_seen,
                    age_seconds=round((now - i.first_seen).total_seconds(), 1),
                )
                for i in open_items
            ],
            refresh_seconds=self._settings.signal_health_refresh_seconds,
        )

    async def checklist_items(self) -> list[ChecklistItem]:
        """The checklist's signal lines: every running core fresh, the active venue healthy."""
        now = utcnow()
        marks = {c.name: self.freshness(c, now) for c in self._cores()}
        crashing = sorted(n for n, f in marks.items() if f is Freshness.CRASHING)
        stale = sorted(n for n, f in marks.items() if f is Freshness.STALE)
        fresh = sum(f is Freshness.FRESH for f in marks.values())
        if crashing or stale:
            problems = [f"{n} crashing" for n in crashing] + [f"{n} stale" for n in stale]
            cores = ChecklistItem(
                name="signals: cores",
                mark=Mark.FAIL if crashing else Mark.WARN,
                reason=f"{fresh} fresh; " + ", ".join(problems),
            )
        else:
            cores = ChecklistItem(
                name="signals: cores", mark=Mark.OK, reason=f"{fresh} running core(s) fresh"
            )
        status = self._venues.status()
        active = next(v for v in status.items if v.active)
        if active.healthy is None:
            venue = ChecklistItem(
                name="signals: venue", mark=Mark.WARN, reason=f"{active.name} not probed yet"
            )
        elif active.healthy:
            when = active.last_probe_at.isoformat() if active.last_probe_at else "never"
            venue = ChecklistItem(
                name="signals: venue", mark=Mark.OK, reason=f"{active.name} healthy (probed {when})"
            )
        else:
            venue = ChecklistItem(
                name="signals: venue",
                mark=Mark.FAIL,
                reason=f"{active.name} unhealthy: {active.last_error or 'probe failed'}",
            )
        return [cores, venue]
