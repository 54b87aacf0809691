"""The one access check for every update: deny by default, then who the actor is.

Unknown users get one polite refusal per hour (counted, audited and throttled by core's
``RefusalRecorder``, so the hour holds across replicas), never data. Being in the ops
group grants nothing: only ``TELEGRAM_ADMINS/OPERATORS/VIEWERS`` do (``core.security.access``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Chat, Message, TelegramObject, User

from bot.callbacks import ConfirmButton, IncidentButton, ProposalButton, StormButton, handling
from bot.handlers import all_commands
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import OperationError
from core.models import Actor, ActorKind
from core.security.access import telegram_role

logger = logging.getLogger(__name__)

REFUSAL = (
    "Sorry, you are not authorised to use this bot. Ask an admin to add your Telegram "
    "id ({user_id}) to TELEGRAM_VIEWERS, TELEGRAM_OPERATORS or TELEGRAM_ADMINS."
)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


UNKNOWN = "unknown"
# Button prefixes the bot packs (bot/callbacks.py); other callback data is a forged press.
_BUTTONS = frozenset(
    button.__prefix__ for button in (IncidentButton, ProposalButton, ConfirmButton, StormButton)
)


@cache
def _commands() -> frozenset[str]:
    """The commands the bot registers (``/start`` is help's unlisted alias)."""
    return frozenset(f"/{name}" for name, _ in all_commands()) | {"/start"}


def command_name(event: TelegramObject) -> str:
    """A short name of what was asked, for metrics and audit: one of the bot's own commands or
    buttons, else ``unknown``, so what a sender types can never add a metric series."""
    if isinstance(event, Message):
        text = event.text or ""
        if text.startswith("/"):
            command = text.split()[0].split("@")[0]
            return command if command in _commands() else UNKNOWN
        return "text"
    if isinstance(event, CallbackQuery):
        prefix = (event.data or "").split(":")[0]
        return f"button:{prefix if prefix in _BUTTONS else UNKNOWN}"
    return type(event).__name__


def actor_for(user: User, plane: ControlPlane) -> Actor:
    """The actor a Telegram user acts as (role None when not listed)."""
    name = f"@{user.username}" if user.username else user.full_name
    return Actor(
        kind=ActorKind.TELEGRAM,
        id=str(user.id),
        name=name,
        role=telegram_role(plane.settings, user.id),
    )


class AccessMiddleware(BaseMiddleware):
    """Resolves the actor, refuses unknown users, and counts every command's outcome."""

    def __init__(self, plane: ControlPlane, ui: Ui) -> None:
        self._plane = plane
        self._ui = ui

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        self._ui.seen_update()
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None
        actor = actor_for(user, self._plane)
        name = command_name(event)
        metrics = self._plane.metrics
        if actor.role is None:
            metrics.telegram_commands.labels(name, "unauthorized").inc()
            await self._refuse(event, user, actor, name)
            return None
        data["actor"] = actor
        try:
            with handling(data.get("event_update")):  # what a confirmation would replay
                result = await handler(event, data)
        except OperationError:
            metrics.telegram_commands.labels(name, "refused").inc()
            raise
        except Exception:
            metrics.telegram_commands.labels(name, "error").inc()
            raise
        metrics.telegram_commands.labels(name, "ok").inc()
        return result

    async def _refuse(self, event: TelegramObject, user: User, actor: Actor, name: str) -> None:
        """Tell an unknown user once per throttle period (shared by every replica) how to get
        access; the refusal is counted and audited by core's recorder."""
        audited = await self._plane.refusals.record(
            actor,
            "telegram.refused",
            "unknown_user",
            channel="telegram",
            target=name,
            detail="user not in TELEGRAM_ADMINS/OPERATORS/VIEWERS",
        )
        if not audited:
            if isinstance(event, CallbackQuery):
                await event.answer("Not authorised.", show_alert=True)
            return
        logger.warning("refused Telegram user %d (%s) for %s", user.id, actor.name, name)
        text = REFUSAL.format(user_id=user.id)
        if isinstance(event, CallbackQuery):
            await event.answer(text, show_alert=True)
        elif isinstance(event, Message):
            await self._ui.reply(event.chat.id, text)


class ChatScopeMiddleware(BaseMiddleware):
    """Acts only in the configured chats (ops, escalation, security, or the supergroups they
    migrated to) and in private chats, where ``AccessMiddleware`` then admits known users only;
    ignores forwarded messages.

    A command in a forwarded message would run as whoever forwarded it, with words someone else
    wrote; a group the bot was merely added to is not where on-call works. Such updates get no
    answer at all; an unconfigured chat is audited as a refusal once per throttle period (core's
    ``RefusalRecorder``, shared by every replica).
    """

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        s = plane.settings
        chats = (s.telegram_ops_chat_id, s.telegram_escalation_chat_id, s.telegram_security_chat_id)
        self._configured = {c for c in chats if c is not None}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Message) and event.forward_origin is not None:
            logger.info("ignored a forwarded message in chat %d", event.chat.id)
            return None
        chat: Chat | None = data.get("event_chat")
        # No chat: a press on an inline-mode message, which this bot never sends; the press
        # carries no data we signed, and AccessMiddleware and the signature check refuse it.
        if chat is None or chat.type == "private" or await self._configured_chat(chat.id):
            return await handler(event, data)
        await self._refuse(chat, event, data.get("event_from_user"))
        return None

    async def _configured_chat(self, chat_id: int) -> bool:
        if chat_id in self._configured:
            return True
        delivery = self._plane.telegram_delivery
        return any([await delivery.migrated(c) == chat_id for c in self._configured])

    async def _refuse(self, chat: Chat, event: TelegramObject, user: User | None) -> None:
        principal = Actor(
            kind=ActorKind.TELEGRAM,
            id=f"chat:{chat.id}",
            name=chat.title or str(chat.id),
            role=None,  # unknown: throttled to one audit entry per chat per period
        )
        who = f"user {user.id}" if user is not None else "no user"
        audited = await self._plane.refusals.record(
            principal,
            "telegram.refused",
            "unconfigured_chat",
            channel="telegram",
            target=command_name(event),
            detail=f"chat not in TELEGRAM_OPS/ESCALATION/SECURITY_CHAT_ID ({who})",
        )
        if audited:
            logger.warning("ignoring updates in unconfigured chat %d (%s)", chat.id, who)
