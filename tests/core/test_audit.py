"""The audit log detects edits and deletions, and its exports verify offline."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from core.control_plane import ControlPlane
from core.models import Actor, ActorKind, AuditRecord, Role
from core.security.audit import verify_export

BOB = Actor(kind=ActorKind.API, id="operator-1", name="operator-1", role=Role.OPERATOR)


async def fill(plane: ControlPlane, n: int) -> None:
    for i in range(n):
        await plane.audit.record(AuditRecord(actor=BOB, action="test", target=str(i)))


def tamper(plane: ControlPlane, sql: str, *args: object) -> None:
    conn = sqlite3.connect(plane.settings.db_path)
    with conn:
        conn.execute(sql, args)
    conn.close()


async def test_intact_log_verifies(plane: ControlPlane) -> None:
    await fill(plane, 10)
    report = await plane.audit.verify()
    assert report.ok
    assert report.checked == 10


async def test_edited_row_is_named(plane: ControlPlane) -> None:
    await fill(plane, 10)
    tamper(plane, "UPDATE audit SET target = 'forged' WHERE seq = 4")
    report = await plane.audit.verify()
    assert not report.ok
    assert report.first_bad_seq == 4
    assert "edited" in report.problem


async def test_rewritten_actor_is_detected(plane: ControlPlane) -> None:
    await fill(plane, 3)
    forged = BOB.model_copy(update={"name": "someone-else"}).model_dump_json()
    tamper(plane, "UPDATE audit SET actor = ? WHERE seq = 2", forged)
    assert (await plane.audit.verify()).first_bad_seq == 2


async def test_deleted_row_is_named(plane: ControlPlane) -> None:
    await fill(plane, 10)
    tamper(plane, "DELETE FROM audit WHERE seq = 6")
    report = await plane.audit.verify()
    assert not report.ok
    assert report.first_bad_seq == 7
    assert "entry 6 is missing" in report.problem


async def test_deleted_tail_is_detected(plane: ControlPlane) -> None:
    await fill(plane, 10)
    tamper(plane, "DELETE FROM audit WHERE seq >= 9")
    report = await plane.audit.verify()
    assert not report.ok
    assert report.first_bad_seq == 9
    assert "end of the log was deleted" in report.problem


@pytest.mark.slow
async def test_export_verifies_offline_and_detects_an_edited_line(
    plane: ControlPlane, tmp_path: Path
) -> None:
    await fill(plane, 2500)  # more than one page
    manifest = await plane.audit.export(tmp_path / "export")
    exported = tmp_path / "export" / manifest.file
    assert manifest.count == 2500
    assert verify_export(exported).ok
    assert not list((tmp_path / "export").glob("*.tmp"))

    lines = exported.read_text().splitlines()
    entry = json.loads(lines[1200])
    entry["target"] = "forged"
    lines[1200] = json.dumps(entry)
    exported.write_text("\n".join(lines) + "\n")
    report = verify_export(exported)
    assert not report.ok
    assert report.first_bad_seq == 1201
