"""/token: admins issue short-lived API tokens in private only; the value works, then not."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.app import create_app
from bot.app import TelegramBot
from core.models import Actor
from tests.bot.conftest import ADMIN, OPERATOR, OPS
from tests.bot.test_bot import button, incident_message, replies
from tests.fakes.telegram import FakeTelegram


def admin_actor() -> Actor:
    return Actor.system("test")


@pytest.mark.slow
async def test_token_issue_list_revoke(telegram: TelegramBot, fake_telegram: FakeTelegram) -> None:
    fake_telegram.push_message(OPERATOR, OPERATOR, "/token issue ci viewer 1h")
    assert "admin" in await replies(fake_telegram, OPERATOR, "⛔️")
    fake_telegram.push_message(OPS, ADMIN, "/token issue ci viewer 1h")
    assert "private chat" in await replies(fake_telegram, OPS, "⛔️")

    fake_telegram.push_message(ADMIN, ADMIN, "/token issue ci viewer 1h")
    prompt = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    assert "Issue API token ci with the viewer role for 1h?" in (prompt.text or "")
    assert await telegram.plane.temporary_tokens.list(admin_actor()) == []  # nothing yet
    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, button(prompt, "Confirm"))
    text = await replies(fake_telegram, ADMIN, "Shown once")
    value = text.split("\n")[1].strip()
    token_id = text.rsplit("/token revoke ", 1)[1].strip()
    app = create_app(telegram.plane)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        headers = {"Authorization": f"Bearer {value}"}
        assert (await client.get("/api/v1/flags", headers=headers)).status_code == 200
        fake_telegram.push_message(ADMIN, ADMIN, "/token list")
        listed = await replies(fake_telegram, ADMIN, "Temporary API tokens")
        assert "ci" in listed and "live" in listed and value not in listed
        fake_telegram.push_message(ADMIN, ADMIN, f"/token revoke {token_id}")
        await replies(fake_telegram, ADMIN, "revoked")
        assert (await client.get("/api/v1/flags", headers=headers)).status_code == 401


@pytest.mark.slow
async def test_issue_waits_for_confirm_and_the_value_is_shown_once(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(ADMIN, ADMIN, "/token issue laptop operator 8h")
    prompt = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, button(prompt, "Cancel"))
    await replies(fake_telegram, ADMIN, "Cancelled: Issue API token laptop")
    assert await telegram.plane.temporary_tokens.list(admin_actor()) == []

    fake_telegram.push_message(ADMIN, ADMIN, "/token issue laptop operator 8h")
    prompts = await fake_telegram.wait_for(
        lambda: (
            found
            if len(found := [m for m in fake_telegram.messages(ADMIN) if m.buttons]) >= 2
            else None
        )
    )
    confirm = button(prompts[-1], "Confirm")
    fake_telegram.push_callback(ADMIN, ADMIN, prompts[-1].message_id, confirm)
    text = await replies(fake_telegram, ADMIN, "Shown once")
    value = text.split("\n")[1].strip()
    assert value.startswith("lt_")
    (token,) = await telegram.plane.temporary_tokens.list(admin_actor())
    assert (token.name, token.role.value, token.issuer) == (
        "laptop",
        "operator",
        f"telegram:{ADMIN}",
    )
    fake_telegram.push_callback(ADMIN, ADMIN, prompts[-1].message_id, confirm)  # pressed again
    answers = await fake_telegram.wait_for_call("answerCallbackQuery", count=3)
    assert "already used or has expired" in answers[2].params["text"]
    shown = [m for m in fake_telegram.messages(ADMIN) if value in (m.text or "")]
    assert len(shown) == 1
    assert len(await telegram.plane.temporary_tokens.list(admin_actor())) == 1


async def test_bad_issue_is_refused_before_asking_to_confirm(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(ADMIN, ADMIN, "/token issue ci viewer 365d")
    assert "ttl must be between" in await replies(fake_telegram, ADMIN, "⛔️")
    assert not [m for m in fake_telegram.messages(ADMIN) if m.buttons]


@pytest.mark.slow
async def test_the_issued_value_leaves_the_store_once_delivered(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(ADMIN, ADMIN, "/token issue ci viewer 1h")
    prompt = await incident_message(fake_telegram, ADMIN, "Only you can confirm")
    fake_telegram.push_callback(ADMIN, ADMIN, prompt.message_id, button(prompt, "Confirm"))
    value = (await replies(fake_telegram, ADMIN, "Shown once")).split("\n")[1].strip()

    state = telegram.plane.settings.lunia_state_dir
    for _ in range(100):  # the message is marked delivered right after Telegram answered
        stored = b"".join(p.read_bytes() for p in sorted(state.glob("*.db*")) if p.is_file())
        if value.encode() not in stored:
            break
        await asyncio.sleep(0.05)
    assert value.encode() not in stored  # neither the database nor its WAL
