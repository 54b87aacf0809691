"""Temporary API tokens from chat (admin): issue with an expiry, list, revoke.

Issuing asks the admin to confirm (a Confirm button only they can press). A token's value is shown
once, in the reply to that press, and only in a private chat with the admin who issued it: never
in a group, never in logs or the audit log.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.render import e, when
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import ConfirmationRequired, InvalidInput
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
        await _issue_confirmed(message, plane, ui, actor, args[1:])
    else:
        raise InvalidInput(USAGE)


async def _issue_confirmed(
    message: Message, plane: ControlPlane, ui: Ui, actor: Actor, args: list[str]
) -> None:
    """Check the request, then issue only when its asker presses Confirm; the value is in that
    one reply and nowhere else."""
    service = plane.temporary_tokens
    name, role, ttl = await service.check_issue(actor, name=args[0], role=args[1], ttl=args[2])

    async def apply(confirm: bool) -> str:
        if not confirm:
            raise ConfirmationRequired(
                f"Issue API token {name} with the {role.value} role for {args[2]}? "
                "Anyone holding its value acts as that role until it expires (or /token revoke)."
            )
        issued = await service.issue(actor, name=name, role=role, ttl=ttl)
        t = issued.token
        return (
            f"🔑 Token <b>{e(t.name)}</b> ({t.role.value}) until {when(t.expires_at)}:"
            f"\n<code>{e(issued.value.get_secret_value())}</code>\nShown once; "
            "store it now. Revoke with /token revoke " + e(t.id)
        )

    user_id = message.from_user.id if message.from_user else 0
    # The value is in the outbox only until delivered, then wiped (issue 16 point 4).
    await ui.confirm_or_run(message.chat.id, user_id, apply, sensitive=True)


def router() -> Router:
    """The tokens feature's handler."""
    r = Router(name="tokens")
    r.message.register(token, Command("token"))
    return r
