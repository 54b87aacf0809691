"""The daily checklist in one process (``lunia run``): the scheduler's job queues it in the
outbox and the bot's sender renders and sends it to the ops chat (the split shape, where the job
runs in the worker and the bot process sends, is in tests/e2e/test_cluster_views.py)."""

from __future__ import annotations

from bot.app import TelegramBot
from core.control_plane import JOB_CHECKLIST
from tests.bot.conftest import OPS
from tests.fakes.telegram import FakeTelegram


async def test_scheduled_daily_checklist_reaches_the_ops_chat(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    info = await telegram.plane.scheduler.run_now(JOB_CHECKLIST)
    assert info.last_outcome == "ok" and info.schedule == "cron hour=8 minute=0"
    [sent] = await fake_telegram.wait_for_call("sendMessage")
    assert sent.params["chat_id"] == OPS
    text = sent.params["text"]
    assert "Daily checklist" in text and "incidents acknowledged" in text and "backups" in text
    assert sent.params["parse_mode"] == "HTML"
