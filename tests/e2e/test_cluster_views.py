"""The split deployment seen from any replica (issue 19, points 3 and 4), on a real redis-server.

An ``api`` and a ``worker`` control plane run in this process; the ``bot`` is a real ``lunia bot``
process talking to the loopback Telegram fake, so it can be killed the way production loses one.
The api replica must report the whole deployment from shared state: the bot and the worker alive
and leading, the venue health and core ticks the worker observed, the backup the worker took; the
worker's scheduler posts the daily checklist, which the bot process sends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.control_plane import JOB_CHECKLIST, ControlPlane
from core.models import Actor, ActorKind, Role
from core.platform.roles import ProcessRole
from tests.conftest import ADMIN_TOKEN, TOKENS, VIEWER_TOKEN, WEBHOOK_TOKEN, SettingsFactory, auth
from tests.fakes.telegram import FakeTelegram
from tests.support.services import RedisServer, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # a real lunia bot process and a real Redis

LUNIA = str(Path(sys.executable).with_name("lunia"))
OPS = -1001000000001
BEAT = 0.3  # HEARTBEAT_SECONDS: a process is absent 3 missed beats (0.9 s) after its last
SIGNING = "9f1c2e7a4b5d6e8f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f"
CALLBACKS = "shared-signing-key-for-all-replicas"
OPS_CLI = Actor(kind=ActorKind.CLI, id="ops", name="ops", role=Role.OPERATOR)


class Deployment:
    """The three roles over one Redis: api and worker in process, the bot as its own process."""

    def __init__(
        self,
        make_settings: SettingsFactory,
        tmp_path: Path,
        redis: RedisServer,
        telegram: FakeTelegram,
    ) -> None:
        self._make_settings = make_settings
        self._tmp_path = tmp_path
        self._redis = redis
        self.telegram = telegram
        self.planes: list[ControlPlane] = []
        self.bot: subprocess.Popen[bytes] | None = None
        self.bot_log = tmp_path / "bot.log"
        self.bot_port = free_port()

    def common(self) -> dict[str, Any]:
        return {
            "enable_redis": True,
            "redis_url": self._redis.url,
            "lease_ttl_seconds": 5,  # a loaded 2-core machine must not lose it mid-test
            "heartbeat_seconds": BEAT,
            "core_tick_seconds": 1.0,  # fresh = ticked within 3 s
            "venue_probe_seconds": 0.3,
            "backup_dir": self._tmp_path / "backups",  # the shared volume of docker-compose
            "backup_signing_key": SIGNING,
            "callback_signing_key": CALLBACKS,
            "telegram_bot_token": self.telegram.token,
            "telegram_api_base": self.telegram.base,
            "telegram_ops_chat_id": OPS,
            "frontend_signal_health_enabled": True,
        }

    async def plane(self, role: ProcessRole) -> ControlPlane:
        settings = self._make_settings(lunia_state_dir=self._tmp_path / role.value, **self.common())
        plane = ControlPlane(settings, role=role)
        await plane.start()
        self.planes.append(plane)
        return plane

    def start_bot(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_"))}
        env.update({k.upper(): str(v) for k, v in self.common().items()})
        env.update(
            LUNIA_STATE_DIR=str(self._tmp_path / "bot"),
            API_PORT=str(self.bot_port),
            API_TOKENS=TOKENS,
            ALERT_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
            HEALTH_CHECK_INTERVAL_SECONDS="0.2",
        )
        with self.bot_log.open("wb") as out:
            self.bot = subprocess.Popen(  # noqa: S603
                [LUNIA, "bot"], cwd=self._tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def bot_healthz(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                body: dict[str, Any] = (
                    await http.get(f"http://127.0.0.1:{self.bot_port}/healthz")
                ).json()
        except (httpx.TransportError, ValueError):
            return None
        return body

    def kill_bot(self) -> None:
        if self.bot is not None and self.bot.poll() is None:
            self.bot.kill()
            self.bot.wait(10)

    async def close(self) -> None:
        self.kill_bot()
        for plane in reversed(self.planes):
            await plane.close()


@pytest.fixture
async def deployment(
    make_settings: SettingsFactory,
    tmp_path: Path,
    redis_server: RedisServer,
    fake_telegram: FakeTelegram,
) -> AsyncIterator[Deployment]:
    started = Deployment(make_settings, tmp_path, redis_server, fake_telegram)
    yield started
    await started.close()


def client(plane: ControlPlane) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(plane))
    return httpx.AsyncClient(transport=transport, base_url="http://lunia.test")


def sample(plane: ControlPlane, name: str, **labels: str) -> float | None:
    return plane.metrics.registry.get_sample_value(name, labels)


async def test_any_replica_reports_the_whole_split_deployment_from_shared_state(
    deployment: Deployment, fake_telegram: FakeTelegram
) -> None:
    worker = await deployment.plane(ProcessRole.WORKER)
    api = await deployment.plane(ProcessRole.API)
    deployment.start_bot()
    await eventually(lambda: worker.duties.active, what="the worker leads")

    async def api_health() -> dict[str, Any]:
        async with client(api) as http:
            response = await http.get("/healthz")
        body: dict[str, Any] = response.json()
        return body

    async def all_ok() -> dict[str, Any] | None:
        body = await api_health()
        parts = body["components"]
        return body if parts["telegram"]["status"] == parts["worker"]["status"] == "ok" else None

    # /healthz of the api replica: the bot and the worker run elsewhere, and both are fine.
    try:  # a cold `lunia bot` imports aiogram first: seconds on a busy 2-core machine
        body = await eventually(all_ok, timeout=60, what="api /healthz sees bot and worker")
    except AssertionError:
        raise AssertionError(deployment.bot_log.read_text()[-3000:]) from None
    assert body["status"] == "ok", body
    assert "polls and sends Telegram" in body["components"]["telegram"]["detail"]
    assert worker.instance in body["components"]["worker"]["detail"]
    assert sample(api, "cluster_processes", process_role="bot") == 1
    assert sample(api, "cluster_leaders", process_role="bot") == 1
    assert sample(api, "cluster_leaders", process_role="worker") == 1
    assert sample(api, "cluster_processes", process_role="api") == 1

    # Venue health and core ticks: probed and ticked by the worker, shown by the api replica.
    probed = await eventually(
        lambda: next(v for v in worker.venues.status().items if v.active).last_probe_at,
        what="the worker probes the venues",
    )
    async with client(api) as http:

        async def venue_on_api() -> dict[str, Any] | None:
            # The api's view follows the worker's beats: wait for the probe seen above (or a
            # later one); an earlier one may still be showing for up to a beat.
            venues = (await http.get("/api/v1/venues", headers=auth(VIEWER_TOKEN))).json()
            active: dict[str, Any] = next(v for v in venues["items"] if v["active"])
            shown = active["last_probe_at"]
            fresh = shown is not None and datetime.fromisoformat(shown) >= probed
            return active if fresh else None

        active = await eventually(venue_on_api, what="/venues on the api shows the probe")
        assert active["healthy"] is True and active["name"] == "binance"
        assert sample(api, "venue_healthy", venue="binance") == 1
        # The api replica never ticks a core itself, yet Signal Health sees them fresh.
        assert all(c.last_run_at is None for c in api.trading.cores())
        report = (await http.get("/api/v1/signal-health", headers=auth(VIEWER_TOKEN))).json()
        running = [c for c in report["cores"] if c["freshness"] != "off"]
        assert running and all(c["freshness"] == "fresh" for c in running), report["cores"]
        assert all(v["healthy"] is not None for v in report["venues"] if v["role"] != "other")
        # /api/v1/cores (and the bot's /cores) list the cores as the worker runs them.
        cores = (await http.get("/api/v1/cores", headers=auth(VIEWER_TOKEN))).json()["items"]
        assert any(c["enabled"] and c["last_run_at"] is not None for c in cores), cores
        status = (await http.get("/api/v1/status", headers=auth(VIEWER_TOKEN))).json()
        [processes] = [line for line in status["lines"] if line["label"] == "processes"]
        assert processes["ok"] is True
        assert "bot×1 (leader " in processes["value"] and "worker×1 (leader " in processes["value"]
        assert "telegram" not in status["unhealthy"] and "worker" not in status["unhealthy"]

        # The backup the worker takes is the api replica's last backup (one shared catalog).
        taken = await worker.backups.create(OPS_CLI)
        await eventually(
            lambda: api.backups.status().last_success_id == taken.id,
            what="the api replica sees the worker's backup",
        )
        checklist = (await http.get("/api/v1/checklist", headers=auth(VIEWER_TOKEN))).json()
        lines = {i["name"]: i for i in checklist["items"]}
        assert taken.id in lines["backups"]["reason"] and "0 min ago" in lines["backups"]["reason"]
        assert lines["signals: cores"]["mark"] == "ok", lines["signals: cores"]
        assert lines["signals: venue"]["mark"] == "ok", lines["signals: venue"]
        assert lines["health: telegram"]["mark"] == "ok"

    # The bot replica also dates the last backup from the catalog, not from its own backups.
    bot_backups = await eventually(
        lambda: _bot_component(deployment, "backups"), what="the bot replica's /healthz"
    )
    assert taken.created_at.isoformat() in bot_backups["detail"], bot_backups

    # The daily checklist: a job of the worker's scheduler (held on the other roles), queued in
    # the shared outbox and sent by the bot process.
    assert JOB_CHECKLIST in [j.name for j in worker.scheduler.jobs()]
    assert api.scheduler.held and not worker.scheduler.held
    await worker.scheduler.run_now(JOB_CHECKLIST)
    [sent] = await fake_telegram.wait_for_call("sendMessage", timeout=10)
    assert sent.params["chat_id"] == OPS
    assert "Daily checklist" in sent.params["text"]
    assert "signals: cores" in sent.params["text"] and taken.id in sent.params["text"]

    # The bot process dies without a word (SIGKILL): its beats stop, and within three missed
    # beats the api replica reports it, with the reason, while the worker stays fine.
    deployment.kill_bot()

    async def bot_gone() -> dict[str, Any] | None:
        body = await api_health()
        return body if body["components"]["telegram"]["status"] == "degraded" else None

    killed_at = time.monotonic()
    body = await eventually(bot_gone, timeout=10, what="api /healthz notices the dead bot")
    assert time.monotonic() - killed_at < BEAT * 3 + 2
    assert body["status"] == "degraded"
    assert "no live bot process" in body["components"]["telegram"]["detail"]
    assert "lunia bot" in body["components"]["telegram"]["detail"]
    assert body["components"]["worker"]["status"] == "ok"
    await eventually(  # exported at the next beat
        lambda: sample(api, "cluster_leaders", process_role="bot") == 0,
        timeout=2,
        what="the metric",
    )
    async with client(api) as http:
        status = (await http.get("/api/v1/status", headers=auth(ADMIN_TOKEN))).json()
    assert "no live bot process" in status["unhealthy"]["telegram"]


async def _bot_component(deployment: Deployment, name: str) -> dict[str, Any] | None:
    body = await deployment.bot_healthz()
    if body is None:
        return None
    component: dict[str, Any] | None = body["components"].get(name)
    if component is None or "last backup" not in component["detail"]:
        return None
    return component if "never" not in component["detail"] else None


async def test_the_worker_stopping_leaves_the_api_replica_degraded_with_the_reason(
    deployment: Deployment,
) -> None:
    worker = await deployment.plane(ProcessRole.WORKER)
    api = await deployment.plane(ProcessRole.API)
    await eventually(lambda: worker.duties.active, what="the worker leads")
    await eventually(
        lambda: api.health.snapshot().components["worker"].status.value == "ok",
        what="the api sees the worker",
    )
    await worker.close()  # a clean stop drops its heartbeat: absent at the next read
    await eventually(
        lambda: api.health.snapshot().components["worker"].status.value == "degraded",
        timeout=5,
        what="the api notices the worker is gone",
    )
    detail = api.health.snapshot().components["worker"].detail
    assert "no live worker process" in detail and "lunia worker" in detail
    await eventually(
        lambda: sample(api, "cluster_processes", process_role="worker") == 0, timeout=2
    )
