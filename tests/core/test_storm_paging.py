"""PagerDuty sees one storm, not one page per incident (issue 15 point 4): storm detection for
the ``pagerduty`` destination lives in core, and the Events API fake shows what was sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, ActorKind, Role, utcnow
from core.models.incidents import IncidentState
from tests.conftest import PlaneFactory, RedisFactory
from tests.fakes.pagerduty import PagerDutyFake
from tests.support.payloads import am_alert, am_payload

OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
PAGING = {
    "critical": {"ack_timeout_seconds": 60, "repeat": 2, "targets": ["chat", "pagerduty"]},
    "warning": {"ack_timeout_seconds": 60, "repeat": 1, "targets": ["chat"]},
}


async def fire(plane: ControlPlane, name: str, **kwargs: Any) -> int:
    """One Alertmanager notification (its own group) carrying one alert; the incident id."""
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert(name, **kwargs))))
    [incident_id] = result.incidents
    return incident_id


async def paging_plane(make_plane: PlaneFactory, pagerduty: PagerDutyFake) -> ControlPlane:
    return await make_plane(
        escalation_policy=PAGING,
        pagerduty_routing_key="r" * 32,
        pagerduty_events_url=pagerduty.url,
    )


async def test_a_storm_of_50_pages_once_updates_as_it_grows_and_resolves_once(
    make_plane: PlaneFactory,
) -> None:
    async with PagerDutyFake() as pagerduty:
        plane = await paging_plane(make_plane, pagerduty)
        ids = [await fire(plane, f"Storm{n}") for n in range(50)]
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        [trigger] = await pagerduty.wait_for_events(1)

        # Five more join the storm after it paged; a minute later (the update interval) their
        # escalation updates the same page, once (the first 50 escalate again, paging nobody).
        ids += [await fire(plane, f"Late{n}") for n in range(5)]
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=122))
        for n in range(50):
            await fire(plane, f"Storm{n}", status="resolved")
        for n in range(5):
            await fire(plane, f"Late{n}", status="resolved")
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=63))
        events = await pagerduty.wait_for_events(3)
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=200))
        assert (await plane.store.outbox_stats("pagerduty")).depth == 0  # nothing more to say

    key = trigger["dedup_key"]
    assert key.startswith("storm:")
    assert [e["event_action"] for e in events] == ["trigger", "trigger", "resolve"]
    assert {e["dedup_key"] for e in events} == {key}
    assert pagerduty.incidents == {key: "resolved"}
    first, update = events[0]["payload"], events[1]["payload"]
    assert first["summary"].startswith("[critical] alert storm: 50 incidents: Storm0; Storm1;")
    assert first["summary"].endswith("and 45 more")
    assert first["custom_details"]["incident_ids"] == ids[:50]
    assert update["summary"].startswith("[critical] alert storm: 55 incidents: Storm0;")
    assert update["custom_details"]["incident_ids"] == ids
    for n, incident_id in enumerate(ids):  # each escalated (chat sees it), none paged alone
        incident = await plane.incidents.get(incident_id)
        assert incident.state is IncidentState.RESOLVED
        assert incident.escalation_level == (2 if n < 50 else 1)
        assert not incident.pagerduty_triggered


async def test_a_storm_page_is_acknowledged_when_every_incident_is_taken(
    make_plane: PlaneFactory,
) -> None:
    async with PagerDutyFake() as pagerduty:
        plane = await paging_plane(make_plane, pagerduty)
        ids = [await fire(plane, f"Storm{n}") for n in range(8)]
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        for incident_id in ids[:-1]:
            await plane.incidents.acknowledge(incident_id, OTTO)
        await plane.incidents.run_deadlines()
        await pagerduty.wait_for_events(1)
        assert [e["event_action"] for e in pagerduty.events] == ["trigger"]  # one still open
        await plane.incidents.resolve(ids[-1], OTTO)
        await plane.incidents.run_deadlines()
        events = await pagerduty.wait_for_events(2)
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge"]
    assert len({e["dedup_key"] for e in events}) == 1
    assert pagerduty.incidents == {events[0]["dedup_key"]: "acknowledged"}


async def test_a_lone_incident_pages_on_its_own_and_a_warning_storm_pages_nobody(
    make_plane: PlaneFactory,
) -> None:
    async with PagerDutyFake() as pagerduty:
        plane = await paging_plane(make_plane, pagerduty)
        # Warnings do not page: their flood is no storm for PagerDuty and takes no page away.
        for n in range(10):
            await fire(plane, f"Noise{n}", severity="warning")
        lone = await fire(plane, "RedisDown")
        await plane.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        await plane.incidents.resolve(lone, OTTO)
        events = await pagerduty.wait_for_events(2)
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in events} == {f"lunia-incident-{lone}"}
    assert events[0]["payload"]["summary"].startswith("[critical] RedisDown")


@pytest.mark.slow
async def test_a_storm_stored_through_another_replica_still_pages_once(
    make_plane: PlaneFactory, make_redis: RedisFactory, tmp_path: Path
) -> None:
    redis = make_redis()
    async with PagerDutyFake() as pagerduty:
        api, leader = [
            await make_plane(
                lunia_state_dir=tmp_path / name,
                enable_redis=True,
                redis_url=redis.url,
                escalation_policy=PAGING,
                pagerduty_routing_key="r" * 32,
                pagerduty_events_url=pagerduty.url,
            )
            for name in ("api", "leader")
        ]
        # The webhooks reach one replica; the escalations run on another, reading the event log.
        ids = [await fire(api, f"Storm{n}") for n in range(20)]
        await leader.incidents.run_deadlines(utcnow() + timedelta(seconds=61))
        for n in range(20):
            await fire(api, f"Storm{n}", status="resolved")
        await leader.incidents.run_deadlines()
        events = await pagerduty.wait_for_events(2)
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]
    assert events[0]["payload"]["custom_details"]["incident_ids"] == ids
    assert pagerduty.incidents == {events[0]["dedup_key"]: "resolved"}
