"""Incidents: grouping, lifecycle, refusals, escalation timers that survive restarts, PagerDuty."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from core.control_plane import ControlPlane
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.incidents.receivers import parse_alertmanager, parse_falco
from core.models import Actor, ActorKind, Role, utcnow
from core.models.alerts import AlertSource, Severity
from core.models.incidents import EventKind, IncidentEvent, IncidentState
from tests.conftest import PlaneFactory, SettingsFactory
from tests.fakes.pagerduty import PagerDutyFake
from tests.support.payloads import am_alert, am_payload, falco_event

OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
VIC = Actor(kind=ActorKind.TELEGRAM, id="3", name="vic", role=Role.VIEWER)
FAST = {
    "critical": {"ack_timeout_seconds": 60, "repeat": 2, "targets": ["chat", "pagerduty"]},
    "warning": {"ack_timeout_seconds": 600, "repeat": 1, "targets": ["chat"]},
}


async def fire(plane: ControlPlane, *alerts: dict[str, Any]) -> list[int]:
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(*alerts)))
    return result.incidents


async def test_redelivery_creates_nothing_and_repeats_count(plane: ControlPlane) -> None:
    # Two conditions of two groups (one notification each), delivered together.
    groups = [am_payload(am_alert("RedisDown")), am_payload(am_alert("ExchangeFailoverActive"))]
    alerts = [alert for body in groups for alert in parse_alertmanager(body)]
    first = await plane.incidents.ingest(alerts)
    again = await plane.incidents.ingest(alerts)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates, again.incidents) == (0, 2, [])
    assert len(await plane.incidents.list()) == 2

    # The same condition firing anew (a new startsAt) is a repeat of the same incident.
    await fire(plane, am_alert("RedisDown", starts_at="2026-11-28T10:00:00Z"))
    [redis] = [i for i in await plane.incidents.list() if i.title == "RedisDown"]
    assert redis.count == 2
    assert len(await plane.incidents.list()) == 2


async def test_resolved_alert_resolves_its_incident(plane: ControlPlane) -> None:
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    await fire(plane, am_alert("RedisDown", status="resolved"))
    incident = await plane.incidents.get(incident_id)
    assert incident.state is IncidentState.RESOLVED
    assert incident.resolved_by is not None and incident.resolved_by.name == "alertmanager"
    [*_, last] = (await plane.incidents.detail(incident_id)).timeline
    assert (last.kind, last.detail) == (EventKind.RESOLVED, "the alert cleared at its source")
    # The audit log keeps what people and automation did, not what alert sources did.
    assert await plane.audit.tail(5) == []


async def test_refire_soon_after_resolution_reopens(plane: ControlPlane) -> None:
    [first] = await fire(plane, am_alert("RedisDown"))
    await fire(plane, am_alert("RedisDown", status="resolved"))
    [again] = await fire(plane, am_alert("RedisDown", starts_at="2026-11-28T11:00:00Z"))
    assert again == first
    incident = await plane.incidents.get(first)
    assert (incident.state, incident.count) == (IncidentState.TRIGGERED, 2)
    kinds = [e.kind for e in (await plane.incidents.detail(first)).timeline]
    assert kinds == [EventKind.OPENED, EventKind.RESOLVED, EventKind.REOPENED]


async def test_refire_after_the_window_opens_a_new_incident(make_plane: PlaneFactory) -> None:
    plane = await make_plane(incident_reopen_minutes=0)
    [first] = await fire(plane, am_alert("RedisDown"))
    await fire(plane, am_alert("RedisDown", status="resolved"))
    [second] = await fire(plane, am_alert("RedisDown", starts_at="2026-11-28T11:00:00Z"))
    assert second != first


async def test_lifecycle_actions_are_idempotent_and_audited(plane: ControlPlane) -> None:
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    acked = await plane.incidents.acknowledge(incident_id, OTTO)
    assert acked.state is IncidentState.ACKNOWLEDGED
    assert acked.acknowledged_by == OTTO
    assert acked.next_escalation_at is None
    again = await plane.incidents.acknowledge(incident_id, OTTO)
    assert again.version == acked.version  # nothing written twice

    back = await plane.incidents.unacknowledge(incident_id, OTTO)
    assert back.state is IncidentState.TRIGGERED
    assert back.next_escalation_at is not None

    resolved = await plane.incidents.resolve(incident_id, OTTO)
    assert resolved.state is IncidentState.RESOLVED
    assert (await plane.incidents.resolve(incident_id, OTTO)).version == resolved.version
    actions = [e.action for e in reversed(await plane.audit.tail(10))]
    assert actions == ["incident.acknowledged", "incident.unacknowledged", "incident.resolved"]
    assert [e.target for e in await plane.audit.tail(3)] == [f"#{incident_id} RedisDown"] * 3
    assert [e.actor.name for e in await plane.audit.tail(3)] == ["otto"] * 3


async def test_impossible_and_unauthorised_actions_are_refused(plane: ControlPlane) -> None:
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    with pytest.raises(PermissionDenied, match="needs the operator role"):
        await plane.incidents.acknowledge(incident_id, VIC)
    await plane.incidents.resolve(incident_id, OTTO)
    with pytest.raises(Conflict, match=r"already resolved \(by otto at"):
        await plane.incidents.acknowledge(incident_id, OTTO)
    with pytest.raises(Conflict, match="nothing to silence"):
        await plane.incidents.silence(incident_id, OTTO, "1h")
    with pytest.raises(NotFound, match="no incident #999"):
        await plane.incidents.acknowledge(999, OTTO)


async def test_silence_validates_duration_and_ends_on_time(plane: ControlPlane) -> None:
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    for bad in ("soon", "30s", "8d", "-1h"):
        with pytest.raises(InvalidInput):
            await plane.incidents.silence(incident_id, OTTO, bad)
    silenced = await plane.incidents.silence(incident_id, OTTO, "4h")
    assert silenced.state is IncidentState.SILENCED
    assert silenced.silenced_until is not None
    assert await plane.incidents.run_deadlines(utcnow() + timedelta(hours=3)) == 0
    assert await plane.incidents.run_deadlines(utcnow() + timedelta(hours=5)) == 1
    back = await plane.incidents.get(incident_id)
    assert back.state is IncidentState.TRIGGERED
    [entry] = await plane.audit.tail(1)
    assert (entry.action, entry.detail) == ("incident.unsilenced", "the silence ended")


async def test_ack_while_silenced_is_kept_after_the_silence(plane: ControlPlane) -> None:
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    await plane.incidents.silence(incident_id, OTTO, "1h")
    await plane.incidents.acknowledge(incident_id, OTTO)
    await plane.incidents.unsilence(incident_id, OTTO)
    assert (await plane.incidents.get(incident_id)).state is IncidentState.ACKNOWLEDGED


async def test_escalation_fires_repeats_and_stops(make_plane: PlaneFactory) -> None:
    plane = await make_plane(escalation_policy=FAST)
    [critical] = await fire(plane, am_alert("RedisDown"))
    [warning] = await fire(plane, am_alert("LatencySLOBreach", severity="warning"))
    now = utcnow()
    assert await plane.incidents.run_deadlines(now + timedelta(seconds=30)) == 0
    assert await plane.incidents.run_deadlines(now + timedelta(seconds=61)) == 1
    incident = await plane.incidents.get(critical)
    assert incident.escalation_level == 1
    assert await plane.incidents.run_deadlines(now + timedelta(seconds=125)) == 1
    assert (await plane.incidents.get(critical)).escalation_level == 2
    assert (await plane.incidents.get(critical)).next_escalation_at is None  # repeat=2 reached
    assert await plane.incidents.run_deadlines(now + timedelta(seconds=500)) == 0
    assert await plane.incidents.run_deadlines(now + timedelta(seconds=601)) == 1
    assert (await plane.incidents.get(warning)).escalation_level == 1
    text = plane.metrics.render().decode()
    assert 'incident_escalations_total{severity="critical",target="pagerduty"} 2.0' in text


async def test_ack_stops_escalation(make_plane: PlaneFactory) -> None:
    plane = await make_plane(escalation_policy=FAST)
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    await plane.incidents.acknowledge(incident_id, OTTO)
    assert await plane.incidents.run_deadlines(utcnow() + timedelta(hours=2)) == 0
    assert (await plane.incidents.get(incident_id)).escalation_level == 0


async def test_escalation_timer_survives_a_restart(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    settings = make_settings(escalation_policy=FAST)
    first = await make_plane(settings=settings)
    [incident_id] = await fire(first, am_alert("RedisDown"))
    due = (await first.incidents.get(incident_id)).next_escalation_at
    await first.close()

    second = await make_plane(settings=settings)
    assert due is not None
    assert await second.incidents.run_deadlines(due - timedelta(seconds=1)) == 0
    assert await second.incidents.run_deadlines(due + timedelta(seconds=1)) == 1
    assert (await second.incidents.get(incident_id)).escalation_level == 1


async def test_events_reach_subscribers_in_order(plane: ControlPlane) -> None:
    seen: list[IncidentEvent] = []

    async def collect(event: IncidentEvent) -> None:
        seen.append(event)

    plane.bus.subscribe("test", collect)
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    await plane.incidents.acknowledge(incident_id, OTTO)
    await plane.incidents.resolve(incident_id, OTTO)
    for _ in range(50):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.01)
    assert [e.kind for e in seen] == [EventKind.OPENED, EventKind.ACKNOWLEDGED, EventKind.RESOLVED]
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    assert seen[1].incident.acknowledged_by == OTTO


async def test_falco_critical_is_a_security_incident(plane: ControlPlane) -> None:
    result = await plane.incidents.ingest(parse_falco(falco_event()))
    incident = await plane.incidents.get(result.incidents[0])
    assert incident.security is True
    assert incident.severity is Severity.CRITICAL
    notice = await plane.incidents.ingest(
        parse_falco(falco_event("Read sensitive file", priority="Notice", uuid="other"))
    )
    assert (await plane.incidents.get(notice.incidents[0])).security is False


async def test_engine_raises_and_clears_its_own_incidents(plane: ControlPlane) -> None:
    incident = await plane.incidents.raise_engine(
        "redis", "RedisDown", Severity.CRITICAL, "redis at 127.0.0.1:6379 refused"
    )
    assert incident is not None
    assert incident.source is AlertSource.ENGINE
    await plane.incidents.clear_engine("redis", "RedisDown", "redis answers again")
    assert (await plane.incidents.get(incident.id)).state is IncidentState.RESOLVED


async def test_failing_scheduled_job_raises_and_then_resolves_an_incident(
    plane: ControlPlane,
) -> None:
    healthy = False

    async def job() -> None:
        if not healthy:
            raise RuntimeError("disk full")

    plane.scheduler.every("test-job", 3600, job)
    info = await plane.scheduler.run_now("test-job")
    assert (info.last_outcome, info.last_error) == ("error", "RuntimeError: disk full")
    [incident] = await plane.incidents.list(open_only=True)
    assert incident.title == "Scheduled job test-job failing"
    healthy = True
    await plane.scheduler.run_now("test-job")
    assert await plane.incidents.list(open_only=True) == []


async def test_metrics_count_alerts_open_incidents_and_time_to_ack(plane: ControlPlane) -> None:
    payload = am_payload(am_alert("RedisDown"))
    await plane.incidents.ingest(parse_alertmanager(payload))
    await plane.incidents.ingest(parse_alertmanager(payload))
    text = plane.metrics.render().decode()
    assert 'alerts_received_total{outcome="received",source="alertmanager"} 2.0' in text
    assert 'alerts_received_total{outcome="duplicate",source="alertmanager"} 1.0' in text
    assert 'incidents_open{severity="critical"} 1.0' in text
    [incident] = await plane.incidents.list()
    await plane.incidents.acknowledge(incident.id, OTTO)
    text = plane.metrics.render().decode()
    assert 'incident_time_to_acknowledge_seconds_count{severity="critical"} 1.0' in text


@pytest.mark.slow
async def test_pagerduty_gets_trigger_ack_resolve_with_one_dedup_key(
    make_plane: PlaneFactory,
) -> None:
    async with PagerDutyFake() as pagerduty:
        plane = await make_plane(
            escalation_policy=FAST,
            pagerduty_routing_key="r" * 32,
            pagerduty_events_url=pagerduty.url,
        )
        [incident_id] = await fire(plane, am_alert("RedisDown"))
        pagerduty.fail_next(2, 429)  # throttled twice: retried with backoff, order kept
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        await plane.incidents.acknowledge(incident_id, OTTO)
        await plane.incidents.resolve(incident_id, OTTO)
        events = await pagerduty.wait_for_events(3, timeout=15)
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {f"lunia-incident-{incident_id}"}
    assert events[0]["routing_key"] == "r" * 32
    assert events[0]["payload"]["severity"] == "critical"
    assert pagerduty.attempts[:3] == [429, 429, 202]
    assert pagerduty.incidents == {f"lunia-incident-{incident_id}": "resolved"}


async def test_pagerduty_outage_does_not_block_incident_work(make_plane: PlaneFactory) -> None:
    async with PagerDutyFake() as pagerduty:
        plane = await make_plane(
            escalation_policy=FAST,
            pagerduty_routing_key="r" * 32,
            pagerduty_events_url=pagerduty.url,
        )
        pagerduty.fail_next(100, 500)
        [first] = await fire(plane, am_alert("RedisDown"))
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        started = asyncio.get_running_loop().time()
        [second] = await fire(plane, am_alert("OtherAlert", fingerprint="fp-other"))
        await plane.incidents.acknowledge(second, OTTO)
        assert asyncio.get_running_loop().time() - started < 1.0
        stats = await plane.store.outbox_stats("pagerduty")
        assert stats.depth == 1  # kept for later, never dropped
    assert first != second
