"""The HTTP API: probes, metrics by route template, flags with roles, clear 4xx errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from core.control_plane import ControlPlane
from core.models import Actor
from core.platform.health import ComponentHealth, Status
from tests.conftest import ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, auth


async def test_healthz_reports_components(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["components"]["store"]["status"] == "ok"
    assert body["components"]["redis"]["status"] == "disabled"
    assert body["components"]["telegram"]["status"] == "disabled"


async def test_healthz_never_waits_on_a_slow_check(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    async def slow() -> ComponentHealth:
        await asyncio.sleep(30)
        return ComponentHealth(status=Status.OK)

    plane.health.register("slow", slow, critical=False)
    refreshing = asyncio.create_task(plane.health.refresh())
    await asyncio.sleep(0.05)
    response = await asyncio.wait_for(client.get("/healthz"), timeout=0.5)
    assert response.status_code == 200
    refreshing.cancel()
    await asyncio.gather(refreshing, return_exceptions=True)


async def test_healthz_is_503_when_the_store_is_down(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    await plane.store.close()
    await plane.health.refresh()
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["components"]["store"]["status"] == "down"


async def test_readyz_follows_lifecycle(plane: ControlPlane, client: httpx.AsyncClient) -> None:
    assert (await client.get("/readyz")).json() == {"ready": True}
    plane.ready = False
    assert (await client.get("/readyz")).status_code == 503


async def test_metrics_label_routes_by_template(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/flags/SANDBOX_ENABLED", headers=auth(VIEWER_TOKEN))
    await client.get("/no/such/path")
    text = (await client.get("/metrics")).text
    assert (
        'request_duration_seconds_count{method="GET",route="/api/v1/flags/{name}",status="200"} 1.0'
    ) in text
    assert 'route="unmatched",status="404"' in text
    assert 'SANDBOX_ENABLED"' not in text.split("request_duration")[1].split("\n")[0]
    assert 'redis_status{redis_status="disabled"} 1.0' in text
    assert 'feature_flag_info{flag="EXCHANGE_FAILOVER",source="default",value="okx"}' in text


async def test_flags_need_a_token(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/flags")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = await client.get("/api/v1/flags", headers=auth("guess"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "invalid bearer token"


async def test_list_and_read_flags(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/flags", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200
    items = {f["name"]: f for f in response.json()["items"]}
    assert items["BINANCE_LIVE_TRADING"]["value"] is True
    assert items["BINANCE_LIVE_TRADING"]["source"] == "default"
    one = await client.get("/api/v1/flags/exchange_failover", headers=auth(VIEWER_TOKEN))
    assert one.json()["value"] == "okx"


async def test_viewer_cannot_flip_a_flag_but_admin_can_and_is_audited(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    denied = await client.put(
        "/api/v1/flags/AUTO_BACKUP_ENABLED", json={"value": False}, headers=auth(VIEWER_TOKEN)
    )
    assert denied.status_code == 403
    assert "needs the operator role" in denied.json()["error"]["message"]
    assert plane.flags.value("AUTO_BACKUP_ENABLED") is True

    ok = await client.put(
        "/api/v1/flags/AUTO_BACKUP_ENABLED", json={"value": False}, headers=auth(ADMIN_TOKEN)
    )
    assert ok.status_code == 200
    assert ok.json()["source"] == "override"
    assert plane.flags.value("AUTO_BACKUP_ENABLED") is False

    audit = await client.get("/api/v1/audit?limit=2", headers=auth(ADMIN_TOKEN))
    newest, older = audit.json()["items"]
    assert (newest["action"], newest["outcome"], newest["actor"]["name"]) == (
        "flag.set",
        "ok",
        "admin-1",
    )
    assert (older["outcome"], older["actor"]["name"]) == ("denied", "viewer-1")


async def test_operator_cannot_enable_live_trading_admin_must_confirm(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    await plane.flags.set("BINANCE_LIVE_TRADING", False, Actor.system("test"))
    url = "/api/v1/flags/BINANCE_LIVE_TRADING"
    operator = await client.put(
        url, json={"value": True, "confirm": True}, headers=auth(OPERATOR_TOKEN)
    )
    assert operator.status_code == 403
    unconfirmed = await client.put(url, json={"value": True}, headers=auth(ADMIN_TOKEN))
    assert unconfirmed.status_code == 409
    assert unconfirmed.json()["error"]["code"] == "confirmation_required"
    assert plane.flags.value("BINANCE_LIVE_TRADING") is False
    confirmed = await client.put(
        url, json={"value": True, "confirm": True}, headers=auth(ADMIN_TOKEN)
    )
    assert confirmed.status_code == 200
    assert plane.flags.value("BINANCE_LIVE_TRADING") is True


async def test_delete_returns_flag_to_default(client: httpx.AsyncClient) -> None:
    url = "/api/v1/flags/LLM_RATE_LIMITED"
    await client.put(url, json={"value": True}, headers=auth(OPERATOR_TOKEN))
    cleared = await client.delete(url, headers=auth(OPERATOR_TOKEN))
    assert (cleared.json()["value"], cleared.json()["source"]) == (False, "default")


async def test_malformed_requests_get_clear_4xx(client: httpx.AsyncClient) -> None:
    url = "/api/v1/flags/SELF_HEALING_ENABLED"
    headers = {**auth(OPERATOR_TOKEN), "content-type": "application/json"}
    bad_json = await client.put(url, content=b'{"value": tru', headers=headers)
    assert bad_json.status_code == 422
    assert "not valid JSON" in bad_json.json()["error"]["message"]

    wrong_type = await client.put(url, json={"value": [1, 2]}, headers=headers)
    assert wrong_type.status_code == 422
    assert "value" in wrong_type.json()["error"]["message"]

    extra = await client.put(url, json={"value": True, "force": 1}, headers=headers)
    assert extra.status_code == 422
    assert "force" in extra.json()["error"]["message"]

    bad_value = await client.put(url, json={"value": "perhaps"}, headers=headers)
    assert bad_value.status_code == 422
    assert "takes true or false" in bad_value.json()["error"]["message"]

    unknown = await client.put("/api/v1/flags/NOPE", json={"value": True}, headers=headers)
    assert unknown.status_code == 404
    assert "unknown flag" in unknown.json()["error"]["message"]

    bad_limit = await client.get("/api/v1/audit?limit=0", headers=headers)
    assert bad_limit.status_code == 422
    assert "limit" in bad_limit.json()["error"]["message"]

    method = await client.post("/healthz")
    assert method.status_code == 405
    assert method.json()["error"]["code"] == "method_not_allowed"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/api/v1/flags/SELF_HEALING_ENABLED",
        content=b"x" * (2 * 1024 * 1024),
        headers={**auth(OPERATOR_TOKEN), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.slow
async def test_openapi_schema_lists_the_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/flags",
        "/api/v1/flags/{name}",
        "/api/v1/audit",
    } <= set(schema["paths"])
    assert "409" in schema["paths"]["/api/v1/flags/{name}"]["put"]["responses"]
