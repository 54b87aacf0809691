"""The bot acts only in its configured chats and in private chats with known users; forwarded
messages and edits never run a command (issue 17, point 5)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.app import TelegramBot
from tests.bot.conftest import ADMIN, OPERATOR, OPS, VIEWER
from tests.bot.test_bot import replies
from tests.fakes.telegram import FakeTelegram

ELSEWHERE = -1001000000099  # a supergroup someone added the bot to
FLIP = "/flag LLM_RATE_LIMITED on"


def flipped(telegram: TelegramBot) -> bool:
    return bool(telegram.plane.flags.value("LLM_RATE_LIMITED"))


async def quiet(fake: FakeTelegram, chat: int) -> bool:
    """True when the bot has sent nothing to ``chat`` after giving it time to."""
    await asyncio.sleep(0.7)
    return fake.messages(chat) == []


@pytest.mark.slow
async def test_commands_in_an_unconfigured_group_are_ignored_and_audited_once(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(ELSEWHERE, ADMIN, FLIP, title="Crypto friends")
    fake_telegram.push_message(ELSEWHERE, VIEWER, "/status", title="Crypto friends")
    assert await quiet(fake_telegram, ELSEWHERE)
    assert not flipped(telegram)
    refusals = [
        e
        for e in await telegram.plane.audit.tail(20)
        if e.action == "telegram.refused" and e.actor.id == f"chat:{ELSEWHERE}"
    ]
    assert len(refusals) == 1
    (entry,) = refusals
    assert entry.outcome == "denied"
    assert entry.actor.name == "Crypto friends"
    assert "not in TELEGRAM_OPS/ESCALATION/SECURITY_CHAT_ID" in entry.detail

    # The same people are answered where the bot is meant to work.
    fake_telegram.push_message(OPS, VIEWER, "/status")
    assert "Lunia status" in await replies(fake_telegram, OPS, "Lunia status")
    fake_telegram.push_message(ADMIN, ADMIN, FLIP)
    await replies(fake_telegram, ADMIN, "LLM_RATE_LIMITED = True")
    assert flipped(telegram)


@pytest.mark.slow
async def test_button_presses_in_an_unconfigured_group_are_ignored(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_callback(ELSEWHERE, ADMIN, 1, "c:sig:token:1")
    await asyncio.sleep(0.7)
    assert fake_telegram.calls_to("answerCallbackQuery") == []
    (entry,) = [e for e in await telegram.plane.audit.tail(5) if e.action == "telegram.refused"]
    assert (entry.actor.id, entry.target) == (f"chat:{ELSEWHERE}", "button:c")


async def test_a_migrated_ops_group_keeps_working(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    supergroup = -1001000000777
    await telegram.plane.telegram_delivery.record_migration(OPS, supergroup)
    fake_telegram.push_message(supergroup, OPERATOR, FLIP)
    await replies(fake_telegram, supergroup, "LLM_RATE_LIMITED = True")


@pytest.mark.slow
async def test_a_forwarded_command_does_not_run(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    update = fake_telegram.message_update(ADMIN, ADMIN, FLIP)
    update["message"]["forward_origin"] = {
        "type": "user",
        "date": int(time.time()) - 60,
        "sender_user": {"id": 999, "is_bot": False, "first_name": "Mallory"},
    }
    fake_telegram.push_update(_without_id(update))
    assert await quiet(fake_telegram, ADMIN)
    assert not flipped(telegram)

    fake_telegram.push_message(ADMIN, ADMIN, FLIP)  # typed by the admin: runs
    await replies(fake_telegram, ADMIN, "LLM_RATE_LIMITED = True")


@pytest.mark.slow
async def test_an_edited_command_is_not_run_again(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    assert "edited_message" not in telegram.dispatcher.resolve_used_update_types()
    fake_telegram.push_message(ADMIN, ADMIN, "/flag LLM_RATE_LIMITED off")
    await replies(fake_telegram, ADMIN, "LLM_RATE_LIMITED = False")
    edited = fake_telegram.message_update(ADMIN, ADMIN, FLIP)
    edited["edited_message"] = {**edited.pop("message"), "edit_date": int(time.time())}
    fake_telegram.push_update(_without_id(edited))  # as polling would get it
    await telegram.feed_webhook(edited)  # as a webhook would deliver it
    await asyncio.sleep(0.7)
    assert not flipped(telegram)
    assert len(fake_telegram.messages(ADMIN)) == 1


def _without_id(update: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in update.items() if k != "update_id"}
