"""The start path stays light: ``lunia run`` is ready without importing what only some requests
need (matplotlib for charts, the openai SDK, ccxt, boto3), nor waiting for the bot: aiogram is
imported in the background once the API serves. The bot polls soon after, and what it did not
need to start is still not imported then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter, so imports are counted from nothing

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("matplotlib", "openai", "ccxt", "boto3", "botocore")

# Runs api.runner.serve (what `lunia run` runs) with the bot on against the fake Bot API (which
# holds getMe until the process is ready, so the bot cannot be up by then) and an LLM
# configured; reports which top-level packages were loaded at ready and once the bot polls.
SCRIPT = """
import asyncio, json, os, signal, sys
from pathlib import Path

import httpx

from api.runner import serve
from core.config.settings import Settings
from tests.fakes.telegram import FakeTelegram
from tests.support.services import free_port


async def main() -> None:
    async with FakeTelegram() as fake:
        port = free_port()
        settings = Settings(
            _env_file=None,
            lunia_state_dir=Path(sys.argv[1]),
            api_port=port,
            telegram_bot_token=fake.token,
            telegram_api_base=fake.base,
            telegram_ops_chat_id=-1001000000001,
            telegram_admins="101",
            openai_api_key="sk-test",
            openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        )
        fake.hold("getMe")
        server = asyncio.create_task(serve(settings))
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    ready = await client.get(f"http://127.0.0.1:{port}/readyz")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise SystemExit("not ready within 30 s")
            at_ready = {
                "loaded": sorted({name.partition(".")[0] for name in sys.modules}),
                "calls": [call.method for call in fake.calls],
            }
            fake.release("getMe")
            await fake.wait_for_call("getUpdates", timeout=60)
        polling = {
            "loaded": sorted({name.partition(".")[0] for name in sys.modules}),
            "calls": [call.method for call in fake.calls],
        }
        os.kill(os.getpid(), signal.SIGTERM)  # serve drains and returns 0
        code = await server
        print(json.dumps({"ready": at_ready, "polling": polling, "exit": code}))


asyncio.run(main())
"""


def test_run_is_ready_before_the_bot_and_light_until_first_use(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_", "OPENAI_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "var")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["exit"] == 0
    # Ready while Telegram had not answered the bot: the start path does not wait for it.
    assert "getUpdates" not in report["ready"]["calls"]
    assert [name for name in HEAVY if name in report["ready"]["loaded"]] == []
    # Then the bot came up for real: aiogram is loaded, it talked to Telegram, and polls...
    assert "aiogram" in report["polling"]["loaded"]
    assert {"getMe", "setMyCommands", "deleteWebhook"} <= set(report["polling"]["calls"])
    # ...still without what only charts, the LLM, venues with keys and S3 backups need.
    assert [name for name in HEAVY if name in report["polling"]["loaded"]] == []
