"""What the Redis store's batched ingestion must keep: one webhook of many alerts ends as if they
had come one at a time (with one event per incident it changed, not one per alert), replicas
ingesting overlapping batches store each alert once, and the open-incident count (an index of
its own) agrees with the incidents, also after an upgrade."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.models import utcnow
from core.models.alerts import Alert, AlertStatus, Severity
from core.models.incidents import EventKind, IncidentEvent, acknowledge
from core.store import IngestOutcome
from core.store.redis import MIGRATIONS, RedisStore
from tests.core.test_store_contract import ALICE, alert, planner
from tests.support.services import RedisServer

FIRING, RESOLVED = AlertStatus.FIRING, AlertStatus.RESOLVED


@pytest.fixture
async def raw(shared_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at (and damage) what the store wrote."""
    client = aioredis.Redis.from_url(shared_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
async def stores(shared_redis: RedisServer) -> AsyncIterator[list[RedisStore]]:
    """Open stores (closed at the end); append more with ``open_on``."""
    opened: list[RedisStore] = []
    yield opened
    for store in opened:
        await store.close()


async def open_on(stores: list[RedisStore], url: str, prefix: str | None = None) -> RedisStore:
    store = RedisStore(url, prefix=prefix or f"test-{secrets.token_hex(4)}")
    await store.open()
    stores.append(store)
    return store


# Re-deliveries within the batch and of earlier alerts, severity changes of an open incident,
# resolve then re-fire of one key, a resolve for a key with nothing open, several keys at once.
EARLIER = [alert("e1", "disk"), alert("e2", "cpu", severity=Severity.WARNING)]
BATCH = [
    alert("b1", "disk", severity=Severity.WARNING),
    alert("e1", "disk"),
    alert("b2", "mem", severity=Severity.INFO),
    alert("b1", "disk"),
    alert("b3", "cpu", status=RESOLVED),
    alert("b4", "mem", severity=Severity.CRITICAL),
    alert("b5", "cpu"),
    alert("b6", "net", status=RESOLVED),
    alert("b7", "disk", status=RESOLVED),
    alert("b8", "mem", status=RESOLVED),
    alert("b9", "mem", severity=Severity.WARNING),
    alert("e2", "cpu"),
]


async def state_of(store: RedisStore) -> dict[str, Any]:
    """What a store holds, without the times (which differ between two runs)."""
    incidents = sorted(await store.list_incidents(limit=100), key=lambda i: i.id)
    return {
        "incidents": [(i.id, i.key, i.state, i.severity, i.count, i.version) for i in incidents],
        "events": [(e.seq, e.kind, e.incident.id) for e in await store.incident_events()],
        "alerts": {
            i.id: [(s.id, s.alert.dedup_key) for s in await store.incident_alerts(i.id)]
            for i in incidents
        },
        "open": await store.count_open_incidents(),
        "outbox": [(m.id, m.key, m.payload) for m in await store.outbox_due("pd", utcnow(), 100)],
        "depth": (await store.outbox_stats("pd")).depth,
    }


def kinds_by_incident(events: list[IncidentEvent]) -> dict[int, list[EventKind]]:
    """Each incident's event kinds, in order."""
    kinds: dict[int, list[EventKind]] = {}
    for event in events:
        kinds.setdefault(event.incident.id, []).append(event.kind)
    return kinds


def folded(kinds: list[EventKind]) -> list[EventKind]:
    """One incident's event kinds with every update after another of its changes folded into
    that change (what one webhook saves: an incident once per run of updates)."""
    out: list[EventKind] = []
    for kind in kinds:
        if not (kind is EventKind.UPDATED and out):
            out.append(kind)
    return out


def without_history(state: dict[str, Any]) -> dict[str, Any]:
    """``state_of`` without what one save per incident changes: the versions, the event list,
    and the outbox ids (queued per incident as saved); the messages themselves stay."""
    return {
        **state,
        "incidents": [row[:-1] for row in state["incidents"]],
        "events": None,
        "outbox": sorted((key, sorted(payload.items())) for _, key, payload in state["outbox"]),
    }


async def test_one_batch_ends_as_if_its_alerts_came_one_at_a_time(
    stores: list[RedisStore], shared_redis: RedisServer
) -> None:
    batched, single = (
        await open_on(stores, shared_redis.url),
        await open_on(stores, shared_redis.url),
    )
    for store in (batched, single):
        await store.ingest_alerts(EARLIER, planner(page=True), utcnow())
    outcome = await batched.ingest_alerts(BATCH, planner(page=True), utcnow())
    one_by_one = [await single.ingest_alerts([a], planner(page=True), utcnow()) for a in BATCH]

    assert (outcome.accepted, outcome.duplicates) == (9, 3)
    singly = kinds_by_incident([e for o in one_by_one for e in o.events])
    assert kinds_by_incident(outcome.events) == {i: folded(k) for i, k in singly.items()}
    seqs = [e.seq for e in outcome.events]
    assert sorted(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))  # one sequence, no gap
    assert without_history(await state_of(batched)) == without_history(await state_of(single))
    assert (await state_of(batched))["open"] == {
        Severity.CRITICAL: 1,  # cpu re-fired after its resolve
        Severity.WARNING: 1,  # mem re-opened, last at warning
        Severity.INFO: 0,
    }
    assert await batched.integrity_problems() == []


@pytest.mark.parametrize("page", [False, True], ids=["alone", "with-outbox"])
async def test_replicas_ingesting_overlapping_batches_store_each_alert_once(
    stores: list[RedisStore], shared_redis: RedisServer, page: bool
) -> None:
    one = await open_on(stores, shared_redis.url)
    two = await open_on(stores, shared_redis.url, one.prefix)
    alerts = [alert(f"d{n}", f"key{n % 4}") for n in range(40)]
    batches = [alerts[start : start + 10] for start in range(0, 40, 5)]  # overlapping by half

    async def deliver(store: RedisStore, mine: list[list[Alert]]) -> list[IngestOutcome]:
        return [await store.ingest_alerts(b, planner(page=page), utcnow()) for b in mine]

    delivered = await asyncio.gather(deliver(one, batches[::2]), deliver(two, batches[1::2]))
    outcomes = [outcome for per_store in delivered for outcome in per_store]
    assert sum(o.accepted for o in outcomes) == 40
    incidents = await one.list_incidents()
    assert sorted((i.key, i.count) for i in incidents) == [
        (f"alertmanager:key{n}", 10) for n in range(4)
    ]
    # Every event stored once in one sequence, and one per incident a batch changed.
    seqs = sorted(e.seq for o in outcomes for e in o.events)
    assert [e.seq for e in await two.incident_events(limit=100)] == seqs
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(len({e.incident.id for e in o.events}) == len(o.events) for o in outcomes)
    stored = [await one.incident_alerts(i.id, limit=100) for i in incidents]
    assert sorted(s.alert.dedup_key for per in stored for s in per) == sorted(
        a.dedup_key for a in alerts
    )
    assert await one.count_open_incidents() == {
        Severity.CRITICAL: 4,
        Severity.WARNING: 0,
        Severity.INFO: 0,
    }
    assert await one.integrity_problems() == []
    if page:  # one outbox queue per incident key, each with exactly its first message due
        due = await one.outbox_due("pd", utcnow(), 100)
        assert sorted(m.payload["kind"] for m in due) == ["opened"] * 4
        assert (await one.outbox_stats("pd")).depth == 40


async def test_open_incidents_are_counted_by_severity_as_they_change(
    stores: list[RedisStore], shared_redis: RedisServer
) -> None:
    store = await open_on(stores, shared_redis.url)
    await store.ingest_alerts([alert("a1", "disk", severity=Severity.INFO)], planner(), utcnow())
    await store.ingest_alerts([alert("a2", "disk", severity=Severity.WARNING)], planner(), utcnow())
    await store.change_incident(1, lambda i: acknowledge(i, ALICE, utcnow()))
    assert await store.count_open_incidents() == {
        Severity.CRITICAL: 0,
        Severity.WARNING: 1,
        Severity.INFO: 0,
    }
    await store.ingest_alerts([alert("a3", "disk", status=RESOLVED)], planner(), utcnow())
    assert sum((await store.count_open_incidents()).values()) == 0
    assert await store.integrity_problems() == []


async def test_upgrading_to_schema_2_indexes_the_open_incidents_by_severity(
    stores: list[RedisStore], shared_redis: RedisServer, raw: aioredis.Redis, tmp_path: Path
) -> None:
    store = await open_on(stores, shared_redis.url)
    await store.ingest_alerts(
        [
            alert("a1", "disk"),
            alert("a2", "cpu", severity=Severity.WARNING),
            alert("a3", "mem", severity=Severity.WARNING),
            alert("a4", "mem", status=RESOLVED),
        ],
        planner(),
        utcnow(),
    )
    # Put the state back to what schema 1 left: no index by severity.
    root = f"{store.prefix}:store"
    await raw.delete(*(f"{root}:incidents:open:{s.value}" for s in Severity))
    await raw.set(f"{root}:schema", 1)
    assert "incidents:open:{severity}: indexes 0 records, there are 2" in (
        await store.integrity_problems()
    )

    (tmp_path / "schema-1").mkdir()
    await store.snapshot(tmp_path / "schema-1")

    upgraded = await open_on(stores, shared_redis.url, store.prefix)
    restored = await open_on(stores, shared_redis.url)
    await restored.restore(tmp_path / "schema-1")
    for migrated in (upgraded, restored):
        assert await migrated.schema_version() == len(MIGRATIONS) >= 2
        assert await migrated.integrity_problems() == []
        assert await migrated.count_open_incidents() == {
            Severity.CRITICAL: 1,
            Severity.WARNING: 1,
            Severity.INFO: 0,
        }


async def test_a_count_out_of_step_with_the_open_incidents_rebuilds_the_index(
    stores: list[RedisStore],
    shared_redis: RedisServer,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await open_on(stores, shared_redis.url)
    await store.ingest_alerts(
        [alert("a1", "disk"), alert("a2", "cpu", severity=Severity.INFO)], planner(), utcnow()
    )
    # An older release (mid-upgrade) opened an incident without indexing it.
    await raw.delete(f"{store.prefix}:store:incidents:open:info")
    with caplog.at_level(logging.WARNING, logger="core.store.redis"):
        counts = await store.count_open_incidents()
    assert counts == {Severity.CRITICAL: 1, Severity.WARNING: 0, Severity.INFO: 1}
    assert "rebuilding" in caplog.text
    assert await store.integrity_problems() == []
