"""The bot starts after the process is ready (bot/launcher.py), and nothing is lost meanwhile:
``lunia run`` answers ``/readyz`` and ingests alerts while Telegram has not even answered getMe,
says so in ``/healthz``, delivers what came in once the bot is up, takes webhook updates while
the bot loads, and shuts down cleanly in the middle of it all (issue 18, "start fast")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from bot.launcher import TelegramLauncher
from core.control_plane import ControlPlane
from core.platform.roles import ProcessRole
from tests.bot.conftest import ADMIN, OPS
from tests.conftest import WEBHOOK_TOKEN, SettingsFactory
from tests.fakes.telegram import FakeTelegram
from tests.support.payloads import am_alert, am_payload
from tests.support.services import RedisServer, free_port
from tests.support.waiting import eventually

LUNIA = str(Path(sys.executable).with_name("lunia"))
SECRET = "webhook-secret-for-tests"


class Run:
    """``lunia run`` with the bot on against the fake Bot API, as a real process."""

    def __init__(
        self, tmp_path: Path, fake: FakeTelegram, port: int | None = None, **env: str
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_"))}
        full.update(
            LUNIA_STATE_DIR=str(tmp_path / "var"),
            API_PORT=str(self.port),
            ALERT_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
            TELEGRAM_BOT_TOKEN=fake.token,
            TELEGRAM_API_BASE=fake.base,
            TELEGRAM_OPS_CHAT_ID=str(OPS),
            TELEGRAM_ADMINS=str(ADMIN),
            **env,
        )
        self.log = tmp_path / "lunia.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [LUNIA, "run"], cwd=tmp_path, env=full, stdout=out, stderr=subprocess.STDOUT
            )

    async def ready(self) -> None:
        """Wait for the first 200 from ``/readyz``."""

        async def answered() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answered, timeout=60, what="/readyz answers 200")

    async def telegram_health(self) -> dict[str, Any]:
        """The ``telegram`` component of ``/healthz``."""
        async with httpx.AsyncClient(timeout=2) as client:
            component: dict[str, Any] = (await client.get(f"{self.url}/healthz")).json()[
                "components"
            ]["telegram"]
        return component

    async def stop(self) -> tuple[int, str]:
        """SIGTERM, and the exit code and log once it has exited."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 30)
        return code, self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def runs(tmp_path: Path) -> AsyncIterator[list[Run]]:
    """Processes started by a test, killed at teardown if it did not stop them."""
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


@pytest.mark.slow
async def test_ready_and_ingesting_while_telegram_has_not_answered_then_the_alert_reaches_chat(
    tmp_path: Path, fake_telegram: FakeTelegram, runs: list[Run]
) -> None:
    fake_telegram.hold("getMe")  # a slow Telegram: the bot cannot come up until released
    run = Run(tmp_path, fake_telegram)
    runs.append(run)
    await run.ready()
    # Ready is the API's: the bot has not polled, and health says it is on its way.
    assert not fake_telegram.calls_to("getUpdates")
    component = await run.telegram_health()
    assert component["status"] == "degraded"
    assert component["detail"].startswith("starting"), component
    async with httpx.AsyncClient(timeout=5) as client:
        posted = await client.post(
            f"{run.url}/api/v1/alerts/alertmanager",
            json=am_payload(am_alert("StartupAlert", fingerprint="s1")),
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        )
    assert posted.status_code == 200, posted.text

    await fake_telegram.wait_for_call("getMe", timeout=60)  # loaded, and asking Telegram
    component = await eventually(
        lambda: _starting_or_none(run), timeout=15, what="health while connecting"
    )
    assert not fake_telegram.calls_to("getUpdates")
    fake_telegram.release("getMe")
    await fake_telegram.wait_for_call("getUpdates", timeout=30)

    def alert_messages() -> list[str]:
        texts = [str(c.params.get("text", "")) for c in fake_telegram.calls_to("sendMessage")]
        return [t for t in texts if "StartupAlert" in t]

    await eventually(alert_messages, timeout=30, what="the alert reaches the ops chat")
    assert [m.chat_id for m in fake_telegram.messages(OPS) if "StartupAlert" in (m.text or "")]
    component = await eventually(
        lambda: _ok_or_none(run), timeout=15, what="/healthz telegram ok once the bot polls"
    )
    assert "outbox" in component["detail"]
    code, log = await run.stop()
    assert code == 0, log[-3000:]
    assert len(alert_messages()) == 1  # once, not again at the drain


async def _starting_or_none(run: Run) -> dict[str, Any] | None:
    component = await run.telegram_health()
    return component if component["detail"].startswith("starting") else None


async def _ok_or_none(run: Run) -> dict[str, Any] | None:
    component = await run.telegram_health()
    return component if component["status"] == "ok" else None


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["loading", "connecting"])
async def test_sigterm_during_bot_start_up_exits_0_without_a_traceback(
    tmp_path: Path, fake_telegram: FakeTelegram, runs: list[Run], moment: str
) -> None:
    fake_telegram.hold("getMe")
    run = Run(tmp_path, fake_telegram)
    runs.append(run)
    await run.ready()
    if moment == "connecting":  # the bot is built and its start waits on Telegram
        await fake_telegram.wait_for_call("getMe", timeout=60)
    # else: at once, while aiogram is still being imported in the background
    code, log = await run.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "stopped cleanly" in log
    assert not fake_telegram.calls_to("getUpdates")


@pytest.mark.slow
async def test_a_webhook_update_arriving_while_the_bot_loads_is_handled(
    tmp_path: Path, fake_telegram: FakeTelegram, runs: list[Run]
) -> None:
    port = free_port()
    webhook = f"http://127.0.0.1:{port}/telegram/webhook"
    # As the previous process left it: Telegram already posts updates to this URL.
    async with httpx.AsyncClient() as client:
        set_earlier = await client.post(
            f"{fake_telegram.base}/bot{fake_telegram.token}/setWebhook",
            data={"url": webhook, "secret_token": SECRET},
        )
    assert set_earlier.json()["ok"] is True
    fake_telegram.hold("getMe")
    run = Run(
        tmp_path,
        fake_telegram,
        port,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_URL=webhook,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )
    runs.append(run)
    await run.ready()
    update = fake_telegram.push_message(ADMIN, ADMIN, "/whoami")
    status = await fake_telegram.deliver_to_webhook(update, timeout=30)
    assert status == 200  # waited for the bot rather than refusing

    def replies() -> list[str]:
        return [m.text or "" for m in fake_telegram.messages(ADMIN) if "You are" in (m.text or "")]

    await eventually(replies, timeout=30, what="the bot answers the webhook update")
    assert "role admin" in replies()[0]
    fake_telegram.release("getMe")
    await fake_telegram.wait_for_call("setWebhook", count=2, timeout=30)  # ours, then the bot's
    code, log = await run.stop()
    assert code == 0, log[-3000:]


async def test_a_webhook_update_before_the_bot_is_built_gets_a_503_telegram_retries(
    make_settings: SettingsFactory, fake_telegram: FakeTelegram
) -> None:
    settings = make_settings(
        telegram_bot_token=fake_telegram.token,
        telegram_api_base=fake_telegram.base,
        telegram_ops_chat_id=OPS,
        telegram_admins=[ADMIN],
        telegram_mode="webhook",
        telegram_webhook_url="https://ops.example/telegram/webhook",
        telegram_webhook_secret=SECRET,
    )
    plane = ControlPlane(settings)
    launcher = TelegramLauncher(plane, webhook_wait=0.2)
    plane.duties.add("telegram", launcher.start, launcher.stop)
    await plane.start()
    try:
        app = create_app(plane, telegram=launcher)
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            update = fake_telegram.message_update(ADMIN, ADMIN, "/whoami")
            early = await client.post("/telegram/webhook", json=update, headers=headers)
            assert early.status_code == 503
            assert early.json()["error"]["code"] == "unavailable"
            assert "starting" in early.json()["error"]["message"]
            launcher.load()
            await fake_telegram.wait_for_call("setWebhook", timeout=15)  # built and started
            retried = await client.post("/telegram/webhook", json=update, headers=headers)
            assert retried.status_code == 200
        await eventually(
            lambda: [m for m in fake_telegram.messages(ADMIN) if "role admin" in (m.text or "")],
            what="the retried update is answered",
        )
    finally:
        await plane.close()
        await launcher.close()


async def test_other_replicas_report_a_leading_bot_that_is_still_starting_as_starting(
    make_settings: SettingsFactory, fake_telegram: FakeTelegram, redis_server: RedisServer
) -> None:
    shared: dict[str, Any] = {
        "enable_redis": True,
        "redis_url": redis_server.url,
        "telegram_bot_token": fake_telegram.token,
        "telegram_api_base": fake_telegram.base,
        "telegram_ops_chat_id": OPS,
        "telegram_admins": [ADMIN],
        "heartbeat_seconds": 0.2,
    }
    fake_telegram.hold("getMe")
    bot_plane = ControlPlane(make_settings(**shared), role=ProcessRole.BOT)
    launcher = TelegramLauncher(bot_plane)
    bot_plane.duties.add("telegram", launcher.start, launcher.stop)
    api = ControlPlane(make_settings(**shared), role=ProcessRole.API)
    await bot_plane.start()
    await api.start()
    try:
        await eventually(lambda: bot_plane.lease and bot_plane.lease.is_leader, what="bot leads")
        launcher.load()
        await fake_telegram.wait_for_call("getMe", timeout=15)

        async def seen() -> str:
            await api.cluster.tick()
            health = await api.cluster.bot_health()
            return f"{health.status.value}: {health.detail}"

        leads = f"degraded: {bot_plane.instance} leads; its bot: starting"
        await eventually(
            lambda: _startswith(seen(), leads), what="api sees the leading bot starting"
        )
        fake_telegram.release("getMe")
        await fake_telegram.wait_for_call("getUpdates", timeout=15)
        up = f"ok: {bot_plane.instance} polls and sends Telegram"
        await eventually(lambda: _startswith(seen(), up), what="api sees the bot up")
    finally:
        await api.close()
        await bot_plane.close()
        await launcher.close()


async def _startswith(text: Awaitable[str], prefix: str) -> bool:
    return (await text).startswith(prefix)
