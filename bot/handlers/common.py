"""/start, /help, /whoami, confirmations, and help for anything not understood."""

from __future__ import annotations

import logging

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.callbacks import ConfirmButton
from bot.render import e
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.models import Actor

logger = logging.getLogger(__name__)

COMMANDS = [
    ("whoami", "your Telegram id and role"),
    ("help", "what this bot can do"),
]


def help_text() -> str:
    """Every command with its one-line description."""
    from bot.handlers import all_commands

    lines = ["<b>Lunia control plane</b>: commands"]
    lines += [f"/{name} — {e(description)}" for name, description in all_commands()]
    return "\n".join(lines)


def router() -> Router:
    """Help, identity, confirmations and the catch-all (registered last)."""
    r = Router(name="common")

    @r.message(Command("start", "help"))
    async def show_help(message: Message, ui: Ui) -> None:
        """List every command."""
        await ui.reply(message.chat.id, help_text())

    @r.message(Command("whoami"))
    async def whoami(message: Message, ui: Ui, actor: Actor) -> None:
        """Your id and role, as the bot sees them."""
        role = actor.role.value if actor.role else "none"
        await ui.reply(
            message.chat.id,
            f"You are {e(actor.name)} (id <code>{e(actor.id)}</code>), role <b>{role}</b>.",
        )

    @r.callback_query(ConfirmButton.filter())
    async def confirm(
        query: CallbackQuery,
        callback_data: ConfirmButton,
        plane: ControlPlane,
        ui: Ui,
        actor: Actor,
        dispatcher: Dispatcher,
        bot: Bot,
    ) -> None:
        """Carry out (or drop) a pending dangerous action, for its asker only (the press may
        reach any replica: confirmations live in the store)."""
        if not await ui.genuine(query, callback_data, plane, actor):
            return
        user_id = query.from_user.id
        pending = await ui.confirmations.take(callback_data.token, user_id)
        if isinstance(pending, str):
            await plane.refusals.record(
                actor,
                "telegram.confirmation_refused",
                "confirmation",
                channel="telegram",
                target=callback_data.token,
                detail=pending,
            )
            await query.answer(pending, show_alert=True)
            return
        chat_id = query.message.chat.id if query.message else user_id
        if not callback_data.yes:
            await query.answer("Cancelled.")
            await ui.reply(chat_id, f"Cancelled: {e(pending.description)}")
            return
        if not pending.answers_press:
            await query.answer("Confirmed.")
        # The request that asked is handled again, confirmed: its handler replies (or refuses).
        await ui.confirmations.replay(pending, dispatcher, bot, query)

    @r.message(F.text.startswith("/"))
    async def unknown_command(message: Message, ui: Ui) -> None:
        """An unknown command gets help, not silence."""
        asked = (message.text or "").split()[0]
        await ui.reply(message.chat.id, f"I don't know {e(asked)}.\n\n{help_text()}")

    return r
