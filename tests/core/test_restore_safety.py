"""A restore never loosens safety, pauses trading on every replica while it runs, and leaves the
audit chain's history visible (fork entry, anchored head), on both stores (issue 16 points 3, 6).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.control_plane import ControlPlane
from core.errors import OrderRejected, PermissionDenied
from core.models import AuditRecord, utcnow
from core.models.venues import OrderSide
from core.platform.roles import ProcessRole
from core.security.audit import ANCHOR_FILE, FORK_ACTION, ChainHead
from core.store import RestoreGuard
from core.store.redis import RedisStore
from core.trading.strategies import Intent
from tests.conftest import SettingsFactory
from tests.core.test_backups import ADMIN, OPERATOR
from tests.core.test_failover import fakes  # noqa: F401 (the loopback venues fixture)
from tests.support.services import RedisServer

PREFIX = "lunia"
BUY = Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600}

Start = Callable[[], Awaitable[ControlPlane]]


@pytest.fixture(params=["sqlite", "redis"])
async def start(
    request: pytest.FixtureRequest, make_settings: SettingsFactory
) -> AsyncIterator[Start]:
    """Start control planes on one state dir and one store (SQLite file or Redis prefix), so a
    second start is a restart on the same state."""
    settings = make_settings(**QUIET)
    url: str | None = None
    if request.param == "redis":
        url = request.getfixturevalue("shared_redis").url
        raw = aioredis.Redis.from_url(url)
        await raw.flushdb()
        await raw.aclose()
    started: list[ControlPlane] = []

    async def make() -> ControlPlane:
        store = RedisStore(url, prefix=PREFIX) if url else None
        plane = ControlPlane(settings, store=store)
        await plane.start()
        started.append(plane)
        return plane

    yield make
    for plane in reversed(started):
        await plane.close()


async def test_restore_keeps_halt_switches_revocations_and_safe_flags_across_a_restart(
    start: Start,
) -> None:
    plane = await start()
    issued = await plane.temporary_tokens.issue(ADMIN, name="ci", role="operator", ttl="8h")
    secret = issued.value.get_secret_value()
    info = await plane.backups.create(OPERATOR)

    # After the backup: halt, a core off, a revocation, paper trading forced.
    await plane.trading.halt(OPERATOR, confirm=True, reason="drill")
    await plane.trading.toggle_core("momentum", OPERATOR, enabled=False, confirm=True)
    await plane.temporary_tokens.revoke(ADMIN, issued.token.id)
    await plane.flags.set("BINANCE_FORCE_MOCK", "on", OPERATOR)

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    kept = {k.item: k for k in report.kept}
    assert set(kept) == {
        "halt",
        "core.momentum",
        f"token:{issued.token.id} (ci) revoked",
        "BINANCE_FORCE_MOCK",
    }
    assert kept["halt"].backup == {"halted": False} and kept["halt"].kept["by"] == (
        OPERATOR.describe()
    )
    entries = await plane.store.audit_entries(limit=100_000)
    keeps = [e for e in entries if e.action == "backup.restore.keep"]
    assert {e.target for e in keeps} == {
        "halt",
        "core.momentum",
        f"token:{issued.token.id}",
        "BINANCE_FORCE_MOCK",
    }
    restore_entry = entries[-1]
    assert restore_entry.action == "backup.restore"
    assert [k["item"] for k in restore_entry.after["kept"]] == [k.item for k in report.kept]
    assert "kept from before the restore: halt, core.momentum" in restore_entry.detail

    async def assert_safe(p: ControlPlane) -> None:
        assert p.trading.state().halted
        assert not p.trading.core("momentum").enabled
        assert p.trading.core("mean_reversion").enabled  # what was on stays as the backup has it
        assert p.flags.get("BINANCE_FORCE_MOCK").value is True
        check = await p.temporary_tokens.resolve(secret)
        assert check is not None and check.refusal == "token revoked"
        with pytest.raises(OrderRejected, match="halted"):
            await p.trading.place_order("mean_reversion", BUY)

    await assert_safe(plane)
    await plane.close()
    again = await start()  # a restart on the same state dir and store
    await assert_safe(again)
    assert (await again.audit.verify()).ok
    with pytest.raises(PermissionDenied):
        await again.trading.resume(OPERATOR, confirm=True)
    await again.trading.resume(ADMIN, confirm=True)  # only an admin ends the halt
    assert not again.trading.state().halted


@pytest.mark.slow
@pytest.mark.usefixtures("fakes")  # before ``start``: the planes read the venues' keys
async def test_a_failover_in_force_stays_after_a_restore_and_a_restart(start: Start) -> None:
    plane = await start()
    info = await plane.backups.create(OPERATOR)  # trading on the primary
    await plane.venues.failover(ADMIN, confirm=True, reason="binance degraded")
    assert plane.venues.active_name == "okx"

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    [kept] = report.kept
    assert (kept.item, kept.backup, kept.kept["active"]) == ("failover", None, "okx")
    assert plane.venues.active_name == "okx" and plane.venues.failed_over
    await plane.close()
    again = await start()
    assert again.venues.active_name == "okx" and again.venues.failed_over


async def test_restore_changes_what_the_backup_has_when_it_is_stricter(start: Start) -> None:
    plane = await start()
    await plane.trading.halt(OPERATOR, confirm=True, reason="halted in the backup")
    info = await plane.backups.create(OPERATOR)
    await plane.trading.resume(ADMIN, confirm=True)

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    assert report.kept == []  # nothing was stricter now than in the backup
    assert plane.trading.state().halted  # the backup's halt holds: the stricter of the two


async def test_restore_mark_pauses_trading_and_is_cleared_after_the_restore(start: Start) -> None:
    plane = await start()
    info = await plane.backups.create(OPERATOR)
    now = utcnow()
    guard = RestoreGuard(
        backup_id=info.id, by="someone", started_at=now, expires_at=now + timedelta(minutes=1)
    )
    await plane.store.put_restore_guard(guard)
    with pytest.raises(OrderRejected, match=f"backup {info.id} is being restored by someone"):
        await plane.trading.place_order("momentum", BUY)
    assert await plane.trading.run_core("momentum")  # the tick is skipped, not a crash
    assert "is being restored" in (plane.trading.core("momentum").last_error or "")

    # The swap keeps the live mark: other replicas stay paused until the restore ends.
    snapshot = await plane.backups.create(OPERATOR)
    assert await plane.store.restore_guard(utcnow()) == guard
    await plane.store.put_restore_guard(None)
    await plane.store.restore(plane.backups.root / snapshot.id)  # taken with the mark
    assert await plane.store.restore_guard(utcnow()) is None
    await plane.store.put_restore_guard(guard)
    await plane.store.restore(plane.backups.root / info.id)  # taken without it
    assert await plane.store.restore_guard(utcnow()) == guard
    # A crashed restore pauses trading until its mark expires, no longer.
    assert await plane.store.restore_guard(guard.expires_at) is None

    await plane.store.put_restore_guard(None)
    await plane.backups.restore(info.id, ADMIN, confirm=True)
    assert await plane.store.restore_guard(utcnow()) is None


async def test_restore_mark_blocks_orders_on_another_plane_sharing_redis(
    make_settings: SettingsFactory, tmp_path: Path, shared_redis: RedisServer
) -> None:
    raw = aioredis.Redis.from_url(shared_redis.url)
    await raw.flushdb()
    await raw.aclose()
    planes = []
    try:
        for name in ("api1", "api2"):
            settings = make_settings(
                lunia_state_dir=tmp_path / name,
                enable_redis=True,
                redis_url=shared_redis.url,
                callback_signing_key="shared-signing-key-for-all-replicas",
                **QUIET,
            )
            plane = ControlPlane(settings, role=ProcessRole.API)
            await plane.start()
            planes.append(plane)
        one, two = planes
        now = utcnow()
        await one.store.put_restore_guard(
            RestoreGuard(
                backup_id="b1", by="admin", started_at=now, expires_at=now + timedelta(minutes=1)
            )
        )
        with pytest.raises(OrderRejected, match="backup b1 is being restored"):
            await two.trading.place_order("momentum", BUY)
        await one.store.put_restore_guard(None)
        assert await two.store.restore_guard(utcnow()) is None
    finally:
        for plane in reversed(planes):
            await plane.close()


# -- the audit chain across restores -----------------------------------------------------------


async def roll_back_tail(plane: ControlPlane, keep: int) -> None:
    """Delete the entries after ``keep`` and point the store's head at ``keep``, directly in the
    store (what someone with write access to the database or Redis could do)."""
    [kept] = await plane.store.audit_entries(after_seq=keep - 1, limit=1)
    if isinstance(plane.store, RedisStore):
        raw = aioredis.Redis.from_url(plane.store._url)
        last = (await plane.store.audit_head() or (0, ""))[0]
        await raw.xdel(f"{PREFIX}:store:audit", *(f"{s}-0" for s in range(keep + 1, last + 1)))
        await raw.set(f"{PREFIX}:store:audit:head", json.dumps([kept.seq, kept.hash]))
        await raw.aclose()
    else:
        conn = sqlite3.connect(plane.settings.lunia_state_dir / "lunia.db")
        with conn:
            conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'audit_head'",
                (json.dumps([kept.seq, kept.hash]),),
            )
        conn.close()


async def test_verify_reports_a_tail_removed_with_its_head_against_the_anchor(
    start: Start,
) -> None:
    plane = await start()
    for i in range(10):
        await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.note", target=str(i)))
    head = await plane.audit.anchor_head()
    assert head is not None
    anchor = ChainHead.model_validate_json(
        (plane.settings.lunia_state_dir / ANCHOR_FILE).read_bytes()
    )
    assert (anchor.seq, anchor.hash) == (head.seq, head.hash)

    await roll_back_tail(plane, head.seq - 3)

    report = await plane.audit.verify()
    assert not report.ok
    assert (
        f"the chain ends at seq {head.seq - 3} but the anchor recorded seq {head.seq} "
        f"(hash {head.hash[:12]}…) at {anchor.at.isoformat(timespec='seconds')}: "
        "3 entries missing"
    ) in report.problem
    # The anchor does not follow the shorter chain, not even after a restart.
    await plane.audit.anchor_head()
    await plane.close()
    again = await start()
    assert not (await again.audit.verify()).ok
    assert (
        ChainHead.model_validate_json((again.settings.lunia_state_dir / ANCHOR_FILE).read_bytes())
        == anchor
    )


async def test_restore_appends_a_fork_entry_and_verify_passes_naming_it(start: Start) -> None:
    plane = await start()
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.before"))
    info = await plane.backups.create(OPERATOR)
    for i in range(5):
        await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.later", target=str(i)))
    stale = await plane.audit.anchor_head()  # what another replica's anchor may still hold
    assert stale is not None

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    entries = await plane.store.audit_entries(limit=100_000)
    [fork] = [e for e in entries if e.action == FORK_ACTION]
    assert fork.seq == report.audit_fork_seq == info.counts["audit"] + 1
    assert fork.before["seq"] >= stale.seq and report.replaced_head is not None
    assert fork.before == {"seq": report.replaced_head.seq, "hash": report.replaced_head.hash}
    assert fork.after == {"seq": fork.seq - 1, "hash": fork.prev_hash}  # the restored head
    verified = await plane.audit.verify()
    assert verified.ok
    assert verified.anchor is not None and verified.anchor.seq >= fork.seq
    [named] = verified.forks
    assert named.startswith(f"seq {fork.seq}: restore of backup {info.id}")

    # A replica whose anchor still holds the replaced chain's head: the fork explains it.
    (plane.settings.lunia_state_dir / ANCHOR_FILE).write_text(stale.model_dump_json())
    assert (await plane.audit.verify()).ok
    # But a tail removed after the restore is still caught.
    await plane.audit.anchor_head(fork=True)
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.after"))
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.after"))
    head = await plane.audit.anchor_head()
    assert head is not None
    await roll_back_tail(plane, head.seq - 2)
    late = await plane.audit.verify()
    assert not late.ok and "2 entries missing" in late.problem


async def test_backup_manifest_and_export_carry_the_chain_head(start: Start) -> None:
    plane = await start()
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.note"))
    exported = await plane.audit.export(plane.settings.lunia_state_dir)
    head = await plane.audit.head()
    assert head is not None and exported.chain_head is not None
    assert (exported.chain_head.seq, exported.chain_head.hash) == (head.seq, head.hash)
    manifest = json.loads(
        (plane.settings.lunia_state_dir / f"{exported.file}.manifest.json").read_text()
    )
    assert manifest["chain_head"]["seq"] == head.seq

    info = await plane.backups.create(OPERATOR)
    backup = json.loads((plane.backups.root / info.id / "manifest.json").read_text())
    assert backup["audit_head"]["seq"] == head.seq  # anchored just before the snapshot
    assert backup["audit_head"]["hash"] == head.hash
    assert backup["counts"]["audit"] == head.seq  # and the snapshot holds that far


def test_lunia_audit_verify_reports_the_rolled_back_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    state = tmp_path / "state"
    monkeypatch.setenv("LUNIA_STATE_DIR", str(state))
    runner = CliRunner()
    for value in ("off", "on", "off", "on"):
        assert runner.invoke(app, ["flags", "set", "SELF_HEALING_ENABLED", value]).exit_code == 0
    anchor = ChainHead.model_validate_json((state / ANCHOR_FILE).read_bytes())
    assert anchor.seq == 4
    conn = sqlite3.connect(state / "lunia.db")
    with conn:
        [(digest,)] = conn.execute("SELECT hash FROM audit WHERE seq = 2").fetchall()
        conn.execute("DELETE FROM audit WHERE seq > 2")
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'audit_head'", (json.dumps([2, digest]),)
        )
    conn.close()

    result = runner.invoke(app, ["audit", "verify"])

    assert result.exit_code == 1
    assert "the chain ends at seq 2 but the anchor recorded seq 4" in result.stderr
    assert "2 entries missing" in result.stderr


async def test_the_manifests_audit_head_is_signed_and_older_manifests_still_verify(
    start: Start,
) -> None:
    plane = await start()
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.note"))
    info = await plane.backups.create(OPERATOR)
    path = plane.backups.root / info.id / "manifest.json"
    manifest = json.loads(path.read_text())
    assert (await plane.backups.verify(info.id, OPERATOR)).ok

    altered = {**manifest, "audit_head": {**manifest["audit_head"], "seq": 99}}
    path.write_text(json.dumps(altered))
    refused = await plane.backups.verify(info.id, OPERATOR)
    assert not refused.ok and "signature does not match" in "; ".join(refused.problems)

    # A manifest written before the field existed: signed over everything it had, no audit_head.
    older = {k: v for k, v in manifest.items() if k not in ("audit_head", "signature")}
    key = plane.secrets.backup_signing_key.get_secret_value().encode()
    body = json.dumps(older, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    older["signature"] = hmac.new(key, body, hashlib.sha256).hexdigest()
    path.write_text(json.dumps(older))
    assert (await plane.backups.verify(info.id, OPERATOR)).ok


def test_lunia_backup_restore_prints_what_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()
    created = runner.invoke(app, ["backup", "create", "--json"])
    backup_id = json.loads(created.stdout)["id"]
    assert runner.invoke(app, ["flags", "set", "BINANCE_FORCE_MOCK", "on"]).exit_code == 0

    result = runner.invoke(app, ["backup", "restore", backup_id, "--yes"])

    assert result.exit_code == 0, result.stderr
    assert (
        "  kept BINANCE_FORCE_MOCK: BINANCE_FORCE_MOCK was at its safe value before the restore"
        in result.stdout
    )
    assert "  audit fork entry: seq " in result.stdout
    listed = runner.invoke(app, ["flags", "list", "--json"])
    flags = {f["name"]: f["value"] for f in json.loads(listed.stdout)}
    assert flags["BINANCE_FORCE_MOCK"] is True
