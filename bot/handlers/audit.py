"""/audit: the newest audit entries and whether the hash chain holds (runbook §4)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.render import audit_text
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor
from core.security.audit import AUDIT_LIST_MAX

COMMANDS = [("audit", "newest audit entries: /audit [N] (operator)")]


def router() -> Router:
    """The audit feature's handlers."""
    r = Router(name="audit")

    @r.message(Command("audit"))
    async def audit(
        message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
    ) -> None:
        """The last N (default 15) entries, and a chain check (who may read: core decides)."""
        arg = (command.args or "15").strip()
        if not arg.isdigit():
            raise InvalidInput(f"usage: /audit [N] with N from 1 to {AUDIT_LIST_MAX}")
        entries = await plane.audit.read(actor, int(arg))
        await ui.reply(message.chat.id, audit_text(entries, await plane.audit.verify_for(actor)))

    return r
