"""The bot asks core who may read the audit log, and core audits the refusal."""

from __future__ import annotations

from bot.app import TelegramBot
from tests.bot.conftest import OPERATOR, VIEWER
from tests.bot.test_bot import replies
from tests.fakes.telegram import FakeTelegram


async def test_viewer_audit_command_is_refused_and_audited_by_core(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(VIEWER, VIEWER, "/audit 5")
    refusal = await replies(fake_telegram, VIEWER, "⛔️")
    assert "reading the audit log needs the operator role" in refusal
    [entry] = await telegram.plane.audit.tail(1)
    assert (entry.action, entry.outcome, entry.actor.id) == ("audit.read", "denied", str(VIEWER))

    fake_telegram.push_message(OPERATOR, OPERATOR, "/audit 5")
    shown = await replies(fake_telegram, OPERATOR, "audit.read")
    assert "denied" in shown


async def test_audit_limit_is_cores_limit(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_message(OPERATOR, OPERATOR, "/audit 1001")
    assert "between 1 and 1000" in await replies(fake_telegram, OPERATOR, "⛔️")
