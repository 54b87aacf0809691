"""``lunia backup …``, ``lunia report`` and ``lunia audit export --since/--until``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("API_TOKENS", "admin:cli-admin-secret-token,viewer:cli-viewer-secret-token")
    monkeypatch.setenv("TELEGRAM_ADMINS", "111")
    return tmp_path / "state"


def lunia(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return result.exit_code, result.stdout, last


def test_backup_create_list_verify_restore(state: Path) -> None:
    lunia("flags", "set", "SELF_HEALING_ENABLED", "off")
    code, out, _ = lunia("backup", "create", "--json")
    assert code == 0
    backup = json.loads(out)
    lunia("flags", "set", "SELF_HEALING_ENABLED", "on")

    code, out, _ = lunia("backup", "list")
    assert code == 0
    assert backup["id"] in out and "unverified" in out

    code, out, _ = lunia("backup", "verify", backup["id"])
    assert (code, out.startswith(f"backup {backup['id']} OK")) == (0, True)

    code, _, err = lunia("backup", "restore", backup["id"])
    assert code == 2
    assert "(add --yes)" in err
    code, out, _ = lunia("backup", "restore", backup["id"], "--yes")
    assert code == 0
    assert f"restored backup {backup['id']}" in out
    assert "flag SELF_HEALING_ENABLED: true -> false" in out
    code, out, _ = lunia("flags", "list", "--json")
    flags = {f["name"]: f["value"] for f in json.loads(out)}
    assert flags["SELF_HEALING_ENABLED"] is False


def test_backup_verify_exits_1_naming_the_damaged_file(state: Path) -> None:
    code, out, _ = lunia("backup", "create", "--json")
    backup_id = json.loads(out)["id"]
    db = state / "backups" / backup_id / "state.db"
    data = bytearray(db.read_bytes())
    data[100] ^= 0xFF
    db.write_bytes(bytes(data))
    code, _, err = lunia("backup", "verify", backup_id)
    assert code == 1
    assert err.startswith(f"lunia: backup {backup_id} FAILED verification: state.db: sha256")
    code, _, err = lunia("backup", "verify", "20990101T000000Z")
    assert code == 2
    assert "no backup" in err


def test_backup_sign_signs_an_unsigned_backup_after_checking_its_files(state: Path) -> None:
    code, out, _ = lunia("backup", "create", "--json")
    backup_id = json.loads(out)["id"]
    path = state / "backups" / backup_id / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["signature"]
    path.write_text(json.dumps(manifest))
    code, _, err = lunia("backup", "verify", backup_id)
    assert code == 1
    assert "not signed" in err and f"lunia backup sign {backup_id}" in err

    code, out, _ = lunia("backup", "sign", backup_id)
    assert code == 0
    assert out.startswith(f"backup {backup_id} signed with key ")
    code, out, _ = lunia("backup", "verify", backup_id)
    assert (code, out.startswith(f"backup {backup_id} OK")) == (0, True)


def test_report_writes_the_access_review_without_tokens(state: Path, tmp_path: Path) -> None:
    lunia("backup", "create")
    out_file = tmp_path / "docs" / "RELEASE_REPORT.md"
    code, out, _ = lunia("report", "--out", str(out_file))
    assert code == 0
    text = out_file.read_text()
    assert "| `telegram:111` | admin | TELEGRAM_ADMINS |" in text
    assert "| `api:viewer-1` | viewer | API_TOKENS |" in text
    assert "secret-token" not in text
    assert "Last backup: `" in text


def test_audit_export_takes_a_time_range(state: Path, tmp_path: Path) -> None:
    lunia("flags", "set", "LLM_RATE_LIMITED", "on")
    code, out, _ = lunia(
        "audit", "export", "--dest", str(tmp_path / "out"), "--until", "2000-01-01T00:00:00"
    )
    assert code == 0
    assert "exported 0 entries" in out
    code, out, _ = lunia(
        "audit", "export", "--dest", str(tmp_path / "all"), "--since", "2000-01-01"
    )
    assert "exported 2 entries" in out  # the flag change and the first export's record
    [exported] = (tmp_path / "all").glob("audit-*.jsonl")
    code, out, _ = lunia("audit", "verify", "--file", str(exported))
    assert (code, out.strip()) == (0, "audit log OK: 2 entries, chain intact")
