"""Alert storm → Telegram: is every incident named in chat, how fast, and without a 429?

Drives the real bot (aiogram, notifier, storm board, outbox, pacing) against the loopback fake
Bot API with Telegram's flood limits switched on (1/s per chat, 20/min per group, 30/s overall;
a 429 there means we broke a limit). Default storm: 300 new incidents within 10 s, one alert
group each, in webhook-sized batches, to one ops group. Prints messages sent, edits, 429s and the
time until every incident is named in a delivered message (the goal: within 90 s, zero 429).

    .venv/bin/python bench/telegram_storm.py [--incidents 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import TelegramBot  # noqa: E402
from core.config.settings import Settings  # noqa: E402
from core.control_plane import ControlPlane  # noqa: E402
from core.incidents.receivers import parse_alertmanager  # noqa: E402
from core.models.alerts import Alert  # noqa: E402
from tests.fakes.telegram import FakeTelegram, FloodLimits  # noqa: E402
from tests.support.payloads import am_alert, am_payload  # noqa: E402

OPS = -1001000000001
BATCH = 20  # alerts per webhook call
DEADLINE = 90.0  # seconds: every incident named by then
_ID = re.compile(r"#(\d+)\b")


def peak(times: list[float], window: float) -> int:
    """Most calls inside any sliding window of ``window`` seconds."""
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def storm_alerts(first: int, count: int) -> list[Alert]:
    """``count`` distinct problems, one Alertmanager group each (as a real storm arrives)."""
    return [
        alert
        for n in range(first, first + count)
        for alert in parse_alertmanager(
            {
                **am_payload(am_alert(f"Storm{n}", fingerprint=f"storm-{n}", severity="warning")),
                "groupKey": f'{{}}:{{alertname="Storm{n}"}}',
            }
        )
    ]


def named(fake: FakeTelegram) -> set[int]:
    """Incident ids named in the messages delivered to the ops chat."""
    return {int(n) for m in fake.messages(OPS) for n in _ID.findall(m.text or "")}


async def main(incidents: int, seconds: float) -> int:
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
            opened: set[int] = set()
            board_at: list[float] = []
            started = time.perf_counter()

            def board_seen() -> None:
                if not board_at and any(
                    "Alert storm" in (m.text or "") for m in fake.messages(OPS)
                ):
                    board_at.append(time.perf_counter() - started)

            for first in range(0, incidents, BATCH):
                batch = min(BATCH, incidents - first)
                result = await plane.incidents.ingest(storm_alerts(first, batch))
                opened.update(result.incidents)
                board_seen()
                await asyncio.sleep(seconds * batch / incidents)
            ingested = time.perf_counter() - started
            all_named: float | None = None
            while time.perf_counter() - started < DEADLINE + 30:
                board_seen()
                if opened <= named(fake):
                    all_named = time.perf_counter() - started
                    break
                await asyncio.sleep(0.1)
            await bot.close()
            await plane.close()
        calls = [c for c in fake.calls if c.method.lower() in ("sendmessage", "editmessagetext")]
        sent = [c for c in calls if c.method.lower() == "sendmessage" and c.ok]
        edits = [c for c in calls if c.method.lower() == "editmessagetext" and c.ok]
        rate_limited = sum(1 for c in fake.calls if c.status == 429)
        refused = sum(1 for c in calls if c.status not in (200, 429))
        times = sorted(c.at for c in calls if c.ok)
    print(f"storm: {len(opened)} new incidents in {ingested:.1f} s, into one ops group")
    print(
        f"  Bot API: {len(sent)} messages sent, {len(edits)} edits, {rate_limited} 429s, "
        f"{refused} other refusals"
    )
    print(
        f"  peak rate to the group: {peak(times, 1.0)}/s, {peak(times, 60.0)}/min "
        "(Telegram allows 1/s per chat, 20/min per group)"
    )
    if board_at:
        print(f"  first board message {board_at[0]:.1f} s after the storm began")
    if all_named is None:
        print(f"  NOT every incident named within {DEADLINE + 30:.0f} s")
        return 1
    verdict = "ok" if all_named <= DEADLINE and not rate_limited else "MISSED"
    print(f"  every incident named {all_named:.1f} s after the storm began ({verdict})")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.incidents, args.seconds)))
