"""The engine over HTTP and the CLI: venues, failover, cores, PnL, exposure, orders, halt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli_app
from core.control_plane import ControlPlane
from core.models.venues import OrderSide, OrderType
from core.trading.strategies import CoreContext, Intent
from tests.conftest import (
    ADMIN_TOKEN,
    OPERATOR_TOKEN,
    TOKENS,
    VIEWER_TOKEN,
    WEBHOOK_TOKEN,
    PlaneFactory,
    auth,
)
from tests.support.metrics import scrape_showing
from tests.support.services import free_port

QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600}
LUNIA = str(Path(sys.executable).with_name("lunia"))


class BuyEveryTick:
    """A test core: buys one small lot of BTC on every tick."""

    name = "buyer"
    description = "test core"
    essential = False
    symbols = ("BTC/USDT",)

    async def decide(self, context: CoreContext) -> Sequence[Intent]:
        return [Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)]


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    return await make_plane(**QUIET)


@pytest.fixture
async def api(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as c:
        yield c


async def test_core_toggled_off_through_the_api_places_no_further_orders(
    plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    plane.trading.register(BuyEveryTick())
    await plane.trading.tick()
    first = await api.get("/api/v1/orders", params={"core": "buyer"}, headers=auth(VIEWER_TOKEN))
    assert len(first.json()["items"]) == 1
    denied = await api.post("/api/v1/cores/buyer/toggle", headers=auth(VIEWER_TOKEN))
    assert denied.status_code == 403
    off = await api.post(
        "/api/v1/cores/buyer/toggle", json={"enabled": False}, headers=auth(OPERATOR_TOKEN)
    )
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False and off.json()["running"] is False
    for _ in range(3):
        await plane.trading.tick()
    after = await api.get("/api/v1/orders", params={"core": "buyer"}, headers=auth(VIEWER_TOKEN))
    assert len(after.json()["items"]) == 1
    cores = (await api.get("/api/v1/cores", headers=auth(VIEWER_TOKEN))).json()["items"]
    assert {c["name"]: c["enabled"] for c in cores}["buyer"] is False
    audit = [e.action for e in await plane.audit.tail(5)]
    assert "core.toggle" in audit
    missing = await api.post("/api/v1/cores/nope/toggle", headers=auth(OPERATOR_TOKEN))
    assert missing.status_code == 404


async def test_operator_halts_with_confirm_cancelling_open_orders_and_only_admin_resumes(
    plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    resting = await plane.trading.place_order(
        "manual",
        Intent(symbol="ETH/USDT", side=OrderSide.BUY, amount=0.1, type=OrderType.LIMIT, price=1.0),
    )
    viewer = await api.post("/api/v1/halt", json={"confirm": True}, headers=auth(VIEWER_TOKEN))
    assert viewer.status_code == 403
    unconfirmed = await api.post("/api/v1/halt", json={}, headers=auth(OPERATOR_TOKEN))
    assert unconfirmed.status_code == 409
    assert "confirm" in unconfirmed.json()["error"]["message"]
    halted = await api.post(
        "/api/v1/halt", json={"confirm": True, "reason": "test"}, headers=auth(OPERATOR_TOKEN)
    )
    assert halted.status_code == 200
    body = halted.json()
    assert body["state"]["halted"] is True
    assert [o["client_order_id"] for o in body["canceled"]] == [resting.client_order_id]
    open_now = await api.get("/api/v1/orders", params={"status": "open"}, headers=auth(ADMIN_TOKEN))
    assert open_now.json()["items"] == []
    refused = await api.post("/api/v1/resume", json={"confirm": True}, headers=auth(OPERATOR_TOKEN))
    assert refused.status_code == 403
    resumed = await api.post("/api/v1/resume", json={"confirm": True}, headers=auth(ADMIN_TOKEN))
    assert resumed.status_code == 200 and resumed.json()["halted"] is False


async def test_failover_answers_409_with_the_precheck_then_switches_and_fails_back(
    plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    venues = (await api.get("/api/v1/venues", headers=auth(VIEWER_TOKEN))).json()
    assert venues["active"] == "binance" and venues["failed_over"] is False
    asked = await api.post("/api/v1/failover", json={"to": "okx"}, headers=auth(OPERATOR_TOKEN))
    assert asked.status_code == 409
    message = asked.json()["error"]["message"]
    assert "pre-check of okx (paper) passed" in message and "USDT" in message
    done = await api.post(
        "/api/v1/failover", json={"to": "okx", "confirm": True}, headers=auth(OPERATOR_TOKEN)
    )
    assert done.status_code == 200 and done.json()["active"] == "okx"
    assert "exchange_failover 1.0" in await scrape_showing(api, "exchange_failover 1.0")
    back = await api.post("/api/v1/failback", headers=auth(OPERATOR_TOKEN))
    assert back.status_code == 200 and back.json()["failed_over"] is False
    assert "exchange_failover 0.0" in await scrape_showing(api, "exchange_failover 0.0")
    bad = await api.post(
        "/api/v1/failover", json={"to": "nope!", "confirm": True}, headers=auth(OPERATOR_TOKEN)
    )
    assert bad.status_code == 422


async def test_pnl_exposure_and_orders_read_for_viewers(
    plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    plane.trading.register(BuyEveryTick())
    await plane.trading.tick()
    await plane.trading.record_pnl()
    pnl = await api.get("/api/v1/pnl", params={"window": "7d"}, headers=auth(VIEWER_TOKEN))
    assert pnl.status_code == 200
    assert {c["core"] for c in pnl.json()["cores"]} >= {"buyer", "momentum"}
    assert pnl.json()["points"]
    # One point recorded just now: the change is labelled since then, not as 7d.
    assert pnl.json()["full_window"] is False
    assert pnl.json()["label"].startswith("since ") and "(history < 7d)" in pnl.json()["label"]
    bad = await api.get("/api/v1/pnl", params={"window": "1y"}, headers=auth(VIEWER_TOKEN))
    assert bad.status_code == 422
    exposure = (await api.get("/api/v1/exposure", headers=auth(VIEWER_TOKEN))).json()
    assert exposure["total"] > 0 and exposure["symbols"][0]["symbol"] == "BTC/USDT"
    assert (await api.get("/api/v1/orders")).status_code == 401
    metrics = (await api.get("/metrics")).text
    assert 'core_pnl{core="buyer"}' in metrics
    assert 'orders_total{side="buy",status="filled",venue="binance"} 1.0' in metrics


@pytest.mark.slow
def test_cli_chaos_drill_fails_over_a_running_instance_and_failback_ends_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_"))}
    env.update(
        LUNIA_STATE_DIR=str(tmp_path / "var"),
        API_PORT=str(port),
        API_TOKENS=TOKENS,
        CORE_TICK_SECONDS="3600",
        VENUE_PROBE_SECONDS="3600",
    )
    proc = subprocess.Popen(
        [LUNIA, "run"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "lunia run exited early"
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        runner = CliRunner()
        common = ["--url", f"http://127.0.0.1:{port}", "--token", ADMIN_TOKEN]
        unconfirmed = runner.invoke(cli_app, ["chaos", "exchange-failover", *common])
        assert unconfirmed.exit_code == 2 and "(add --yes)" in unconfirmed.stderr
        drill = runner.invoke(cli_app, ["chaos", "exchange-failover", "--yes", *common])
        assert drill.exit_code == 0, drill.stderr
        assert "active okx (FAILED OVER)" in drill.stdout
        venues = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/venues", headers=auth(VIEWER_TOKEN), timeout=5
        ).json()
        assert venues["failed_over"] is True
        back = runner.invoke(cli_app, ["failback", *common])
        assert back.exit_code == 0, back.stderr
        assert "active binance (on primary)" in back.stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def production_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets that pass the INFRA_PROD_ENABLED start checks (the CLI opens the local state)."""
    monkeypatch.setenv("API_TOKENS", TOKENS)
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)


def test_cli_chaos_is_refused_while_infra_prod_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    production_secrets(monkeypatch)
    monkeypatch.setenv("INFRA_PROD_ENABLED", "true")
    result = CliRunner().invoke(
        cli_app, ["chaos", "exchange-failover", "--yes", "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 1
    assert "refused while INFRA_PROD_ENABLED is on" in result.stderr


def test_cli_chaos_is_refused_while_infra_prod_is_on_at_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production_secrets(monkeypatch)
    runner = CliRunner()
    flipped = runner.invoke(cli_app, ["flags", "set", "INFRA_PROD_ENABLED", "true"])
    assert flipped.exit_code == 0, flipped.stderr
    result = runner.invoke(
        cli_app, ["chaos", "exchange-failover", "--yes", "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 1
    # Refused by the local rule: nothing listens on port 9, and the instance was not contacted.
    assert result.stderr.strip() == "lunia: chaos drills are refused while INFRA_PROD_ENABLED is on"


async def test_pnl_window_and_engine_mode_come_from_core(
    plane: ControlPlane, api: httpx.AsyncClient
) -> None:
    bad = await api.get("/api/v1/pnl", params={"window": "1y"}, headers=auth(VIEWER_TOKEN))
    assert bad.status_code == 422
    assert bad.json()["error"]["message"] == "window must be one of 24h, 7d, not '1y'"
    schema = (await api.get("/openapi.json")).json()
    [window] = schema["paths"]["/api/v1/pnl"]["get"]["parameters"]
    assert window["schema"]["$ref"] == "#/components/schemas/PnlWindow"
    assert schema["components"]["schemas"]["PnlWindow"]["enum"] == ["24h", "7d"]
    engine = await api.get("/api/v1/engine", headers=auth(VIEWER_TOKEN))
    assert engine.json()["mode"] == "trading"
    await api.post(
        "/api/v1/halt", json={"confirm": True, "reason": "drill"}, headers=auth(ADMIN_TOKEN)
    )
    engine = await api.get("/api/v1/engine", headers=auth(VIEWER_TOKEN))
    assert engine.json()["mode"] == "halted" and plane.trading.state().halted
