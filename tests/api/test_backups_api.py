"""Backups and jobs over HTTP: roles, confirmation, restore, probes and metrics."""

from __future__ import annotations

import httpx
import pytest

from core.control_plane import ControlPlane
from tests.conftest import ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, auth


async def test_backups_list_create_and_verify_by_role(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/backups")).status_code == 401
    assert (await client.get("/api/v1/backups", headers=auth(VIEWER_TOKEN))).json() == {"items": []}
    denied = await client.post("/api/v1/backups", headers=auth(VIEWER_TOKEN))
    assert denied.status_code == 403
    assert "operator" in denied.json()["error"]["message"]

    created = await client.post(
        "/api/v1/backups", json={"reason": "emergency"}, headers=auth(OPERATOR_TOKEN)
    )
    assert created.status_code == 201
    backup = created.json()
    assert backup["reason"] == "emergency"
    assert backup["status"] == "unverified"

    listed = (await client.get("/api/v1/backups", headers=auth(VIEWER_TOKEN))).json()["items"]
    assert [b["id"] for b in listed] == [backup["id"]]
    assert listed[0]["age_seconds"] >= 0

    verified = await client.post(
        f"/api/v1/backups/{backup['id']}/verify", headers=auth(OPERATOR_TOKEN)
    )
    assert verified.status_code == 200
    assert verified.json()["ok"] is True
    missing = await client.post(
        "/api/v1/backups/20200101T000000Z/verify", headers=auth(OPERATOR_TOKEN)
    )
    assert missing.status_code == 404
    bad = await client.post("/api/v1/backups/..%2F..%2Fetc/verify", headers=auth(OPERATOR_TOKEN))
    assert bad.status_code in (404, 422)


@pytest.mark.slow
async def test_restore_is_admin_only_confirmed_and_restores(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    await client.put(
        "/api/v1/flags/SELF_HEALING_ENABLED", json={"value": False}, headers=auth(OPERATOR_TOKEN)
    )
    backup = (await client.post("/api/v1/backups", headers=auth(OPERATOR_TOKEN))).json()
    await client.delete("/api/v1/flags/SELF_HEALING_ENABLED", headers=auth(OPERATOR_TOKEN))
    assert plane.flags.enabled("SELF_HEALING_ENABLED")
    url = f"/api/v1/backups/{backup['id']}/restore"

    assert (
        await client.post(url, json={"confirm": True}, headers=auth(OPERATOR_TOKEN))
    ).status_code == 403
    unconfirmed = await client.post(url, headers=auth(ADMIN_TOKEN))
    assert unconfirmed.status_code == 409
    assert unconfirmed.json()["error"]["code"] == "confirmation_required"
    assert plane.flags.enabled("SELF_HEALING_ENABLED")

    restored = await client.post(url, json={"confirm": True}, headers=auth(ADMIN_TOKEN))
    assert restored.status_code == 200
    report = restored.json()
    assert report["backup_id"] == backup["id"]
    assert report["flags_changed"] == [
        {"name": "SELF_HEALING_ENABLED", "before": True, "after": False}
    ]
    assert not plane.flags.enabled("SELF_HEALING_ENABLED")
    # Still serving after the swap.
    flag = await client.get("/api/v1/flags/SELF_HEALING_ENABLED", headers=auth(VIEWER_TOKEN))
    assert flag.json()["value"] is False


async def test_jobs_can_be_run_by_admins(client: httpx.AsyncClient) -> None:
    jobs = (await client.get("/api/v1/jobs", headers=auth(VIEWER_TOKEN))).json()["items"]
    names = {j["name"] for j in jobs}
    assert {"backup", "backup-verify", "backup-overdue", "audit-export"} <= names
    assert (
        await client.post("/api/v1/jobs/backup/run", headers=auth(OPERATOR_TOKEN))
    ).status_code == 403
    ran = await client.post("/api/v1/jobs/backup/run", headers=auth(ADMIN_TOKEN))
    assert ran.status_code == 200
    assert (ran.json()["last_outcome"], ran.json()["runs"]) == ("ok", 1)
    backups = (await client.get("/api/v1/backups", headers=auth(VIEWER_TOKEN))).json()["items"]
    assert [b["reason"] for b in backups] == ["scheduled"]
    assert (
        await client.post("/api/v1/jobs/nope/run", headers=auth(ADMIN_TOKEN))
    ).status_code == 404


async def test_healthz_and_metrics_show_backups(client: httpx.AsyncClient) -> None:
    health = (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["components"]["backups"]["status"] == "ok"
    await client.post("/api/v1/backups", headers=auth(OPERATOR_TOKEN))
    text = (await client.get("/metrics")).text
    for name in (
        "backup_last_success_timestamp_seconds",
        "backup_schedule_interval_seconds 3600.0",
        "backup_last_size_bytes",
        'backup_duration_seconds_count{operation="create"} 1.0',
        'backup_operations_total{operation="create",outcome="ok"} 1.0',
    ):
        assert name in text
