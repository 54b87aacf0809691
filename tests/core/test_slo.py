"""The latency SLO guard: P99 of request_duration_seconds over a (test-shortened) window."""

from __future__ import annotations

import math

import pytest

from core.control_plane import ControlPlane
from core.models.incidents import Incident, IncidentState
from core.ops.slo import quantile
from tests.conftest import PlaneFactory

WINDOW = 60.0
T0 = 1000.0


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    return await make_plane(
        slo_window_seconds=WINDOW,
        slo_check_seconds=3600,
        self_healing_interval_seconds=3600,
        core_tick_seconds=3600,
        venue_probe_seconds=3600,
    )


def serve(plane: ControlPlane, route: str, seconds: float, count: int) -> None:
    """Record requests the way the API's middleware does (the metric's public interface)."""
    for _ in range(count):
        plane.metrics.request_duration.labels(route, "GET", "200").observe(seconds)


def traffic(plane: ControlPlane, *, slow: bool) -> None:
    serve(plane, "/api/v1/status", 0.5 if slow else 0.02, 20)
    serve(plane, "/api/v1/incidents", 0.3 if slow else 0.01, 20)
    serve(plane, "/healthz", 0.003, 20)


async def slo_incidents(plane: ControlPlane) -> list[Incident]:
    return [i for i in await plane.incidents.list(limit=50) if i.title == "LatencySLOBreach"]


async def test_p99_over_200ms_for_the_whole_window_raises_then_recovery_resolves(
    plane: ControlPlane,
) -> None:
    await plane.slo.check(now=T0)
    for step in (15, 30, 45):
        traffic(plane, slow=True)
        report = await plane.slo.check(now=T0 + step)
        assert report.p99_seconds is not None and report.p99_seconds > 0.2
        assert not report.breaching  # over, but not yet for the whole window
    assert await slo_incidents(plane) == []

    traffic(plane, slow=True)
    report = await plane.slo.check(now=T0 + 60)
    assert report.breaching and report.incident_open
    assert [r.route for r in report.slowest[:2]] == ["GET /api/v1/status", "GET /api/v1/incidents"]
    [incident] = await slo_incidents(plane)
    assert incident.state is IncidentState.TRIGGERED
    assert incident.severity.value == "critical" and incident.source.value == "engine"
    assert "GET /api/v1/status p99" in incident.summary
    # the remedy names the non-essential cores, never the essential ones
    non_essential = [c.name for c in plane.trading.cores() if not c.essential]
    essential = [c.name for c in plane.trading.cores() if c.essential]
    assert non_essential and essential
    for name in non_essential:
        assert f"/toggle {name}" in incident.summary
        assert f"POST /api/v1/cores/{name}/toggle" in incident.summary
    for name in essential:
        assert f"/toggle {name} " not in incident.summary

    traffic(plane, slow=True)
    await plane.slo.check(now=T0 + 75)  # still breaching: the same incident, raised once
    assert len(await slo_incidents(plane)) == 1

    traffic(plane, slow=False)
    report = await plane.slo.check(now=T0 + 90)
    assert not report.incident_open
    [incident] = await slo_incidents(plane)
    assert incident.state is IncidentState.RESOLVED


async def test_a_short_burst_inside_the_window_does_not_raise(plane: ControlPlane) -> None:
    await plane.slo.check(now=T0)
    for step in (15, 30, 45, 60, 75):
        traffic(plane, slow=step == 45)
        report = await plane.slo.check(now=T0 + step)
        assert not report.breaching
    assert await slo_incidents(plane) == []
    gauge = plane.metrics.registry.get_sample_value("slo_request_p99_seconds")
    assert gauge is not None and gauge > 0.2  # the window's P99 is still shown as it is


async def test_no_traffic_is_no_breach(plane: ControlPlane) -> None:
    for step in (0, 30, 60, 90):
        report = await plane.slo.check(now=T0 + step)
        assert report.p99_seconds is None and not report.breaching
    gauge = plane.metrics.registry.get_sample_value("slo_request_p99_seconds")
    assert gauge is not None and math.isnan(gauge)


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 0.9)
    assert quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == pytest.approx(0.1)
