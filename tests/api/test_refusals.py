"""API refusals are counted and audited by core's one recorder: 403s every time, 401s throttled
(a flood of bad tokens cannot flood the audit log)."""

from __future__ import annotations

import httpx

from core.control_plane import ControlPlane
from core.models import AuditEntry, Role
from tests.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, auth


async def denied(plane: ControlPlane) -> list[AuditEntry]:
    return [e for e in await plane.audit.tail(50) if e.outcome == "denied"]


def refused_count(plane: ControlPlane, adapter: str, reason: str) -> float:
    value = plane.metrics.auth_denied.labels(adapter, reason)._value.get()
    return float(value)


async def test_viewer_reading_the_audit_log_is_refused_and_audited(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/v1/audit", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 403
    assert "reading the audit log needs the operator role" in response.json()["error"]["message"]
    [entry] = await denied(plane)
    assert (entry.action, entry.actor.name, entry.actor.role) == (
        "audit.read",
        "viewer-1",
        Role.VIEWER,
    )
    assert refused_count(plane, "api", "role") == 1

    assert (await client.get("/api/v1/audit/verify", headers=auth(VIEWER_TOKEN))).status_code == 403
    assert [e.action for e in await denied(plane)] == ["audit.verify", "audit.read"]


async def test_route_role_refusal_is_audited_with_the_route(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/v1/tokens", headers=auth(OPERATOR_TOKEN))
    assert response.status_code == 403
    [entry] = await denied(plane)
    assert (entry.action, entry.target) == ("api.forbidden", "GET /api/v1/tokens")
    assert entry.actor.name == "operator-1"
    assert "needs the admin role" in entry.detail


async def test_bad_tokens_are_counted_each_time_but_audited_once_per_caller(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    for n in range(5):
        response = await client.get("/api/v1/flags", headers=auth(f"stolen-{n}"))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    missing = await client.get("/api/v1/flags")
    assert missing.status_code == 401
    assert "missing bearer token" in missing.json()["error"]["message"]

    assert refused_count(plane, "api", "bad_token") == 5
    entries = await denied(plane)
    assert sorted((e.action, e.detail) for e in entries) == [
        ("api.unauthenticated", "invalid bearer token"),
        ("api.unauthenticated", "missing bearer token (Authorization: Bearer <token>)"),
    ]
    assert {e.actor.id for e in entries} == {"client:127.0.0.1"}
    assert all(e.actor.role is None for e in entries)


async def test_wrong_alert_webhook_token_is_refused_through_the_same_recorder(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        response = await client.post("/api/v1/alerts/alertmanager", json={}, headers=auth("nope"))
        assert response.status_code == 401
    assert refused_count(plane, "webhook", "bad_token") == 3
    [entry] = await denied(plane)
    assert entry.action == "webhook.unauthenticated"
