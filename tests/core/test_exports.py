"""Audit exports: time ranges that chain, S3 destinations, offline verification, access review."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.control_plane import ControlPlane
from core.errors import InvalidInput, PermissionDenied
from core.models import Actor, ActorKind, AuditRecord, Role
from core.security.exports import SETTLE, verify_exports
from tests.conftest import PlaneFactory
from tests.fakes.s3 import ACCESS_KEY, SECRET_KEY, running_fake_s3

OPERATOR = Actor(kind=ActorKind.TELEGRAM, id="22", name="olga", role=Role.OPERATOR)
VIEWER = Actor(kind=ActorKind.TELEGRAM, id="33", name="victor", role=Role.VIEWER)


async def fill(plane: ControlPlane, n: int, action: str = "test.note") -> None:
    for i in range(n):
        await plane.audit.record(AuditRecord(actor=OPERATOR, action=action, target=str(i)))


def edit_line(path: Path, index: int) -> None:
    lines = path.read_text().splitlines()
    entry = json.loads(lines[index])
    entry["detail"] = "forged"
    lines[index] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")


async def test_scheduled_exports_cover_consecutive_ranges_that_chain(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    plane = await make_plane(audit_export_dest=f"file://{tmp_path / 'exports'}")
    await fill(plane, 7)
    first = await plane.exports.scheduled_export(now=datetime.now(UTC) + SETTLE)
    await fill(plane, 4, "test.later")
    second = await plane.exports.scheduled_export(now=datetime.now(UTC) + SETTLE)

    assert first.manifest.since is None
    assert first.manifest.count == 7
    assert second.manifest.since == first.manifest.until
    # The second holds the first export's own audit entry, then the four later ones.
    assert second.manifest.count == 5
    assert second.manifest.first_seq == first.manifest.last_seq + 1
    assert second.manifest.first_prev_hash == first.manifest.last_hash
    files = [Path(first.files[0]), Path(second.files[0])]
    assert verify_exports(files).ok
    assert verify_exports(files).checked == 12
    assert await plane.exports.last_scheduled_until() == second.manifest.until

    edit_line(files[1], 2)
    report = verify_exports(files)
    assert not report.ok
    assert report.first_bad_seq == second.manifest.first_seq + 2
    assert "was edited" in report.problem


async def test_a_gap_between_exports_is_detected(plane: ControlPlane, tmp_path: Path) -> None:
    await fill(plane, 3)
    middle = datetime.now(UTC)
    await fill(plane, 3)
    cut = datetime.now(UTC)
    await fill(plane, 3)
    a = await plane.exports.export(OPERATOR, str(tmp_path / "a"), until=middle)
    c = await plane.exports.export(OPERATOR, str(tmp_path / "c"), since=cut)
    report = verify_exports([Path(a.files[0]), Path(c.files[0])])
    assert not report.ok
    assert "does not continue the previous export" in report.problem


async def test_export_needs_a_sane_range_and_a_role(plane: ControlPlane, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with pytest.raises(InvalidInput, match="--since must be before --until"):
        await plane.exports.export(OPERATOR, str(tmp_path), since=now, until=now - timedelta(1))
    with pytest.raises(InvalidInput, match="unsupported destination"):
        await plane.exports.export(OPERATOR, "ftp://host/x")
    with pytest.raises(PermissionDenied):
        await plane.exports.export(VIEWER, str(tmp_path))
    last = (await plane.audit.tail(1))[0]
    assert (last.action, last.outcome) == ("audit.export", "denied")


@pytest.mark.slow
async def test_export_to_s3_verifies_offline(make_plane: PlaneFactory, tmp_path: Path) -> None:
    with running_fake_s3() as s3:
        plane = await make_plane(
            s3_endpoint_url=s3.url, s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY
        )
        await fill(plane, 20)
        result = await plane.exports.export(OPERATOR, "s3://lunia/audit/weekly")
        name = result.manifest.file
        assert result.files == [
            f"s3://lunia/audit/weekly/{name}",
            f"s3://lunia/audit/weekly/{name}.manifest.json",
        ]
        download = tmp_path / "auditor"
        download.mkdir()
        for key, obj in s3.objects().items():
            (download / key.rsplit("/", 1)[1]).write_bytes(obj.body)
        assert verify_exports([download / name]).ok
        edit_line(download / name, 5)
        assert verify_exports([download / name]).first_bad_seq == 6


async def test_access_review_lists_roles_actions_flags_backups_and_incidents(
    make_plane: PlaneFactory,
) -> None:
    from core.models.alerts import Severity
    from core.ops.access_review import render_markdown

    plane = await make_plane(telegram_admins="111", telegram_operators="22,23")
    await plane.flags.set("SELF_HEALING_ENABLED", "off", OPERATOR)
    await plane.backups.create(OPERATOR)
    await plane.incidents.raise_engine("test:disk", "Disk full", Severity.CRITICAL)
    review = await plane.access_review.review(Actor.system("cli"))
    holders = {h.principal: h for h in review.holders}
    assert holders["telegram:111"].role is Role.ADMIN
    assert [a.action for a in holders["telegram:22"].last_actions] == ["backup.create", "flag.set"]
    assert holders["telegram:23"].last_actions == []
    assert holders["api:admin-1"].source == "API_TOKENS"

    text = render_markdown(review)
    assert "| `telegram:22` | operator | TELEGRAM_OPERATORS |" in text
    assert "| SELF_HEALING_ENABLED | False | True | override |" in text
    assert "Disk full" in text
    assert f"Last backup: `{review.last_backup.id}`" in text if review.last_backup else False
    assert "token-for-tests" not in text  # token names only, never the tokens
