"""Backups of a control plane whose state is in Redis: taken, verified by a trial restore into a
scratch prefix, restored exactly, and rolled back when the restored state fails its checks."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.control_plane import ControlPlane
from core.errors import OperationError
from core.models import AuditRecord
from core.store.portable import PORTABLE_FILE, read_portable
from core.store.redis import SNAPSHOT_FILE, RedisStore
from tests.conftest import SettingsFactory
from tests.core.test_backups import (
    ADMIN,
    OPERATOR,
    change_state,
    entries,
    flag_values,
    incidents,
    lie_about_counts,
    make_state,
)
from tests.support.services import RedisServer

PREFIX = "lunia"


@pytest.fixture
async def raw(shared_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client; the database is emptied before each test."""
    client = aioredis.Redis.from_url(shared_redis.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def plane(
    make_settings: SettingsFactory, shared_redis: RedisServer, raw: aioredis.Redis
) -> AsyncIterator[ControlPlane]:
    """A started control plane whose store is Redis (under the production prefix)."""
    started = ControlPlane(make_settings(), store=RedisStore(shared_redis.url, prefix=PREFIX))
    await started.start()
    yield started
    await started.close()


async def test_backup_of_redis_state_is_an_owner_only_snapshot_and_portable_copy(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)

    directory = plane.backups.root / info.id
    # The Redis snapshot, and the store-neutral copy the embedded store restores from (§2.2).
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(["manifest.json", SNAPSHOT_FILE, PORTABLE_FILE])
    for child in directory.iterdir():
        assert stat.S_IMODE(os.stat(child).st_mode) == 0o600, child.name
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["store"] == "redis"
    assert manifest["counts"]["flag_overrides"] == 2
    assert manifest["counts"]["incidents"] == 2
    # The backup's own audit entry is written after the snapshot, so the snapshot lacks it.
    assert manifest["counts"]["audit"] == (await plane.store.counts())["audit"] - 1
    # Both files hold the same moment: the portable copy counts what the snapshot counts.
    portable = read_portable(directory / PORTABLE_FILE)
    assert portable.source == "redis"
    assert portable.counts() == manifest["counts"]


async def test_verify_restores_into_a_scratch_prefix_and_cleans_it_up(
    plane: ControlPlane, raw: aioredis.Redis
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    before = sorted(await raw.keys("*"))

    verification = await plane.backups.verify(info.id, OPERATOR)

    assert verification.ok, verification.problems
    assert verification.counts["incidents"] == 2
    assert verification.audit_entries_checked == info.counts["audit"]
    after = sorted(await raw.keys("*"))
    assert not [k for k in after if b":trial:" in k or b":restore:" in k]
    assert len(after) == len(before)  # only the live store's keys (its audit log grew)


async def test_restore_of_redis_state_brings_back_flags_incidents_and_audit_log(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    saved_entries = (await entries(plane))[: info.counts["audit"]]
    saved_flags, saved_incidents = flag_values(plane), await incidents(plane)
    await change_state(plane)
    assert flag_values(plane) != saved_flags

    report = await plane.backups.restore(info.id, ADMIN, confirm=True)

    assert flag_values(plane) == saved_flags
    assert await incidents(plane) == saved_incidents
    restored = await entries(plane)
    assert restored[: len(saved_entries)] == saved_entries
    assert report.audit_entries_verified == len(saved_entries)
    assert report.counts_after["incidents"] == 2
    assert await plane.store.integrity_problems() == []
    await plane.audit.record(AuditRecord(actor=OPERATOR, action="test.after"))
    assert (await plane.audit.verify()).ok


async def test_restore_failing_its_checks_rolls_redis_back_to_the_safety_backup(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    await change_state(plane)
    lie_about_counts(plane, info.id, "audit", +5)  # passes the checksums, fails after the swap
    flags_before, incidents_before = flag_values(plane), await incidents(plane)
    entries_before = await entries(plane)

    with pytest.raises(OperationError, match="previous state was put back"):
        await plane.backups.restore(info.id, ADMIN, confirm=True)

    assert flag_values(plane) == flags_before
    assert await incidents(plane) == incidents_before
    assert (await entries(plane))[: len(entries_before)] == entries_before
    assert (await plane.audit.verify()).ok
