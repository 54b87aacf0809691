"""A big alert group in one webhook costs one incident write and one event, not one per alert
(issue 18 point 1): the group's members and counts still come out right, on both stores."""

from __future__ import annotations

from typing import Any

import pytest

from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from core.models.alerts import AlertStatus
from core.models.incidents import EventKind, Incident
from tests.conftest import PlaneFactory, RedisFactory
from tests.support.payloads import am_alert, am_payload


@pytest.fixture(params=["sqlite", "redis"])
async def make_store_plane(
    request: pytest.FixtureRequest, make_plane: PlaneFactory, make_redis: RedisFactory
) -> PlaneFactory:
    """Control planes on the embedded SQLite store, or on a real Redis of the test's own."""

    async def make(**env: Any) -> ControlPlane:
        if request.param == "redis":
            env.update(enable_redis=True, redis_url=make_redis().url)
        return await make_plane(**env)

    return make


@pytest.fixture
async def plane(make_store_plane: PlaneFactory) -> ControlPlane:
    return await make_store_plane()


def group(size: int, *, resolved: int = 0, start: int = 0) -> dict[str, Any]:
    """One Alertmanager notification of ``size`` alerts of one group (``alertname``), each on
    its own instance; the last ``resolved`` of them resolved."""
    return am_payload(
        *[
            am_alert(
                "DiskFull",
                fingerprint=f"disk-{i}",
                instance=f"node-{i}",
                status="resolved" if i >= start + size - resolved else "firing",
            )
            for i in range(start, start + size)
        ]
    )


def recount(incident: Incident) -> tuple[int, int, dict[str, str], list[str]]:
    """The member figures computed afresh from the stored document (no cache to rely on)."""
    fresh = Incident.model_validate_json(incident.model_dump_json())
    members = fresh.members
    firing = sum(m.status is AlertStatus.FIRING for m in members)
    names = {name for m in members for name in m.labels}
    common = {
        name: value
        for name, value in sorted(members[0].labels.items())
        if all(m.labels.get(name) == value for m in members)
    }
    return firing, len(members) - firing, common, sorted(names - set(common))


async def test_a_200_alert_group_in_one_webhook_is_one_incident_write_and_one_event(
    plane: ControlPlane,
) -> None:
    result = await plane.incidents.ingest(parse_alertmanager(group(200, resolved=50)))

    assert (result.accepted, result.duplicates) == (200, 0)
    [incident_id] = result.incidents
    events = await plane.store.incident_events(incident_id=incident_id, limit=500)
    assert [e.kind for e in events] == [EventKind.OPENED]  # one event, not 200
    incident = await plane.incidents.get(incident_id)
    assert incident.version == 1  # written once, in its final form
    assert len(incident.members) == 200
    assert (incident.firing_members, incident.resolved_members) == (150, 50)
    assert incident.count == 150  # every firing alert counted, the resolved ones not
    assert incident.differing_labels == ["instance"]
    assert incident.common_labels == {
        "alertname": "DiskFull",
        "job": "lunia",
        "severity": "critical",
    }
    # Its detail shows 3 joins and counts the rest (the resolved ones joined resolved).
    assert events[0].detail.endswith("; and 196 more: 196 joined, 0 resolved")
    # The event carries the same final incident, and its figures agree with a recount.
    assert events[0].incident.model_dump() == incident.model_dump()
    assert recount(incident) == (
        150,
        50,
        incident.common_labels,
        incident.differing_labels,
    )
    assert len(await plane.store.incident_alerts(incident_id, limit=500)) == 200


async def test_the_next_webhook_of_the_group_is_one_update_with_its_counts(
    plane: ControlPlane,
) -> None:
    [incident_id] = (await plane.incidents.ingest(parse_alertmanager(group(200)))).incidents
    # 100 alerts join and the first 150 resolve (re-sent resolved, as Alertmanager does).
    joining = group(100, start=200)
    resolving = group(150, resolved=150)
    body = {**joining, "alerts": [*joining["alerts"], *resolving["alerts"]]}
    result = await plane.incidents.ingest(parse_alertmanager(body))

    assert result.incidents == [incident_id]
    events = await plane.store.incident_events(incident_id=incident_id, limit=500)
    assert [e.kind for e in events] == [EventKind.OPENED, EventKind.UPDATED]
    incident = await plane.incidents.get(incident_id)
    assert incident.version == 2
    assert (len(incident.members), incident.firing_members, incident.resolved_members) == (
        300,
        150,
        150,
    )
    assert recount(incident)[:2] == (150, 150)
    assert events[-1].incident.model_dump() == incident.model_dump()
    assert events[-1].detail.endswith("; and 247 more: 97 joined, 150 resolved")


async def test_interleaved_groups_in_one_webhook_are_one_write_and_one_event_each(
    make_store_plane: PlaneFactory,
) -> None:
    # ALERT_GROUP_BY=cluster splits one notification into two groups whose alerts alternate.
    plane = await make_store_plane(alert_group_by="cluster")
    body = am_payload(
        *[
            am_alert("DiskFull", fingerprint=f"disk-{i}", instance=f"node-{i}", cluster="ab"[i % 2])
            for i in range(200)
        ]
    )
    result = await plane.incidents.ingest(parse_alertmanager(body))

    assert len(result.incidents) == 2
    for incident_id in result.incidents:
        events = await plane.store.incident_events(incident_id=incident_id, limit=500)
        assert [e.kind for e in events] == [EventKind.OPENED]
        incident = await plane.incidents.get(incident_id)
        assert (incident.version, len(incident.members), incident.firing_members) == (1, 100, 100)
        assert len({m.labels["cluster"] for m in incident.members}) == 1
        assert len(await plane.store.incident_alerts(incident_id, limit=500)) == 100
