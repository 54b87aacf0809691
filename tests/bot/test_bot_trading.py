"""The engine from chat: venues, failover with its pre-check, cores, PnL chart, halt."""

from __future__ import annotations

import pytest

from bot.app import TelegramBot
from tests.bot.conftest import ADMIN, OPERATOR, VIEWER
from tests.bot.test_bot import button, incident_message, replies
from tests.fakes.telegram import PNG_SIGNATURE, FakeTelegram

pytestmark = pytest.mark.slow  # several replies to one chat wait out Telegram's 1 message/s pacing


async def test_pnl_chart_arrives_as_a_png(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await telegram.plane.trading.record_pnl()
    fake_telegram.push_message(VIEWER, VIEWER, "/pnl 24h")
    [call] = await fake_telegram.wait_for_call("sendPhoto", timeout=15)
    assert call.ok, call.description
    photo = fake_telegram.messages(VIEWER)[-1].photo
    assert photo is not None and photo.startswith(PNG_SIGNATURE)
    # One point recorded a moment ago: the change is labelled since then, never as 24h.
    caption = str(call.params.get("caption"))
    assert "PnL since " in caption and "(history &lt; 24h)" in caption, caption
    assert "last 24h" not in caption
    fake_telegram.push_message(VIEWER, VIEWER, "/pnl 1y")
    assert "window must be one of 24h, 7d, not '1y'" in await replies(
        fake_telegram, VIEWER, "window"
    )


async def test_venues_cores_exposure_and_status(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(VIEWER, VIEWER, "/venues")
    text = await replies(fake_telegram, VIEWER, "Venues")
    assert "trading on binance" in text and "okx" in text
    fake_telegram.push_message(VIEWER, VIEWER, "/cores")
    assert "Switch with /toggle" in await replies(fake_telegram, VIEWER, "Cores")
    fake_telegram.push_message(VIEWER, VIEWER, "/exposure")
    await replies(fake_telegram, VIEWER, "Exposure")
    fake_telegram.push_message(VIEWER, VIEWER, "/status")
    status = await replies(fake_telegram, VIEWER, "Lunia status")
    assert "PnL:" in status and "exposure:" in status and "venue: binance" in status


async def test_failover_shows_the_precheck_and_needs_confirmation(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(VIEWER, VIEWER, "/failover")
    assert "needs the operator role" in await replies(fake_telegram, VIEWER, "⛔️")
    fake_telegram.push_message(OPERATOR, OPERATOR, "/failover")
    prompt = await incident_message(fake_telegram, OPERATOR, "Only you can confirm")
    assert "okx" in (prompt.text or "")
    assert telegram.plane.venues.status().active == "binance"
    fake_telegram.push_callback(OPERATOR, OPERATOR, prompt.message_id, button(prompt, "Confirm"))
    assert "Trading on okx" in await replies(fake_telegram, OPERATOR, "Trading on")
    assert telegram.plane.venues.status().failed_over
    fake_telegram.push_message(OPERATOR, OPERATOR, "/failback")
    await replies(fake_telegram, OPERATOR, "Back on")
    assert not telegram.plane.venues.status().failed_over


async def test_an_operator_halts_confirmed_and_only_an_admin_resumes(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(OPERATOR, OPERATOR, "/halt drill")
    prompt = await incident_message(fake_telegram, OPERATOR, "Only you can confirm")
    assert not telegram.plane.trading.state().halted
    fake_telegram.push_callback(OPERATOR, OPERATOR, prompt.message_id, button(prompt, "Confirm"))
    await replies(fake_telegram, OPERATOR, "Trading halted")
    assert telegram.plane.trading.state().halted
    fake_telegram.push_message(OPERATOR, OPERATOR, "/resume")
    assert "admin" in await replies(fake_telegram, OPERATOR, "⛔️")
    assert telegram.plane.trading.state().halted
    fake_telegram.push_message(ADMIN, ADMIN, "/resume")
    resume = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    fake_telegram.push_callback(ADMIN, ADMIN, resume.message_id, button(resume, "Confirm"))
    await replies(fake_telegram, ADMIN, "Trading resumed")
    assert not telegram.plane.trading.state().halted
