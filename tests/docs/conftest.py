"""The bot fixtures (fake Bot API, started bot) shared with tests/bot, not copied."""

from tests.bot.conftest import fake_telegram, make_bot

__all__ = ["fake_telegram", "make_bot"]
