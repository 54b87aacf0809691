"""Bot command metrics stay bounded: only the bot's own commands and buttons keep their name,
whatever users type or forge, and no user id ever becomes a label."""

from __future__ import annotations

import random
import string

import pytest
from aiogram.types import Update

from bot.app import TelegramBot
from tests.bot.conftest import ADMIN, STRANGER
from tests.fakes.telegram import FakeTelegram


async def feed(telegram: TelegramBot, update: dict[str, object]) -> None:
    """Dispatch one update to completion, as a webhook delivery would."""
    parsed = Update.model_validate(update, context={"bot": telegram.bot})
    await telegram.dispatcher.feed_update(telegram.bot, parsed)


@pytest.mark.slow
async def test_junk_commands_and_buttons_collapse_into_unknown(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    rng = random.Random(18)
    strangers = [STRANGER * 1000 + i for i in range(50)]
    for index in range(400):
        junk = "/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(12))
        user = ADMIN if index % 2 else rng.choice(strangers)
        await feed(telegram, fake_telegram.message_update(user, user, f"{junk} {index}"))
    for index in range(50):
        query = {
            "id": f"q{index}",
            "from": {"id": ADMIN, "is_bot": False, "first_name": "admin"},
            "chat_instance": "1",
            "data": f"forged{index}:payload",
        }
        await feed(telegram, {"update_id": 10_000 + index, "callback_query": query})
    await feed(telegram, fake_telegram.message_update(ADMIN, ADMIN, "/whoami"))

    text = telegram.plane.metrics.render().decode()
    assert text.count("\n") < 400
    commands = [line for line in text.splitlines() if line.startswith("telegram_commands_total")]
    assert {line.split('command="')[1].split('"')[0] for line in commands} == {
        "unknown",
        "button:unknown",
        "/whoami",
    }
    assert 'telegram_commands_total{command="unknown",outcome="unauthorized"}' in text
    assert 'telegram_commands_total{command="/whoami",outcome="ok"} 1.0' in text
    assert not [user for user in strangers if str(user) in text]
