"""The contract every ``Store`` implementation must keep; a new store joins via ``open_store``.

Each test runs on SQLite (a file in the test's temp dir) and on Redis (one real redis-server for
the module, each test under a key prefix of its own).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import Conflict, NotFound
from core.models import Actor, ActorKind, AuditRecord, OutboxMessage, Role, utcnow
from core.models.alerts import Alert, AlertSource, AlertStatus, Severity
from core.models.audit import GENESIS_HASH, entry_digest
from core.models.incidents import (
    Change,
    EscalationStep,
    EventKind,
    Incident,
    IncidentState,
    Rules,
    acknowledge,
    plan_alert,
    resolve,
)
from core.store import (
    AlertPlanner,
    Confirmation,
    FlagOverride,
    IngestOutcome,
    RateLimitHit,
    Store,
)
from core.store import redis as redis_store
from core.store import sqlite as sqlite_store
from core.store.redis import RedisStore
from core.store.sqlite import SqliteStore
from tests.support.services import RedisServer

StoreFactory = Callable[[], Awaitable[Store]]

ALICE = Actor(kind=ActorKind.TELEGRAM, id="42", name="alice", role=Role.OPERATOR)


def record(action: str = "test.action", target: str = "t") -> AuditRecord:
    return AuditRecord(actor=ALICE, action=action, target=target, before=1, after={"x": [2]})


# The schema version a freshly opened store of each kind reports.
LATEST_SCHEMA = {
    SqliteStore: len(sqlite_store.MIGRATIONS),
    RedisStore: len(redis_store.MIGRATIONS),
}


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Open (and reopen) a store of each implementation on the same backing state."""
    opened: list[Store] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("shared_redis")
    prefix = f"test-{secrets.token_hex(4)}"  # the same for every reopening within one test

    async def factory() -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.db")
        elif server is not None:
            store = RedisStore(server.url, prefix=prefix)
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
    assert await store.schema_version() == LATEST_SCHEMA[type(store)] >= 1


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


async def test_flag_changes_are_compare_and_set_on_the_flag_version(store: Store) -> None:
    name = "AUTO_BACKUP_ENABLED"
    assert await store.flag_versions() == {}
    first = FlagOverride(name=name, value=False, set_by=ALICE, set_at=utcnow())
    await store.put_flag_override(first, record("flag.set", name), 0)
    [version] = (await store.flag_versions()).values()
    assert (version.name, version.version, version.changed_by) == (name, 1, ALICE)
    # A change based on version 0 (read before the first one) is refused and writes nothing.
    bob = Actor(kind=ActorKind.API, id="bob", name="bob", role=Role.OPERATOR)
    stale = FlagOverride(name=name, value=True, set_by=bob, set_at=utcnow())
    with pytest.raises(Conflict, match=f"{name} was changed meanwhile by .*alice.*version 1"):
        await store.put_flag_override(stale, record("flag.set", name), 0)
    with pytest.raises(Conflict, match="version 1"):
        await store.delete_flag_override(name, record("flag.unset", name), 0)
    assert (await store.flag_overrides())[name] == first
    assert (await store.audit_head() or (0, ""))[0] == 1
    # Clearing keeps the version counting, so a read from before the clear is stale too.
    await store.delete_flag_override(name, record("flag.unset", name), 1)
    assert (await store.flag_versions())[name].version == 2
    with pytest.raises(Conflict):
        await store.put_flag_override(stale, record("flag.set", name), 1)
    await store.put_flag_override(stale, record("flag.set", name), 2)
    assert (await store.flag_overrides())[name].value is True


async def test_concurrent_flag_changes_from_one_version_let_exactly_one_win(store: Store) -> None:
    name = "SELF_HEALING_ENABLED"

    async def change(value: bool) -> bool:
        override = FlagOverride(name=name, value=value, set_by=ALICE, set_at=utcnow())
        try:
            await store.put_flag_override(override, record("flag.set", name), 0)
        except Conflict:
            return False
        return True

    assert sorted(await asyncio.gather(change(True), change(False))) == [False, True]
    assert (await store.flag_versions())[name].version == 1


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
    from core.models.venues import OrderRecord, OrderSide, OrderStatus, OrderType, VenueMode

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


async def test_fill_books_order_and_positions_together_and_survives_reopening(
    open_store: StoreFactory,
) -> None:
    from core.models.trading import Holding
    from core.models.venues import OrderRecord, OrderSide, OrderStatus, OrderType, VenueMode

    store = await open_store()
    filled = OrderRecord(
        client_order_id="f1",
        venue="binance",
        symbol="BTC/USDT",
        side=OrderSide.BUY,
        type=OrderType.MARKET,
        amount=0.002,
        filled=0.002,
        average=60125.0,
        fee=0.12,
        status=OrderStatus.FILLED,
        core="momentum",
        mode=VenueMode.PAPER,
    )
    held = Holding(
        core="momentum", symbol="BTC/USDT", quantity=0.002, average_cost=60125.0, realized=-0.12
    )
    await store.save_order(filled, [held])
    closed = Holding(core="grid", symbol="ETH/USDT", quantity=0.0, average_cost=0.0, realized=4.5)
    await store.save_holdings([closed])
    marked = held.model_copy(update={"mark": 61000.0})
    await store.save_holdings([marked])  # replaces by core and symbol

    reopened = await open_store()
    assert await reopened.holdings() == [closed, marked]  # sorted by core, then symbol
    assert (await reopened.list_orders())[0] == filled
    assert (await reopened.counts())["holdings"] == 2


async def test_paper_venue_account_round_trips_and_is_replaced(open_store: StoreFactory) -> None:
    from core.models.trading import VenueAccount
    from core.models.venues import Order, OrderSide, OrderStatus, OrderType

    store = await open_store()
    assert await store.venue_account("binance") is None
    resting = Order(
        client_order_id="r1",
        venue_order_id="paper-3",
        venue="binance",
        symbol="ETH/USDT",
        side=OrderSide.BUY,
        type=OrderType.LIMIT,
        amount=1.0,
        price=2900.0,
        status=OrderStatus.OPEN,
    )
    first = VenueAccount(venue="binance", free={"USDT": 100000.0})
    await store.save_venue_account(first)
    second = VenueAccount(
        venue="binance",
        free={"USDT": 97096.1, "BTC": 0.002},
        used={"USDT": 2902.9},
        orders=[resting],
        placed=3,
    )
    await store.save_venue_account(second)
    await store.save_venue_account(VenueAccount(venue="okx", free={"USDT": 5.0}))
    reopened = await open_store()
    assert await reopened.venue_account("binance") == second
    assert (await reopened.venue_account("okx")) is not None


async def test_pnl_baseline_is_each_cores_last_point_at_or_before_a_time(store: Store) -> None:
    from core.store import PnlPoint

    now = utcnow()
    await store.add_pnl_points(
        [
            PnlPoint(core="momentum", ts=now - timedelta(hours=h), realized=h, unrealized=0.0)
            for h in (1, 23, 25, 30)
        ]
        + [PnlPoint(core="grid", ts=now - timedelta(hours=2), realized=7.0, unrealized=1.0)]
        + [  # many newer points of another core do not hide the older ones
            PnlPoint(core="noise", ts=now - timedelta(minutes=m), realized=0, unrealized=0)
            for m in range(1, 1300)
        ]
    )
    base = await store.pnl_baseline(now - timedelta(hours=24), ["momentum", "grid", "missing"])
    assert [(p.core, p.realized) for p in base] == [("momentum", 25)]  # grid has none before
    later = await store.pnl_baseline(now, ["grid", "momentum"])
    assert [(p.core, p.realized, p.unrealized) for p in later] == [
        ("grid", 7.0, 1.0),
        ("momentum", 1, 0.0),
    ]


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


# -- incidents, alerts and events (core/incidents/service.py drives these) -------------------------


RULES = Rules(escalation={Severity.CRITICAL: EscalationStep(ack_timeout_seconds=60)})


def alert(
    dedup: str,
    fingerprint: str = "disk",
    *,
    status: AlertStatus = AlertStatus.FIRING,
    severity: Severity = Severity.CRITICAL,
) -> Alert:
    return Alert(
        source=AlertSource.ALERTMANAGER,
        fingerprint=fingerprint,
        dedup_key=dedup,
        status=status,
        severity=severity,
        title=f"{fingerprint} alert",
    )


def planner(*, audit: bool = False, page: bool = False) -> AlertPlanner:
    """The real alert rules; ``page`` adds an outbox message naming the incident."""
    now = utcnow()

    def plan(a: Alert, open_: Incident | None, resolved: Incident | None) -> Change | None:
        change = plan_alert(a, open_, resolved, now, RULES)
        if change is not None:
            change.audit = audit
            if page:
                change.outbox = [
                    OutboxMessage(
                        channel="pd",
                        key=change.incident.key,
                        payload={"incident_id": change.incident.id, "kind": change.kind.value},
                    )
                ]
        return change

    return plan


async def test_ingest_stores_alerts_once_and_groups_them_into_one_incident(store: Store) -> None:
    # One batch: the second alert sees the incident the first one opened, in the same
    # transaction, and the re-delivered third is recognised before anything is written. The
    # update the second makes is folded into the opening: one save, one event (a group's
    # alerts arrive together; an event per member would write the member list per member).
    first = await store.ingest_alerts(
        [alert("a1"), alert("a2"), alert("a1")], planner(page=True), utcnow()
    )
    assert (first.accepted, first.duplicates) == (2, 1)
    assert [(e.seq, e.kind, e.incident.id, e.incident.count) for e in first.events] == [
        (1, EventKind.OPENED, 1, 2),
    ]
    again = await store.ingest_alerts([alert("a2")], planner(), utcnow())
    assert (again.accepted, again.duplicates, again.events) == (0, 1, [])

    incident = await store.get_incident(1)
    assert incident is not None
    assert (incident.count, incident.version, incident.state) == (2, 1, IncidentState.TRIGGERED)
    stored = await store.incident_alerts(1)
    assert [(s.id, s.alert.dedup_key, s.incident_id) for s in stored] == [
        (2, "a2", 1),
        (1, "a1", 1),
    ]
    # The message about the brand-new incident (queued with id 0) names its real id.
    due = await store.outbox_due("pd", utcnow(), 10)
    assert [i.payload for i in due] == [{"incident_id": 1, "kind": "opened"}]
    assert (await store.outbox_stats("pd")).depth == 2
    assert await store.audit_head() is None  # alert sources are not audited here


async def test_a_webhook_that_opens_and_resolves_an_incident_keeps_both_events(
    store: Store,
) -> None:
    # Only updates are folded: an opening and a resolution in one batch stay two events, in
    # order, on one incident (opened with its id, resolved at the next version).
    outcome = await store.ingest_alerts(
        [alert("o1"), alert("o2"), alert("o3", status=AlertStatus.RESOLVED), alert("o4")],
        planner(),
        utcnow(),
    )
    assert [(e.seq, e.kind, e.incident.id, e.incident.version) for e in outcome.events] == [
        (1, EventKind.OPENED, 1, 1),
        (2, EventKind.RESOLVED, 1, 2),
        (3, EventKind.REOPENED, 1, 3),
    ]
    assert (await store.count_open_incidents())[Severity.CRITICAL] == 1
    stored = await store.incident_alerts(1)
    assert [s.incident_id for s in stored] == [1, 1, 1, 1]


async def test_resolved_then_refiring_alert_reopens_the_same_incident(store: Store) -> None:
    await store.ingest_alerts([alert("f1")], planner(), utcnow())
    resolved = await store.ingest_alerts(
        [alert("r1", status=AlertStatus.RESOLVED)], planner(audit=True), utcnow()
    )
    assert [e.incident.state for e in resolved.events] == [IncidentState.RESOLVED]
    assert (await store.count_open_incidents())[Severity.CRITICAL] == 0
    reopened = await store.ingest_alerts([alert("f2")], planner(), utcnow())
    assert [(e.kind, e.incident.id) for e in reopened.events] == [(EventKind.REOPENED, 1)]
    assert (await store.count_open_incidents())[Severity.CRITICAL] == 1
    [entry] = await store.audit_entries()
    assert (entry.action, entry.before, entry.after) == (
        "incident.resolved",
        {"state": "triggered"},
        {"state": "resolved"},
    )
    # A resolved alert for a key with nothing open is stored, linked to no change.
    other = await store.ingest_alerts(
        [alert("x1", "cpu", status=AlertStatus.RESOLVED)], planner(), utcnow()
    )
    assert (other.accepted, other.events) == (1, [])


async def full_open_count(store: Store) -> dict[Severity, int]:
    """Open incidents per severity counted from the incidents themselves."""
    counts = dict.fromkeys(Severity, 0)
    for incident in await store.list_incidents(limit=1000):
        if incident.is_open:
            counts[incident.severity] += 1
    return counts


async def test_open_incident_count_never_drifts_from_the_incidents(
    open_store: StoreFactory,
) -> None:
    store = await open_store()
    warn, info, gone = Severity.WARNING, Severity.INFO, AlertStatus.RESOLVED

    async def ingest(*alerts: Alert) -> None:
        await store.ingest_alerts(list(alerts), planner(), utcnow())

    async def change(fingerprint: str, rule: Callable[[Incident], Change | None]) -> None:
        [incident] = [
            i
            for i in await store.list_incidents(limit=1000)
            if i.key.endswith(f":{fingerprint}") and i.is_open
        ]
        await store.change_incident(incident.id, rule)

    steps: list[Callable[[], Awaitable[None]]] = [
        lambda: ingest(
            alert("1", "disk"), alert("2", "cpu", severity=warn), alert("3", "mem", severity=info)
        ),
        lambda: ingest(alert("4", "disk", severity=warn)),  # an open incident changes severity
        lambda: change("cpu", lambda i: acknowledge(i, ALICE, utcnow())),
        lambda: ingest(alert("5", "mem", status=gone)),  # resolved by its alert
        lambda: change("disk", lambda i: resolve(i, ALICE, utcnow())),  # resolved by a person
        lambda: ingest(alert("6", "mem", severity=info)),  # re-fires: reopened
        lambda: ingest(alert("7", "net"), alert("8", "net", status=gone), alert("9", "net")),
        lambda: ingest(*(alert(f"x{n}", f"k{n % 7}", severity=warn) for n in range(30))),
    ]
    for step in steps:
        await step()
        assert await store.count_open_incidents() == await full_open_count(store)
    reopened = await open_store()  # the running count is state like any other
    assert await reopened.count_open_incidents() == await full_open_count(reopened)
    assert sum((await reopened.count_open_incidents()).values()) > 0


async def test_concurrent_ingests_share_batches_yet_each_gets_its_own_outcome(
    store: Store,
) -> None:
    def failing(a: Alert, open_: Incident | None, resolved: Incident | None) -> Change | None:
        raise ValueError("this webhook's own problem")

    async def one(n: int) -> IngestOutcome:
        # Every webhook re-sends the alert of the one before it: a duplicate across batches.
        alerts = [alert(f"c{n}", f"key{n % 5}"), alert(f"c{n - 1}", f"key{(n - 1) % 5}")]
        return await store.ingest_alerts(alerts, failing if n == 7 else planner(), utcnow())

    outcomes = await asyncio.gather(*(one(n) for n in range(1, 21)), return_exceptions=True)
    [error] = [o for o in outcomes if isinstance(o, BaseException)]
    assert isinstance(error, ValueError)
    stored = [o for o in outcomes if isinstance(o, IngestOutcome)]
    # c0 .. c20 all stored once: #7 rolled back alone, so #8's copy of c7 is new, not a duplicate.
    assert (sum(o.accepted for o in stored), sum(o.duplicates for o in stored)) == (21, 17)
    assert await store.count_open_incidents() == await full_open_count(store)
    assert sum((await store.count_open_incidents()).values()) == 5


async def test_change_incident_is_read_modify_write_and_audited(store: Store) -> None:
    await store.ingest_alerts([alert("a1")], planner(), utcnow())
    current = await store.get_incident(1)
    assert current is not None and current.next_escalation_at is not None
    unchanged, none = await store.change_incident(1, lambda i: None)
    assert (unchanged, none) == (current, None)
    acked, event = await store.change_incident(1, lambda i: acknowledge(i, ALICE, utcnow()))
    assert event is not None and event.kind is EventKind.ACKNOWLEDGED
    assert (acked.state, acked.version, acked.acknowledged_by) == (
        IncidentState.ACKNOWLEDGED,
        current.version + 1,
        ALICE,
    )
    assert await store.get_incident(1) == acked
    [entry] = await store.audit_tail(1)
    assert (entry.action, entry.target, entry.actor) == (
        "incident.acknowledged",
        "#1 disk alert",
        ALICE,
    )
    with pytest.raises(NotFound):
        await store.change_incident(99, lambda i: None)
    assert await store.get_incident(99) is None


async def test_incidents_list_newest_first_by_state_severity_and_deadline(store: Store) -> None:
    for n, (fingerprint, severity) in enumerate(
        [("a", Severity.CRITICAL), ("b", Severity.WARNING), ("c", Severity.CRITICAL)]
    ):
        await store.ingest_alerts(
            [alert(f"d{n}", fingerprint, severity=severity)], planner(), utcnow()
        )
    await store.change_incident(3, lambda i: acknowledge(i, ALICE, utcnow()))

    assert [i.id for i in await store.list_incidents()] == [3, 2, 1]
    assert [i.id for i in await store.list_incidents(limit=2)] == [3, 2]
    triggered = await store.list_incidents(states=[IncidentState.TRIGGERED])
    assert [i.id for i in triggered] == [2, 1]
    both = [IncidentState.TRIGGERED, IncidentState.ACKNOWLEDGED]
    assert [i.id for i in await store.list_incidents(states=both, limit=2)] == [3, 2]
    critical = await store.list_incidents(severity=Severity.CRITICAL)
    assert [i.id for i in critical] == [3, 1]
    # Only critical, unacknowledged incidents escalate (RULES): #1 has a deadline.
    assert await store.list_incidents(due_before=utcnow()) == []
    due = await store.list_incidents(due_before=utcnow() + timedelta(minutes=2))
    assert [i.id for i in due] == [1]
    assert await store.count_open_incidents() == {
        Severity.CRITICAL: 2,
        Severity.WARNING: 1,
        Severity.INFO: 0,
    }


async def test_incident_events_in_order_for_all_or_one_incident(store: Store) -> None:
    # Two webhooks: within one, an incident's updates fold into one event per incident.
    await store.ingest_alerts([alert("a1", "a"), alert("b1", "b")], planner(), utcnow())
    await store.ingest_alerts([alert("a2", "a")], planner(), utcnow())
    every = await store.incident_events()
    assert [(e.seq, e.incident.id) for e in every] == [(1, 1), (2, 2), (3, 1)]
    assert [e.seq for e in await store.incident_events(after_seq=1, limit=1)] == [2]
    timeline = await store.incident_events(incident_id=1)
    assert [(e.seq, e.kind) for e in timeline] == [(1, EventKind.OPENED), (3, EventKind.UPDATED)]
    assert [e.seq for e in await store.incident_events(incident_id=1, after_seq=1)] == [3]
    assert every[2] == (await store.incident_events(incident_id=1))[1]


# -- two replicas on the same state ------------------------------------------------------------


async def test_two_replicas_store_each_redelivered_alert_once(open_store: StoreFactory) -> None:
    one, two = await open_store(), await open_store()
    deliveries = [alert(f"d{n}") for n in range(20)]

    async def deliver(store: Store) -> list[IngestOutcome]:
        return [await store.ingest_alerts([a], planner(page=True), utcnow()) for a in deliveries]

    outcomes = [o for per in await asyncio.gather(deliver(one), deliver(two)) for o in per]
    assert sum(o.accepted for o in outcomes) == 20
    assert sum(o.duplicates for o in outcomes) == 20
    [incident] = await one.list_incidents()
    assert (incident.id, incident.count, incident.version) == (1, 20, 20)
    assert len(await two.incident_alerts(1, limit=100)) == 20
    assert [e.seq for e in await two.incident_events(limit=100)] == list(range(1, 21))
    assert (await one.outbox_stats("pd")).depth == 20


async def test_two_replicas_appending_concurrently_keep_one_gap_free_chain(
    open_store: StoreFactory,
) -> None:
    replicas = [await open_store(), await open_store()]
    entries = await asyncio.gather(
        *(replicas[i % 2].append_audit(record(target=str(i))) for i in range(60)),
        *(
            replicas[i % 2].put_engine_state("engine.halt", {"n": i}, record("engine.halt"))
            for i in range(20)
        ),
    )
    assert sorted(e.seq for e in entries) == list(range(1, 81))
    chain = await replicas[0].audit_entries(limit=200)
    assert [e.seq for e in chain] == list(range(1, 81))
    prev = GENESIS_HASH
    for entry in chain:
        assert entry.prev_hash == prev
        assert entry.hash == entry_digest(entry, seq=entry.seq, ts=entry.ts, prev_hash=prev)
        prev = entry.hash
    assert await replicas[1].audit_head() == (80, prev)


async def test_two_replicas_finishing_outbox_messages_keep_each_key_in_order(
    open_store: StoreFactory,
) -> None:
    one, two = await open_store(), await open_store()
    await asyncio.gather(
        *(
            (one, two)[n % 2].outbox_add(
                [OutboxMessage(channel="c", key=f"k{n % 3}", payload={"n": n})]
            )
            for n in range(30)
        )
    )
    finished: set[int] = set()
    deliveries: list[tuple[int, str, set[int]]] = []  # id, key, finished when it was due

    async def worker(store: Store) -> None:
        while due := await store.outbox_due("c", utcnow(), 5):
            done_before = set(finished)
            for item in due:
                deliveries.append((item.id, item.key, done_before))
                await store.outbox_finish(item.id)
                finished.add(item.id)

    await asyncio.gather(worker(one), worker(two))
    assert (await one.outbox_stats("c")).depth == 0
    key_of = {item_id: key for item_id, key, _ in deliveries}
    assert sorted(key_of) == list(range(1, 31))  # each at least once (both may send one)
    for item_id, key, done_before in deliveries:
        earlier = {i for i, k in key_of.items() if k == key and i < item_id}
        assert earlier <= done_before, f"#{item_id} overtook an earlier message of {key}"


# -- security state: rate limits, refusal throttle, confirmations --------------------------------


def confirmation(token: str, owner: str = "42", *, ttl: float = 120) -> Confirmation:
    return Confirmation(
        token=token,
        owner=owner,
        description="halt trading",
        payload={"update": {"update_id": 7}},
        expires_at=utcnow() + timedelta(seconds=ttl),
    )


async def test_rate_limit_allows_limit_hits_per_sliding_window(store: Store) -> None:
    start, window = utcnow(), timedelta(seconds=60)

    async def hit(key: str, after: float) -> RateLimitHit:
        now = start + timedelta(seconds=after)
        return await store.hit_rate_limit(key, limit=3, window=window, now=now)

    assert [(await hit("a", t)).allowed for t in (0, 10, 20)] == [True, True, True]
    refused = await hit("a", 30)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(30, abs=0.01)  # the hit at 0 leaves at 60
    assert (await hit("b", 30)).allowed  # keys are counted apart
    assert (await hit("a", 60.5)).allowed  # the first hit slid out of the window
    assert not (await hit("a", 61)).allowed  # refused hits were not counted, the 4th one is


async def test_security_state_is_not_part_of_the_counted_state(store: Store) -> None:
    before = await store.counts()
    await store.hit_rate_limit("k", limit=5, window=timedelta(seconds=60), now=utcnow())
    await store.put_confirmation(confirmation("tok"))
    assert await store.counts() == before


async def test_confirmation_is_taken_once_and_only_by_its_owner(store: Store) -> None:
    asked = confirmation("tok-1")
    await store.put_confirmation(asked)
    assert (await store.take_confirmation("tok-1", "99", utcnow())).outcome == "not_owner"
    taken = await store.take_confirmation("tok-1", "42", utcnow())
    assert (taken.outcome, taken.confirmation) == ("taken", asked)
    assert (await store.take_confirmation("tok-1", "42", utcnow())).outcome == "missing"
    assert (await store.take_confirmation("never", "42", utcnow())).outcome == "missing"


async def test_expired_confirmation_is_refused_and_consumed(store: Store) -> None:
    await store.put_confirmation(confirmation("tok-2", ttl=5))
    later = utcnow() + timedelta(seconds=6)
    expired = await store.take_confirmation("tok-2", "42", later)
    assert (expired.outcome, expired.confirmation) == ("expired", None)
    assert (await store.take_confirmation("tok-2", "42", utcnow())).outcome == "missing"


async def test_two_replicas_share_one_rate_limit(open_store: StoreFactory) -> None:
    one, two = await open_store(), await open_store()
    now, window = utcnow(), timedelta(seconds=60)
    hits = await asyncio.gather(
        *(
            (one, two)[n % 2].hit_rate_limit("caller", limit=7, window=window, now=now)
            for n in range(30)
        )
    )
    assert sum(h.allowed for h in hits) == 7


async def test_two_replicas_taking_one_confirmation_get_it_exactly_once(
    open_store: StoreFactory,
) -> None:
    one, two = await open_store(), await open_store()
    for n in range(10):
        await one.put_confirmation(confirmation(f"race-{n}"))
    takes = await asyncio.gather(
        *(
            store.take_confirmation(f"race-{n}", "42", utcnow())
            for n in range(10)
            for store in (one, two, one, two)
        )
    )
    assert sorted(t.outcome for t in takes).count("taken") == 10
    assert {t.outcome for t in takes} == {"taken", "missing"}
