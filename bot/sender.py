"""Delivers the ``telegram`` outbox: sends, edits and photos, paced and retried correctly.

Payloads (written by ``bot.notifier`` and the handlers) are small JSON dicts:

- ``{"op": "text", "chat_id", "text", "reply_to_incident"?, "keyboard"?}``
- ``{"op": "incident", "chat_id", "incident_id"}``: send the incident's message, or edit it if
  it was sent already; the text is rendered from the incident's *current* state at delivery, so
  queued edits coalesce (an unchanged text is not sent again).
- ``{"op": "photo", "chat_id", "png_b64", "caption"}``
- ``{"op": "board", "chat_id", "storm", "part"}``: one message of a storm board (``bot.board``)
- ``{"op": "checklist", "chat_id", "checklist"}``: the daily checklist queued by the scheduler's
  job in the worker (``core.ops.checklist``), rendered here and sent in as many messages as its
  length needs (a retry after a partial send repeats the whole checklist: at least once)

429 waits exactly ``retry_after``; "message is not modified" counts as done; unparsable HTML is
resent as plain text; a migrated group is followed and remembered; a chat that blocked or
removed the bot is a failed route, raised as an incident, and its messages are kept as failed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, Message

from bot.board import BoardPoster
from bot.callbacks import Signer, incident_keyboard
from bot.pacing import Pacer
from bot.render import checklist_text, incident_message, split_html, strip_html
from core.control_plane import ControlPlane
from core.errors import NotFound
from core.incidents.delivery import ShownMessage
from core.models import OutboxItem
from core.models.alerts import Severity
from core.models.ops import Checklist
from core.platform.metrics import Metrics
from core.platform.outbox import Delivery

logger = logging.getLogger(__name__)


class TelegramSender:
    """The ``telegram`` outbox's deliver function, and the bot's delivery health."""

    def __init__(
        self,
        bot: Bot,
        plane: ControlPlane,
        signer: Signer,
        metrics: Metrics,
        pacer: Pacer | None = None,
        *,
        diagnose_button: bool = False,
    ) -> None:
        self._bot = bot
        self._plane = plane
        self._delivery = plane.telegram_delivery
        self._signer = signer
        self._metrics = metrics
        self._pacer = pacer or Pacer()
        self._migrated: dict[int, int] = {}
        self._diagnose = diagnose_button
        self._board = BoardPoster(bot, plane.storm_boards, signer)
        self.last_success: float | None = None
        self.failed_chats: set[int] = set()

    async def resolve_chat(self, chat_id: int) -> int:
        """The chat's current id (following group → supergroup migrations)."""
        if chat_id not in self._migrated:
            moved = await self._delivery.migrated(chat_id)
            self._migrated[chat_id] = moved if moved is not None else chat_id
        return self._migrated[chat_id]

    async def deliver(self, item: OutboxItem) -> Delivery:
        """Attempt one queued message."""
        payload = item.payload
        chat_id = await self.resolve_chat(int(payload["chat_id"]))
        wait = self._pacer.wait(chat_id)
        if wait > 0:
            return Delivery.defer(wait)
        method = str(payload.get("op"))
        try:
            called = await self._perform(chat_id, payload)
        except TelegramRetryAfter as exc:
            self._count(method, "rate_limited")
            return Delivery.retry("Telegram 429", after=float(exc.retry_after))
        except TelegramMigrateToChat as exc:
            await self._migrate(chat_id, exc.migrate_to_chat_id)
            self._count(method, "migrated")
            return Delivery.retry("chat migrated", after=0.0)
        except (TelegramForbiddenError, TelegramUnauthorizedError) as exc:
            self._count(method, "forbidden")
            await self._route_failed(chat_id, exc.message)
            return Delivery.failed(f"Telegram refused chat {chat_id}: {exc.message}")
        except TelegramBadRequest as exc:
            self._count(method, "bad_request")
            return Delivery.failed(f"Telegram rejected it: {exc.message}")
        except (TelegramNetworkError, TelegramServerError) as exc:
            self._count(method, "network_error")
            return Delivery.retry(f"Telegram unreachable: {type(exc).__name__}")
        except NotFound as exc:  # the incident is gone (e.g. restored from an older backup)
            return Delivery.failed(exc.message)
        if called:
            self._pacer.sent(chat_id)
            self.last_success = time.time()
            self._count(method, "ok")
        if chat_id in self.failed_chats:
            self.failed_chats.discard(chat_id)
        return Delivery.ok()

    def _count(self, method: str, outcome: str) -> None:
        self._metrics.telegram_sends.labels(method, outcome).inc()

    async def _perform(self, chat_id: int, payload: dict[str, Any]) -> bool:
        """Do the Bot API call(s); False when nothing needed sending (unchanged edit)."""
        op = payload.get("op")
        if op == "incident":
            return await self._incident(chat_id, int(payload["incident_id"]))
        if op == "board":
            return await self._board.show(chat_id, str(payload["storm"]), int(payload["part"]))
        if op == "checklist":
            text = checklist_text(Checklist.model_validate(payload["checklist"]))
            for part in split_html(text):
                await self._send_text(chat_id, part, None)
            return True
        if op == "photo":
            photo = BufferedInputFile(base64.b64decode(payload["png_b64"]), "chart.png")
            await self._bot.send_photo(
                chat_id, photo, caption=payload.get("caption"), parse_mode="HTML"
            )
            return True
        keyboard = payload.get("keyboard")
        markup = InlineKeyboardMarkup.model_validate(keyboard) if keyboard else None
        reply_to = None
        if payload.get("reply_to_incident"):
            shown = await self._delivery.shown(int(payload["reply_to_incident"]))
            if shown is not None and shown.chat_id == chat_id:
                reply_to = shown.message_id
        text = str(payload["text"])
        if payload.get("link_incident") and reply_to is None:
            text += await self._link(int(payload["link_incident"]))
        await self._send_text(chat_id, text, markup, reply_to)
        return True

    async def _link(self, incident_id: int) -> str:
        """A link to the incident's message when its chat is a supergroup (t.me/c/...)."""
        shown = await self._delivery.shown(incident_id)
        chat = str(shown.chat_id) if shown else ""
        if not shown or not chat.startswith("-100"):
            return ""
        url = f"https://t.me/c/{chat[4:]}/{shown.message_id}"
        return f'\n<a href="{url}">open incident</a>'

    async def _send_text(
        self,
        chat_id: int,
        text: str,
        markup: InlineKeyboardMarkup | None,
        reply_to: int | None = None,
    ) -> Message:
        kwargs: dict[str, Any] = {"reply_markup": markup, "disable_web_page_preview": True}
        if reply_to:
            kwargs["reply_to_message_id"] = reply_to
            kwargs["allow_sending_without_reply"] = True
        try:
            return await self._bot.send_message(chat_id, text, parse_mode="HTML", **kwargs)
        except TelegramBadRequest as exc:
            if "can't parse entities" not in exc.message:
                raise
            logger.warning(
                "Telegram could not parse our HTML (%s); sending plain text", exc.message
            )
            return await self._bot.send_message(
                chat_id, strip_html(text), parse_mode=None, **kwargs
            )

    async def _incident(self, chat_id: int, incident_id: int) -> bool:
        incident = await self._plane.incidents.get(incident_id)
        text = incident_message(incident)
        markup = incident_keyboard(self._signer, incident, diagnose=self._diagnose)
        digest = hashlib.sha256(
            (text + (markup.model_dump_json() if markup else "")).encode()
        ).hexdigest()[:16]
        shown = await self._delivery.shown(incident_id)
        if shown is None and await self._plane.storm_boards.covers(chat_id, incident_id):
            return False  # a storm's board names it (with its state): no message of its own
        if shown is not None and shown.hash == digest:
            return False  # coalesced: this state is already on screen
        if shown is not None:
            try:
                await self._bot.edit_message_text(
                    text=text,
                    chat_id=shown.chat_id,
                    message_id=shown.message_id,
                    parse_mode="HTML",
                    reply_markup=markup,
                    disable_web_page_preview=True,
                )
            except TelegramBadRequest as exc:
                if "message is not modified" in exc.message:
                    pass
                elif "message to edit not found" in exc.message:
                    shown = None  # deleted in the chat: post it again
                elif "can't parse entities" in exc.message:
                    await self._bot.edit_message_text(
                        text=strip_html(text),
                        chat_id=shown.chat_id,
                        message_id=shown.message_id,
                        reply_markup=markup,
                    )
                else:
                    raise
            if shown is not None:
                await self._delivery.set_shown(
                    incident_id, shown.model_copy(update={"hash": digest})
                )
                return True
        message = await self._send_text(chat_id, text, markup)
        await self._delivery.set_shown(
            incident_id, ShownMessage(chat_id=chat_id, message_id=message.message_id, hash=digest)
        )
        return True

    async def _migrate(self, old: int, new: int) -> None:
        logger.warning("Telegram chat %d was upgraded to supergroup %d; following it", old, new)
        await self._delivery.record_migration(old, new)
        self._migrated[old] = new
        for original, current in list(self._migrated.items()):
            if current == old:
                self._migrated[original] = new
                await self._delivery.record_migration(original, new)

    async def _route_failed(self, chat_id: int, reason: str) -> None:
        logger.error("Telegram chat %d is unreachable: %s", chat_id, reason)
        if chat_id in self.failed_chats:
            return
        self.failed_chats.add(chat_id)
        await self._plane.incidents.raise_engine(
            f"telegram:chat:{chat_id}",
            "TelegramRouteFailed",
            Severity.CRITICAL,
            f"Telegram refused messages to chat {chat_id}: {reason}. Re-add the bot or fix "
            "TELEGRAM_*_CHAT_ID; messages for it are kept as failed in the outbox.",
            labels={"chat_id": str(chat_id)},
        )
