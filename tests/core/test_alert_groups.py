"""An incident is the alert group its sender formed: members, counts, lifecycle, regrouping,
actions on the whole group, silences on the group's common labels, and the migration of
incidents stored before groups. Lifecycle tests run on both stores (SQLite and a real Redis)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from bot.render import group_line, incident_message
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.incidents.receivers import parse_alertmanager, parse_falco
from core.models import Actor, ActorKind, Role, utcnow
from core.models.alerts import Alert, AlertSource, AlertStatus, Severity
from core.models.incidents import (
    Change,
    EventKind,
    Incident,
    IncidentState,
    Rules,
    plan_alert,
    source_actor,
)
from core.store import Store
from core.store import redis as redis_store
from core.store import sqlite as sqlite_store
from core.store.redis import RedisStore
from core.store.sqlite import SqliteStore
from tests.conftest import VIEWER_TOKEN, WEBHOOK_TOKEN, PlaneFactory, RedisFactory, auth
from tests.support.payloads import am_alert, am_payload, falco_event
from tests.support.services import Alertmanager, start_alertmanager

OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
HOOK = {**auth(WEBHOOK_TOKEN), "content-type": "application/json"}
LATER = "2026-11-28T10:00:00Z"


def member(instance: str, *, status: str = "firing", **labels: str) -> dict[str, Any]:
    """One alert of the ``RedisDown`` group, told apart by its instance."""
    return am_alert(
        "RedisDown", status=status, fingerprint=f"fp-{instance}", instance=instance, **labels
    )


GROUP = [member("redis-1:6379"), member("redis-2:6379"), member("redis-3:6379")]


@pytest.fixture(params=["sqlite", "redis"])
async def make_grouped_plane(
    request: pytest.FixtureRequest, make_plane: PlaneFactory, make_redis: RedisFactory
) -> PlaneFactory:
    """Control planes on the embedded SQLite store, or on a real Redis of the test's own."""

    async def make(**env: Any) -> ControlPlane:
        if request.param == "redis":
            env.update(enable_redis=True, redis_url=make_redis().url)
        return await make_plane(**env)

    return make


@pytest.fixture
async def plane(make_grouped_plane: PlaneFactory) -> ControlPlane:
    return await make_grouped_plane()


async def deliver(plane: ControlPlane, *alerts: dict[str, Any]) -> list[int]:
    """One Alertmanager notification of ``alerts``; the incidents it moved."""
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(*alerts)))
    return result.incidents


async def test_a_group_of_three_alerts_is_one_incident_with_three_members(
    plane: ControlPlane,
) -> None:
    [incident_id] = await deliver(plane, *GROUP)
    [incident] = await plane.incidents.list()
    assert incident.id == incident_id
    assert [m.fingerprint for m in incident.members] == [
        "fp-redis-1:6379",
        "fp-redis-2:6379",
        "fp-redis-3:6379",
    ]
    assert (incident.firing_members, incident.resolved_members) == (3, 0)
    assert incident.differing_labels == ["instance"]
    assert incident.common_labels == {
        "alertname": "RedisDown",
        "job": "lunia",
        "severity": "critical",
    }
    assert len((await plane.incidents.detail(incident_id)).alerts) == 3


async def test_one_member_resolving_leaves_the_group_open_with_its_counts(
    plane: ControlPlane,
) -> None:
    [incident_id] = await deliver(plane, *GROUP)
    [same] = await deliver(plane, member("redis-2:6379", status="resolved"), *GROUP[::2])
    assert same == incident_id
    incident = await plane.incidents.get(incident_id)
    assert incident.state is IncidentState.TRIGGERED
    assert incident.firing
    assert (incident.firing_members, incident.resolved_members) == (2, 1)
    assert incident.differing_labels == ["instance"]
    assert group_line(incident) == "3 alerts (2 firing, 1 resolved) · differ: instance"
    message = incident_message(incident)
    assert "📦 3 alerts (2 firing, 1 resolved) · differ: instance" in message
    # The labels line shows what the group shares, not one member's instance.
    assert "job=<code>lunia</code>" in message
    assert "redis-1:6379" not in message
    timeline = (await plane.incidents.detail(incident_id)).timeline
    assert timeline[-1].detail == "RedisDown resolved; 2 of 3 alerts still firing"


async def test_the_group_resolves_when_every_member_has_and_reopens_when_one_fires_again(
    plane: ControlPlane,
) -> None:
    [incident_id] = await deliver(plane, *GROUP)
    await deliver(plane, member("redis-1:6379", status="resolved"))
    await deliver(plane, member("redis-2:6379", status="resolved"))
    assert (await plane.incidents.get(incident_id)).is_open
    await deliver(plane, member("redis-3:6379", status="resolved"))
    resolved = await plane.incidents.get(incident_id)
    assert resolved.state is IncidentState.RESOLVED
    assert (resolved.firing_members, resolved.resolved_members) == (0, 3)
    assert resolved.resolved_by == source_actor(AlertSource.ALERTMANAGER)
    assert (await plane.incidents.count_open()) == dict.fromkeys(Severity, 0)

    # Within the reopen window, one member firing again reopens the same incident.
    again = am_alert(
        "RedisDown", fingerprint="fp-redis-2:6379", instance="redis-2:6379", starts_at=LATER
    )
    assert await deliver(plane, again) == [incident_id]
    reopened = await plane.incidents.get(incident_id)
    assert reopened.state is IncidentState.TRIGGERED
    assert (reopened.firing_members, reopened.resolved_members) == (1, 2)
    kinds = [e.kind for e in (await plane.incidents.detail(incident_id)).timeline]
    assert kinds[-1] is EventKind.REOPENED
    assert (await plane.incidents.count_open())[Severity.CRITICAL] == 1


async def test_a_member_firing_after_the_reopen_window_opens_a_new_incident(
    make_grouped_plane: PlaneFactory,
) -> None:
    plane = await make_grouped_plane(incident_reopen_minutes=0)
    [first] = await deliver(plane, *GROUP)
    await deliver(plane, *[member(m["labels"]["instance"], status="resolved") for m in GROUP])
    assert not (await plane.incidents.get(first)).is_open
    again = am_alert(
        "RedisDown", fingerprint="fp-redis-1:6379", instance="redis-1:6379", starts_at=LATER
    )
    [second] = await deliver(plane, again)
    assert second != first
    fresh = await plane.incidents.get(second)
    assert fresh.state is IncidentState.TRIGGERED
    assert (fresh.firing_members, fresh.resolved_members) == (1, 0)


async def test_alert_group_by_regroups_by_those_labels(
    make_grouped_plane: PlaneFactory,
) -> None:
    plane = await make_grouped_plane(alert_group_by="cluster")
    # Two notifications of two sender groups (different alertnames), one cluster: one incident.
    [eu] = await deliver(plane, am_alert("RedisDown", fingerprint="a", cluster="eu"))
    assert await deliver(plane, am_alert("DiskFull", fingerprint="b", cluster="eu")) == [eu]
    # The same sender group in another cluster: an incident of its own.
    [us] = await deliver(plane, am_alert("RedisDown", fingerprint="c", cluster="us"))
    assert us != eu
    grouped = await plane.incidents.get(eu)
    assert (grouped.firing_members, grouped.differing_labels) == (2, ["alertname"])
    assert grouped.group_key == '{}:{cluster="eu"}'
    assert (await plane.incidents.get(us)).firing_members == 1


async def test_without_alert_group_by_the_senders_groups_stand(plane: ControlPlane) -> None:
    [a] = await deliver(plane, am_alert("RedisDown", fingerprint="a", cluster="eu"))
    [b] = await deliver(plane, am_alert("DiskFull", fingerprint="b", cluster="eu"))
    assert a != b


async def test_acknowledge_and_resolve_act_on_the_whole_group(plane: ControlPlane) -> None:
    [incident_id] = await deliver(plane, *GROUP[:2])
    acked = await plane.incidents.acknowledge(incident_id, OTTO)
    assert acked.state is IncidentState.ACKNOWLEDGED
    # A new member joins the acknowledged group: still acknowledged, nothing escalates.
    assert await deliver(plane, GROUP[2]) == [incident_id]
    joined = await plane.incidents.get(incident_id)
    assert joined.state is IncidentState.ACKNOWLEDGED
    assert joined.firing_members == 3
    timeline = (await plane.incidents.detail(incident_id)).timeline
    assert timeline[-1].detail == "RedisDown joined the group (3 alerts)"

    resolved = await plane.incidents.resolve(incident_id, OTTO)
    assert resolved.state is IncidentState.RESOLVED
    assert [i.id for i in await plane.incidents.list(open_only=True)] == []
    # Members clearing later change nothing: the group is already resolved.
    assert await deliver(plane, member("redis-1:6379", status="resolved")) == []


async def test_falco_events_group_by_rule_and_host(plane: ControlPlane) -> None:
    shell = falco_event(uuid="e-1")
    other_container = falco_event(uuid="e-2")
    other_container["output_fields"]["container.id"] = "def456"
    other_host = {**falco_event(uuid="e-3"), "hostname": "node-2"}
    ids = [
        (await plane.incidents.ingest(parse_falco(event))).incidents
        for event in (shell, other_container, other_host)
    ]
    assert ids[0] == ids[1] != ids[2]
    incident = await plane.incidents.get(ids[0][0])
    assert incident.firing_members == 2
    assert incident.differing_labels == ["container.id"]


async def test_engine_incidents_keep_their_own_keys(plane: ControlPlane) -> None:
    redis = await plane.incidents.raise_engine("redis_down", "Redis down", Severity.CRITICAL)
    backup = await plane.incidents.raise_engine("backup_stale", "Backup stale", Severity.WARNING)
    assert redis is not None and backup is not None
    assert (redis.key, backup.key) == ("engine:redis_down", "engine:backup_stale")
    await plane.incidents.clear_engine("redis_down", "Redis down")
    cleared = await plane.incidents.get(redis.id)
    assert cleared.state is IncidentState.RESOLVED
    assert cleared.severity is Severity.CRITICAL  # a bare clear does not change what it was


async def test_the_api_detail_shows_the_members(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    transport = httpx.ASGITransport(app=create_app(plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
        body = am_payload(*GROUP)
        body["alerts"][1] = member("redis-2:6379", status="resolved")
        posted = await client.post("/api/v1/alerts/alertmanager", json=body, headers=HOOK)
        [incident_id] = posted.json()["incidents"]
        detail = await client.get(f"/api/v1/incidents/{incident_id}", headers=auth(VIEWER_TOKEN))
    incident = detail.json()["incident"]
    assert (incident["firing_members"], incident["resolved_members"]) == (2, 1)
    assert incident["differing_labels"] == ["instance"]
    assert [m["status"] for m in incident["members"]] == ["firing", "resolved", "firing"]


# -- silences ------------------------------------------------------------------------------


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[Alertmanager]:
    config = "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n"
    am = await asyncio.to_thread(start_alertmanager, tmp_path, config)
    try:
        yield am
    finally:
        await asyncio.to_thread(am.stop)


@pytest.mark.slow  # a real Alertmanager
async def test_a_silence_matches_exactly_the_groups_common_labels(
    make_plane: PlaneFactory, alertmanager: Alertmanager
) -> None:
    plane = await make_plane(alertmanager_url=alertmanager.url)
    async with httpx.AsyncClient(base_url=alertmanager.url) as http:
        pushed = [{"labels": a["labels"], "annotations": a["annotations"]} for a in GROUP]
        bystander = am_alert("RedisDown", instance="redis-9:6379", job="other")
        pushed.append({"labels": bystander["labels"], "annotations": {}})
        assert (await http.post("/api/v2/alerts", json=pushed)).status_code == 200
    [incident_id] = await deliver(plane, *GROUP)

    incident = await plane.incidents.silence(incident_id, OTTO, "1h")

    assert incident.state is IncidentState.SILENCED
    async with httpx.AsyncClient(base_url=alertmanager.url) as http:
        silence = (await http.get(f"/api/v2/silence/{incident.silence_id}")).json()
        alerts = (await http.get("/api/v2/alerts")).json()
    matchers = {m["name"]: m["value"] for m in silence["matchers"]}
    assert matchers == {"alertname": "RedisDown", "job": "lunia", "severity": "critical"}
    assert all(not m["isRegex"] and m["isEqual"] for m in silence["matchers"])
    state = {a["labels"]["instance"]: a["status"]["state"] for a in alerts}
    # Every member is muted; an alert outside the group (another job) is not.
    assert state == {
        "redis-1:6379": "suppressed",
        "redis-2:6379": "suppressed",
        "redis-3:6379": "suppressed",
        "redis-9:6379": "active",
    }


async def test_a_silence_of_a_group_sharing_only_its_kind_is_refused(
    make_plane: PlaneFactory,
) -> None:
    # Refused before Alertmanager is asked: nothing listens on port 9.
    plane = await make_plane(alertmanager_url="http://127.0.0.1:9")
    alerts = [
        am_alert("RedisDown", fingerprint="x", job="a", instance="1"),
        am_alert("RedisDown", fingerprint="y", job="b", instance="2"),
    ]
    [incident_id] = await deliver(plane, *alerts)
    incident = await plane.incidents.get(incident_id)
    assert incident.common_labels == {"alertname": "RedisDown", "severity": "critical"}
    with pytest.raises(InvalidInput, match="would match too much"):
        await plane.incidents.silence(incident_id, OTTO, "1h")
    assert (await plane.incidents.get(incident_id)).state is IncidentState.TRIGGERED


# -- migration of incidents stored before groups ----------------------------------------------


def old_alert(fingerprint: str, instance: str, status: AlertStatus = AlertStatus.FIRING) -> Alert:
    """An alert of the ``RedisDown`` group as the receivers parse it."""
    return Alert(
        source=AlertSource.ALERTMANAGER,
        fingerprint=fingerprint,
        dedup_key=f"{fingerprint}-{status.value}-{utcnow().timestamp()}",
        status=status,
        severity=Severity.CRITICAL,
        title="RedisDown",
        labels={"alertname": "RedisDown", "instance": instance, "severity": "critical"},
        group_key='{}:{alertname="RedisDown"}',
    )


def old_code_planner(alert: Alert, open_: Incident | None, _: Incident | None) -> Change:
    """What the code before groups did with a firing alert: one incident per fingerprint."""
    now = utcnow()
    if open_ is not None:
        return Change(
            incident=open_.model_copy(update={"count": open_.count + 1}),
            kind=EventKind.UPDATED,
            actor=source_actor(alert.source),
        )
    incident = Incident(
        key=f"{alert.source.value}:{alert.fingerprint}",
        source=alert.source,
        fingerprint=alert.fingerprint,
        title=alert.title,
        severity=alert.severity,
        labels=alert.labels,
        group_key=alert.group_key,
        first_seen=now,
        last_seen=now,
    )
    return Change(incident=incident, kind=EventKind.OPENED, actor=source_actor(alert.source))


def old_shape(doc: str | bytes) -> str:
    """An incident document as the code before groups wrote it (no members, no counts)."""
    fields = json.loads(doc)
    for name in ("members", "firing_members", "resolved_members", "common_labels"):
        fields.pop(name)
    fields.pop("differing_labels")
    return json.dumps(fields)


def before_groups(migrations: list[str]) -> int:
    """The schema version before the migration that gives incidents their members."""
    return next(i for i, m in enumerate(migrations) if "members" in m)


async def old_code_writes(store: Store) -> None:
    """Two open incidents of one group, as the code before groups made them."""
    await store.ingest_alerts(
        [old_alert("fp-1", "redis-1"), old_alert("fp-2", "redis-2")], old_code_planner, utcnow()
    )


def copy_rows(source: Path, dest: Path, table: str) -> None:
    """Copy ``table`` from ``source`` into ``dest``, with the columns ``dest`` has, every
    incident document in the shape the code before groups wrote."""
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        columns = [row[1] for row in dst.execute(f"PRAGMA table_info({table})")]
        names = ", ".join(columns)
        for values in src.execute(f"SELECT {names} FROM {table}").fetchall():  # noqa: S608
            row = dict(zip(columns, values, strict=True))
            if table == "incidents":
                row["doc"] = old_shape(row["doc"])
            marks = ", ".join("?" * len(columns))
            dst.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))  # noqa: S608


async def stored_by_old_code(kind: str, tmp_path: Path, make_redis: RedisFactory) -> Store:
    """A store at the schema version before groups holding two open incidents of one group
    in the documents the old code wrote; returned opened by this release (so migrated)."""
    if kind == "sqlite":
        # The rows as the old code wrote them, in a database built by the migrations up to
        # the one before groups (never by a later one).
        writer = SqliteStore(tmp_path / "writer.db")
        await writer.open()
        await old_code_writes(writer)
        await writer.close()
        old = tmp_path / "state.db"
        version = before_groups(sqlite_store.MIGRATIONS)
        with sqlite3.connect(old) as conn:
            for migration in sqlite_store.MIGRATIONS[:version]:
                conn.executescript(migration)
            conn.execute(f"PRAGMA user_version = {version}")
        for table in ("incidents", "alerts"):
            copy_rows(tmp_path / "writer.db", old, table)
        store: Store = SqliteStore(old)
    else:
        url = make_redis().url
        writer_store = RedisStore(url, prefix="old")
        await writer_store.open()
        await old_code_writes(writer_store)
        await writer_store.close()
        redis = Redis.from_url(url)
        root = "old:store"
        for incident_id, doc in (await redis.hgetall(f"{root}:incidents")).items():
            await redis.hset(f"{root}:incidents", incident_id, old_shape(doc))
        await redis.set(f"{root}:schema", before_groups(redis_store.MIGRATIONS))
        await redis.aclose()
        store = RedisStore(url, prefix="old")
    await store.open()
    return store


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_incidents_stored_before_groups_migrate_and_keep_working(
    kind: str, tmp_path: Path, make_redis: RedisFactory
) -> None:
    store = await stored_by_old_code(kind, tmp_path, make_redis)
    try:
        old = await store.list_incidents()
        assert sorted(i.key for i in old) == ["alertmanager:fp-1", "alertmanager:fp-2"]
        for incident in old:  # each got its member list from its stored alerts
            [only] = incident.members
            assert only.fingerprint == incident.fingerprint
            assert only.status is AlertStatus.FIRING
            assert only.labels["instance"] == f"redis-{incident.fingerprint[-1]}"
        by_fp = {i.fingerprint: i for i in old}

        def plan(alert: Alert, open_: Incident | None, resolved: Incident | None) -> Change | None:
            return plan_alert(alert, open_, resolved, utcnow(), Rules())

        # The old incident keeps taking its own fingerprint's alerts, and resolves with them.
        repeat = await store.ingest_alerts([old_alert("fp-1", "redis-1")], plan, utcnow())
        assert [e.incident.id for e in repeat.events] == [by_fp["fp-1"].id]
        assert repeat.events[0].incident.count == 2
        cleared = await store.ingest_alerts(
            [old_alert("fp-1", "redis-1", AlertStatus.RESOLVED)], plan, utcnow()
        )
        [event] = cleared.events
        assert (event.incident.id, event.kind) == (by_fp["fp-1"].id, EventKind.RESOLVED)
        assert (await store.get_incident(by_fp["fp-2"].id)).is_open  # type: ignore[union-attr]

        # A new alert of the group joins by the group key (an incident of the group's own).
        joined = await store.ingest_alerts([old_alert("fp-3", "redis-3")], plan, utcnow())
        [opened] = joined.events
        assert opened.kind is EventKind.OPENED
        assert opened.incident.key.startswith("alertmanager:group:")
        again = await store.ingest_alerts([old_alert("fp-4", "redis-4")], plan, utcnow())
        assert [e.incident.id for e in again.events] == [opened.incident.id]
        assert (await store.count_open_incidents())[Severity.CRITICAL] == 2
    finally:
        await store.close()
