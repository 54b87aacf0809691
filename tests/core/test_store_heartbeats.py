"""The heartbeat part of the ``Store`` contract, on SQLite and on a real Redis (the contract
suite's own ``open_store`` fixture, so every implementation is held to it)."""

from __future__ import annotations

from datetime import timedelta

from core.models import utcnow
from core.models.cluster import Heartbeat
from tests.core.test_store_contract import StoreFactory, open_store  # noqa: F401 - the fixture


def beat(instance: str, role: str = "bot", *, ttl: float = 30.0, leads: bool = True) -> Heartbeat:
    now = utcnow()
    return Heartbeat(
        role=role,
        instance=instance,
        version="1.0",
        started_at=now - timedelta(minutes=5),
        seen_at=now,
        expires_at=now + timedelta(seconds=ttl),
        leads=leads,
        views={"venues": {"binance": True}},
    )


async def test_a_beat_is_seen_by_every_process_sharing_the_store(
    open_store: StoreFactory,  # noqa: F811
) -> None:
    writer, reader = await open_store(), await open_store()
    await writer.put_heartbeat(beat("worker-1", "worker"))
    await writer.put_heartbeat(beat("bot-1", "bot", leads=False))
    await writer.put_heartbeat(beat("bot-1", "bot", leads=True))  # replaces its previous beat

    seen = await reader.heartbeats(utcnow())
    assert [(b.role, b.instance, b.leads) for b in seen] == [
        ("bot", "bot-1", True),
        ("worker", "worker-1", True),
    ]
    assert seen[1].views == {"venues": {"binance": True}}


async def test_an_expired_beat_is_absent_and_a_dropped_one_at_once(
    open_store: StoreFactory,  # noqa: F811
) -> None:
    store = await open_store()
    await store.put_heartbeat(beat("api-1", "api", ttl=30))
    await store.put_heartbeat(beat("bot-1", "bot", ttl=30))
    now = utcnow()
    assert len(await store.heartbeats(now)) == 2
    # Missed beats: past its expiry the process is no longer reported, by any reader.
    assert [b.instance for b in await store.heartbeats(now + timedelta(seconds=31))] == []
    assert [b.instance for b in await store.heartbeats(now)] == ["api-1", "bot-1"]

    await store.drop_heartbeat("bot-1")  # a clean shutdown
    assert [b.instance for b in await store.heartbeats(utcnow())] == ["api-1"]
    await store.drop_heartbeat("never-beat")  # nothing to drop is not an error
