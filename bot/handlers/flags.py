"""Feature flags from chat: /flags and /flag NAME VALUE, with confirmation for dangerous ones."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.render import e, flags_text
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor

COMMANDS = [
    ("flags", "every feature flag, its value and source"),
    ("flag", "set a flag: /flag NAME VALUE (or /flag NAME default)"),
]


def router() -> Router:
    """The flags feature's handlers."""
    r = Router(name="flags")

    @r.message(Command("flags"))
    async def list_flags(message: Message, plane: ControlPlane, ui: Ui) -> None:
        """Every flag with value and source."""
        await ui.reply(message.chat.id, flags_text(plane.flags.states()))

    @r.message(Command("flag"))
    async def set_flag(
        message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
    ) -> None:
        """Override a flag, or clear the override with ``default``."""
        args = (command.args or "").split()
        if len(args) != 2:
            raise InvalidInput("usage: /flag NAME VALUE (true/false, a venue id, or default)")
        name, value = args
        clear = value.lower() == "default"
        # The version seen when the command came in: a change made before the confirmation
        # button is pressed (another replica, the CLI) refuses this one instead of being undone.
        version = plane.flags.get(name).version

        async def apply(confirm: bool) -> str:
            if clear:
                state = await plane.flags.unset(
                    name, actor, confirm=confirm, expected_version=version
                )
            else:
                state = await plane.flags.set(
                    name, value, actor, confirm=confirm, expected_version=version
                )
            return (
                f"🚩 <code>{e(state.name)}</code> = <b>{e(state.value)}</b> "
                f"({state.source.value}), effective {e(state.applies)}"
            )

        user_id = message.from_user.id if message.from_user else 0
        await ui.confirm_or_run(message.chat.id, user_id, apply)

    return r
