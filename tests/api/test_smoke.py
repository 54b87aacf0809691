"""``lunia smoke`` passes against a healthy running instance and fails loudly otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from tests.conftest import ADMIN_TOKEN, TOKENS, WEBHOOK_TOKEN, PlaneFactory
from tests.support.http import serve


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "cli-state"))
    monkeypatch.setenv("API_TOKENS", TOKENS)
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)


async def test_smoke_passes_against_a_running_instance(
    make_plane: PlaneFactory, cli_env: None
) -> None:
    plane = await make_plane()
    async with serve(plane) as url:
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["smoke", "--url", url, "--token", ADMIN_TOKEN]
        )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "✅ test alert end to end: incident #1 opened and resolved" in result.stdout
    assert "smoke OK" in result.stdout
    incident = await plane.incidents.get(1)
    assert (incident.title, incident.state.value) == ("LuniaSmokeTest", "resolved")


@pytest.mark.slow
async def test_smoke_fails_with_a_bad_token_or_no_instance(
    make_plane: PlaneFactory, cli_env: None
) -> None:
    plane = await make_plane()
    async with serve(plane) as url:
        bad = await asyncio.to_thread(
            CliRunner().invoke, app, ["smoke", "--url", url, "--token", "wrong-token-xxxxxxxx"]
        )
    assert bad.exit_code == 1
    assert "❌ status API: HTTP 401" in bad.stdout
    down = await asyncio.to_thread(
        CliRunner().invoke, app, ["smoke", "--url", "http://127.0.0.1:9", "--token", ADMIN_TOKEN]
    )
    assert down.exit_code == 1
    assert "smoke FAILED: 5 check(s) failed" in down.stderr


@pytest.mark.slow
async def test_smoke_scrapes_metrics_with_the_deployments_metrics_token(
    make_plane: PlaneFactory, cli_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production: /metrics asks for METRICS_TOKEN (the stack's secrets/metrics_token).
    plane = await make_plane(metrics_token="a-metrics-token-for-the-smoke")
    args = ["smoke", "--token", ADMIN_TOKEN]
    async with serve(plane) as url:
        without = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", url])
        secret = tmp_path / "metrics_token"
        secret.write_text("a-metrics-token-for-the-smoke\n")
        monkeypatch.setenv("LUNIA_METRICS_TOKEN_FILE", str(secret))
        scraped = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", url])
    assert without.exit_code == 1
    assert "❌ probes and metrics: /metrics asks for a token: set LUNIA_METRICS_TOKEN_FILE" in (
        without.stdout
    )
    assert scraped.exit_code == 0, scraped.stdout + scraped.stderr
    assert "✅ probes and metrics: /readyz 200, /metrics complete" in scraped.stdout
