"""What an anonymous client can see in production: ``/metrics`` needs ``METRICS_TOKEN``, the API
schema and its pages are off unless asked for, and ``/healthz`` carries no component details."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.control_plane import ControlPlane
from core.platform.health import ComponentHealth, Status
from core.security.secrets import METRICS_TOKEN_FILE
from tests.conftest import PlaneFactory, auth

METRICS_TOKEN = "metrics-token-for-tests-0c4e9d2b7a"
CHAT_ID = "-1001234567890"

ClientFactory = Callable[..., Awaitable[tuple[ControlPlane, httpx.AsyncClient]]]


@pytest.fixture
async def make_client(make_plane: PlaneFactory) -> AsyncIterator[ClientFactory]:
    """A started control plane (env kwargs) and an in-process client of its app."""
    clients: list[httpx.AsyncClient] = []

    async def make(**env: Any) -> tuple[ControlPlane, httpx.AsyncClient]:
        plane = await make_plane(**env)
        transport = httpx.ASGITransport(app=create_app(plane))
        client = httpx.AsyncClient(transport=transport, base_url="http://lunia.test")
        clients.append(client)
        return plane, client

    yield make
    for client in clients:
        await client.aclose()


async def test_production_metrics_need_the_generated_bearer_token(
    make_client: ClientFactory,
) -> None:
    plane, client = await make_client(infra_prod_enabled=True)
    path = plane.secrets.generated[METRICS_TOKEN_FILE]
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    refused = await client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "core_pnl" not in refused.text
    assert (await client.get("/metrics", headers=auth("wrong-" + token))).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": token})).status_code == 401
    scraped = await client.get("/metrics", headers=auth(token))
    assert scraped.status_code == 200 and "risk_exposure" in scraped.text
    assert 'unauthorized_attempts_total{adapter="http",reason="metrics_token"} 3.0' in scraped.text


async def test_metrics_token_from_a_file_is_required_outside_production_too(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "metrics_token"
    secret.write_text(METRICS_TOKEN + "\n")
    monkeypatch.setenv("METRICS_TOKEN_FILE", str(secret))  # as a Docker secret is handed over
    plane, client = await make_client()
    assert METRICS_TOKEN_FILE not in plane.secrets.generated
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=auth(METRICS_TOKEN))).status_code == 200


async def test_metrics_stay_open_outside_production_without_a_token(
    make_client: ClientFactory,
) -> None:
    plane, client = await make_client()
    assert plane.secrets.metrics_token is None
    assert METRICS_TOKEN_FILE not in plane.secrets.generated
    assert (await client.get("/metrics")).status_code == 200


@pytest.mark.slow
async def test_production_hides_the_schema_and_docs_unless_enabled(
    make_client: ClientFactory,
) -> None:
    _, hidden = await make_client(infra_prod_enabled=True)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await hidden.get(path)).status_code == 404, path
    _, shown = await make_client(infra_prod_enabled=True, api_docs_enabled=True)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await shown.get(path)).status_code == 200, path
    _, development = await make_client()
    assert (await development.get("/openapi.json")).status_code == 200
    _, turned_off = await make_client(api_docs_enabled=False)
    assert (await turned_off.get("/docs")).status_code == 404


async def telling_check() -> ComponentHealth:
    """A component whose detail names what a probe must not show in production."""
    return ComponentHealth(
        status=Status.DEGRADED, detail=f"chats refusing us: {CHAT_ID}; core_pnl 1234.5 USDT"
    )


async def test_production_healthz_shows_statuses_without_details(
    make_client: ClientFactory,
) -> None:
    plane, client = await make_client(infra_prod_enabled=True)
    plane.health.register("telegram", telling_check, critical=False)
    await plane.health.refresh()
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["components"]["telegram"]["status"] == "degraded"
    assert CHAT_ID not in response.text and "1234.5" not in response.text
    assert all(item["detail"] == "" for item in body["components"].values())
    assert plane.health.snapshot().components["telegram"].detail.startswith("chats refusing")


async def test_development_healthz_keeps_details_and_follows_each_refresh(
    make_client: ClientFactory,
) -> None:
    plane, client = await make_client()
    assert "chats refusing" not in (await client.get("/healthz")).text
    plane.health.register("telegram", telling_check, critical=False)
    await plane.health.refresh()
    response = await client.get("/healthz")
    assert response.json()["components"]["telegram"]["detail"].startswith("chats refusing")
