"""Temporary API tokens over HTTP and the CLI, per-token rate limits and security headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as lunia_app
from core.control_plane import ControlPlane
from core.errors import PermissionDenied
from core.models import Actor, utcnow
from core.models.ops import Mark
from tests.conftest import (
    ADMIN_TOKEN,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    WEBHOOK_TOKEN,
    PlaneFactory,
    auth,
)
from tests.support.payloads import am_alert, am_payload

ADMIN = Actor.system("test")


@asynccontextmanager
async def client_for(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
        yield client


async def issue(client: httpx.AsyncClient, **body: str) -> dict[str, str]:
    response = await client.post("/api/v1/tokens", json=body, headers=auth(ADMIN_TOKEN))
    assert response.status_code == 201, response.text
    issued: dict[str, str] = response.json()
    return issued


@pytest.mark.slow
async def test_issued_token_works_with_its_role_until_it_expires(
    client: httpx.AsyncClient,
) -> None:
    issued = await issue(client, name="ci-deploy", role="viewer", ttl="1s")
    assert issued["token"].startswith("lt_")
    assert issued["state"] == "live"
    token = issued["token"]
    assert (await client.get("/api/v1/flags", headers=auth(token))).status_code == 200
    refused = await client.put(
        "/api/v1/flags/LLM_RATE_LIMITED", json={"value": True}, headers=auth(token)
    )
    assert refused.status_code == 403
    await asyncio.sleep(1.1)
    expired = await client.get("/api/v1/flags", headers=auth(token))
    assert expired.status_code == 401
    assert expired.json()["error"] == {"code": "unauthorized", "message": "token expired"}


async def test_expiry_is_checked_against_the_clock(plane: ControlPlane) -> None:
    issued = await plane.temporary_tokens.issue(ADMIN, name="x", role="operator", ttl="1h")
    value = issued.value.get_secret_value()
    live = await plane.temporary_tokens.resolve(value)
    assert live is not None
    assert live.actor is not None
    assert live.actor.name == "x"
    later = issued.token.expires_at + timedelta(seconds=1)
    check = await plane.temporary_tokens.resolve(value, now=later)
    assert check is not None
    assert check.actor is None
    assert check.refusal == "token expired"


async def test_revoked_token_stops_working_at_once(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    issued = await issue(client, name="laptop", role="operator", ttl="8h")
    token = issued["token"]
    assert (await client.get("/api/v1/status", headers=auth(token))).status_code == 200
    revoked = await client.delete(f"/api/v1/tokens/{issued['id']}", headers=auth(ADMIN_TOKEN))
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    refused = await client.get("/api/v1/status", headers=auth(token))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "token revoked"
    again = await client.delete(f"/api/v1/tokens/{issued['id']}", headers=auth(ADMIN_TOKEN))
    assert again.status_code == 409
    missing = await client.delete("/api/v1/tokens/nope", headers=auth(ADMIN_TOKEN))
    assert missing.status_code == 404
    actions = [(e.action, e.actor.name) for e in await plane.audit.tail(10)]
    assert ("token.issue", "admin-1") in actions
    assert ("token.revoke", "admin-1") in actions


async def test_list_shows_names_roles_expiry_never_values(client: httpx.AsyncClient) -> None:
    issued = await issue(client, name="grafana", role="viewer", ttl="7d")
    response = await client.get("/api/v1/tokens", headers=auth(ADMIN_TOKEN))
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["name"] == "grafana"
    assert item["role"] == "viewer"
    assert item["issued_by"] == "admin-1"
    assert item["state"] == "live"
    assert "token" not in item
    assert issued["token"] not in response.text
    assert "sha256" not in response.text


@pytest.mark.slow
async def test_only_admins_manage_tokens_and_refusals_are_audited(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    body = {"name": "sneaky", "role": "admin", "ttl": "1h"}
    refused = await client.post("/api/v1/tokens", json=body, headers=auth(OPERATOR_TOKEN))
    assert refused.status_code == 403
    assert "admin role" in refused.json()["error"]["message"]
    listing = await client.get("/api/v1/tokens", headers=auth(VIEWER_TOKEN))
    assert listing.status_code == 403
    (entry,) = [e for e in await plane.audit.tail(5) if e.action == "token.issue"]
    assert entry.outcome == "denied"
    assert entry.actor.name == "operator-1"
    viewer = Actor(kind=ADMIN.kind, id="v", name="v", role=None)
    with pytest.raises(PermissionDenied):
        await plane.temporary_tokens.revoke(viewer, "whatever")


async def test_bad_issue_requests_are_clear_4xx(client: httpx.AsyncClient) -> None:
    cases = [
        ({"name": "ok", "ttl": "forever"}, "duration 'forever' not understood"),
        ({"name": "ok", "ttl": "365d"}, "ttl must be between"),
        ({"name": "has space", "ttl": "1h"}, "token name"),
    ]
    for body, message in cases:
        response = await client.post("/api/v1/tokens", json=body, headers=auth(ADMIN_TOKEN))
        assert response.status_code == 422, body
        assert message in response.json()["error"]["message"]
    await issue(client, name="dup", ttl="1h")
    duplicate = await client.post(
        "/api/v1/tokens", json={"name": "dup", "ttl": "1h"}, headers=auth(ADMIN_TOKEN)
    )
    assert duplicate.status_code == 409


async def test_checklist_flags_tokens_due_to_rotate(plane: ControlPlane) -> None:
    tokens = plane.temporary_tokens
    await tokens.issue(ADMIN, name="long-lived", role="viewer", ttl="7d")
    (line,) = [i for i in (await plane.checklist.run()).items if i.name.startswith("API tokens")]
    assert line.mark is Mark.OK
    await tokens.issue(ADMIN, name="soon", role="viewer", ttl="3h")
    await tokens.issue(
        ADMIN, name="stale", role="viewer", ttl="1h", now=utcnow() - timedelta(hours=2)
    )
    gone = await tokens.issue(ADMIN, name="revoked", role="viewer", ttl="1h")
    await tokens.revoke(ADMIN, gone.token.id)
    (line,) = [i for i in (await plane.checklist.run()).items if i.name.startswith("API tokens")]
    assert line.mark is Mark.WARN
    assert line.mark.symbol == "⚠️"
    assert "soon" in line.reason
    assert "stale" in line.reason
    assert "expired" in line.reason
    assert "long-lived" not in line.reason
    assert "revoked [" not in line.reason


def test_cli_issues_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()
    issued = runner.invoke(
        lunia_app, ["token", "issue", "--name", "runbook", "--role", "operator", "--ttl", "8h"]
    )
    assert issued.exit_code == 0, issued.stderr
    value = issued.stdout.strip()
    assert value.startswith("lt_")
    assert "not shown again" in issued.stderr
    listed = runner.invoke(lunia_app, ["token", "list", "--json"])
    assert listed.exit_code == 0
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["role"], row["state"]) == ("runbook", "operator", "live")
    assert value not in listed.stdout
    revoked = runner.invoke(lunia_app, ["token", "revoke", row["id"]])
    assert revoked.exit_code == 0
    assert "revoked token" in revoked.stdout
    unknown = runner.invoke(lunia_app, ["token", "revoke", "nope"])
    assert unknown.exit_code == 2
    bad = runner.invoke(lunia_app, ["token", "issue", "--name", "x", "--ttl", "soon"])
    assert bad.exit_code == 2


async def test_rate_limit_answers_429_with_retry_after_per_token(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(api_rate_limit_per_minute=3)
    async with client_for(plane) as client:
        for _ in range(3):
            ok = await client.get("/api/v1/flags", headers=auth(VIEWER_TOKEN))
            assert ok.status_code == 200
        limited = await client.get("/api/v1/flags", headers=auth(VIEWER_TOKEN))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limited"
        assert "3 requests per minute" in limited.json()["error"]["message"]
        assert limited.headers["X-Content-Type-Options"] == "nosniff"
        other = await client.get("/api/v1/flags", headers=auth(OPERATOR_TOKEN))
        assert other.status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes are not limited
        for _ in range(5):  # an alert storm is stored, never refused
            stored = await client.post(
                "/api/v1/alerts/alertmanager",
                json=am_payload(am_alert("DiskFull")),
                headers=auth(WEBHOOK_TOKEN),
            )
            assert stored.status_code < 300


async def test_every_response_carries_security_headers(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get("/api/v1/flags"),
        await client.get("/api/v1/flags", headers=auth(VIEWER_TOKEN)),
        await client.get("/no/such/path"),
    ):
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["Strict-Transport-Security"].startswith("max-age=")
    docs = await client.get("/docs")
    assert docs.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert docs.headers["X-Frame-Options"] == "DENY"


async def test_a_temporary_admin_token_cannot_mint_tokens(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    temporary = (await issue(client, name="break-glass", role="admin", ttl="1h"))["token"]
    body = {"name": "forever", "role": "admin", "ttl": "90d"}
    refused = await client.post("/api/v1/tokens", json=body, headers=auth(temporary))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        "a temporary token cannot issue tokens; use a configured admin token"
    )
    names = [t.name for t in await plane.temporary_tokens.list(ADMIN)]
    assert names == ["break-glass"]
    (entry,) = [
        e for e in await plane.audit.tail(5) if (e.action, e.outcome) == ("token.issue", "denied")
    ]
    assert (entry.actor.name, entry.target) == ("break-glass", "forever")
    # It can still do admin work that is not minting, revoking included.
    listed = await client.get("/api/v1/tokens", headers=auth(temporary))
    assert listed.status_code == 200


async def test_issuer_is_recorded_on_each_token(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    await issue(client, name="ci", role="viewer", ttl="1h")
    await plane.temporary_tokens.issue(ADMIN, name="cli-made", role="viewer", ttl="1h")
    issuers = {t.name: t.issuer for t in await plane.temporary_tokens.list(ADMIN)}
    assert issuers == {"ci": "api:admin-1", "cli-made": "system:test"}


async def test_revoking_a_token_revokes_every_token_it_minted(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    """Tokens minted by temporary tokens before minting was refused (with an issuer recorded, or
    from before issuers were kept) end with the token that minted them."""
    parent = await issue(client, name="break-glass", role="admin", ttl="8h")
    minted = await _stored_copy(plane, parent["id"], "child", issuer=f"api:token:{parent['id']}")
    # An old record: only the issuer's name was kept.
    grandchild = await _stored_copy(plane, minted["id"], "grandchild", issuer=None)
    unrelated = await issue(client, name="grafana", role="viewer", ttl="8h")
    for value in (minted["value"], grandchild["value"]):
        ok = await client.get("/api/v1/status", headers=auth(value))
        assert ok.status_code == 200

    revoked = await client.delete(f"/api/v1/tokens/{parent['id']}", headers=auth(ADMIN_TOKEN))
    assert revoked.status_code == 200
    for value in (parent["token"], minted["value"], grandchild["value"]):
        refused = await client.get("/api/v1/status", headers=auth(value))
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "token revoked"
    still = await client.get("/api/v1/status", headers=auth(unrelated["token"]))
    assert still.status_code == 200
    states = {t.name: t.state() for t in await plane.temporary_tokens.list(ADMIN)}
    assert states == {
        "break-glass": "revoked",
        "child": "revoked",
        "grandchild": "revoked",
        "grafana": "live",
    }
    audited = {e.target: e.detail for e in await plane.audit.tail(10) if e.action == "token.revoke"}
    assert audited == {
        f"token:{parent['id']}": "",
        f"token:{minted['id']}": f"issued through revoked token:{parent['id']}",
        f"token:{grandchild['id']}": f"issued through revoked token:{parent['id']}",
    }


async def test_revoking_again_ends_what_an_already_revoked_token_minted(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    parent = await issue(client, name="old", role="admin", ttl="8h")
    await client.delete(f"/api/v1/tokens/{parent['id']}", headers=auth(ADMIN_TOKEN))
    # Minted while revocation did not cascade: the child outlived its issuer.
    child = await _stored_copy(plane, parent["id"], "survivor", issuer=f"api:token:{parent['id']}")
    assert (await client.get("/api/v1/status", headers=auth(child["value"]))).status_code == 200
    again = await client.delete(f"/api/v1/tokens/{parent['id']}", headers=auth(ADMIN_TOKEN))
    assert again.status_code == 200
    assert (await client.get("/api/v1/status", headers=auth(child["value"]))).status_code == 401
    third = await client.delete(f"/api/v1/tokens/{parent['id']}", headers=auth(ADMIN_TOKEN))
    assert third.status_code == 409


async def _stored_copy(
    plane: ControlPlane, parent_id: str, name: str, *, issuer: str | None
) -> dict[str, str]:
    """Write a token record the way a temporary token minted one before that was refused:
    issued by the parent's actor, stored beside the others (value known to the test)."""
    made = await plane.temporary_tokens.issue(ADMIN, name=name, role="admin", ttl="8h")
    parent = await plane.store.get_value("token:" + parent_id)
    assert parent is not None
    record = await plane.store.get_value("token:" + made.token.id)
    assert record is not None
    record.update(issued_by=parent["name"], issuer=issuer)
    await plane.store.set_value("token:" + made.token.id, record)
    return {**record, "value": made.value.get_secret_value()}
