"""Fixtures: a fake Telegram Bot API and a started bot over a started control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot.app import TelegramBot
from core.control_plane import ControlPlane
from tests.conftest import SettingsFactory
from tests.fakes.telegram import FakeTelegram

OPS, ESCALATION, SECURITY = -1001000000001, -1001000000002, -1001000000003
ADMIN, OPERATOR, VIEWER, STRANGER = 101, 202, 303, 404


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


BotFactory = Callable[..., Awaitable[TelegramBot]]


@pytest.fixture
async def make_bot(
    fake_telegram: FakeTelegram, make_settings: SettingsFactory
) -> AsyncIterator[BotFactory]:
    """Start control plane + bot wired to the fake (closed at teardown)."""
    started: list[tuple[TelegramBot, ControlPlane]] = []

    async def make(**env: Any) -> TelegramBot:
        env.setdefault("telegram_bot_token", fake_telegram.token)
        env.setdefault("telegram_api_base", fake_telegram.base)
        env.setdefault("telegram_ops_chat_id", OPS)
        env.setdefault("telegram_escalation_chat_id", ESCALATION)
        env.setdefault("telegram_security_chat_id", SECURITY)
        env.setdefault("telegram_admins", [ADMIN])
        env.setdefault("telegram_operators", [OPERATOR])
        env.setdefault("telegram_viewers", [VIEWER])
        plane = ControlPlane(make_settings(**env))
        await plane.start()
        bot = TelegramBot(plane)
        await bot.start()
        started.append((bot, plane))
        return bot

    yield make
    for bot, plane in reversed(started):
        await bot.close()
        await plane.close()


@pytest.fixture
async def telegram(make_bot: BotFactory) -> TelegramBot:
    return await make_bot()
