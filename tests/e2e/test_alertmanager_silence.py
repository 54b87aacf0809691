"""Silences made from the control plane are real Alertmanager silences, and back again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, ActorKind, Role
from core.models.incidents import IncidentState
from tests.conftest import PlaneFactory
from tests.support.payloads import am_alert, am_payload
from tests.support.services import Alertmanager, start_alertmanager

pytestmark = pytest.mark.slow  # a real Alertmanager

OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
CONFIG = """\
route:
  receiver: nowhere
receivers:
  - name: nowhere
"""


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[Alertmanager]:
    am = await asyncio.to_thread(start_alertmanager, tmp_path, CONFIG)
    try:
        yield am
    finally:
        await asyncio.to_thread(am.stop)


async def am_alert_state(am: Alertmanager, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=am.url) as http:
        response = await http.get("/api/v2/alerts", params={"filter": f'alertname="{name}"'})
    [alert] = response.json()
    status: dict[str, Any] = alert["status"]
    return status


async def firing_incident(plane: ControlPlane, am: Alertmanager, name: str) -> int:
    """An alert active in Alertmanager, delivered to the control plane as its webhook would."""
    alert = am_alert(name)
    async with httpx.AsyncClient(base_url=am.url) as http:
        posted = await http.post(
            "/api/v2/alerts",
            json=[
                {
                    "labels": alert["labels"],
                    "annotations": alert["annotations"],
                    "generatorURL": alert["generatorURL"],
                }
            ],
        )
        assert posted.status_code == 200
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(alert)))
    return result.incidents[0]


async def silence_state(am: Alertmanager, silence_id: str) -> str:
    async with httpx.AsyncClient(base_url=am.url) as http:
        response = await http.get(f"/api/v2/silence/{silence_id}")
    return str(response.json()["status"]["state"])


async def test_silence_suppresses_the_alert_in_alertmanager(
    make_plane: PlaneFactory, alertmanager: Alertmanager
) -> None:
    plane = await make_plane(alertmanager_url=alertmanager.url)
    incident_id = await firing_incident(plane, alertmanager, "RedisDown")
    assert (await am_alert_state(alertmanager, "RedisDown"))["state"] == "active"

    incident = await plane.incidents.silence(incident_id, OTTO, "1h")
    assert incident.silence_id
    status = await am_alert_state(alertmanager, "RedisDown")
    assert status["state"] == "suppressed"
    assert status["silencedBy"] == [incident.silence_id]

    # Lifted by hand in Alertmanager: the incident follows on the next sync.
    async with httpx.AsyncClient(base_url=alertmanager.url) as http:
        await http.delete(f"/api/v2/silence/{incident.silence_id}")
    assert await plane.incidents.sync_silences() == 1
    back = await plane.incidents.get(incident_id)
    assert back.state is IncidentState.TRIGGERED
    assert back.silence_id is None
    timeline = (await plane.incidents.detail(incident_id)).timeline
    assert timeline[-1].detail == "the silence was lifted in Alertmanager"


async def test_unsilence_and_resolve_expire_the_alertmanager_silence(
    make_plane: PlaneFactory, alertmanager: Alertmanager
) -> None:
    plane = await make_plane(alertmanager_url=alertmanager.url)
    incident_id = await firing_incident(plane, alertmanager, "ExchangeFailoverActive")
    first = await plane.incidents.silence(incident_id, OTTO, "2h")
    await plane.incidents.unsilence(incident_id, OTTO)
    assert await silence_state(alertmanager, str(first.silence_id)) == "expired"
    assert (await am_alert_state(alertmanager, "ExchangeFailoverActive"))["state"] == "active"

    second = await plane.incidents.silence(incident_id, OTTO, "2h")
    await plane.incidents.resolve(incident_id, OTTO)
    assert await silence_state(alertmanager, str(second.silence_id)) == "expired"


async def test_alertmanager_down_still_silences_here_and_says_so(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    plane = await make_plane(alertmanager_url="http://127.0.0.1:9")  # nothing listens there
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("RedisDown"))))
    incident = await plane.incidents.silence(result.incidents[0], OTTO, "1h")
    assert incident.state is IncidentState.SILENCED
    assert incident.silence_id is None
    timeline = (await plane.incidents.detail(incident.id)).timeline
    assert "Alertmanager silence FAILED" in timeline[-1].detail
