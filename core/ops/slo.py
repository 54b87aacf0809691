"""The latency SLO guard (runbook §2.4): P99 of ``request_duration_seconds`` over a sliding window.

Every check takes a snapshot of the request histogram's cumulative buckets. The P99 of a span is
computed from the bucket deltas between two snapshots (as Prometheus' ``histogram_quantile`` over
an ``increase``). ``LatencySLOBreach`` is raised when the P99 over the last ``SLO_WINDOW_SECONDS``
is over ``SLO_P99_SECONDS`` *and* no check inside that window saw it under (it stayed over for the
whole window); it is resolved on the first check whose latency is back under the objective.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Histogram
from pydantic import BaseModel

from core.errors import LuniaError
from core.incidents.service import IncidentService
from core.models.alerts import Severity
from core.trading.engine import CoreInfo

logger = logging.getLogger(__name__)

INCIDENT_KEY = "slo:latency-p99"
INCIDENT_TITLE = "LatencySLOBreach"
QUANTILE = 0.99
SLOWEST_SHOWN = 3

# (method, route) -> {upper bound: cumulative count}
Buckets = dict[float, float]
Snapshot = dict[tuple[str, str], Buckets]


def snapshot(histogram: Histogram) -> Snapshot:
    """Cumulative bucket counts per (method, route), summed over status codes."""
    out: Snapshot = {}
    for family in histogram.collect():
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            key = (sample.labels.get("method", ""), sample.labels.get("route", ""))
            upper = float(sample.labels["le"])
            buckets = out.setdefault(key, {})
            buckets[upper] = buckets.get(upper, 0.0) + sample.value
    return out


def _delta(now: Snapshot, before: Snapshot) -> Snapshot:
    """Observations made between two snapshots, per (method, route)."""
    out: Snapshot = {}
    for key, buckets in now.items():
        old = before.get(key, {})
        out[key] = {le: max(count - old.get(le, 0.0), 0.0) for le, count in buckets.items()}
    return out


def _merge(parts: Mapping[tuple[str, str], Buckets]) -> Buckets:
    total: Buckets = {}
    for buckets in parts.values():
        for le, count in buckets.items():
            total[le] = total.get(le, 0.0) + count
    return total


def quantile(q: float, buckets: Buckets) -> float | None:
    """``histogram_quantile`` on cumulative buckets; None when nothing was observed."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the largest finite bucket: its bound is all we know
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


class RouteLatency(BaseModel):
    """One route's P99 over the SLO window."""

    route: str
    p99_seconds: float
    requests: int


class SloReport(BaseModel):
    """What one check saw."""

    p99_seconds: float | None
    objective_seconds: float
    window_seconds: float
    covered_seconds: float
    breaching: bool
    incident_open: bool
    slowest: list[RouteLatency]


@dataclass
class _Point:
    at: float
    buckets: Snapshot
    step_p99: float | None  # P99 of the requests since the previous point


class SloGuard:
    """Raises ``LatencySLOBreach`` while request P99 stays over the objective, resolves it after."""

    def __init__(
        self,
        histogram: Histogram,
        incidents: IncidentService,
        cores: Callable[[], list[CoreInfo]],
        *,
        objective_seconds: float,
        window_seconds: float,
        on_p99: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._histogram = histogram
        self._incidents = incidents
        self._cores = cores
        self._objective = objective_seconds
        self._window = window_seconds
        self._on_p99 = on_p99
        self._clock = clock
        self._points: deque[_Point] = deque()
        self.incident_open = False

    async def check(self, *, now: float) -> SloReport:
        """Take a snapshot at ``now`` (seconds, monotonic) and raise or resolve the incident."""
        current = snapshot(self._histogram)
        previous = self._points[-1] if self._points else None
        step = quantile(QUANTILE, _merge(_delta(current, previous.buckets))) if previous else None
        self._points.append(_Point(now, current, step))
        # Keep the newest point at or before the window's start: it is the window's baseline.
        while len(self._points) > 1 and self._points[1].at <= now - self._window:
            self._points.popleft()
        baseline = self._points[0]
        window = _delta(current, baseline.buckets)
        p99 = quantile(QUANTILE, _merge(window))
        if self._on_p99 is not None:
            self._on_p99(p99 if p99 is not None else math.nan)
        covered = now - baseline.at
        stayed_over = all(
            p.step_p99 is None or p.step_p99 > self._objective for p in list(self._points)[1:]
        )
        breaching = (
            p99 is not None and p99 > self._objective and covered >= self._window and stayed_over
        )
        slowest = _slowest(window)
        recovered = step is not None and step <= self._objective
        if breaching and not self.incident_open:
            await self._raise(p99 or 0.0, slowest)
        elif self.incident_open and (recovered or p99 is None or p99 <= self._objective):
            await self._clear(step if recovered else p99)
        return SloReport(
            p99_seconds=p99,
            objective_seconds=self._objective,
            window_seconds=self._window,
            covered_seconds=covered,
            breaching=breaching,
            incident_open=self.incident_open,
            slowest=slowest,
        )

    async def run(self) -> SloReport:
        """The ``slo-check`` job: one check at the clock's time."""
        return await self.check(now=self._clock())

    def remedy(self) -> str:
        """Runbook §2.4's remedy, naming the non-essential cores that are switched on."""
        names = [c.name for c in self._cores() if not c.essential and c.enabled]
        if not names:
            return "no non-essential core is running; scale the API or look for slow dependencies"
        commands = "; ".join(f"/toggle {n} (POST /api/v1/cores/{n}/toggle)" for n in names)
        return f"disable non-essential cores: {commands}"

    async def _raise(self, p99: float, slowest: list[RouteLatency]) -> None:
        routes = ", ".join(f"{r.route} p99 {r.p99_seconds * 1000:.0f} ms" for r in slowest)
        summary = (
            f"P99 {p99 * 1000:.0f} ms over the last {self._window:g}s "
            f"(SLO {self._objective * 1000:.0f} ms); slowest: {routes or 'n/a'}. "
            f"Remedy: {self.remedy()}."
        )
        logger.warning("latency SLO breached: %s", summary)
        try:
            await self._incidents.raise_engine(
                INCIDENT_KEY,
                INCIDENT_TITLE,
                Severity.CRITICAL,
                summary,
                labels={"slo": "request_p99", "runbook": "2.4"},
            )
        except LuniaError as exc:
            logger.error("could not raise the latency SLO incident: %s", exc)
            return
        self.incident_open = True

    async def _clear(self, p99: float | None) -> None:
        shown = "no traffic" if p99 is None else f"P99 {p99 * 1000:.0f} ms"
        logger.info("latency SLO recovered (%s)", shown)
        try:
            await self._incidents.clear_engine(
                INCIDENT_KEY, INCIDENT_TITLE, f"latency recovered: {shown}"
            )
        except LuniaError as exc:
            logger.error("could not resolve the latency SLO incident: %s", exc)
            return
        self.incident_open = False


def _slowest(window: Snapshot) -> list[RouteLatency]:
    routes = []
    for (method, route), buckets in window.items():
        p99 = quantile(QUANTILE, buckets)
        if p99 is not None:
            requests = int(buckets[max(buckets)])
            routes.append(
                RouteLatency(route=f"{method} {route}", p99_seconds=p99, requests=requests)
            )
    routes.sort(key=lambda r: r.p99_seconds, reverse=True)
    return routes[:SLOWEST_SHOWN]
