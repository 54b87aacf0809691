"""The fake Bot API fixture shared with tests/bot, not copied."""

from tests.bot.conftest import fake_telegram

__all__ = ["fake_telegram"]
