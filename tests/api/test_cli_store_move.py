"""Runbook §2.2 with the commands it prints: Redis lost for good, the state goes to the embedded
SQLite store from the latest backup (``lunia backup restore ID --yes`` with ENABLE_REDIS=false),
and back to Redis the same way once it is stable. Real redis-server; the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.api.test_cli_backups import lunia
from tests.support.services import RedisServer

SIGNING_KEY = "backup-signing-key-for-the-store-move-4e1b"


def deployment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, redis: str | None) -> None:
    """The environment of one deployment shape: its own state dir, the shared backups volume
    and signing key (as compose mounts them), Redis or the embedded store."""
    name = "split" if redis else "embedded"
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / name))
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("API_TOKENS", "admin:cli-admin-secret-token")
    monkeypatch.setenv("ENABLE_REDIS", "true" if redis else "false")
    if redis:
        monkeypatch.setenv("REDIS_URL", redis)


def flag(name: str) -> object:
    code, out, _ = lunia("flags", "list", "--json")
    assert code == 0
    return {f["name"]: f["value"] for f in json.loads(out)}[name]


@pytest.mark.slow
def test_runbook_2_2_moves_the_state_to_sqlite_and_back_with_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer
) -> None:
    deployment(monkeypatch, tmp_path, redis=redis_server.url)
    assert lunia("flags", "set", "SELF_HEALING_ENABLED", "off")[0] == 0
    code, out, _ = lunia("backup", "create", "--reason", "emergency", "--json")
    assert code == 0
    from_redis = json.loads(out)["id"]
    redis_server.stop()  # lost for good

    deployment(monkeypatch, tmp_path, redis=None)
    code, out, _ = lunia("backup", "list")
    assert code == 0 and from_redis in out
    code, out, _ = lunia("backup", "verify", from_redis)
    assert (code, out.startswith(f"backup {from_redis} OK")) == (0, True)
    code, _, err = lunia("backup", "restore", from_redis)
    assert code == 2 and "(add --yes)" in err
    code, out, _ = lunia("backup", "restore", from_redis, "--yes")
    assert code == 0, out
    assert "moved from the redis store into the sqlite store" in out
    assert flag("SELF_HEALING_ENABLED") is False
    assert lunia("audit", "verify")[0] == 0

    # Running on SQLite meanwhile, then back to a stable Redis.
    assert lunia("flags", "set", "SELF_HEALING_ENABLED", "on")[0] == 0
    code, out, _ = lunia("backup", "create", "--json")
    from_sqlite = json.loads(out)["id"]
    redis_server.start()  # a new, empty Redis
    deployment(monkeypatch, tmp_path, redis=redis_server.url)
    code, out, _ = lunia("backup", "restore", from_sqlite, "--yes")
    assert code == 0, out
    assert "moved from the sqlite store into the redis store" in out
    assert flag("SELF_HEALING_ENABLED") is True
    assert lunia("audit", "verify")[0] == 0
