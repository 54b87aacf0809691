"""The series the runbook's alert rules read come from the processes the rules assume.

deploy/prometheus/rules/lunia.rules.yml aggregates over every scraped process (api, bot, worker);
tests/deploy/rules_test*.yml prove each rule on synthetic series. These tests scrape real control
planes (over a real redis-server where the split stack needs one) to show the synthetic series
are what the processes export: only engine processes report the worker lease, and the Telegram
queue and the last audit export are read from the shared store by every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.control_plane import ControlPlane
from core.models import Actor, ActorKind, OutboxMessage, Role, utcnow
from core.platform.roles import ProcessRole
from core.security.exports import LAST_EXPORT
from tests.conftest import SettingsFactory
from tests.support.http import serve
from tests.support.services import RedisServer, start_prometheus
from tests.support.waiting import eventually

RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/lunia.rules.yml"

OPERATOR = Actor(kind=ActorKind.TELEGRAM, id="22", name="olga", role=Role.OPERATOR)
BOT_TOKEN = "123456:alert-series-test-token"

RoleFactory = Callable[..., Awaitable[ControlPlane]]


def samples(plane: ControlPlane, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Label set -> value of each sample ``name`` in the plane's /metrics exposition."""
    found = {}
    for family in text_string_to_metric_families(plane.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
async def make_role(make_settings: SettingsFactory, tmp_path: Path) -> AsyncIterator[RoleFactory]:
    """Start control planes in a given process role (closed at teardown)."""
    planes: list[ControlPlane] = []

    async def make(role: ProcessRole, **env: Any) -> ControlPlane:
        env.setdefault("lunia_state_dir", tmp_path / f"{role.value}-{len(planes)}")
        plane = ControlPlane(make_settings(**env), role=role)
        await plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in reversed(planes):
        await plane.close()


WORKER_LEASE = (("lease", "worker"),)


@pytest.mark.slow
async def test_only_engine_processes_report_the_worker_lease(
    make_role: RoleFactory, redis_server: RedisServer
) -> None:
    redis = {"enable_redis": True, "redis_url": redis_server.url}
    leader = await make_role(ProcessRole.WORKER, **redis)
    await eventually(lambda: samples(leader, "lease_leader") == {WORKER_LEASE: 1.0})
    standby = await make_role(ProcessRole.WORKER, **redis)
    api = await make_role(ProcessRole.API, **redis)
    await eventually(lambda: samples(standby, "lease_leader") == {WORKER_LEASE: 0.0})
    await asyncio.sleep(0.5)  # a few health refreshes of the api process
    # Only engine processes hold the worker lease: the api reports none, and the bot's lease
    # has its own name, so neither can hide or fake a missing worker leader.
    assert samples(api, "lease_leader") == {}
    assert ProcessRole.API.lease_name is None
    assert ProcessRole.BOT.lease_name == "bot"
    assert samples(api, "redis_status")[(("redis_status", "disabled"),)] == 0.0

    await leader.close()  # hands the lease over: the standby leads
    await eventually(lambda: samples(standby, "lease_leader") == {WORKER_LEASE: 1.0})


async def test_a_replica_without_the_sender_reports_the_telegram_queue_age(
    make_role: RoleFactory,
) -> None:
    # `lunia run` with a bot token, but no bot app started in it: no sender runs here, as in
    # an api replica, or when the bot is stuck or has no leader.
    plane = await make_role(ProcessRole.ALL, telegram_bot_token=BOT_TOKEN)
    assert samples(plane, "outbox_oldest_age_seconds") == {(("channel", "telegram"),): 0.0}, (
        "reported as empty before anything is queued"
    )
    message = OutboxMessage(channel="telegram", key="-100", payload={"text": "incident #1"})
    await plane.telegram_delivery.enqueue([message])
    await eventually(lambda: samples(plane, "outbox_depth") == {(("channel", "telegram"),): 1.0})
    first = samples(plane, "outbox_oldest_age_seconds")[(("channel", "telegram"),)]

    def aging() -> bool:  # the oldest message keeps aging while nothing sends it
        return samples(plane, "outbox_oldest_age_seconds")[(("channel", "telegram"),)] > first

    await eventually(aging)


async def test_a_replica_without_a_bot_token_reports_no_telegram_queue(
    make_role: RoleFactory,
) -> None:
    plane = await make_role(ProcessRole.ALL)
    await asyncio.sleep(0.3)
    assert samples(plane, "outbox_oldest_age_seconds") == {}


@pytest.mark.slow
async def test_every_replica_reports_the_last_audit_export_from_the_store(
    make_role: RoleFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = {"enable_redis": True, "redis_url": redis_server.url}
    worker = await make_role(ProcessRole.WORKER, **redis)
    api = await make_role(ProcessRole.API, **redis)
    gauge = "audit_export_last_success_timestamp_seconds"
    assert samples(api, gauge) == {(): 0.0}
    assert api.health.snapshot().components["audit_export"].detail.startswith("no export yet")

    # An export by hand in another process (the CLI is one): both replicas pick it up.
    tool = await make_role(ProcessRole.TOOL, **redis)
    result = await tool.exports.export(OPERATOR, str(tmp_path / "exports"))
    exported_at = result.manifest.created_at.timestamp()
    for plane in (worker, api):
        await eventually(lambda p=plane: samples(p, gauge) == {(): pytest.approx(exported_at)})
    assert api.health.snapshot().components["audit_export"].status == "ok"

    # Nine days later (the store says so): degraded with what to run, and the age a restarted
    # process reports from its first check.
    nine_days_ago = utcnow() - timedelta(days=9)
    await tool.store.set_cursor(LAST_EXPORT, int(nine_days_ago.timestamp() * 1e6))
    restarted = await make_role(ProcessRole.API, **redis)
    assert samples(restarted, gauge) == {(): pytest.approx(nine_days_ago.timestamp())}
    component = restarted.health.snapshot().components["audit_export"]
    assert component.status == "degraded"
    assert "9 d ago" in component.detail and "lunia audit export" in component.detail


async def alert_states(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    """Alert name -> state (pending or firing) of what Prometheus' rules say now."""
    alerts = (await client.get(f"{url}/api/v1/alerts")).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


@pytest.mark.slow
async def test_prometheus_judges_the_worker_leader_from_engine_processes_only(
    make_role: RoleFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The shipped NoWorkerLeading rule over real scrapes of an api and a worker process: quiet
    while the worker leads, on its way to firing once it is gone (the api, still scraped, sees
    no live worker in the heartbeats and says so)."""
    redis = {"enable_redis": True, "redis_url": redis_server.url, "heartbeat_seconds": 0.5}
    worker = await make_role(ProcessRole.WORKER, **redis)
    api = await make_role(ProcessRole.API, **redis)
    async with contextlib.AsyncExitStack() as worker_http, serve(api) as api_url:
        worker_url = await worker_http.enter_async_context(serve(worker))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules/*.yml"],
            "scrape_configs": [
                {
                    "job_name": "lunia",
                    "static_configs": [
                        {
                            "targets": [worker_url.removeprefix("http://")],
                            "labels": {"role": "worker"},
                        },
                        {"targets": [api_url.removeprefix("http://")], "labels": {"role": "api"}},
                    ],
                }
            ],
        }
        files = {"rules/lunia.rules.yml": RULES.read_text()}
        with start_prometheus(tmp_path, yaml.safe_dump(config), files=files) as prometheus:
            async with httpx.AsyncClient(timeout=5) as client:

                async def query(expr: str) -> list[dict[str, Any]]:
                    answer = await client.get(
                        f"{prometheus.url}/api/v1/query", params={"query": expr}
                    )
                    result: list[dict[str, Any]] = answer.json()["data"]["result"]
                    return result

                async def both_scraped() -> bool:
                    leases = await query('lease_leader{lease="worker"}')
                    seen = await query('cluster_leaders{process_role="worker"} == 1')
                    scraped = await query('up{job="lunia"} == 1')
                    return len(scraped) == 2 and len(leases) == 1 and len(seen) == 2

                await eventually(both_scraped, timeout=20)
                [lease] = await query("lease_leader")
                assert lease["metric"]["role"] == "worker" and lease["value"][1] == "1"
                await asyncio.sleep(3)  # a few evaluations with both processes scraped
                assert "NoWorkerLeading" not in await alert_states(client, prometheus.url)

                await worker_http.aclose()  # the worker is gone: its series go stale
                await worker.close()

                async def noticed() -> bool:
                    states = await alert_states(client, prometheus.url)
                    return states.get("NoWorkerLeading") == "pending"  # fires after its 1m

                await eventually(noticed, timeout=20)


@pytest.mark.slow
async def test_a_worker_that_lost_its_lease_to_a_redis_outage_reports_it(
    make_role: RoleFactory, redis_server: RedisServer
) -> None:
    """With Redis gone the leader's lease lapses: its gauge says so (RedisDown, which names the
    cause, inhibits NoWorkerLeading in Alertmanager), and says it again once Redis is back."""
    redis = {"enable_redis": True, "redis_url": redis_server.url, "lease_ttl_seconds": 2}
    worker = await make_role(ProcessRole.WORKER, **redis)
    await eventually(lambda: samples(worker, "lease_leader") == {WORKER_LEASE: 1.0})
    redis_server.kill()
    await eventually(lambda: samples(worker, "lease_leader") == {WORKER_LEASE: 0.0})
    redis_server.start()
    await eventually(lambda: samples(worker, "lease_leader") == {WORKER_LEASE: 1.0}, timeout=20)
