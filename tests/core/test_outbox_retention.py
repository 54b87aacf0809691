"""Secrets never rest (issue 16 point 4): a new token's value is in the outbox only until it is
delivered, then nowhere in the store's files or keys, nor in a backup taken afterwards; finished
messages drop their payload (charts included) and delivered ones are pruned after
OUTBOX_RETENTION, never a pending or failed one; on both stores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.errors import ConfigError
from core.models import OutboxItem, OutboxMessage, Role, utcnow
from core.platform.outbox import Delivery, OutboxRetention, OutboxWorker
from core.store import Store
from core.store.redis import RedisStore
from tests.conftest import PlaneFactory, RedisFactory, SettingsFactory
from tests.core.test_backups import ADMIN, OPERATOR
from tests.support.services import RedisServer

CHAT = 4242


@pytest.fixture(params=["sqlite", "redis"])
async def plane(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, shared_redis: RedisServer
) -> AsyncIterator[ControlPlane]:
    """A started control plane on each store."""
    if request.param == "redis":
        raw = aioredis.Redis.from_url(shared_redis.url)
        await raw.flushall()
        await raw.aclose()
        started = ControlPlane(make_settings(), store=RedisStore(shared_redis.url))
    else:
        started = ControlPlane(make_settings())
    await started.start()
    yield started
    await started.close()


async def redis_values(url: str) -> bytes:
    """Every value of every key of a Redis database, read by type (DUMP may compress)."""
    client = aioredis.Redis.from_url(url)
    found: list[bytes] = []
    try:
        for key in await client.keys("*"):
            kind = (await client.type(key)).decode()
            found.append(key)
            if kind == "string":
                found.append(await client.get(key))
            elif kind == "hash":
                for field, value in (await client.hgetall(key)).items():
                    found += [field, value]
            elif kind == "zset":
                found += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, fields in await client.xrange(key):
                    for field, value in fields.items():
                        found += [field, value]
            elif kind == "list":
                found += await client.lrange(key, 0, -1)
            elif kind == "set":
                found += list(await client.smembers(key))
            else:
                raise AssertionError(f"{key!r}: unexpected type {kind}")
    finally:
        await client.aclose()
    return b"\n".join(found)


def sqlite_files(plane: ControlPlane) -> bytes:
    """The state database's bytes, its WAL and shared-memory files included."""
    state = plane.settings.lunia_state_dir
    return b"".join(p.read_bytes() for p in sorted(state.glob("*.db*")) if p.is_file())


async def stored_bytes(plane: ControlPlane, redis: RedisServer) -> bytes:
    if isinstance(plane.store, RedisStore):
        return await redis_values(redis.url)
    return sqlite_files(plane)


async def deliver_all(plane: ControlPlane, outcome: Delivery) -> list[OutboxItem]:
    """Run the telegram channel's worker once with a deliver that answers ``outcome``."""
    seen: list[OutboxItem] = []

    async def deliver(item: OutboxItem) -> Delivery:
        seen.append(item)
        return outcome

    worker = OutboxWorker(plane.store, "telegram", deliver, plane.metrics)
    await worker.run_once()
    return seen


async def backup_bytes(plane: ControlPlane, redis: RedisServer, tmp_path: Path) -> bytes:
    """What a backup taken now holds, read back as stored data (a Redis backup is restored
    into a trial store first: its file holds DUMP payloads, which may be compressed)."""
    info = await plane.backups.create(OPERATOR)
    directory = plane.backups.root / info.id
    if not isinstance(plane.store, RedisStore):
        return b"".join(p.read_bytes() for p in directory.iterdir())
    trial: Store = plane.store.trial_store(tmp_path)
    await trial.open()
    try:
        await trial.restore(directory)
        scratch = redis.url.removesuffix("/0") + "/15"
        return await redis_values(scratch)
    finally:
        await trial.close()


async def test_a_new_tokens_value_is_nowhere_in_the_store_or_a_backup_once_delivered(
    plane: ControlPlane, shared_redis: RedisServer, tmp_path: Path
) -> None:
    issued = await plane.temporary_tokens.issue(ADMIN, name="ci", role=Role.VIEWER, ttl="1h")
    value = issued.value.get_secret_value()
    png = b"\x89PNG\r\n\x1a\n" + b"chart-bytes-" * 200
    png_b64 = base64.b64encode(png).decode()
    await plane.telegram_delivery.enqueue(
        [
            OutboxMessage(
                channel="telegram",
                key=str(CHAT),
                payload={"op": "text", "chat_id": CHAT, "text": f"token: {value}"},
                sensitive=True,
            ),
            OutboxMessage(
                channel="telegram",
                key=str(CHAT + 1),
                payload={"op": "photo", "chat_id": CHAT + 1, "caption": "", "png_b64": png_b64},
            ),
        ]
    )
    assert value.encode() in await stored_bytes(plane, shared_redis)  # the scan sees it

    delivered = await deliver_all(plane, Delivery.ok())

    assert [i.payload.get("text") for i in delivered][0] == f"token: {value}"
    assert delivered[0].sensitive and not delivered[1].sensitive
    assert value.encode() not in await stored_bytes(plane, shared_redis)
    backup = await backup_bytes(plane, shared_redis, tmp_path)
    assert value.encode() not in backup
    assert png_b64[:200].encode() not in backup  # the chart is not kept either
    assert (await plane.telegram_delivery.outbox_stats()).depth == 0


async def test_a_message_dropped_as_undeliverable_drops_its_secret_too(
    plane: ControlPlane, shared_redis: RedisServer
) -> None:
    issued = await plane.temporary_tokens.issue(ADMIN, name="ci", role=Role.VIEWER, ttl="1h")
    value = issued.value.get_secret_value()
    await plane.telegram_delivery.enqueue(
        [
            OutboxMessage(
                channel="telegram",
                key=str(CHAT),
                payload={"op": "text", "chat_id": CHAT, "text": value},
                sensitive=True,
            )
        ]
    )
    await deliver_all(plane, Delivery.failed("Telegram refused chat"))
    assert value.encode() not in await stored_bytes(plane, shared_redis)


async def test_pruning_removes_delivered_messages_past_the_retention_never_undelivered_ones(
    plane: ControlPlane,
) -> None:
    def message(key: int) -> OutboxMessage:
        return OutboxMessage(
            channel="telegram", key=str(key), payload={"op": "text", "chat_id": key, "text": "x"}
        )

    await plane.telegram_delivery.enqueue([message(1), message(2)])
    await deliver_all(plane, Delivery.ok())
    await plane.telegram_delivery.enqueue([message(3)])
    await deliver_all(plane, Delivery.failed("chat blocked the bot"))
    await plane.telegram_delivery.enqueue([message(4)])  # pending: never attempted
    assert (await plane.store.counts())["outbox"] == 4

    assert await OutboxRetention(plane.store, timedelta(days=7)).prune() == 0
    assert (await plane.store.counts())["outbox"] == 4
    assert await plane.store.outbox_prune(utcnow() + timedelta(seconds=1)) == 2

    assert (await plane.store.counts())["outbox"] == 2  # the failed and the pending one
    assert await plane.store.integrity_problems() == []
    pending = await plane.store.outbox_due("telegram", utcnow(), 10)
    assert [i.key for i in pending] == ["4"]
    assert pending[0].payload["text"] == "x"
    assert await plane.store.outbox_prune(utcnow() + timedelta(days=30)) == 0


async def test_the_retention_is_a_setting_and_its_pruning_a_scheduled_job(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    assert make_settings().outbox_retention_period == timedelta(days=7)
    with pytest.raises(ConfigError, match="OUTBOX_RETENTION"):
        Settings.load(outbox_retention="a week")
    plane = await make_plane(outbox_retention="30m")
    assert plane.outbox_retention.retention == timedelta(minutes=30)
    assert plane.scheduler.job("outbox-prune").name == "outbox-prune"


async def test_a_durable_redis_rewrites_its_append_only_file_once_a_secret_is_delivered(
    make_settings: SettingsFactory, make_redis: RedisFactory
) -> None:
    server = make_redis(durable=True)  # AOF, as docs/DEPLOY.md asks for
    plane = ControlPlane(make_settings(), store=RedisStore(server.url))
    await plane.start()
    try:
        issued = await plane.temporary_tokens.issue(ADMIN, name="ci", role=Role.VIEWER, ttl="1h")
        value = issued.value.get_secret_value().encode()
        await plane.telegram_delivery.enqueue(
            [
                OutboxMessage(
                    channel="telegram",
                    key=str(CHAT),
                    payload={"op": "text", "chat_id": CHAT, "text": value.decode()},
                    sensitive=True,
                )
            ]
        )

        def on_disk() -> bytes:
            found = b""
            for path in server.workdir.rglob("*"):
                if "aof" in path.name:
                    # the rewrite renames its temp files away while we look: skip those
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        found += path.read_bytes()
            return found

        assert value in on_disk()  # the command that queued it was appended
        await deliver_all(plane, Delivery.ok())
        for _ in range(200):  # BGREWRITEAOF runs in a child process
            if value not in on_disk():
                break
            await asyncio.sleep(0.05)
        assert value not in on_disk()
    finally:
        await plane.close()
