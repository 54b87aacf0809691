"""Past one process, against a real redis-server: shared state, the bot once, Redis loss.

The replicas here are control planes in one test process, each with its own state dir (its own
spool) and its own Redis connections, which is what separates processes as far as Redis is
concerned; tests/e2e/test_worker_failover.py runs real ``lunia worker`` processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from bot.app import TelegramBot
from core.control_plane import ControlPlane
from core.errors import OrderRejected
from core.models.incidents import IncidentState
from core.models.venues import OrderSide
from core.platform.roles import ProcessRole
from core.trading.strategies import Intent
from tests.conftest import (
    ADMIN_TOKEN,
    OPERATOR_TOKEN,
    WEBHOOK_TOKEN,
    RedisFactory,
    SettingsFactory,
    auth,
)
from tests.fakes.telegram import FakeTelegram
from tests.support.payloads import am_alert, am_payload
from tests.support.services import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # end to end across replicas on a real Redis

OPS = -1001000000001
QUIET = {"core_tick_seconds": 3600, "venue_probe_seconds": 3600}


@pytest.fixture
def redis(make_redis: RedisFactory) -> RedisServer:
    """A durable Redis, as docs/DEPLOY.md asks for a multi-process install."""
    return make_redis(durable=True)


class Replicas:
    """Start control planes of a role on the shared Redis; ``bots[name]`` is a replica's bot."""

    def __init__(self, make_settings: SettingsFactory, tmp_path: Path, redis: RedisServer) -> None:
        self._make_settings = make_settings
        self._tmp_path = tmp_path
        self._redis = redis
        self.planes: list[ControlPlane] = []
        self.bots: dict[str, TelegramBot] = {}

    async def __call__(
        self, role: ProcessRole, name: str, *, telegram: FakeTelegram | None = None, **env: Any
    ) -> ControlPlane:
        if telegram is not None:
            env.update(
                telegram_bot_token=telegram.token,
                telegram_api_base=telegram.base,
                telegram_ops_chat_id=OPS,
            )
        settings = self._make_settings(
            lunia_state_dir=self._tmp_path / name,
            enable_redis=True,
            redis_url=self._redis.url,
            redis_check_seconds=0.2,
            lease_ttl_seconds=2,
            callback_signing_key="shared-signing-key-for-all-replicas",
            **QUIET,
            **env,
        )
        plane = ControlPlane(settings, role=role)
        if telegram is not None:  # wired as `lunia api|bot` wire it (api/runner.py)
            bot = TelegramBot(plane, sends=role.runs_bot)
            self.bots[name] = bot
            if role.runs_bot:
                plane.duties.add("telegram", bot.start, bot.stop)
        await plane.start()
        self.planes.append(plane)
        return plane

    async def close(self) -> None:
        for plane in reversed(self.planes):
            await plane.close()
        for bot in self.bots.values():
            await bot.bot.session.close()


@pytest.fixture
async def replicas(
    make_settings: SettingsFactory, tmp_path: Path, redis: RedisServer
) -> AsyncIterator[Replicas]:
    """Control planes on the shared Redis (closed at teardown)."""
    started = Replicas(make_settings, tmp_path, redis)
    yield started
    await started.close()


def client(plane: ControlPlane, telegram: TelegramBot | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(plane, telegram=telegram))
    return httpx.AsyncClient(transport=transport, base_url="http://lunia.test")


async def post_alert(http: httpx.AsyncClient, name: str, **labels: str) -> httpx.Response:
    return await http.post(
        "/api/v1/alerts/alertmanager",
        json=am_payload(am_alert(name, **labels)),
        headers=auth(WEBHOOK_TOKEN),
    )


async def test_split_roles_refuse_to_start_without_redis(make_settings: SettingsFactory) -> None:
    with pytest.raises(Exception, match="ENABLE_REDIS: `lunia worker` shares state"):
        ControlPlane(make_settings(), role=ProcessRole.WORKER)


async def test_two_api_replicas_and_a_bot_share_one_state_and_one_message(
    replicas: Replicas, fake_telegram: FakeTelegram
) -> None:
    api1 = await replicas(ProcessRole.API, "api1")
    api2 = await replicas(ProcessRole.API, "api2")
    bot = await replicas(ProcessRole.BOT, "bot", telegram=fake_telegram)
    assert api1.duties.names == [] and api2.duties.names == []
    await eventually(lambda: bot.duties.active)

    async with client(api1) as one, client(api2) as two:
        sent = await post_alert(one, "ExchangeLatencyHigh")
        assert sent.status_code == 200, sent.text
        incident_id = sent.json()["incidents"][0]
        # The bot process, told over the Redis bus, sends the incident message once.
        [message] = await fake_telegram.wait_for_call("sendMessage")
        assert "ExchangeLatencyHigh" in message.params["text"]

        acked = await two.post(f"/api/v1/incidents/{incident_id}/ack", headers=auth(OPERATOR_TOKEN))
        assert acked.status_code == 200, acked.text
        seen = await one.get(f"/api/v1/incidents/{incident_id}", headers=auth(OPERATOR_TOKEN))
        assert seen.json()["incident"]["state"] == "acknowledged"

    [edit] = await fake_telegram.wait_for_call("editMessageText")
    assert edit.params["message_id"] == message.result["message_id"]
    assert "Acknowledged" in edit.params["text"] or "acknowledged" in edit.params["text"]
    # Nothing more arrives: a later incident's message proves the bot is past those events.
    async with client(api1) as one:
        assert (await post_alert(one, "MarkerAlert")).status_code == 200
    await fake_telegram.wait_for_call("sendMessage", count=2)
    sends = [c.params["text"] for c in fake_telegram.calls_to("sendMessage")]
    assert sum("ExchangeLatencyHigh" in text for text in sends) == 1
    assert len(sends) == 2
    assert len(fake_telegram.calls_to("editMessageText")) == 1


async def test_in_webhook_mode_an_api_replica_takes_updates_and_the_bot_process_replies(
    replicas: Replicas, fake_telegram: FakeTelegram
) -> None:
    viewer = 4242
    hook = {
        "telegram_mode": "webhook",
        "telegram_webhook_url": "https://ops.example/telegram/webhook",
        "telegram_webhook_secret": "s3cret-token",
        "telegram_viewers": str(viewer),
    }
    api = await replicas(ProcessRole.API, "api", telegram=fake_telegram, **hook)
    sender = await replicas(ProcessRole.BOT, "bot", telegram=fake_telegram, **hook)
    await eventually(lambda: sender.duties.active)
    # The sending process registered the webhook; nobody polls.
    assert fake_telegram.webhook_url == "https://ops.example/telegram/webhook"
    assert fake_telegram.calls_to("getUpdates") == []

    update = fake_telegram.message_update(viewer, viewer, "/whoami")
    async with client(api, replicas.bots["api"]) as http:
        refused = await http.post(
            "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "no"}
        )
        assert refused.status_code == 401
        taken = await http.post(
            "/telegram/webhook",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"},
        )
        assert taken.status_code == 200, taken.text

    # The API replica handled it and queued the reply in Redis; the bot process sent it, once.
    [reply] = await fake_telegram.wait_for_call("sendMessage", timeout=10)
    assert reply.params["chat_id"] == viewer
    assert "viewer" in reply.params["text"]
    # Sent once: the reply to a later update (one chat's replies keep their order) is the
    # only other message.
    marker = fake_telegram.message_update(viewer, viewer, "/whoami")
    async with client(api, replicas.bots["api"]) as http:
        taken = await http.post(
            "/telegram/webhook",
            json=marker,
            headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"},
        )
        assert taken.status_code == 200, taken.text
    await fake_telegram.wait_for_call("sendMessage", count=2, timeout=10)
    assert len(fake_telegram.calls_to("sendMessage")) == 2


async def test_only_one_worker_leads_and_a_standby_takes_over(replicas: Replicas) -> None:
    first = await replicas(ProcessRole.WORKER, "worker1")
    await eventually(lambda: first.duties.active)
    second = await replicas(ProcessRole.WORKER, "worker2")

    def standby_saw_the_leader() -> bool:
        """The standby has tried for the lease and found it held (its health names the holder)."""
        redis_health = second.health.snapshot().components.get("redis")
        detail = redis_health.detail if redis_health else ""
        return "worker lease:" in detail and "lease: nobody" not in detail

    await eventually(standby_saw_the_leader)
    assert first.duties.active and not second.duties.active
    assert second.standing_by and second.scheduler.held

    term = first.lease.term if first.lease else None
    await first.close()  # a clean stop hands the lease over at the standby's next attempt
    await eventually(lambda: second.duties.active, timeout=5)
    assert second.lease is not None and second.lease.term is not None and term is not None
    assert second.lease.term > term
    assert not second.scheduler.held


async def test_halt_through_an_api_replica_stops_the_worker(replicas: Replicas) -> None:
    worker = await replicas(ProcessRole.WORKER, "worker")
    api = await replicas(ProcessRole.API, "api")
    await eventually(lambda: worker.duties.active)
    async with client(api) as http:
        halted = await http.post(
            "/api/v1/halt",
            json={"confirm": True, "reason": "test"},
            headers=auth(ADMIN_TOKEN),
        )
        assert halted.status_code == 200, halted.text
    await eventually(lambda: worker.trading.state().halted, timeout=5)


async def test_redis_loss_read_only_spool_and_replay(
    replicas: Replicas, redis: RedisServer
) -> None:
    plane = await replicas(ProcessRole.ALL, "all")
    assert plane.redis_watch is not None
    async with client(plane) as http:
        before = await post_alert(http, "BeforeTheOutage")
        assert before.status_code == 200
        incident_id = before.json()["incidents"][0]

        redis.kill()
        await eventually(lambda: plane.redis_watch and plane.redis_watch.down, timeout=5)
        metrics = plane.metrics.render().decode()
        assert 'redis_status{redis_status="down"} 1.0' in metrics

        # Read-only: no new orders; reads of the engine are still answered.
        with pytest.raises(OrderRejected, match="read-only"):
            await plane.trading.place_order(
                "momentum", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
            )
        cores = await http.get("/api/v1/cores", headers=auth(OPERATOR_TOKEN))
        assert cores.status_code == 200
        await eventually(
            lambda: plane.health.snapshot().components["store"].status.value == "degraded"
        )
        health = await http.get("/healthz")
        assert health.status_code == 200  # degraded, not down: nobody restarts us over it

        # What must not be lost is kept locally.
        during = await post_alert(http, "DuringTheOutage")
        assert during.status_code == 200, during.text
        assert during.json()["spooled"] is True
        acked = await http.post(
            f"/api/v1/incidents/{incident_id}/ack", headers=auth(OPERATOR_TOKEN)
        )
        assert acked.status_code == 202, acked.text
        assert acked.json()["error"]["code"] == "queued"
        assert await plane.redis_watch.spool.depth() == 3  # RedisDown, the alert, the ack

        redis.start()
        await eventually(lambda: not plane.redis_watch.down, timeout=10)
        assert plane.trading.state().read_only is False
        assert await plane.redis_watch.spool.depth() == 0
        incidents = {i.title: i for i in await plane.incidents.list(limit=50)}
        assert incidents["BeforeTheOutage"].state is IncidentState.ACKNOWLEDGED
        assert incidents["DuringTheOutage"].state is IncidentState.TRIGGERED
        assert incidents["RedisDown"].state is IncidentState.RESOLVED
        assert 'redis_status{redis_status="ok"} 1.0' in plane.metrics.render().decode()


async def test_killing_redis_mid_stream_loses_no_acknowledged_alert(
    replicas: Replicas, redis: RedisServer
) -> None:
    plane = await replicas(ProcessRole.ALL, "all")
    assert plane.redis_watch is not None
    accepted: list[str] = []
    async with client(plane) as http:

        async def stream() -> None:
            for n in range(120):
                name = f"Stream{n:03d}"
                if (await post_alert(http, name, n=str(n))).status_code == 200:
                    accepted.append(name)
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(stream())
        await eventually(lambda: len(accepted) >= 30)
        redis.kill()
        await eventually(lambda: len(accepted) >= 70, timeout=20)
        redis.start()
        await sender
        await eventually(lambda: not plane.redis_watch.down, timeout=10)
        assert await plane.redis_watch.spool.depth() == 0
    stored = [
        i.title for i in await plane.incidents.list(limit=500) if i.title.startswith("Stream")
    ]
    assert len(accepted) == 120
    assert sorted(stored) == sorted(accepted)  # every 2xx alert is there, and only once


async def test_the_ops_chat_hears_of_redis_loss_and_return_directly(
    replicas: Replicas, redis: RedisServer, fake_telegram: FakeTelegram
) -> None:
    plane = await replicas(ProcessRole.ALL, "all", telegram=fake_telegram)
    await eventually(lambda: plane.duties.active)
    redis.kill()
    [down] = await fake_telegram.wait_for(
        lambda: (
            [c for c in fake_telegram.calls_to("sendMessage") if "unreachable" in c.params["text"]]
            or None
        )
    )
    assert down.params["chat_id"] == OPS
    assert "READ-ONLY" in down.params["text"]
    redis.start()
    [back] = await fake_telegram.wait_for(
        lambda: (
            [
                c
                for c in fake_telegram.calls_to("sendMessage")
                if "Redis is back" in c.params["text"]
            ]
            or None
        ),
        timeout=15,
    )
    assert "replayed 1 alert(s)" in back.params["text"]  # the RedisDown alert itself
    # The RedisDown incident, replayed into Redis, is opened and resolved in the history.
    incidents = {i.title: i for i in await plane.incidents.list(limit=20)}
    assert incidents["RedisDown"].state is IncidentState.RESOLVED


async def test_redis_figures_on_metrics_and_healthz(replicas: Replicas) -> None:
    plane = await replicas(ProcessRole.WORKER, "worker")
    await eventually(lambda: plane.duties.active)
    detail = await eventually(
        lambda: (
            "worker lease: this replica" in plane.health.snapshot().components["redis"].detail
            and plane.health.snapshot().components["redis"].detail
        )
    )
    assert "ping " in detail and "term 1" in detail
    text = plane.metrics.render().decode()
    for needle in (
        'lease_leader{lease="worker"} 1.0',
        'lease_term{lease="worker"} 1.0',
        "redis_ping_seconds_count",
        'spool_depth{kind="writes"} 0.0',
        'redis_status{redis_status="ok"} 1.0',
    ):
        assert needle in text, needle


async def test_flag_change_based_on_a_stale_version_is_refused_across_replicas(
    replicas: Replicas,
) -> None:
    api1 = await replicas(ProcessRole.API, "api1")
    api2 = await replicas(ProcessRole.API, "api2")
    path = "/api/v1/flags/LLM_RATE_LIMITED"
    async with client(api1) as one, client(api2) as two:
        read = (await two.get(path, headers=auth(OPERATOR_TOKEN))).json()["version"]
        first = await one.put(path, json={"value": True}, headers=auth(OPERATOR_TOKEN))
        assert first.status_code == 200, first.text
        assert first.json()["version"] == read + 1
        # api2 would silently undo api1's change; it is refused, naming who changed it.
        stale = await two.put(
            path, json={"value": False, "expected_version": read}, headers=auth(OPERATOR_TOKEN)
        )
        assert stale.status_code == 409, stale.text
        assert "changed meanwhile by api:operator" in stale.json()["error"]["message"]
        assert (await one.get(path, headers=auth(OPERATOR_TOKEN))).json()["value"] is True
        fresh = (await two.get(path, headers=auth(OPERATOR_TOKEN))).json()
        assert (fresh["value"], fresh["version"]) == (True, read + 1)  # adopted on the refusal
        again = await two.put(
            path,
            json={"value": False, "expected_version": fresh["version"]},
            headers=auth(OPERATOR_TOKEN),
        )
        assert again.status_code == 200, again.text


async def test_halt_on_one_replica_blocks_the_next_order_on_another_at_once(
    replicas: Replicas,
) -> None:
    api1 = await replicas(ProcessRole.API, "api1")
    api2 = await replicas(ProcessRole.API, "api2")
    async with client(api1) as one:
        halted = await one.post(
            "/api/v1/halt", json={"confirm": True, "reason": "test"}, headers=auth(OPERATOR_TOKEN)
        )
        assert halted.status_code == 200, halted.text
    with pytest.raises(OrderRejected, match="halted"):  # before any 2 s reload of shared state
        await api2.trading.place_order(
            "manual", Intent(symbol="BTC/USDT", side=OrderSide.BUY, amount=0.001)
        )
    async with client(api2) as two:
        refused = await two.post(
            "/api/v1/resume", json={"confirm": True}, headers=auth(OPERATOR_TOKEN)
        )
        assert refused.status_code == 403, refused.text
        resumed = await two.post(
            "/api/v1/resume", json={"confirm": True}, headers=auth(ADMIN_TOKEN)
        )
        assert resumed.status_code == 200, resumed.text
