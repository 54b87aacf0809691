"""The ``lunia`` CLI: flags, audit verify/export, exit codes and one-line errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def lunia(*args: str) -> tuple[int, str, str]:
    """Run the CLI; stderr is its last line (the first run also logs generated secrets)."""
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1] + "\n" if result.stderr.strip() else ""
    return result.exit_code, result.stdout, last


def test_flags_list_shows_values_and_sources(state: Path) -> None:
    code, out, _ = lunia("flags", "list", "--json")
    assert code == 0
    flags = {f["name"]: f for f in json.loads(out)}
    assert flags["EXCHANGE_FAILOVER"]["value"] == "okx"
    assert flags["EXCHANGE_FAILOVER"]["source"] == "default"


def test_flags_set_and_unset_persist_and_audit(state: Path) -> None:
    code, out, _ = lunia("flags", "set", "AUTO_BACKUP_ENABLED", "off")
    assert (code, out.strip()) == (
        0,
        "AUTO_BACKUP_ENABLED = false (override); takes effect immediately",
    )
    code, out, _ = lunia("flags", "list")
    assert "AUTO_BACKUP_ENABLED             false   override" in out
    code, out, _ = lunia("flags", "unset", "AUTO_BACKUP_ENABLED")
    assert "true (default)" in out
    code, out, _ = lunia("audit", "verify")
    assert (code, out.strip()) == (0, "audit log OK: 2 entries, chain intact")


def test_dangerous_flag_needs_yes(state: Path) -> None:
    code, _, err = lunia("flags", "set", "SANDBOX_ENABLED", "true")
    assert code == 2
    assert err.startswith("lunia: setting SANDBOX_ENABLED from false to true")
    assert "(add --yes)" in err
    code, out, _ = lunia("flags", "set", "SANDBOX_ENABLED", "true", "--yes")
    assert code == 0


def test_bad_usage_exits_2_with_one_line(state: Path) -> None:
    code, _, err = lunia("flags", "set", "NOPE", "1")
    assert code == 2
    assert err.count("\n") == 1
    assert "unknown flag 'NOPE'" in err


def test_bad_setting_exits_2_naming_the_variable(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_PORT", "http")
    code, _, err = lunia("flags", "list")
    assert code == 2
    assert err.startswith("lunia: configuration error: API_PORT: Input should be a valid integer")
    assert err.count("\n") == 1


def test_audit_verify_fails_naming_the_edited_entry(state: Path) -> None:
    for value in ("off", "on", "off"):
        lunia("flags", "set", "SELF_HEALING_ENABLED", value)
    conn = sqlite3.connect(state / "lunia.db")
    with conn:
        conn.execute("UPDATE audit SET outcome = 'denied' WHERE seq = 2")
    conn.close()
    code, _, err = lunia("audit", "verify")
    assert code == 1
    assert "entry 2 was edited" in err


def test_audit_export_then_offline_verify(state: Path, tmp_path: Path) -> None:
    lunia("flags", "set", "LLM_RATE_LIMITED", "on")
    code, out, _ = lunia("audit", "export", "--dest", f"file://{tmp_path / 'out'}")
    assert code == 0
    [exported] = (tmp_path / "out").glob("audit-*.jsonl")
    manifest = json.loads(exported.with_name(exported.name + ".manifest.json").read_text())
    assert manifest["count"] == 1
    assert manifest["sha256"] in out
    code, out, _ = lunia("audit", "verify", "--file", str(exported))
    assert code == 0
    exported.write_text(exported.read_text().replace("LLM_RATE_LIMITED", "SANDBOX_ENABLED"))
    code, _, err = lunia("audit", "verify", "--file", str(exported))
    assert code == 1
    assert "entry 1 was edited" in err


def test_audit_export_refuses_unknown_scheme(state: Path) -> None:
    code, _, err = lunia("audit", "export", "--dest", "ftp://host/x")
    assert code == 2
    assert "unsupported destination" in err
