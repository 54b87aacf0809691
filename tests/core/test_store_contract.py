"""The contract every ``Store`` implementation must keep; a new store joins via ``store``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from core.audit import GENESIS_HASH, entry_digest
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.store import FlagOverride, Store
from core.store.sqlite import MIGRATIONS, SqliteStore

StoreFactory = Callable[[], Awaitable[Store]]

ALICE = Actor(kind=ActorKind.TELEGRAM, id="42", name="alice", role=Role.OPERATOR)


def record(action: str = "test.action", target: str = "t") -> AuditRecord:
    return AuditRecord(actor=ALICE, action=action, target=target, before=1, after={"x": [2]})


@pytest.fixture(params=["sqlite"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Open (and reopen) a store of each implementation on the same backing state."""
    opened: list[Store] = []

    async def factory() -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.db")
        else:  # pragma: no cover - new implementations add a branch here
            raise AssertionError(request.param)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: StoreFactory) -> Store:
    return await open_store()


async def test_schema_is_at_latest_version(store: Store) -> None:
    assert await store.schema_version() == len(MIGRATIONS)


async def test_audit_entries_chain_from_genesis(store: Store) -> None:
    first = await store.append_audit(record("a"))
    second = await store.append_audit(record("b"))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert second.hash == entry_digest(second, seq=2, ts=second.ts, prev_hash=first.hash)
    assert await store.audit_head() == (2, second.hash)


async def test_audit_entries_round_trip_every_field(store: Store) -> None:
    written = await store.append_audit(record())
    [read] = await store.audit_entries()
    assert read == written
    assert read.actor == ALICE
    assert read.after == {"x": [2]}


async def test_audit_paging_tail_and_time_range(store: Store) -> None:
    for i in range(25):
        await store.append_audit(record(target=str(i)))
    page = await store.audit_entries(after_seq=10, limit=5)
    assert [e.seq for e in page] == [11, 12, 13, 14, 15]
    tail = await store.audit_tail(3)
    assert [e.seq for e in tail] == [25, 24, 23]
    now = utcnow()
    assert len(await store.audit_entries(since=now - timedelta(minutes=1))) == 25
    assert await store.audit_entries(until=now - timedelta(minutes=1)) == []


async def test_concurrent_appends_keep_one_unbroken_chain(store: Store) -> None:
    entries = await asyncio.gather(*(store.append_audit(record(target=str(i))) for i in range(100)))
    assert sorted(e.seq for e in entries) == list(range(1, 101))
    chain = await store.audit_entries(limit=200)
    for prev, cur in zip(chain, chain[1:], strict=False):
        assert cur.prev_hash == prev.hash


async def test_reads_run_while_writes_happen(store: Store) -> None:
    async def reader() -> int:
        total = 0
        for _ in range(20):
            total += len(await store.audit_tail(5))
        return total

    results = await asyncio.gather(
        *(store.append_audit(record()) for _ in range(50)), reader(), reader()
    )
    assert all(isinstance(r, int) or r.seq > 0 for r in results)
    assert (await store.audit_head() or (0, ""))[0] == 50


async def test_flag_override_is_written_with_its_audit_entry(store: Store) -> None:
    override = FlagOverride(name="AUTO_BACKUP_ENABLED", value=False, set_by=ALICE, set_at=utcnow())
    entry = await store.put_flag_override(override, record("flag.set", "AUTO_BACKUP_ENABLED"))
    assert (await store.flag_overrides())["AUTO_BACKUP_ENABLED"] == override
    assert (await store.audit_tail(1))[0] == entry

    await store.delete_flag_override("AUTO_BACKUP_ENABLED", record("flag.unset"))
    assert await store.flag_overrides() == {}
    assert (await store.audit_head() or (0, ""))[0] == 2


async def test_state_survives_reopening(open_store: StoreFactory) -> None:
    store = await open_store()
    override = FlagOverride(name="EXCHANGE_FAILOVER", value="kraken", set_by=ALICE, set_at=utcnow())
    await store.put_flag_override(override, record("flag.set"))
    await store.close()
    again = await open_store()
    assert (await again.flag_overrides())["EXCHANGE_FAILOVER"].value == "kraken"
    assert (await again.audit_head() or (0, ""))[0] == 1


async def test_closed_store_reports_unavailable(open_store: StoreFactory) -> None:
    from core.errors import StoreUnavailable

    store = await open_store()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
