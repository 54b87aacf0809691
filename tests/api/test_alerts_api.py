"""Alert webhooks and the incidents API: durable 2xx, clear 4xx, nothing half-stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from core.control_plane import ControlPlane
from tests.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, WEBHOOK_TOKEN, auth
from tests.support.payloads import am_alert, am_payload, falco_event, grafana_payload

HOOK = auth(WEBHOOK_TOKEN)


async def stored_alert_count(plane: ControlPlane) -> int:
    incidents = await plane.incidents.list(limit=500)
    total = 0
    for incident in incidents:
        total += len(await plane.store.incident_alerts(incident.id, limit=1000))
    return total


@pytest.mark.parametrize("source", ["alertmanager", "grafana", "falco"])
async def test_webhooks_require_the_webhook_token(client: httpx.AsyncClient, source: str) -> None:
    missing = await client.post(f"/api/v1/alerts/{source}", json={})
    assert missing.status_code == 401
    assert "ALERT_WEBHOOK_TOKEN" in missing.json()["error"]["message"]
    api_token = await client.post(f"/api/v1/alerts/{source}", json={}, headers=auth(OPERATOR_TOKEN))
    assert api_token.status_code == 401


async def test_alertmanager_delivery_and_redelivery(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    body = am_payload(am_alert("RedisDown"), am_alert("ExchangeFailoverActive"))
    first = await client.post("/api/v1/alerts/alertmanager", json=body, headers=HOOK)
    assert first.status_code == 200
    assert first.json()["accepted"] == 2
    again = await client.post("/api/v1/alerts/alertmanager", json=body, headers=HOOK)
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 2)
    listed = await client.get("/api/v1/incidents", headers=auth(VIEWER_TOKEN))
    # One notification is one alert group: one incident with both alerts as its members.
    [group] = listed.json()["items"]
    assert group["title"] == "RedisDown"
    assert (group["firing_members"], group["resolved_members"]) == (2, 0)
    assert group["differing_labels"] == ["alertname"]
    assert await stored_alert_count(plane) == 2


async def test_grafana_and_falco_deliveries_create_incidents(client: httpx.AsyncClient) -> None:
    grafana = await client.post("/api/v1/alerts/grafana", json=grafana_payload(), headers=HOOK)
    falco = await client.post("/api/v1/alerts/falco", json=falco_event(), headers=HOOK)
    assert grafana.status_code == falco.status_code == 200
    items = (await client.get("/api/v1/incidents", headers=auth(VIEWER_TOKEN))).json()["items"]
    by_source = {i["source"]: i for i in items}
    assert by_source["grafana"]["severity"] == "warning"
    assert by_source["falco"]["security"] is True
    assert by_source["falco"]["severity"] == "critical"


def _broken(source: str) -> list[tuple[Any, str]]:
    # Only what carries no alert, or a field of the wrong type: a missing alertname or an
    # unreadable time is derived (tests/core/test_receivers.py).
    am = am_payload(am_alert("A"), am_alert("B"))
    not_an_alert = json.loads(json.dumps(am))
    not_an_alert["alerts"][1] = "B"
    bad_status = json.loads(json.dumps(am))
    bad_status["alerts"][0]["status"] = "burning"
    grafana = grafana_payload()
    grafana["alerts"] = []
    falco = falco_event()
    falco["priority"] = "Loud"
    cases = {
        "alertmanager": [
            (not_an_alert, "alerts[1]"),
            (bad_status, "alerts[0].status"),
            ({**am, "version": "3"}, "version"),
            ([], "body"),
        ],
        "grafana": [(grafana, "alerts"), ({"alerts": "x"}, "alerts")],
        "falco": [
            (falco, "priority"),
            ({k: v for k, v in falco_event().items() if k != "rule"}, "rule"),
        ],
    }
    return cases[source]


@pytest.mark.parametrize("source", ["alertmanager", "grafana", "falco"])
async def test_malformed_bodies_get_4xx_naming_the_field_and_store_nothing(
    client: httpx.AsyncClient, plane: ControlPlane, source: str
) -> None:
    for body, field in _broken(source):
        response = await client.post(f"/api/v1/alerts/{source}", json=body, headers=HOOK)
        assert response.status_code == 422, response.text
        assert field in response.json()["error"]["message"]
    for raw in (b"{not json", b"", b"\xff\xfe"):
        response = await client.post(
            f"/api/v1/alerts/{source}",
            content=raw,
            headers={**HOOK, "content-type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"
    assert await plane.incidents.list() == []
    assert await stored_alert_count(plane) == 0


async def test_oversized_webhook_is_413(client: httpx.AsyncClient) -> None:
    huge = am_payload(*[am_alert(f"A{i}", description="x" * 2000) for i in range(600)])
    response = await client.post("/api/v1/alerts/alertmanager", json=huge, headers=HOOK)
    assert response.status_code == 413


async def test_store_outage_answers_503_so_the_sender_retries(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    await plane.store.close()
    response = await client.post(
        "/api/v1/alerts/alertmanager", json=am_payload(am_alert("RedisDown")), headers=HOOK
    )
    assert response.status_code == 503
    assert "nothing was stored" in response.json()["error"]["message"]


async def test_incident_actions_over_the_api(client: httpx.AsyncClient) -> None:
    await client.post(
        "/api/v1/alerts/alertmanager", json=am_payload(am_alert("RedisDown")), headers=HOOK
    )
    [incident] = (
        await client.get("/api/v1/incidents?open=true", headers=auth(VIEWER_TOKEN))
    ).json()["items"]
    base = f"/api/v1/incidents/{incident['id']}"

    denied = await client.post(f"{base}/ack", headers=auth(VIEWER_TOKEN))
    assert denied.status_code == 403
    acked = await client.post(f"{base}/ack", headers=auth(OPERATOR_TOKEN))
    assert acked.status_code == 200
    assert acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"]["name"] == "operator-1"

    bad = await client.post(
        f"{base}/silence", json={"duration": "forever"}, headers=auth(OPERATOR_TOKEN)
    )
    assert bad.status_code == 422
    assert "30m, 1h" in bad.json()["error"]["message"]
    silenced = await client.post(
        f"{base}/silence", json={"duration": "1h"}, headers=auth(OPERATOR_TOKEN)
    )
    assert silenced.json()["state"] == "silenced"
    resolved = await client.post(f"{base}/resolve", headers=auth(OPERATOR_TOKEN))
    assert resolved.json()["state"] == "resolved"
    conflict = await client.post(f"{base}/ack", headers=auth(OPERATOR_TOKEN))
    assert conflict.status_code == 409
    assert "already resolved" in conflict.json()["error"]["message"]

    detail = (await client.get(base, headers=auth(VIEWER_TOKEN))).json()
    assert [e["kind"] for e in detail["timeline"]] == [
        "opened",
        "acknowledged",
        "silenced",
        "resolved",
    ]
    assert detail["alerts"][0]["alert"]["title"] == "RedisDown"

    missing = await client.get("/api/v1/incidents/424242", headers=auth(VIEWER_TOKEN))
    assert missing.status_code == 404
    filtered = await client.get("/api/v1/incidents?state=triggered", headers=auth(VIEWER_TOKEN))
    assert filtered.json()["items"] == []
    bad_filter = await client.get("/api/v1/incidents?severity=urgent", headers=auth(VIEWER_TOKEN))
    assert bad_filter.status_code == 422


async def test_jobs_are_listed_with_next_run(client: httpx.AsyncClient) -> None:
    jobs = (await client.get("/api/v1/jobs", headers=auth(VIEWER_TOKEN))).json()["items"]
    escalation = next(j for j in jobs if j["name"] == "escalation")
    assert escalation["next_run"] is not None
    assert escalation["schedule"].startswith("every ")
