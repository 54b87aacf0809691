"""Temporary API tokens from chat (admin): issue with an expiry, list, revoke.

A token's value is shown once, and only in a private chat with the admin who issued it: never in
a group, never in logs or the audit log.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.render import e, when
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor

COMMANDS = [
    ("token", "API tokens (admin): /token issue NAME ROLE TTL · /token list · /token revoke ID")
]
USAGE = "usage: /token issue NAME viewer|operator|admin 8h · /token list · /token revoke ID"


async def token(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Issue, list or revoke temporary API tokens."""
    args = (command.args or "list").split()
    service = plane.temporary_tokens
    if args[0] == "list" and len(args) == 1:
        found = await service.list(actor)
        lines = ["🔑 <b>Temporary API tokens</b>"] + [
            f"<code>{e(t.id)}</code> {e(t.name)} · {t.role.value} · {t.state()} · expires "
            f"{when(t.expires_at)} · by {e(t.issued_by)}"
            for t in found
        ]
        await ui.reply(message.chat.id, "\n".join(lines) if found else "No temporary tokens.")
    elif args[0] == "revoke" and len(args) == 2:
        revoked = await service.revoke(actor, args[1])
        await ui.reply(
            message.chat.id, f"🔒 Token <code>{e(revoked.id)}</code> ({e(revoked.name)}) revoked."
        )
    elif args[0] == "issue" and len(args) == 4:
        if message.chat.type != "private":
            raise InvalidInput("tokens are only issued in a private chat with the bot")
        issued = await service.issue(actor, name=args[1], role=args[2], ttl=args[3])
        t = issued.token
        await ui.reply(
            message.chat.id,
            f"🔑 Token <b>{e(t.name)}</b> ({t.role.value}) until {when(t.expires_at)}:"
            f"\n<code>{e(issued.value.get_secret_value())}</code>\nShown once; "
            "store it now. Revoke with /token revoke " + e(t.id),
        )
    else:
        raise InvalidInput(USAGE)


def router() -> Router:
    """The tokens feature's handler."""
    r = Router(name="tokens")
    r.message.register(token, Command("token"))
    return r
