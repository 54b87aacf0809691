"""Alert storm → Telegram: how many Bot API calls, at what peak rate, delivered how fast.

Drives the real bot (aiogram, outbox, pacing, digest) against the loopback fake Bot API with
Telegram's flood limits switched on (a 429 there means we broke a limit). Default storm: 2,000
alerts over 200 incidents within 10 s, in webhook-sized batches, to one ops group.

    .venv/bin/python bench/telegram_storm.py [--alerts 2000] [--incidents 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import TelegramBot  # noqa: E402
from core.config.settings import Settings  # noqa: E402
from core.control_plane import ControlPlane  # noqa: E402
from core.incidents.receivers import parse_alertmanager  # noqa: E402
from tests.fakes.telegram import FakeTelegram, FloodLimits  # noqa: E402
from tests.support.payloads import am_alert, am_payload  # noqa: E402

OPS = -1001000000001


def peak(times: list[float], window: float) -> int:
    """Most calls inside any sliding window of ``window`` seconds."""
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def main(alerts: int, incidents: int, seconds: float) -> None:
    async with FakeTelegram(flood_limits=FloodLimits()) as fake:
        with tempfile.TemporaryDirectory() as state:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                lunia_state_dir=Path(state),
                api_tokens="admin:bench-token-1",
                alert_webhook_token="bench-hook",
                telegram_bot_token=fake.token,
                telegram_api_base=fake.base,
                telegram_ops_chat_id=OPS,
                log_level="WARNING",
            )
            plane = ControlPlane(settings)
            await plane.start()
            bot = TelegramBot(plane)
            await bot.start()
            fake.clear_calls()
            batch = 100
            started = time.perf_counter()
            for sent in range(0, alerts, batch):
                body = am_payload(
                    *[
                        am_alert(
                            f"Storm{(sent + i) % incidents}",
                            fingerprint=f"storm-{(sent + i) % incidents}",
                            starts_at=f"2026-11-28T09:{(sent + i) // incidents:02d}:00Z",
                        )
                        for i in range(min(batch, alerts - sent))
                    ]
                )
                await plane.incidents.ingest(parse_alertmanager(body))
                await asyncio.sleep(seconds * batch / alerts)
            ingested = time.perf_counter() - started
            await bot.notifier.catch_up()
            await bot.notifier.flush_digest()
            while (await plane.store.outbox_stats("telegram")).depth:
                await asyncio.sleep(0.2)
            drained = time.perf_counter() - started
            open_incidents = len(await plane.incidents.list(open_only=True, limit=500))
            await bot.close()
            await plane.close()
        calls = [c for c in fake.calls if c.method.lower() in ("sendmessage", "editmessagetext")]
        times = sorted(c.at for c in calls)
        rate_limited = sum(1 for c in calls if c.status == 429)
        messages = fake.messages(OPS)
    print(
        f"storm: {alerts} alerts over {incidents} incidents in {ingested:.1f} s "
        f"({open_incidents} open incidents stored)"
    )
    print(f"  Telegram calls: {len(calls)} (send+edit), 429s received: {rate_limited}")
    print(
        f"  messages in the ops chat: {len(messages)} "
        f"({sum('Alert storm' in (m.text or '') for m in messages)} digests)"
    )
    print(
        f"  peak rate to the ops group: {peak(times, 1.0)}/s, {peak(times, 60.0)}/min "
        f"(Telegram allows 1/s sustained, 20/min per group)"
    )
    print(f"  everything delivered {drained:.1f} s after the storm began; outbox empty")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--incidents", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.alerts, args.incidents, args.seconds))
