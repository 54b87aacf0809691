"""Backups: atomic and owner-only, verified by trial restore, restored exactly or rolled back,
pruned by policy, shipped to S3, and watched (metrics, incidents)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.backups import BackupManifest, BackupReason, ManifestSigner, select_kept
from core.control_plane import ControlPlane
from core.errors import (
    ConfirmationRequired,
    InvalidInput,
    NotFound,
    OperationError,
    PermissionDenied,
)
from core.models import Actor, ActorKind, AuditEntry, AuditRecord, Role
from core.models.alerts import Severity
from core.models.incidents import IncidentState
from tests.conftest import PlaneFactory
from tests.fakes.s3 import ACCESS_KEY, SECRET_KEY, running_fake_s3

ADMIN = Actor(kind=ActorKind.API, id="admin-1", name="admin-1", role=Role.ADMIN)
OPERATOR = Actor(kind=ActorKind.TELEGRAM, id="22", name="olga", role=Role.OPERATOR)
VIEWER = Actor(kind=ActorKind.TELEGRAM, id="33", name="victor", role=Role.VIEWER)


async def entries(plane: ControlPlane) -> list[AuditEntry]:
    return await plane.store.audit_entries(limit=100_000)


def flag_values(plane: ControlPlane) -> dict[str, Any]:
    return {s.name: (s.value, s.source.value) for s in plane.flags.states()}


async def incidents(plane: ControlPlane) -> list[dict[str, Any]]:
    return [i.model_dump(mode="json") for i in await plane.incidents.list(limit=500)]


async def open_titles(plane: ControlPlane) -> set[str]:
    return {i.title for i in await plane.incidents.list(open_only=True, limit=500)}


async def make_state(plane: ControlPlane) -> None:
    """Flags overridden, incidents in several states, a few audit entries."""
    await plane.flags.set("SELF_HEALING_ENABLED", "off", OPERATOR)
    await plane.flags.set("EXCHANGE_FAILOVER", "binance", OPERATOR)
    disk = await plane.incidents.raise_engine("test:disk", "Disk full", Severity.CRITICAL, "92%")
    await plane.incidents.raise_engine("test:lag", "Replication lag", Severity.WARNING)
    assert disk is not None
    await plane.incidents.acknowledge(disk.id, OPERATOR)
    for i in range(5):
        await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.note", target=str(i)))


async def change_state(plane: ControlPlane) -> None:
    """Everything a restore must undo."""
    await plane.flags.set("SELF_HEALING_ENABLED", "on", OPERATOR)
    await plane.flags.unset("EXCHANGE_FAILOVER", OPERATOR)
    await plane.flags.set("LLM_RATE_LIMITED", "on", OPERATOR)
    for incident in await plane.incidents.list(open_only=True):
        await plane.incidents.resolve(incident.id, OPERATOR)
    await plane.incidents.raise_engine("test:new", "Something new", Severity.INFO)
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.later"))


def metric(plane: ControlPlane, name: str, **labels: str) -> float:
    value = plane.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def test_backup_is_complete_consistent_and_owner_only(plane: ControlPlane) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)

    directory = plane.backups.root / info.id
    # The store's own snapshot, and the store-neutral copy another kind of store restores from.
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["manifest.json", "portable.json", "state.db"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(plane.backups.root.stat().st_mode) == 0o700
    for child in directory.iterdir():
        assert stat.S_IMODE(child.stat().st_mode) == 0o600, child.name
    assert not [p for p in plane.backups.root.iterdir() if p.name.startswith(".")]

    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == "lunia-backup/1"
    assert manifest["app_version"] == plane.version
    assert manifest["reason"] == "manual"
    assert manifest["created_by"] == OPERATOR.describe()
    counts = await plane.store.counts()
    assert manifest["counts"]["flag_overrides"] == 2
    assert manifest["counts"]["incidents"] == 2
    # The backup's own audit entry is written after the snapshot, so the snapshot lacks it.
    assert manifest["counts"]["audit"] == counts["audit"] - 1
    state_db, portable = manifest["files"]
    assert (state_db["name"], portable["name"]) == ("state.db", "portable.json")
    assert state_db["size"] == (directory / "state.db").stat().st_size
    assert portable["size"] == (directory / "portable.json").stat().st_size

    [listed] = await plane.backups.list()
    assert (listed.id, listed.status, listed.reason) == (info.id, "unverified", BackupReason.MANUAL)
    assert 0 <= listed.age_seconds < 60
    last = (await plane.audit.tail(1))[0]
    assert (last.action, last.target, last.actor) == ("backup.create", info.id, OPERATOR)
    assert metric(plane, "backup_last_success_timestamp_seconds") == info.created_at.timestamp()
    assert metric(plane, "backup_last_size_bytes") == info.size_bytes
    assert metric(plane, "backup_operations_total", operation="create", outcome="ok") == 1
    assert metric(plane, "backup_duration_seconds_count", operation="create") == 1


async def test_viewer_cannot_take_a_backup_and_the_refusal_is_audited(plane: ControlPlane) -> None:
    with pytest.raises(PermissionDenied):
        await plane.backups.create(VIEWER)
    last = (await plane.audit.tail(1))[0]
    assert (last.action, last.outcome, last.actor) == ("backup.create", "denied", VIEWER)
    assert await plane.backups.list() == []


async def test_verify_passes_then_fails_naming_the_corrupted_file(plane: ControlPlane) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    good = await plane.backups.verify(info.id, OPERATOR)
    assert good.ok, good.problems
    assert good.counts["incidents"] == 2
    assert good.audit_entries_checked == info.counts["audit"]
    assert (await plane.backups.list())[0].status == "verified"

    path = plane.backups.root / info.id / "state.db"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    path.write_bytes(bytes(data))

    bad = await plane.backups.verify(info.id, OPERATOR)
    assert not bad.ok
    [problem] = bad.problems
    assert problem.startswith("state.db: sha256")
    assert (await plane.backups.list())[0].status == "failed"
    last = (await plane.audit.tail(1))[0]
    assert (last.action, last.outcome) == ("backup.verify", "failed")
    assert "state.db" in last.detail


async def test_verify_catches_a_manifest_whose_counts_lie(plane: ControlPlane) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    lie_about_counts(plane, info.id, "incidents", +3)
    result = await plane.backups.verify(info.id, OPERATOR)
    assert result.problems == ["incidents: manifest says 5 rows, the restored copy has 2"]


def write_signed_manifest(plane: ControlPlane, backup_id: str, manifest: dict[str, Any]) -> None:
    """Replace a backup's manifest with ``manifest`` signed with the deployment's own key: a
    backup this deployment made wrong (a bug), not a planted one, which the signature refuses."""
    signer = ManifestSigner(plane.secrets.backup_signing_key)
    signed = signer.sign(BackupManifest.model_validate(manifest))
    path = plane.backups.root / backup_id / "manifest.json"
    path.write_text(signed.model_dump_json())


def lie_about_counts(plane: ControlPlane, backup_id: str, table: str, delta: int) -> None:
    path = plane.backups.root / backup_id / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"][table] += delta
    write_signed_manifest(plane, backup_id, manifest)


async def test_restore_brings_back_flags_incidents_and_audit_log_exactly(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    saved_entries = (await entries(plane))[: info.counts["audit"]]
    saved_flags, saved_incidents = flag_values(plane), await incidents(plane)

    await change_state(plane)
    changed_counts = await plane.store.counts()
    assert flag_values(plane) != saved_flags
    assert await incidents(plane) != saved_incidents

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    assert flag_values(plane) == saved_flags
    assert await incidents(plane) == saved_incidents
    restored = await entries(plane)
    assert restored[: len(saved_entries)] == saved_entries  # entry by entry, hashes included
    assert [e.action for e in restored[len(saved_entries) :]] == [
        "backup.restore.fork",  # links the replaced head to the restored chain
        "trading.rebuild",  # positions rebuilt and venues reconciled on the restored state
        "engine.read_only",  # trading resumes after the swap
        "backup.restore",
    ]
    fork = restored[len(saved_entries)]
    # The head it replaced: the entries before the restore and the read-only switch.
    assert fork.target == info.id and fork.before["seq"] == changed_counts["audit"] + 1
    assert fork.after == {"seq": saved_entries[-1].seq, "hash": saved_entries[-1].hash}
    assert report.audit_fork_seq == fork.seq and report.kept == []
    assert restored[-1].actor == ADMIN and restored[-1].target == info.id
    assert (await plane.audit.verify()).ok
    assert report.counts_before == changed_counts
    assert report.counts_after["incidents"] == 2
    assert {f.name for f in report.flags_changed} == {
        "SELF_HEALING_ENABLED",
        "EXCHANGE_FAILOVER",
        "LLM_RATE_LIMITED",
    }
    assert report.audit_entries_verified == len(saved_entries)
    assert not plane.trading.state().read_only
    safety = await plane.backups.get(report.safety_backup_id)
    assert safety.reason is BackupReason.SAFETY
    assert safety.counts["incidents"] == changed_counts["incidents"]
    # The process kept serving on the same store: writes after the restore chain on.
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.after"))
    assert (await plane.audit.verify()).ok


async def test_restore_needs_admin_and_confirmation(plane: ControlPlane) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    await change_state(plane)
    before = flag_values(plane)
    with pytest.raises(PermissionDenied):
        await plane.backups.restore(info.id, OPERATOR, confirm=True)
    with pytest.raises(ConfirmationRequired, match="repeat with confirmation"):
        await plane.backups.restore(info.id, ADMIN)
    assert flag_values(plane) == before
    denied = (await plane.audit.tail(1))[0]
    assert (denied.action, denied.outcome, denied.actor) == ("backup.restore", "denied", OPERATOR)
    assert len(await plane.backups.list()) == 1  # no safety backup was taken


async def test_restore_that_fails_its_checks_rolls_back_to_the_previous_state(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    await change_state(plane)
    lie_about_counts(plane, info.id, "audit", +5)  # passes the checksums, fails after the swap
    flags_before, incidents_before = flag_values(plane), await incidents(plane)
    entries_before = await entries(plane)

    with pytest.raises(OperationError) as failed:
        await plane.backups.restore(info.id, ADMIN, confirm=True)

    message = failed.value.message
    assert f"restore of backup {info.id} failed: audit: manifest says" in message
    assert "previous state was put back from safety backup" in message
    assert flag_values(plane) == flags_before
    assert await incidents(plane) == incidents_before
    after = await entries(plane)
    assert after[: len(entries_before)] == entries_before
    assert [(e.action, e.outcome) for e in after[len(entries_before) :]] == [
        ("engine.read_only", "ok"),  # read-only on (kept: it was in the safety backup)
        ("backup.restore.fork", "ok"),  # the safety backup's own entry was rolled back
        ("backup.restore", "failed"),
        ("trading.rebuild", "ok"),  # positions rebuilt on the state put back
        ("engine.read_only", "ok"),  # and off again once jobs resume
    ]
    assert (await plane.audit.verify()).ok
    assert not plane.trading.state().read_only
    assert metric(plane, "backup_operations_total", operation="restore", outcome="error") == 1


async def test_restore_of_a_damaged_database_with_matching_checksums_rolls_back(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    for i in range(300):  # enough rows for several pages
        await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.bulk", target=str(i)))
    info = await plane.backups.create(OPERATOR)
    await change_state(plane)
    flags_before, incidents_before = flag_values(plane), await incidents(plane)

    directory = plane.backups.root / info.id
    data = bytearray((directory / "state.db").read_bytes())
    page = 4096
    data[page * 3 : page * 4] = b"\xde\xad\xbe\xef" * (page // 4)  # wreck one b-tree page
    (directory / "state.db").write_bytes(bytes(data))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    write_signed_manifest(plane, info.id, manifest)

    with pytest.raises(OperationError, match="previous state was put back"):
        await plane.backups.restore(info.id, ADMIN, confirm=True)
    assert flag_values(plane) == flags_before
    assert await incidents(plane) == incidents_before
    assert await plane.store.integrity_problems() == []
    assert (await plane.audit.verify()).ok


async def test_restore_refuses_a_backup_failing_its_checksums_without_touching_state(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    await change_state(plane)
    path = plane.backups.root / info.id / "state.db"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip a bit: overwriting with 0x00 changed nothing when it already was
    path.write_bytes(bytes(data))
    before = flag_values(plane)
    with pytest.raises(OperationError, match=r"cannot be restored: state.db: sha256.*nothing"):
        await plane.backups.restore(info.id, ADMIN, confirm=True)
    assert flag_values(plane) == before
    assert [b.id for b in await plane.backups.list()] == [info.id]  # no safety backup needed


async def test_retention_keeps_exactly_what_the_policy_says(make_plane: PlaneFactory) -> None:
    plane = await make_plane(backup_keep_last=2, backup_keep_daily=3, backup_keep_weekly=2)
    times = [
        "2026-11-02T10:00",  # week 45
        "2026-11-03T10:00",
        "2026-11-09T10:00",  # week 46
        "2026-11-11T09:00",
        "2026-11-11T15:00",  # newest of week 46, newest of day 11
        "2026-11-16T08:00",  # week 47
        "2026-11-16T12:00",  # newest of day 16
        "2026-11-17T09:00",  # second newest
        "2026-11-17T18:00",  # newest
    ]
    for text in times:
        await plane.backups.create(OPERATOR, now=datetime.fromisoformat(text).replace(tzinfo=UTC))
    kept = sorted(b.id for b in await plane.backups.list())
    assert kept == [
        "20261111T150000Z",
        "20261116T120000Z",
        "20261117T090000Z",
        "20261117T180000Z",
    ]
    assert sorted(p.name for p in plane.backups.root.iterdir()) == kept
    pruned = [
        backup_id
        for e in await entries(plane)
        if e.action == "backup.create"
        for backup_id in e.after["pruned"]
    ]
    assert sorted(pruned) == [
        "20261102T100000Z",
        "20261103T100000Z",
        "20261109T100000Z",
        "20261111T090000Z",
        "20261116T080000Z",
    ]


def test_retention_policy_counts_days_and_weeks_that_have_backups() -> None:
    base = datetime(2026, 11, 30, 12, tzinfo=UTC)
    created = [base - timedelta(days=d) for d in (0, 1, 1.2, 8, 40)]
    assert select_kept(created, keep_last=1, keep_daily=0, keep_weekly=0) == {0}
    assert select_kept(created, keep_last=1, keep_daily=2, keep_weekly=0) == {0, 1}
    assert select_kept(created, keep_last=1, keep_daily=0, keep_weekly=9) == {0, 1, 3, 4}


@pytest.mark.slow
async def test_backup_and_restore_round_trip_through_s3(make_plane: PlaneFactory) -> None:
    with running_fake_s3() as s3:
        plane = await make_plane(
            backup_s3_url="s3://lunia/prod/backups",
            s3_endpoint_url=s3.url,
            s3_access_key_id=ACCESS_KEY,
            s3_secret_access_key=SECRET_KEY,
        )
        await make_state(plane)
        info = await plane.backups.create(OPERATOR)
        assert info.offsite == f"s3://lunia/prod/backups/{info.id}"
        local = plane.backups.root / info.id
        remote = s3.objects()
        assert set(remote) == {
            f"prod/backups/{info.id}/state.db",
            f"prod/backups/{info.id}/portable.json",
            f"prod/backups/{info.id}/manifest.json",
        }
        assert remote[f"prod/backups/{info.id}/state.db"].body == (local / "state.db").read_bytes()
        saved_flags, saved_incidents = flag_values(plane), await incidents(plane)

        shutil.rmtree(local)  # the disk is lost: only the off-site copy remains
        assert await plane.backups.list() == []
        [listed] = await plane.backups.list(remote=True)
        assert (listed.id, listed.local) == (info.id, False)

        await change_state(plane)
        report = await plane.backups.restore(info.id, ADMIN, confirm=True)
        assert report.backup_id == info.id
        assert flag_values(plane) == saved_flags
        assert await incidents(plane) == saved_incidents
        assert stat.S_IMODE((local / "state.db").stat().st_mode) == 0o600  # fetched back
        assert (await plane.backups.verify(info.id, OPERATOR)).ok


@pytest.mark.slow
async def test_offsite_failure_keeps_the_local_backup_and_raises_an_incident(
    make_plane: PlaneFactory,
) -> None:
    with running_fake_s3() as s3:
        plane = await make_plane(
            backup_s3_url="s3://no-such-bucket/x",
            s3_endpoint_url=s3.url,
            s3_access_key_id=ACCESS_KEY,
            s3_secret_access_key=SECRET_KEY,
        )
        info = await plane.backups.create(OPERATOR)
        assert info.offsite is None
        assert "NoSuchBucket" in info.problem
        assert (plane.backups.root / info.id / "manifest.json").is_file()
        assert "Off-site backup copy failed" in await open_titles(plane)


async def test_failed_backup_raises_an_incident_that_the_next_success_clears(
    plane: ControlPlane,
) -> None:
    root = plane.backups.root
    shutil.rmtree(root)
    root.write_text("not a directory")  # the backup disk went away
    with pytest.raises(OperationError, match="backup failed"):
        await plane.backups.create(OPERATOR)
    assert "Backup failed" in await open_titles(plane)
    assert (await plane.backups.health()).status.value == "degraded"
    failed = (await plane.audit.tail(1))[0]
    assert (failed.action, failed.outcome) == ("backup.create", "failed")

    root.unlink()
    root.mkdir(mode=0o700)
    await plane.backups.create(OPERATOR)
    assert "Backup failed" not in await open_titles(plane)
    assert (await plane.backups.health()).status.value == "ok"


async def test_overdue_backup_raises_an_incident_until_a_backup_succeeds(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(backup_interval_minutes=1)
    now = datetime.now(UTC)
    await plane.backups.create(OPERATOR, now=now - timedelta(minutes=5))
    assert metric(plane, "backup_schedule_interval_seconds") == 60
    assert await plane.backups.check_overdue()
    assert "Backup overdue" in await open_titles(plane)

    await plane.backups.create(OPERATOR)
    assert "Backup overdue" not in await open_titles(plane)
    assert not await plane.backups.check_overdue()

    await plane.flags.set("AUTO_BACKUP_ENABLED", "off", OPERATOR)
    assert metric(plane, "backup_schedule_interval_seconds") == 0
    assert not await plane.backups.check_overdue(now=now + timedelta(hours=5))


async def test_a_restart_reads_the_newest_backup_into_the_metrics(
    make_plane: PlaneFactory,
) -> None:
    first = await make_plane()
    old = await first.backups.create(OPERATOR, now=datetime(2026, 1, 1, tzinfo=UTC))
    newest = await first.backups.create(OPERATOR, now=datetime(2026, 1, 2, tzinfo=UTC))
    await first.close()
    second = await make_plane()
    assert metric(second, "backup_last_success_timestamp_seconds") == newest.created_at.timestamp()
    assert second.backups.status().last_success_id == newest.id != old.id


async def test_daily_verification_job_raises_its_own_incident(plane: ControlPlane) -> None:
    info = await plane.backups.create(OPERATOR)
    ok = await plane.jobs.run("backup-verify", ADMIN)
    assert ok.last_outcome == "ok"

    path = plane.backups.root / info.id / "state.db"
    os.truncate(path, path.stat().st_size - 10)
    failed = await plane.jobs.run("backup-verify", ADMIN)
    assert failed.last_outcome == "error"
    assert "state.db: size" in (failed.last_error or "")
    titles = await open_titles(plane)
    assert "Latest backup failed verification" in titles
    assert not any(t.startswith("Scheduled job") for t in titles)  # reported once, not twice
    last = (await plane.audit.tail(1))[0]
    assert (last.action, last.target, last.outcome) == ("job.run", "backup-verify", "failed")

    with pytest.raises(PermissionDenied):
        await plane.jobs.run("backup-verify", OPERATOR)


@pytest.mark.slow
async def test_scheduled_backup_follows_the_live_flag(plane: ControlPlane) -> None:
    await plane.flags.set("AUTO_BACKUP_ENABLED", "off", OPERATOR)
    assert await plane.backups.scheduled_backup() is None
    await plane.flags.set("AUTO_BACKUP_ENABLED", "on", OPERATOR)
    info = await plane.backups.scheduled_backup()
    assert info is not None and info.reason is BackupReason.SCHEDULED
    incident_states = {i.state for i in await plane.incidents.list()}
    assert IncidentState.TRIGGERED not in incident_states


async def test_unknown_or_malformed_ids_are_refused(plane: ControlPlane) -> None:
    with pytest.raises(NotFound):
        await plane.backups.verify("20260101T000000Z", OPERATOR)
    with pytest.raises(InvalidInput):
        await plane.backups.restore("../../etc", ADMIN, confirm=True)


async def test_status_and_checklist_show_the_last_backup(plane: ControlPlane) -> None:
    [item] = await plane.backups.checklist_items()
    assert (item.mark.value, item.reason) == ("warn", "no backup exists")
    info = await plane.backups.create(OPERATOR)
    await plane.backups.verify(info.id, OPERATOR)
    checklist = await plane.checklist.run()
    line = next(i for i in checklist.items if i.name == "backups")
    assert line.mark.value == "ok"
    assert info.id in line.reason and "verified" in line.reason
    summary = await plane.status.summary()
    backup_line = next(x for x in summary.lines if x.label == "Last backup")
    assert backup_line.ok and "verified" in backup_line.value
