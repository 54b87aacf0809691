"""Backups from chat: take, list, verify, and a restore only the asking admin can confirm."""

from __future__ import annotations

import pytest

from bot.app import TelegramBot
from core.models import Actor
from tests.bot.conftest import ADMIN, OPERATOR, VIEWER
from tests.bot.test_bot import button, incident_message, replies
from tests.fakes.telegram import FakeTelegram


@pytest.mark.slow
async def test_backup_list_verify_and_confirmed_restore(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(VIEWER, VIEWER, "/backup")
    assert "needs the operator role" in await replies(fake_telegram, VIEWER, "⛔️")

    fake_telegram.push_message(OPERATOR, OPERATOR, "/backup")
    taken = await replies(fake_telegram, OPERATOR, "Backup")
    backup_id = taken.split("Backup ")[1].split(" ")[0]
    await telegram.plane.flags.set("AUTO_BACKUP_ENABLED", False, Actor.system("test"))

    fake_telegram.push_message(VIEWER, VIEWER, "/backups")
    assert backup_id in await replies(fake_telegram, VIEWER, "Backups")
    fake_telegram.push_message(OPERATOR, OPERATOR, f"/verify {backup_id}")
    assert "verified" in await replies(fake_telegram, OPERATOR, "✅ Backup")

    fake_telegram.push_message(OPERATOR, OPERATOR, f"/restore {backup_id}")
    assert "admin" in await replies(fake_telegram, OPERATOR, "⛔️")
    fake_telegram.push_message(ADMIN, ADMIN, f"/restore {backup_id}")
    prompt = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, button(prompt, "Confirm"))
    done = await replies(fake_telegram, ADMIN, "Restored", timeout=15)
    assert "1 flags changed" in done
    assert telegram.plane.flags.value("AUTO_BACKUP_ENABLED") is True

    fake_telegram.push_message(VIEWER, VIEWER, "/jobs")
    assert "escalation" in await replies(fake_telegram, VIEWER, "Scheduled jobs")
