"""Questions in chat: plain text, mentions, Diagnose, and proposed actions as guarded buttons."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.app import TelegramBot
from tests.bot.conftest import OPERATOR, OPS, VIEWER, BotFactory
from tests.bot.test_bot import button, incident_message, open_incident, replies
from tests.fakes.openai import FakeOpenAI
from tests.fakes.telegram import FakeTelegram


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.mark.slow
async def test_plain_question_in_private_is_answered_by_the_fallback(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await open_incident(telegram)
    fake_telegram.push_message(VIEWER, VIEWER, "whats brokn right now?")
    text = await replies(fake_telegram, VIEWER, "rule-based fallback")
    assert "RedisDown" in text


async def test_group_chatter_is_ignored_but_a_mention_is_answered(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(OPS, VIEWER, "lunch anyone?")
    fake_telegram.push_message(OPS, VIEWER, "@lunia_test_bot is redis ok?")
    assert "Redis" in await replies(fake_telegram, OPS, "rule-based fallback")
    # One chat's replies arrive in order: an answer to the chatter would have come first.
    answers = [m for m in fake_telegram.messages(OPS) if "fallback" in (m.text or "")]
    assert len(answers) == 1


@pytest.mark.slow
async def test_diagnose_replies_in_the_incidents_thread(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await open_incident(telegram, "LLMRateLimited")
    message = await incident_message(fake_telegram, OPS, "LLMRateLimited")
    fake_telegram.push_callback(OPS, VIEWER, message.message_id, button(message, "Diagnose"))
    reply = await incident_message(fake_telegram, OPS, "fallback", timeout=10)
    assert reply.reply_to is not None and reply.reply_to.message_id == message.message_id
    assert "2.3" in (reply.text or "")  # the runbook section for this alert


@pytest.mark.slow
async def test_proposed_failover_is_a_button_guarded_by_role_and_confirmation(
    make_bot: BotFactory, fake_telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    telegram = await make_bot(
        openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url
    )
    fake_openai.call_tools(
        ("propose_action", {"kind": "failover", "target": "okx", "reason": "binance keeps failing"})
    )
    fake_openai.reply("Binance is failing; fail over to okx.")
    fake_telegram.push_message(VIEWER, VIEWER, "/ask should we fail over?")
    answer = await incident_message(fake_telegram, VIEWER, "fail over", timeout=10)
    proposal = button(answer, "Fail over to okx")

    fake_telegram.push_callback(VIEWER, VIEWER, answer.message_id, proposal)
    [refused] = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "needs the operator role" in refused.params["text"]
    assert not telegram.plane.venues.status().failed_over

    fake_telegram.push_callback(OPERATOR, OPERATOR, answer.message_id, proposal)
    prompt = await incident_message(fake_telegram, OPERATOR, "Only you can confirm")
    assert not telegram.plane.venues.status().failed_over
    fake_telegram.push_callback(OPERATOR, OPERATOR, prompt.message_id, button(prompt, "Confirm"))
    await replies(fake_telegram, OPERATOR, "Trading on okx")
    assert telegram.plane.venues.status().failed_over
