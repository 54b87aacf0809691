"""``lunia`` against a deployment: every runbook command over its real API, and the guard that
refuses to act on a host's local state that no control plane ever served from (issue 19).

The deployment is the project's real app served by uvicorn on a loopback port over a real
SQLite store (``tests.support.http.serve``); the CLI runs through its entry point in a thread
(or as a subprocess), with the host's own state dir empty, as on an operator's machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import app
from core.control_plane import ControlPlane
from core.models import Actor, ActorKind
from core.platform.roles import SERVED_MARKER, ProcessRole
from core.security.exports import verify_exports
from tests.conftest import (
    ADMIN_TOKEN,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    WEBHOOK_TOKEN,
    PlaneFactory,
    SettingsFactory,
)
from tests.fakes.s3 import ACCESS_KEY, SECRET_KEY, running_fake_s3
from tests.support.http import serve
from tests.support.services import RedisServer, free_port

LUNIA = str(Path(sys.executable).with_name("lunia"))
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Deployment:
    """A served control plane and what an operator's host knows about it."""

    plane: ControlPlane
    url: str
    host_state: Path  # the operator host's own (empty) state dir
    token_file: Path


@pytest.fixture
async def deployment(
    make_plane: PlaneFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deployment]:
    """The deployment served on loopback; the CLI's environment points at it, as in the
    runbook (LUNIA_URL, LUNIA_TOKEN_FILE), and the guard is on (no LUNIA_LOCAL)."""
    plane = await make_plane(lunia_state_dir=tmp_path / "server-state")
    token_file = tmp_path / "lunia-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    host_state = tmp_path / "host-state"
    monkeypatch.delenv("LUNIA_LOCAL")
    monkeypatch.setenv("LUNIA_STATE_DIR", str(host_state))
    async with serve(plane) as url:
        monkeypatch.setenv("LUNIA_URL", url)
        monkeypatch.setenv("LUNIA_TOKEN_FILE", str(token_file))
        yield Deployment(plane, url, host_state, token_file)


async def lunia(*args: str) -> Result:
    """Run the CLI in a thread (the served app runs in this test's event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.mark.slow
async def test_backup_create_over_the_url_is_taken_and_listed_on_the_server(
    deployment: Deployment,
) -> None:
    created = await lunia("backup", "create", "--reason", "emergency")
    assert created.exit_code == 0, created.stderr
    backup_id = created.stdout.split()[1]
    assert created.stdout.startswith(f"backup {backup_id} taken: ")
    assert f"on the deployment at {deployment.url}" in created.stdout

    on_server = await deployment.plane.backups.list()
    assert [(b.id, b.reason.value if b.reason else None) for b in on_server] == [
        (backup_id, "emergency")
    ]
    listed = await lunia("backup", "list")
    assert listed.exit_code == 0, listed.stderr
    assert backup_id in listed.stdout and "emergency" in listed.stdout
    verified = await lunia("backup", "verify", backup_id)
    assert verified.exit_code == 0, verified.stderr
    assert verified.stdout.startswith(f"backup {backup_id} OK: checksums match")
    # Nothing was created on the operator's host: no store, no generated secrets.
    assert not deployment.host_state.exists()
    [entry] = [e for e in await deployment.plane.audit.tail(20) if e.action == "backup.create"]
    assert (entry.actor.kind, entry.actor.name) == (ActorKind.API, "admin-1")


async def test_flag_flip_over_the_url_changes_the_server_and_audits_the_token(
    deployment: Deployment,
) -> None:
    flipped = await lunia("flags", "set", "SELF_HEALING_ENABLED", "on")
    assert flipped.exit_code == 0, flipped.stderr
    assert flipped.stdout.startswith("SELF_HEALING_ENABLED = true (override)")
    state = deployment.plane.flags.get("SELF_HEALING_ENABLED")
    assert (state.value, state.source.value) == (True, "override")
    [entry] = [e for e in await deployment.plane.audit.tail(20) if e.action == "flag.set"]
    assert (entry.actor.kind, entry.actor.name, entry.target) == (
        ActorKind.API,
        "admin-1",  # the first admin entry of API_TOKENS
        "SELF_HEALING_ENABLED",
    )
    listed = await lunia("flags", "list", "--json")
    flags = {f["name"]: f for f in json.loads(listed.stdout)}
    assert (flags["SELF_HEALING_ENABLED"]["value"], flags["SELF_HEALING_ENABLED"]["source"]) == (
        True,
        "override",
    )
    cleared = await lunia("flags", "unset", "SELF_HEALING_ENABLED")
    assert cleared.exit_code == 0, cleared.stderr
    assert deployment.plane.flags.get("SELF_HEALING_ENABLED").source.value != "override"


@pytest.mark.slow
async def test_dangerous_actions_over_the_url_still_need_yes(deployment: Deployment) -> None:
    refused = await lunia("flags", "set", "SANDBOX_ENABLED", "true")
    assert refused.exit_code == 2
    assert "(add --yes)" in refused.stderr and refused.stderr.count("\n") == 1
    assert deployment.plane.flags.get("SANDBOX_ENABLED").value is False
    confirmed = await lunia("flags", "set", "SANDBOX_ENABLED", "true", "--yes")
    assert confirmed.exit_code == 0, confirmed.stderr
    assert deployment.plane.flags.get("SANDBOX_ENABLED").value is True

    backup_id = (await lunia("backup", "create")).stdout.split()[1]
    unconfirmed = await lunia("backup", "restore", backup_id)
    assert unconfirmed.exit_code == 2 and "(add --yes)" in unconfirmed.stderr
    restored = await lunia("backup", "restore", backup_id, "--yes")
    assert restored.exit_code == 0, restored.stderr
    assert restored.stdout.startswith(f"restored backup {backup_id} (taken ")


async def test_halt_resume_and_status_over_the_url_act_on_the_served_engine(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    unconfirmed = await lunia("halt", "--reason", "drill")
    assert unconfirmed.exit_code == 2 and "(add --yes)" in unconfirmed.stderr
    assert deployment.plane.trading.state().halted is False
    halted = await lunia("halt", "--yes", "--reason", "drill")
    assert halted.exit_code == 0, halted.stderr
    assert halted.stdout.startswith("engine HALTED by ") and "(drill)" in halted.stdout
    assert deployment.plane.trading.state().halted is True
    [entry] = [e for e in await deployment.plane.audit.tail(20) if e.action == "engine.halt"]
    assert (entry.actor.kind, entry.actor.name) == (ActorKind.API, "admin-1")

    status = await lunia("status")
    assert status.exit_code == 0, status.stderr
    assert "Lunia status: " in status.stdout.splitlines()[0]
    assert json.loads((await lunia("status", "--json")).stdout)["health"] in ("ok", "degraded")

    monkeypatch.setenv("LUNIA_TOKEN", OPERATOR_TOKEN)  # resuming is the admin's
    refused = await lunia("resume", "--yes")
    assert refused.exit_code == 1 and "(403)" in refused.stderr
    monkeypatch.delenv("LUNIA_TOKEN")
    resumed = await lunia("resume", "--yes")
    assert resumed.exit_code == 0, resumed.stderr
    assert deployment.plane.trading.state().halted is False


async def test_wrong_token_is_one_clear_line_and_never_printed(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-token-never-to-be-printed-1234"
    deployment.token_file.write_text(wrong)
    result = await lunia("backup", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"lunia: the deployment at {deployment.url} refused the token (401"
    )
    assert "LUNIA_TOKEN_FILE" in result.stderr and result.stderr.count("\n") == 1
    assert wrong not in result.stdout + result.stderr
    assert await deployment.plane.backups.list() == []

    monkeypatch.setenv("LUNIA_TOKEN", VIEWER_TOKEN)  # --token / LUNIA_TOKEN wins over the file
    forbidden = await lunia("flags", "set", "SELF_HEALING_ENABLED", "on")
    assert forbidden.exit_code == 1
    assert forbidden.stderr.startswith("lunia: the token may not do this (403): ")
    assert VIEWER_TOKEN not in forbidden.stdout + forbidden.stderr
    assert deployment.plane.flags.get("SELF_HEALING_ENABLED").source.value != "override"


async def test_unreachable_url_and_missing_token_are_clear_errors(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    down = await lunia("backup", "create", "--url", nothing)
    assert down.exit_code == 1
    assert down.stderr.startswith(f"lunia: cannot reach the deployment at {nothing}: ")
    assert down.stderr.count("\n") == 1

    monkeypatch.delenv("LUNIA_TOKEN_FILE")
    tokenless = await lunia("flags", "list")
    assert tokenless.exit_code == 2
    assert tokenless.stderr.startswith(f"lunia: no API token for {deployment.url}: set ")

    clear = await lunia("flags", "list", "--url", "http://10.0.0.1:8000", "--token", "x" * 30)
    assert clear.exit_code == 2
    assert "refusing to send the API token in clear to 10.0.0.1" in clear.stderr
    assert "x" * 30 not in clear.stderr


@pytest.mark.slow
async def test_other_runbook_commands_run_on_the_server(
    deployment: Deployment, tmp_path: Path
) -> None:
    issued = await lunia("token", "issue", "--name", "ci-deploy", "--role", "viewer")
    assert issued.exit_code == 0, issued.stderr
    value = issued.stdout.strip()
    server_tokens = await deployment.plane.temporary_tokens.list(
        await deployment.plane.authenticator.authenticate(ADMIN_TOKEN, caller="test")
    )
    [made] = server_tokens
    assert made.name == "ci-deploy"
    listed = await lunia("token", "list")
    assert made.id in listed.stdout and "live" in listed.stdout and value not in listed.stdout
    revoked = await lunia("token", "revoke", made.id)
    assert revoked.stdout.strip() == f"revoked token {made.id} (ci-deploy)"

    out = tmp_path / "review.md"
    report = await lunia("report", "--out", str(out))
    assert report.exit_code == 0, report.stderr
    assert "api:admin" in out.read_text()  # the deployment's role holders, not this host's
    assert any(e.action == "report.access_review" for e in await deployment.plane.audit.tail(5))

    verified = await lunia("audit", "verify")
    assert verified.exit_code == 0, verified.stderr
    assert verified.stdout.startswith("audit log OK: ")
    path_export = await lunia("audit", "export", "--dest", str(tmp_path / "exports"))
    assert path_export.exit_code == 2
    assert "a deployment exports to s3://" in path_export.stderr
    assert not (tmp_path / "exports").exists()

    checklist = await lunia("checklist")
    served = await deployment.plane.checklist.run()
    assert checklist.exit_code == (1 if served.worst.value == "fail" else 0)
    # The deployment's checks (reasons carry ages, so compare the mark and the name).
    lines = checklist.stdout.splitlines()
    assert len(lines) == len(served.items)
    for line, item in zip(lines, served.items, strict=True):
        assert line.startswith(f"{item.mark.symbol} {item.name}: "), (line, item)


@pytest.mark.slow
async def test_smoke_uses_the_deployments_tokens_not_the_hosts(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = tmp_path / "alert_webhook_token"
    hook.write_text(WEBHOOK_TOKEN)
    # The host has its own generated admin token: it must not be sent to the deployment.
    (deployment.host_state / "secrets").mkdir(parents=True)
    (deployment.host_state / "secrets" / "api-admin-token").write_text("host-own-token-xxxxxxxx")
    monkeypatch.setenv("LUNIA_ALERT_WEBHOOK_TOKEN_FILE", str(hook))
    result = await lunia("smoke")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"smoke OK against {deployment.url}" in result.stdout

    (deployment.host_state / "secrets" / "alert-webhook-token").write_text("host-own-hook-xxxxx")
    monkeypatch.delenv("LUNIA_ALERT_WEBHOOK_TOKEN_FILE")
    without = await lunia("smoke")
    assert without.exit_code == 2
    assert "no alert webhook token: set LUNIA_ALERT_WEBHOOK_TOKEN_FILE" in without.stderr

    # The field's host: tokens generated by an earlier run on an empty store, no LUNIA_URL.
    # They are not the stack's, so smoke sends neither and says what to set.
    monkeypatch.delenv("LUNIA_URL")
    monkeypatch.delenv("LUNIA_TOKEN_FILE")
    stale = await lunia("smoke")
    assert stale.exit_code == 2
    assert stale.stderr.startswith("lunia: no API token: set LUNIA_TOKEN_FILE=PATH")


@pytest.mark.slow
async def test_lunia_as_a_subprocess_reaches_the_deployment(deployment: Deployment) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "LUNIA_URL": deployment.url,
        "LUNIA_TOKEN_FILE": str(deployment.token_file),
        "LUNIA_STATE_DIR": str(deployment.host_state),
    }
    process = await asyncio.create_subprocess_exec(
        LUNIA,
        "backup",
        "create",
        "--reason",
        "emergency",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    [backup] = await deployment.plane.backups.list()
    assert out.decode().startswith(f"backup {backup.id} taken: ")
    assert ADMIN_TOKEN not in out.decode() + err.decode()


# -- the local-state guard ---------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An operator's host: a state dir and no LUNIA_URL, the guard on."""
    monkeypatch.delenv("LUNIA_LOCAL")
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


def test_guard_refuses_a_state_dir_no_control_plane_served_from(host: Path) -> None:
    for args in (
        ["backup", "create", "--reason", "emergency"],
        ["flags", "set", "SELF_HEALING_ENABLED", "on"],
        ["report"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, args
        message = result.stderr
        assert message.startswith(f"lunia: refusing to act on {host}: no control plane has served")
        for hint in ("LUNIA_URL", "LUNIA_TOKEN", "docker compose", "exec worker lunia"):
            assert hint in message, hint
        assert message.count("\n") == 1
    assert not host.exists()  # nothing created: no empty store, no generated tokens
    assert not Path("docs/RELEASE_REPORT.md").exists()


@pytest.mark.slow
async def test_guard_lets_the_cli_act_where_a_control_plane_served(
    host: Path, make_settings: SettingsFactory, make_plane: PlaneFactory
) -> None:
    plane = await make_plane(settings=make_settings(lunia_state_dir=host))
    await plane.close()
    assert json.loads((host / SERVED_MARKER).read_text())["store"] == "sqlite"
    created = await asyncio.to_thread(CliRunner().invoke, app, ["backup", "create"])
    assert created.exit_code == 0, created.stderr
    assert str(host) in created.stdout


async def test_guard_refuses_a_store_other_than_the_one_that_served(
    host: Path,
    make_settings: SettingsFactory,
    make_plane: PlaneFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = await make_plane(settings=make_settings(lunia_state_dir=host))
    await plane.close()
    monkeypatch.setenv("ENABLE_REDIS", "true")
    result = await asyncio.to_thread(CliRunner().invoke, app, ["flags", "list"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"lunia: refusing to act on the redis store: the control plane that served from {host} "
        "used sqlite"
    )


def test_local_on_purpose_acts_on_a_fresh_state(
    host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNIA_LOCAL", "1")
    result = CliRunner().invoke(app, ["backup", "create"])
    assert result.exit_code == 0, result.stderr
    assert (host / "lunia.db").exists()


@pytest.mark.slow
async def test_make_runbook_targets_act_on_the_deployment_named_by_lunia_url(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The field's issue 19: with LUNIA_URL set, `make create-emergency-backup`,
    `make enable-self-healing` and `make smoke` act on the deployment, with its tokens."""
    hook = tmp_path / "alert_webhook_token"
    hook.write_text(WEBHOOK_TOKEN)
    env = {
        "PATH": os.environ["PATH"],
        "LUNIA_URL": deployment.url,
        "LUNIA_TOKEN_FILE": str(deployment.token_file),
        "LUNIA_ALERT_WEBHOOK_TOKEN_FILE": str(hook),
        "LUNIA_STATE_DIR": str(deployment.host_state),
    }
    outputs = []
    for target in ("create-emergency-backup", "enable-self-healing", "smoke"):
        process = await asyncio.create_subprocess_exec(
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            target,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, out.decode()
        outputs.append(out.decode())
        assert f"lunia: acting on the deployment at {deployment.url}" in outputs[-1]
    [backup] = await deployment.plane.backups.list()
    assert backup.reason is not None and backup.reason.value == "emergency"
    assert deployment.plane.flags.get("SELF_HEALING_ENABLED").value is True
    assert f"smoke OK against {deployment.url}" in outputs[-1]
    assert ADMIN_TOKEN not in "".join(outputs) and WEBHOOK_TOKEN not in "".join(outputs)
    assert not deployment.host_state.exists()


@pytest.mark.slow
async def test_inside_a_worker_container_the_cli_acts_on_the_shared_redis_state(
    host: Path,
    make_settings: SettingsFactory,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`docker compose exec worker lunia ...`: the worker role served from its state dir over
    Redis, so the CLI there passes the guard and acts on the deployment's shared state."""
    settings = make_settings(lunia_state_dir=host, enable_redis=True, redis_url=redis_server.url)
    worker = ControlPlane(settings, role=ProcessRole.WORKER)
    await worker.start()
    try:
        assert json.loads((host / SERVED_MARKER).read_text())["role"] == "worker"
        monkeypatch.setenv("ENABLE_REDIS", "true")
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["flags", "set", "AUTO_BACKUP_ENABLED", "off"]
        )
        assert result.exit_code == 0, result.stderr
        await worker.flags.load()
        assert worker.flags.get("AUTO_BACKUP_ENABLED").value is False
    finally:
        await worker.close()


@pytest.mark.slow
async def test_audit_export_over_the_url_goes_to_s3_or_the_servers_own_destination(
    make_plane: PlaneFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_exports = tmp_path / "server-exports"
    token_file = tmp_path / "lunia-token"
    token_file.write_text(ADMIN_TOKEN)
    monkeypatch.delenv("LUNIA_LOCAL")
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "host-state"))
    monkeypatch.setenv("LUNIA_TOKEN_FILE", str(token_file))
    with running_fake_s3() as s3:
        plane = await make_plane(
            lunia_state_dir=tmp_path / "server-state",
            audit_export_dest=str(server_exports),
            s3_endpoint_url=s3.url,
            s3_access_key_id=ACCESS_KEY,
            s3_secret_access_key=SECRET_KEY,
        )
        await plane.flags.set("AUTO_BACKUP_ENABLED", "off", Actor.system("test"))
        async with serve(plane) as url:
            monkeypatch.setenv("LUNIA_URL", url)
            to_s3 = await lunia("audit", "export", "--dest", "s3://lunia/audit/prod")
            assert to_s3.exit_code == 0, to_s3.stderr
            assert to_s3.stdout.startswith("exported ")
            assert " entries to s3://lunia/audit/prod/audit-" in to_s3.stdout
            assert len(s3.objects()) == 2  # the JSONL and its manifest
            to_server = await lunia("audit", "export")
            assert to_server.exit_code == 0, to_server.stderr
            assert f"to {server_exports}/audit-" in to_server.stdout
    [jsonl] = server_exports.glob("audit-*.jsonl")
    assert verify_exports([jsonl]).ok
    exports = [e for e in await plane.audit.tail(20) if e.action == "audit.export"]
    assert [(e.actor.kind, e.actor.name) for e in exports] == [(ActorKind.API, "admin-1")] * 2
    assert not (tmp_path / "host-state").exists()
