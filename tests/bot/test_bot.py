"""The bot through the real aiogram network path against a loopback fake Bot API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.app import TelegramBot
from core.incidents.receivers import parse_alertmanager, parse_falco
from core.models import Actor, utcnow
from core.models.incidents import IncidentState
from tests.bot.conftest import (
    ADMIN,
    ESCALATION,
    OPERATOR,
    OPS,
    SECURITY,
    STRANGER,
    VIEWER,
    BotFactory,
)
from tests.fakes.telegram import FakeTelegram, StoredMessage
from tests.support.payloads import am_alert, am_payload, falco_event

FAST = {"critical": {"ack_timeout_seconds": 60, "repeat": 2, "targets": ["chat"]}}


async def open_incident(telegram: TelegramBot, name: str = "RedisDown", **kw: Any) -> int:
    result = await telegram.plane.incidents.ingest(
        parse_alertmanager(am_payload(am_alert(name, **kw)))
    )
    return result.incidents[0]


async def incident_message(
    fake: FakeTelegram, chat: int, needle: str, timeout: float = 5.0
) -> StoredMessage:
    def find() -> StoredMessage | None:
        return next((m for m in fake.messages(chat) if m.text and needle in m.text), None)

    return await fake.wait_for(find, timeout=timeout)


def button(message: StoredMessage, label: str) -> str:
    return next(b["callback_data"] for b in message.buttons if label in b["text"])


async def replies(fake: FakeTelegram, chat: int, needle: str, timeout: float = 5.0) -> str:
    message = await incident_message(fake, chat, needle, timeout)
    assert message.text is not None
    return message.text


async def counted(telegram: TelegramBot, command: str, outcome: str, count: int = 1) -> None:
    """Wait until the bot has counted ``count`` updates of ``command`` with ``outcome``."""
    registry = telegram.plane.metrics.registry
    labels = {"command": command, "outcome": outcome}
    async with asyncio.timeout(5):
        while (registry.get_sample_value("telegram_commands_total", labels) or 0) < count:
            await asyncio.sleep(0.01)


async def test_commands_are_registered_with_help(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    commands = {c["command"] for c in fake_telegram.commands()}
    assert {
        "status",
        "health",
        "incidents",
        "ack",
        "resolve",
        "silence",
        "flags",
        "flag",
        "audit",
        "checklist",
        "whoami",
        "help",
    } <= commands


@pytest.mark.slow
async def test_incident_message_ack_button_edits_it_and_stops_escalation(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    telegram = await make_bot(escalation_policy=FAST)
    incident_id = await open_incident(telegram)
    message = await incident_message(fake_telegram, OPS, "RedisDown")
    assert "TRIGGERED" in (message.text or "")
    assert [b["text"] for b in message.buttons][:2] == ["👀 Acknowledge", "✅ Resolve"]

    fake_telegram.push_callback(OPS, OPERATOR, message.message_id, button(message, "Acknowledge"))
    answers = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "Acknowledged" in answers[0].params["text"]
    edited = await fake_telegram.wait_for(
        lambda: m if (m := fake_telegram.message(OPS, message.message_id)) and m.edits else None
    )
    assert "ACKNOWLEDGED" in (edited.text or "")
    assert "acknowledged by User202" in (edited.text or "")
    assert "Unacknowledge" in [b["text"] for b in edited.buttons][0]
    incident = await telegram.plane.incidents.get(incident_id)
    assert incident.state is IncidentState.ACKNOWLEDGED
    assert incident.next_escalation_at is None
    assert await telegram.plane.incidents.run_deadlines(utcnow().replace(year=2030)) == 0
    assert len(fake_telegram.messages(OPS)) == 1  # edited in place, never a second message


async def test_viewer_press_is_refused_and_audited(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    incident_id = await open_incident(telegram)
    message = await incident_message(fake_telegram, OPS, "RedisDown")
    fake_telegram.push_callback(OPS, VIEWER, message.message_id, button(message, "Acknowledge"))
    [answer] = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "needs the operator role" in answer.params["text"]
    assert (await telegram.plane.incidents.get(incident_id)).state is IncidentState.TRIGGERED
    [entry] = await telegram.plane.audit.tail(1)
    assert (entry.action, entry.outcome, entry.actor.id) == (
        "incident.acknowledge",
        "denied",
        str(VIEWER),
    )


async def test_forged_button_is_refused_and_audited(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    incident_id = await open_incident(telegram)
    message = await incident_message(fake_telegram, OPS, "RedisDown")
    real = button(message, "Resolve")
    # Same shape, another incident, the original signature: must not verify.
    prefix, sig, action, _number, arg = (real.split(":") + [""])[:5]
    forged = f"{prefix}:{sig}:{action}:{incident_id + 1}:{arg}"
    fake_telegram.push_callback(OPS, ADMIN, message.message_id, forged)
    [answer] = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "not issued by this bot" in answer.params["text"]
    [entry] = await telegram.plane.audit.tail(1)
    assert (entry.action, entry.outcome) == ("telegram.forged_button", "denied")
    assert (await telegram.plane.incidents.get(incident_id)).state is IncidentState.TRIGGERED


async def test_stale_press_answers_with_the_current_state(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    incident_id = await open_incident(telegram)
    message = await incident_message(fake_telegram, OPS, "RedisDown")
    ack = button(message, "Acknowledge")
    await telegram.plane.incidents.resolve(incident_id, Actor.system("test"))
    fake_telegram.push_callback(OPS, OPERATOR, message.message_id, ack)
    [answer] = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "already resolved" in answer.params["text"]


@pytest.mark.slow
async def test_unknown_user_gets_one_polite_refusal_and_no_data(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await open_incident(telegram)
    fake_telegram.push_message(STRANGER, STRANGER, "/incidents")
    text = await replies(fake_telegram, STRANGER, "not authorised")
    assert str(STRANGER) in text
    fake_telegram.push_message(STRANGER, STRANGER, "/status")
    # Past the point where a reply would have been queued: the refusal is counted, and a
    # reply to a later message has come out of the outbox (which delivers in queue order).
    await counted(telegram, "/status", "unauthorized")
    fake_telegram.push_message(VIEWER, VIEWER, "/whoami")
    await replies(fake_telegram, VIEWER, "You are")
    outgoing = [m for m in fake_telegram.messages(STRANGER) if m.text]
    assert len(outgoing) == 1
    assert "RedisDown" not in (outgoing[0].text or "")
    [entry] = await telegram.plane.audit.tail(1)
    assert (entry.action, entry.outcome) == ("telegram.refused", "denied")
    # Being in the ops group grants nothing either.
    fake_telegram.push_message(OPS, STRANGER + 1, "/incidents")
    await counted(telegram, "/incidents", "unauthorized", 2)
    fake_telegram.push_message(OPS, VIEWER, "/whoami")  # one chat's replies arrive in order
    await replies(fake_telegram, OPS, "You are")
    assert not any("Open incidents" in (m.text or "") for m in fake_telegram.messages(OPS))


@pytest.mark.slow
async def test_commands_answer_and_unknown_ones_get_help(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await open_incident(telegram)
    fake_telegram.push_message(VIEWER, VIEWER, "/incidents")
    assert "RedisDown" in await replies(fake_telegram, VIEWER, "Open incidents")
    fake_telegram.push_message(VIEWER, VIEWER, "/whoami")
    assert "role viewer" in await replies(fake_telegram, VIEWER, "You are")
    fake_telegram.push_message(VIEWER, VIEWER, "/frobnicate")
    text = await replies(fake_telegram, VIEWER, "I don't know /frobnicate")
    assert "/status" in text and "/ack" in text
    fake_telegram.push_message(VIEWER, VIEWER, "/status")
    assert "incidents: 1 critical" in await replies(fake_telegram, VIEWER, "Lunia status")
    fake_telegram.push_message(VIEWER, VIEWER, "/checklist")
    assert "incidents acknowledged" in await replies(fake_telegram, VIEWER, "Daily checklist")
    fake_telegram.push_message(VIEWER, VIEWER, "/ack")
    assert "usage: /ack ID" in await replies(fake_telegram, VIEWER, "usage")


@pytest.mark.slow
async def test_operator_acts_by_command(telegram: TelegramBot, fake_telegram: FakeTelegram) -> None:
    incident_id = await open_incident(telegram)
    fake_telegram.push_message(OPERATOR, OPERATOR, f"/silence {incident_id} 4h")
    await replies(fake_telegram, OPERATOR, "Silenced for 4h")
    assert (await telegram.plane.incidents.get(incident_id)).state is IncidentState.SILENCED
    fake_telegram.push_message(OPERATOR, OPERATOR, f"/resolve {incident_id}")
    await replies(fake_telegram, OPERATOR, "Resolved")
    message = await incident_message(fake_telegram, OPS, "RESOLVED")
    assert message.buttons == []


@pytest.mark.slow
async def test_dangerous_flag_needs_the_askers_confirmation(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(OPERATOR, OPERATOR, "/flag SANDBOX_ENABLED on")
    assert "needs the admin role" in await replies(fake_telegram, OPERATOR, "⛔️")

    fake_telegram.push_message(ADMIN, ADMIN, "/flag SANDBOX_ENABLED on")
    prompt = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    confirm = button(prompt, "Confirm")
    assert telegram.plane.flags.value("SANDBOX_ENABLED") is False

    fake_telegram.push_callback(ADMIN, OPERATOR, prompt.message_id, confirm)  # someone else
    [other] = await fake_telegram.wait_for_call("answerCallbackQuery")
    assert "Only the person who asked" in other.params["text"]
    assert telegram.plane.flags.value("SANDBOX_ENABLED") is False

    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, confirm)
    await fake_telegram.wait_for_call("answerCallbackQuery", count=2)
    await replies(fake_telegram, ADMIN, "SANDBOX_ENABLED = True")
    assert telegram.plane.flags.value("SANDBOX_ENABLED") is True

    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, confirm)  # replayed
    answers = await fake_telegram.wait_for_call("answerCallbackQuery", count=3)
    assert "already used or has expired" in answers[2].params["text"]
    [entry] = await telegram.plane.audit.tail(1)
    assert entry.action == "telegram.confirmation_refused"


@pytest.mark.slow
async def test_retry_after_is_honoured_exactly_and_nothing_is_lost(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.fail_next("sendMessage", 429, retry_after=2)
    await telegram.ui.reply(OPERATOR, "first")
    await telegram.ui.reply(OPERATOR, "second")
    await replies(fake_telegram, OPERATOR, "second", timeout=10)
    calls = [
        c
        for c in fake_telegram.calls_to("sendMessage")
        if c.params.get("chat_id") in (OPERATOR, str(OPERATOR))
    ]
    assert [c.status for c in calls][:2] == [429, 200]
    waited = calls[1].at - calls[0].at
    assert 2.0 <= waited < 3.0, waited
    texts = [m.text for m in fake_telegram.messages(OPERATOR)]
    assert texts == ["first", "second"]


@pytest.mark.slow
async def test_long_text_arrives_in_valid_parts(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    lines = [f"<b>line {i}</b> " + "x" * 50 for i in range(110)]  # ~6,000 characters
    text = "<pre>" + "\n".join(lines) + "</pre>"
    assert len(text) > 6000
    await telegram.ui.reply(OPERATOR, text)
    await fake_telegram.wait_for(lambda: len(fake_telegram.messages(OPERATOR)) >= 2 or None)
    sent = fake_telegram.calls_to("sendMessage", ok=True)
    assert len(sent) == 2
    assert all(len(c.params["text"]) <= 4096 for c in sent)
    joined = "\n".join(m.text or "" for m in fake_telegram.messages(OPERATOR))
    assert "line 0 " in joined and "line 109 " in joined


async def test_unparsable_html_is_resent_as_plain_text(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await telegram.ui.reply(OPERATOR, "<b>unclosed & broken")
    text = await replies(fake_telegram, OPERATOR, "unclosed")
    assert text == "unclosed & broken"


async def test_migrated_group_is_followed(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    old, new = -4000001, -1004000001
    fake_telegram.migrate_chat(old, new)
    telegram = await make_bot(telegram_ops_chat_id=old)
    await open_incident(telegram)
    await incident_message(fake_telegram, new, "RedisDown")
    assert await telegram.plane.store.get_value(f"tg:migrated:{old}") == new


async def test_bot_removed_from_a_chat_raises_an_incident(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.kick_bot(OPS)
    telegram = await make_bot()
    await open_incident(telegram)

    async def route_incident() -> bool:
        found = await telegram.plane.incidents.list(limit=10)
        return any(i.title == "TelegramRouteFailed" for i in found)

    for _ in range(50):
        if await route_incident():
            break
        await asyncio.sleep(0.1)
    assert await route_incident()
    assert telegram.plane.health.snapshot().components["telegram"].status.value in (
        "ok",
        "degraded",
    )


async def test_security_incidents_go_to_the_security_chat(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    await telegram.plane.incidents.ingest(parse_falco(falco_event()))
    message = await incident_message(fake_telegram, SECURITY, "Terminal shell")
    assert "security" in (message.text or "")
    assert not any("Terminal shell" in (m.text or "") for m in fake_telegram.messages(OPS))


@pytest.mark.slow
async def test_escalation_posts_to_the_escalation_chat(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    telegram = await make_bot(escalation_policy=FAST)
    incident_id = await open_incident(telegram)
    await incident_message(fake_telegram, OPS, "RedisDown")
    await telegram.plane.incidents.run_deadlines(utcnow().replace(year=2030))
    text = await replies(fake_telegram, ESCALATION, "Not acknowledged")
    assert f"/ack {incident_id}" in text
    assert "open incident" in text  # a link to the ops chat message


@pytest.mark.slow
async def test_alert_storm_becomes_a_board_naming_every_incident(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    # 40 alert groups (one notification each), ingested 10 at a time.
    groups = [parse_alertmanager(am_payload(am_alert(f"Storm{i}"))) for i in range(40)]
    for start in range(0, 40, 10):
        await telegram.plane.incidents.ingest(
            [alert for group in groups[start : start + 10] for alert in group]
        )
    await telegram.notifier.catch_up()  # every stored event handled, then the board
    await telegram.notifier.flush_boards()
    board = await replies(fake_telegram, OPS, "Alert storm", timeout=15)
    assert "40 incidents" in board
    assert all(f"Storm{i} " in board for i in range(40))
    # Only openings before the storm may have a message of their own.
    individual = [m for m in fake_telegram.messages(OPS) if "TRIGGERED" in (m.text or "")]
    assert len(individual) <= 5


async def test_webhook_mode_checks_the_secret(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    import httpx

    from api.app import create_app

    telegram = await make_bot(
        telegram_mode="webhook",
        telegram_webhook_url="https://ops.example/telegram/webhook",
        telegram_webhook_secret="s3cret-token",
    )
    assert fake_telegram.webhook_url == "https://ops.example/telegram/webhook"
    assert fake_telegram.webhook_secret == "s3cret-token"
    app = create_app(telegram.plane, telegram=telegram)
    update = fake_telegram.message_update(VIEWER, VIEWER, "/whoami")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        wrong = await client.post(
            "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
        )
        assert wrong.status_code == 401
        missing = await client.post("/telegram/webhook", json=update)
        assert missing.status_code == 401
        right = await client.post(
            "/telegram/webhook",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"},
        )
        assert right.status_code == 200
    assert "role viewer" in await replies(fake_telegram, VIEWER, "You are")
