"""/token: admins issue short-lived API tokens in private only; the value works, then not."""

from __future__ import annotations

import httpx

from api.app import create_app
from bot.app import TelegramBot
from tests.bot.conftest import ADMIN, OPERATOR, OPS
from tests.bot.test_bot import replies
from tests.fakes.telegram import FakeTelegram


async def test_token_issue_list_revoke(telegram: TelegramBot, fake_telegram: FakeTelegram) -> None:
    fake_telegram.push_message(OPERATOR, OPERATOR, "/token issue ci viewer 1h")
    assert "admin" in await replies(fake_telegram, OPERATOR, "⛔️")
    fake_telegram.push_message(OPS, ADMIN, "/token issue ci viewer 1h")
    assert "private chat" in await replies(fake_telegram, OPS, "⛔️")

    fake_telegram.push_message(ADMIN, ADMIN, "/token issue ci viewer 1h")
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
