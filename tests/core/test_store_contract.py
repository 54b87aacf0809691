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


# -- outbox, cursors and adapter values (shared by the Telegram and PagerDuty senders) ---------


async def test_outbox_delivers_in_order_per_key(store: Store) -> None:
    from core.models import OutboxMessage

    await store.outbox_add(
        [
            OutboxMessage(channel="c", key="chat-1", payload={"n": 1}),
            OutboxMessage(channel="c", key="chat-2", payload={"n": 2}),
            OutboxMessage(channel="c", key="chat-1", payload={"n": 3}),
            OutboxMessage(channel="other", key="chat-1", payload={"n": 4}),
        ]
    )
    due = await store.outbox_due("c", utcnow(), 10)
    # Only the head of each key's queue is eligible: n=3 waits behind n=1.
    assert [i.payload["n"] for i in due] == [1, 2]
    first = due[0]
    await store.outbox_finish(first.id, error="429", retry_at=utcnow() + timedelta(hours=1))
    assert [i.payload["n"] for i in await store.outbox_due("c", utcnow(), 10)] == [2]
    later = await store.outbox_due("c", utcnow() + timedelta(hours=2), 10)
    assert [(i.payload["n"], i.attempts, i.last_error) for i in later] == [
        (1, 1, "429"),
        (2, 0, None),
    ]
    await store.outbox_finish(first.id)
    assert [i.payload["n"] for i in await store.outbox_due("c", utcnow(), 10)] == [2, 3]
    stats = await store.outbox_stats("c")
    assert stats.depth == 2
    assert stats.oldest is not None


async def test_failed_outbox_message_stops_blocking_its_key(store: Store) -> None:
    from core.models import OutboxMessage

    await store.outbox_add([OutboxMessage(channel="c", key="k", payload={"n": n}) for n in (1, 2)])
    [head] = await store.outbox_due("c", utcnow(), 10)
    await store.outbox_finish(head.id, error="400 chat not found")
    assert [i.payload["n"] for i in await store.outbox_due("c", utcnow(), 10)] == [2]


async def test_outbox_add_saves_the_cursor_atomically(store: Store) -> None:
    from core.models import OutboxMessage

    assert await store.get_cursor("telegram") == 0
    await store.outbox_add([OutboxMessage(channel="c", payload={})], cursor=("telegram", 7))
    assert await store.get_cursor("telegram") == 7
    await store.set_cursor("telegram", 9)
    assert await store.get_cursor("telegram") == 9


async def test_values_round_trip_and_delete(store: Store) -> None:
    assert await store.get_value("tg:incident:1") is None
    await store.set_value("tg:incident:1", {"chat_id": -100, "message_id": 5})
    assert await store.get_value("tg:incident:1") == {"chat_id": -100, "message_id": 5}
    await store.set_value("tg:incident:1", None)
    assert await store.get_value("tg:incident:1") is None


async def test_engine_state_is_written_with_its_audit_entry(open_store: StoreFactory) -> None:
    store = await open_store()
    assert await store.engine_state() == {}
    entry = await store.put_engine_state(
        "engine.halt", {"halted": True}, record("engine.halt", "engine")
    )
    await store.put_engine_state("core.momentum", {"enabled": False}, record("core.toggle"))
    await store.put_engine_state("engine.halt", {"halted": False}, record("engine.resume"))
    assert entry.action == "engine.halt"
    assert [e.action for e in await store.audit_tail(3)] == [
        "engine.resume",
        "core.toggle",
        "engine.halt",
    ]
    await store.close()
    reopened = await open_store()
    assert await reopened.engine_state() == {
        "engine.halt": {"halted": False},
        "core.momentum": {"enabled": False},
    }


async def test_orders_upsert_by_client_order_id_and_list_newest_first(store: Store) -> None:
    from core.venues import OrderRecord, OrderSide, OrderStatus, OrderType, VenueMode

    def order(cid: str, core: str, status: OrderStatus) -> OrderRecord:
        return OrderRecord(
            client_order_id=cid,
            venue="binance",
            symbol="BTC/USDT",
            side=OrderSide.BUY,
            type=OrderType.LIMIT,
            amount=0.01,
            price=50000.0,
            status=status,
            core=core,
            mode=VenueMode.PAPER,
        )

    await store.save_order(order("a", "momentum", OrderStatus.NEW))
    await store.save_order(order("b", "mean_reversion", OrderStatus.OPEN))
    filled = order("a", "momentum", OrderStatus.FILLED).model_copy(update={"filled": 0.01})
    await store.save_order(filled)
    listed = await store.list_orders()
    assert [(o.client_order_id, o.status) for o in listed] == [
        ("b", OrderStatus.OPEN),
        ("a", OrderStatus.FILLED),
    ]
    assert listed[1].filled == 0.01
    resting = await store.list_orders(statuses=[OrderStatus.OPEN])
    assert [o.client_order_id for o in resting] == ["b"]
    assert [o.client_order_id for o in await store.list_orders(core="momentum")] == ["a"]
    assert len(await store.list_orders(limit=1)) == 1


async def test_pnl_points_by_time_window_and_pruned(store: Store) -> None:
    from core.store import PnlPoint

    now = utcnow()
    points = [
        PnlPoint(core=core, ts=now - timedelta(hours=hours), realized=hours, unrealized=-1.0)
        for core in ("momentum", "mean_reversion")
        for hours in (1, 30, 200)
    ]
    await store.add_pnl_points(points)
    day = await store.pnl_points(since=now - timedelta(hours=24))
    assert sorted((p.core, p.realized) for p in day) == [("mean_reversion", 1), ("momentum", 1)]
    week = await store.pnl_points(since=now - timedelta(days=7), core="momentum")
    assert [p.realized for p in week] == [30, 1]  # oldest first
    assert await store.prune_pnl_points(now - timedelta(days=7)) == 2
    assert len(await store.pnl_points(since=now - timedelta(days=30))) == 4


async def test_snapshot_then_restore_brings_back_every_record(store: Store, tmp_path: Path) -> None:
    import os
    import stat

    override = FlagOverride(name="AUTO_BACKUP_ENABLED", value=False, set_by=ALICE, set_at=utcnow())
    await store.put_flag_override(override, record("flag.set"))
    for i in range(30):
        await store.append_audit(record(target=str(i)))
    snapshot_dir = tmp_path / "snap"
    snapshot_dir.mkdir()
    taken = await store.snapshot(snapshot_dir)
    assert taken.counts == await store.counts()
    for name in taken.files:
        assert stat.S_IMODE(os.stat(snapshot_dir / name).st_mode) == 0o600
    saved = await store.audit_entries(limit=100)

    await store.delete_flag_override("AUTO_BACKUP_ENABLED", record("flag.unset"))
    await store.append_audit(record("later"))
    restored_counts = await store.restore(snapshot_dir)

    assert restored_counts == taken.counts
    assert (await store.flag_overrides())["AUTO_BACKUP_ENABLED"] == override
    assert await store.audit_entries(limit=100) == saved
    assert await store.audit_head() == (saved[-1].seq, saved[-1].hash)
    assert await store.integrity_problems() == []
    after = await store.append_audit(record("after"))  # the chain continues after a restore
    assert after.prev_hash == saved[-1].hash


async def test_trial_store_is_isolated(store: Store, tmp_path: Path) -> None:
    await store.append_audit(record())
    trial = store.trial_store(tmp_path / "trial")
    (tmp_path / "trial").mkdir()
    await trial.open()
    try:
        assert await trial.audit_head() is None
        await trial.append_audit(record())
        await trial.append_audit(record())
    finally:
        await trial.close()
    assert (await store.audit_head() or (0, ""))[0] == 1
