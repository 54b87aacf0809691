"""What only the Redis store has to prove: outages fail fast as ``StoreUnavailable``, its keys
stay under its own prefix, snapshots are checked before they replace anything, and its integrity
check notices a damaged layout. The shared behaviour is in ``test_store_contract.py``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.errors import StoreError, StoreUnavailable
from core.models import OutboxMessage, utcnow
from core.store import FlagOverride, Store
from core.store.redis import MIGRATIONS, SNAPSHOT_FILE, RedisStore, scratch_db_url
from tests.core.test_store_contract import ALICE, record
from tests.support.services import RedisServer

PREFIX = "lunia"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at (and damage) what the store wrote."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """An open store under the production prefix."""
    opened = RedisStore(redis_server.url, prefix=PREFIX)
    await opened.open()
    yield opened
    await opened.close()


async def keys(raw: aioredis.Redis, pattern: str = "*") -> list[str]:
    return sorted(k.decode() for k in await raw.keys(pattern))


async def test_every_key_lives_under_the_store_prefix(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await store.append_audit(record())
    await store.outbox_add([OutboxMessage(channel="telegram", key="chat:1", payload={})])
    await store.set_value("tg:incident:1", {"message_id": 5})
    found = await keys(raw)
    assert found and all(k.startswith(f"{PREFIX}:store:") for k in found)
    assert await store.integrity_problems() == []


@pytest.mark.slow
async def test_store_calls_fail_fast_as_unavailable_while_redis_is_down(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.append_audit(record())
    redis_server.stop()
    calls: list[Callable[[], Awaitable[Any]]] = [
        store.ping,
        store.audit_head,
        lambda: store.append_audit(record()),
        lambda: store.put_engine_state("engine.halt", {"halted": True}, record()),
        lambda: store.outbox_due("telegram", utcnow(), 10),
        lambda: store.set_value("k", 1),
        store.counts,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < 3.0

    redis_server.start()  # no persistence: a new, empty Redis on the same port
    await store.ping()
    entry = await store.append_audit(record())
    assert entry.seq == 1


async def test_opening_against_a_stopped_redis_is_unavailable(redis_server: RedisServer) -> None:
    redis_server.stop()
    store = RedisStore(redis_server.url)
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.ping()


async def test_a_schema_newer_than_this_release_is_refused(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    await raw.set(f"{PREFIX}:store:schema", len(MIGRATIONS) + 1)
    with pytest.raises(StoreError, match="newer than this release"):
        await RedisStore(redis_server.url, prefix=PREFIX).open()


async def test_restore_leaves_the_bus_and_leases_beside_the_store_alone(
    store: RedisStore, raw: aioredis.Redis, tmp_path: Path
) -> None:
    await store.append_audit(record())
    await raw.xadd(f"{PREFIX}:events", {"event": "{}"})
    await raw.set(f"{PREFIX}:lease:scheduler", "7:replica-a")
    (tmp_path / "snap").mkdir()
    await store.snapshot(tmp_path / "snap")
    lines = (tmp_path / "snap" / SNAPSHOT_FILE).read_text().splitlines()
    assert {json.loads(line)["key"] for line in lines[1:]} >= {"audit", "audit:head", "schema"}
    assert not [line for line in lines if "lease" in line or '"events"' in line]

    await store.append_audit(record("later"))
    await store.restore(tmp_path / "snap")
    assert (await store.audit_head() or (0, ""))[0] == 1
    assert await raw.get(f"{PREFIX}:lease:scheduler") == b"7:replica-a"
    assert await raw.xlen(f"{PREFIX}:events") == 1


async def test_a_damaged_snapshot_is_refused_without_touching_the_state(
    store: RedisStore, raw: aioredis.Redis, tmp_path: Path
) -> None:
    override = FlagOverride(name="AUTO_BACKUP_ENABLED", value=False, set_by=ALICE, set_at=utcnow())
    await store.put_flag_override(override, record("flag.set"))
    (tmp_path / "snap").mkdir()
    await store.snapshot(tmp_path / "snap")
    path = tmp_path / "snap" / SNAPSHOT_FILE
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines[1:], start=1):
        doc = json.loads(line)
        if doc["key"] == "flags":  # one flipped bit inside one payload: its CRC64 no longer holds
            payload = bytearray(base64.b64decode(doc["dump"]))
            payload[len(payload) // 2] ^= 0x01
            doc["dump"] = base64.b64encode(bytes(payload)).decode()
            lines[n] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")
    await store.delete_flag_override("AUTO_BACKUP_ENABLED", record("flag.unset"))
    before = await keys(raw)

    with pytest.raises(StoreError, match="checksum"):
        await store.restore(tmp_path / "snap")
    assert await store.flag_overrides() == {}
    assert await keys(raw) == before  # nothing replaced, no staging keys left behind

    path.write_text('{"format": "something else"}\n')
    with pytest.raises(StoreError, match="not a lunia-redis-snapshot/1 file"):
        await store.restore(tmp_path / "snap")


async def test_integrity_check_names_what_is_broken(store: RedisStore, raw: aioredis.Redis) -> None:
    for _ in range(3):
        await store.append_audit(record())
    assert await store.integrity_problems() == []
    await raw.set(f"{PREFIX}:store:audit:head", json.dumps([2, "0" * 64]))
    assert await store.integrity_problems() == ["audit:head: names entry 2, the stream ends at 3"]
    await raw.set(f"{PREFIX}:store:flags", "not a hash")
    await raw.set(f"{PREFIX}:store:stray", "1")
    assert sorted(await store.integrity_problems()) == [
        "flags: a string, should be a hash",
        "stray: not a key of this store",
    ]


async def test_trial_store_deletes_its_keys_on_close(
    store: RedisStore, raw: aioredis.Redis, tmp_path: Path, redis_server: RedisServer
) -> None:
    await store.append_audit(record())
    (tmp_path / "snap").mkdir()
    taken = await store.snapshot(tmp_path / "snap")
    trial: Store = store.trial_store(tmp_path)
    await trial.open()
    assert await trial.restore(tmp_path / "snap") == taken.counts
    assert await trial.integrity_problems() == []
    live = await keys(raw)
    assert live == await keys(raw, f"{PREFIX}:store:*")  # nothing of the trial's in production
    scratch = aioredis.Redis.from_url(scratch_db_url(redis_server.url))
    try:
        assert await keys(scratch, f"{PREFIX}:trial:*")  # it lives in the scratch database
        await trial.close()
        assert await keys(scratch) == []
    finally:
        await scratch.aclose()
    assert await keys(raw) == live
