"""The deployment view (core/ops/cluster.py) and the shared backup catalog, in the fast lane.

The split shape over Redis is driven end to end in tests/e2e/test_cluster_views.py; here: one
``lunia run`` process on SQLite keeps its old shape (nothing written, no new health component,
the daily checklist queued for the bot), its metrics hold the deployment and the venue health,
and a backup one process takes dates the last backup of another process sharing the catalog.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from core.control_plane import JOB_CHECKLIST, ControlPlane
from core.incidents.delivery import CHANNEL
from core.models import Actor, ActorKind, Role, utcnow
from core.models.cluster import Heartbeat
from core.platform.health import Status
from core.platform.roles import ProcessRole
from tests.conftest import PlaneFactory, SettingsFactory
from tests.support.services import RedisServer

OPS = -1001000000001
OPS_CLI = Actor(kind=ActorKind.CLI, id="ops", name="ops", role=Role.OPERATOR)
SIGNING = "5e0c2d9a7b1f4e3c8d6a0b2f1e4d7c9a3b5e8f0d2c4a6b8e0f1d3c5a7b9e2f4d"


async def test_one_process_on_sqlite_writes_no_heartbeat_and_reports_itself(
    plane: ControlPlane,
) -> None:
    assert await plane.store.heartbeats(utcnow()) == []
    assert "worker" not in plane.health.snapshot().components  # /healthz as before
    view = plane.cluster.deployment()
    [me] = view.processes
    assert (me.role, me.leads, me.this_process, view.shared) == ("all", True, True, False)
    assert (await plane.cluster.worker_health()).status is Status.OK
    await plane.venues.probe()
    await plane.cluster.tick()
    metric = plane.metrics.registry.get_sample_value
    assert metric("cluster_processes", {"process_role": "all"}) == 1
    assert metric("cluster_leaders", {"process_role": "all"}) == 1
    assert metric("venue_healthy", {"venue": "binance"}) == 1  # paper venue, probed fine


async def test_the_daily_checklist_is_a_scheduler_job_queued_for_the_ops_chat(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(telegram_bot_token="1:x", telegram_ops_chat_id=OPS)
    await plane.scheduler.run_now(JOB_CHECKLIST)
    [queued] = await plane.store.outbox_due(CHANNEL, utcnow(), 10)
    assert queued.payload["op"] == "checklist" and queued.payload["chat_id"] == OPS
    names = [item["name"] for item in queued.payload["checklist"]["items"]]
    assert "incidents acknowledged" in names and "backups" in names
    assert "signals: cores" in names  # this process runs the engine


async def test_without_an_ops_chat_no_checklist_job_is_scheduled(plane: ControlPlane) -> None:
    assert JOB_CHECKLIST not in [job.name for job in plane.scheduler.jobs()]


async def test_a_backup_taken_by_one_process_is_the_last_backup_of_another(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    shared = {"backup_dir": tmp_path / "backups", "backup_signing_key": SIGNING}
    taker = await make_plane(lunia_state_dir=tmp_path / "one", **shared)
    other = await make_plane(lunia_state_dir=tmp_path / "two", **shared)
    assert other.backups.status().last_success_id is None

    taken = await taker.backups.create(OPS_CLI)
    await other.health.refresh()  # the background check re-reads the catalog when it changed
    state = other.backups.status()
    assert state.last_success_id == taken.id and state.last_success_at == taken.created_at
    backups = other.health.snapshot().components["backups"]
    assert taken.created_at.isoformat() in backups.detail
    sample = other.metrics.registry.get_sample_value("backup_last_success_timestamp_seconds")
    assert sample == taken.created_at.timestamp()


async def test_a_bot_alive_but_not_leading_and_a_bot_gone_are_told_apart(
    make_settings: SettingsFactory, redis_server: RedisServer
) -> None:
    settings = make_settings(
        enable_redis=True, redis_url=redis_server.url, telegram_bot_token="1:x"
    )
    api = ControlPlane(settings, role=ProcessRole.API)
    await api.start()
    try:
        await _tell_bots_apart(api)
    finally:
        await api.close()


async def _tell_bots_apart(api: ControlPlane) -> None:
    assert (await api.cluster.bot_health()).detail.startswith("no live bot process")
    now = utcnow()
    standby = Heartbeat(
        role="bot",
        instance="bot-host:7:abc",
        version=api.version,
        started_at=now,
        seen_at=now,
        expires_at=now + timedelta(seconds=30),
        leads=False,
    )
    await api.store.put_heartbeat(standby)  # as a `lunia bot` standby writes it
    await api.cluster.tick()
    health = await api.cluster.bot_health()
    assert health.status is Status.DEGRADED
    assert health.detail == "1 bot process(es) alive but none leads (taking over?)"

    await api.store.put_heartbeat(standby.model_copy(update={"leads": True}))
    await api.cluster.tick()
    health = await api.cluster.bot_health()
    assert health.status is Status.OK and "bot-host:7:abc polls and sends" in health.detail
    [line] = await api.cluster.status_lines()
    assert "bot×1 (leader bot-host:7:abc)" in line.value and "no worker leads" in line.value
    assert line.ok is False  # no worker: nothing trades, no scheduled job runs


async def test_a_leaders_unreadable_views_leave_the_local_figures_in_place(
    make_settings: SettingsFactory, redis_server: RedisServer
) -> None:
    settings = make_settings(enable_redis=True, redis_url=redis_server.url)
    api = ControlPlane(settings, role=ProcessRole.API)
    await api.start()
    try:
        now = utcnow()
        await api.store.put_heartbeat(  # a worker of another release publishing another shape
            Heartbeat(
                role="worker",
                instance="worker-host:9:def",
                version="0.0-other",
                started_at=now,
                seen_at=now,
                expires_at=now + timedelta(seconds=30),
                leads=True,
                views={"venues": "not the shape this release reads", "cores": []},
            )
        )
        await api.cluster.tick()
        assert (await api.cluster.worker_health()).status is Status.OK  # alive and leading
        assert [v.healthy for v in api.venues.status().items] == [None, None]  # not adopted
        assert api.cluster.cores() == api.trading.cores()  # its own (never ticked) cores
    finally:
        await api.close()
