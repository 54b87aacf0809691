"""The status summary and the daily checklist over HTTP and in the terminal."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.cli import app
from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from tests.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, WEBHOOK_TOKEN, auth
from tests.support.payloads import am_alert, am_payload


async def test_status_counts_open_incidents_and_changed_flags(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("RedisDown"))))
    await client.put(
        "/api/v1/flags/LLM_RATE_LIMITED",
        json={"value": True},
        headers=auth(OPERATOR_TOKEN),
    )
    body = (await client.get("/api/v1/status", headers=auth(VIEWER_TOKEN))).json()
    assert body["open_incidents"]["critical"] == 1
    assert body["unacknowledged"] == 1
    assert [f["name"] for f in body["flags_changed"]] == ["LLM_RATE_LIMITED"]
    assert (await client.get("/api/v1/status")).status_code == 401


async def test_checklist_marks_unacknowledged_critical_incidents(
    client: httpx.AsyncClient, plane: ControlPlane
) -> None:
    clean = (await client.get("/api/v1/checklist", headers=auth(VIEWER_TOKEN))).json()
    line = next(i for i in clean["items"] if i["name"] == "incidents acknowledged")
    assert line["mark"] == "ok"
    await client.post(
        "/api/v1/alerts/alertmanager",
        json=am_payload(am_alert("RedisDown")),
        headers=auth(WEBHOOK_TOKEN),
    )
    after = (await client.get("/api/v1/checklist", headers=auth(VIEWER_TOKEN))).json()
    line = next(i for i in after["items"] if i["name"] == "incidents acknowledged")
    assert line["mark"] == "fail"
    assert "#1 RedisDown" in line["reason"]


def test_lunia_checklist_exits_1_on_a_failed_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from core.config.settings import Settings

    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()
    before = runner.invoke(app, ["checklist"])
    assert "✅ incidents acknowledged: 0 open" in before.stdout
    assert before.exit_code == (1 if "❌" in before.stdout else 0)

    async def page() -> None:
        plane = ControlPlane(Settings.load())
        await plane.start()
        await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("RedisDown"))))
        await plane.close()

    asyncio.run(page())
    after = runner.invoke(app, ["checklist"])
    assert after.exit_code == 1
    assert "❌ incidents acknowledged: 1 open, 1 not acknowledged (#1 RedisDown)" in after.stdout
