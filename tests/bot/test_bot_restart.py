"""Killed with messages queued, ``lunia run`` delivers every one of them once after a restart,
on the SQLite store and on the Redis store alike (issue 16 point 7)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.bot.conftest import ADMIN, OPS
from tests.conftest import WEBHOOK_TOKEN, RedisFactory
from tests.fakes.telegram import FakeTelegram
from tests.support.payloads import am_alert, am_payload
from tests.support.services import free_port

pytestmark = pytest.mark.slow  # lunia run processes, killed and restarted

LUNIA = str(Path(sys.executable).with_name("lunia"))


def start(
    tmp_path: Path, fake: FakeTelegram, port: int, redis_url: str | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_"))}
    env.update(
        LUNIA_STATE_DIR=str(tmp_path / "var"),
        API_PORT=str(port),
        ALERT_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE=fake.base,
        TELEGRAM_OPS_CHAT_ID=str(OPS),
        TELEGRAM_ADMINS=str(ADMIN),
        ENABLE_REDIS="false",
    )
    if redis_url is not None:
        # The killed leader's lease lapses after its TTL; the restarted process then leads.
        env.update(ENABLE_REDIS="true", REDIS_URL=redis_url, LEASE_TTL_SECONDS="2")
    return subprocess.Popen(
        [LUNIA, "run"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
            try:
                if (await client.get(f"{url}/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("lunia run did not become ready")


async def outbox_empty(url: str) -> None:
    """Wait until the instance's ``/metrics`` shows no message waiting in the telegram outbox."""
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            metrics = (await client.get(f"{url}/metrics", timeout=1)).text
            if 'outbox_depth{channel="telegram"} 0.0' in metrics.splitlines():
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the telegram outbox did not empty")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_queued_messages_survive_kill_9(
    tmp_path: Path, kind: str, make_redis: RedisFactory
) -> None:
    redis_url = make_redis().url if kind == "redis" else None
    async with FakeTelegram() as fake:
        fake.set_offline(True, mode="502")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        first = start(tmp_path, fake, port, redis_url)
        try:
            await wait_healthy(url, first)
            # Three alert groups (one notification each): three incidents, three messages.
            async with httpx.AsyncClient() as client:
                for i in range(3):
                    response = await client.post(
                        f"{url}/api/v1/alerts/alertmanager",
                        json=am_payload(am_alert(f"Queued{i}", fingerprint=f"q{i}")),
                        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
                    )
                    assert response.status_code == 200
            await fake.wait_for(
                lambda: (
                    True if any(c.status == 502 for c in fake.calls_to("sendMessage")) else None
                ),
                timeout=10,
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            if first.stderr:
                first.stderr.close()
        assert not fake.calls_to("sendMessage", ok=True)

        fake.set_offline(False)
        second = start(tmp_path, fake, port, redis_url)
        try:
            await wait_healthy(url, second)

            def delivered() -> list[str] | None:
                texts = [
                    str(c.params.get("text", "")) for c in fake.calls_to("sendMessage", ok=True)
                ]
                titles = [t for t in texts if "Queued" in t]
                return titles if len(titles) >= 3 else None

            await fake.wait_for(delivered, timeout=30)
            # Once the outbox is empty nothing is left that could be sent a second time.
            await outbox_empty(url)
            titles = delivered() or []
            for i in range(3):
                assert sum(f"Queued{i}" in t for t in titles) == 1, titles
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(timeout=20)
            if second.stderr:
                second.stderr.close()
        assert code == 0
