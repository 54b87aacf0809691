"""What every handler gets besides the control plane: replies through the outbox, signed
buttons, confirmations, and the bot's own health."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING

from aiogram.types import CallbackQuery, InlineKeyboardMarkup

from bot.callbacks import Confirmations, Signed, Signer
from bot.render import split_html
from core.errors import ConfirmationRequired
from core.incidents.delivery import CHANNEL, ChatDeliveryState
from core.models import Actor, OutboxMessage
from core.platform.outbox import OutboxWorker

if TYPE_CHECKING:
    from core.control_plane import ControlPlane


@dataclass
class BotHealth:
    """What ``/healthz`` reports about the bot."""

    started: bool = False
    last_update: float | None = None
    conflict: str | None = None
    error: str | None = None
    refused_users: dict[int, float] = field(default_factory=dict)


class Ui:
    """Replies (durable, paced, split), signer and confirmations for the handlers."""

    def __init__(
        self,
        delivery: ChatDeliveryState,
        outbox: OutboxWorker,
        signer: Signer,
        confirmations: Confirmations,
        health: BotHealth,
        *,
        diagnose: bool,
    ) -> None:
        self._delivery = delivery
        self._outbox = outbox
        self.signer = signer
        self.confirmations = confirmations
        self.health = health
        self.diagnose = diagnose

    async def reply(
        self,
        chat_id: int,
        text: str,
        keyboard: InlineKeyboardMarkup | None = None,
        *,
        sensitive: bool = False,
    ) -> None:
        """Queue ``text`` for ``chat_id`` (split over 4096 characters; buttons on the last);
        ``sensitive``: it holds a secret, wiped from the store once delivered."""
        parts = split_html(text)
        messages = []
        for index, part in enumerate(parts):
            payload: dict[str, object] = {"op": "text", "chat_id": chat_id, "text": part}
            if keyboard is not None and index == len(parts) - 1:
                payload["keyboard"] = keyboard.model_dump(mode="json", exclude_none=True)
            messages.append(
                OutboxMessage(
                    channel=CHANNEL, key=str(chat_id), payload=payload, sensitive=sensitive
                )
            )
        await self._delivery.enqueue(messages)
        self._outbox.wake()

    async def reply_in_thread(
        self,
        chat_id: int,
        incident_id: int,
        text: str,
        keyboard: InlineKeyboardMarkup | None = None,
    ) -> None:
        """Reply to the incident's own message (its thread), split if long."""
        parts = split_html(text)
        messages = []
        for index, part in enumerate(parts):
            payload: dict[str, object] = {
                "op": "text",
                "chat_id": chat_id,
                "text": part,
                "reply_to_incident": incident_id,
            }
            if keyboard is not None and index == len(parts) - 1:
                payload["keyboard"] = keyboard.model_dump(mode="json", exclude_none=True)
            messages.append(OutboxMessage(channel=CHANNEL, key=str(chat_id), payload=payload))
        await self._delivery.enqueue(messages)
        self._outbox.wake()

    async def refresh_incident(self, chat_id: int, incident_id: int) -> None:
        """Queue a re-render of an incident's message (after a stale press)."""
        await self._delivery.enqueue(
            [
                OutboxMessage(
                    channel=CHANNEL,
                    key=str(chat_id),
                    payload={"op": "incident", "chat_id": chat_id, "incident_id": incident_id},
                )
            ]
        )
        self._outbox.wake()

    async def confirm_or_run(
        self,
        chat_id: int,
        user_id: int,
        action: Callable[[bool], Awaitable[str]],
        *,
        sensitive: bool = False,
    ) -> None:
        """Run ``action(False)``; if core says it needs confirmation, ask only this user (and
        once they confirm, this runs again as ``action(True)``; ``sensitive``: its reply holds
        a secret)."""
        if self.confirmations.confirmed():
            await self.reply(chat_id, await action(True), sensitive=sensitive)
            return
        try:
            await self.reply(chat_id, await action(False))
        except ConfirmationRequired as exc:
            token = await self.confirmations.ask(user_id, exc.message)
            await self.reply(
                chat_id,
                f"⚠️ {escape(exc.message, quote=False)}\nOnly you can confirm, within "
                f"{int(self.confirmations.ttl)}s.",
                self.confirmations.keyboard(self.signer, token),
            )

    async def photo(self, chat_id: int, png: bytes, caption: str) -> None:
        """Queue a picture (a chart) with an HTML caption."""
        await self._delivery.enqueue(
            [
                OutboxMessage(
                    channel=CHANNEL,
                    key=str(chat_id),
                    payload={
                        "op": "photo",
                        "chat_id": chat_id,
                        "caption": caption[:1024],
                        "png_b64": base64.b64encode(png).decode(),
                    },
                )
            ]
        )
        self._outbox.wake()

    async def genuine(
        self, query: CallbackQuery, data: Signed, plane: ControlPlane, actor: Actor
    ) -> bool:
        """True when the press carries our signature; otherwise refuse, audit and count it."""
        if self.signer.verify(data):
            return True
        await plane.refusals.record(
            actor,
            "telegram.forged_button",
            "forged_callback",
            channel="telegram",
            target=str(query.data)[:64],
            detail="button signature did not verify",
        )
        await query.answer("Refused: this button was not issued by this bot.", show_alert=True)
        return False

    def seen_update(self) -> None:
        """Note that Telegram delivered an update (bot health)."""
        self.health.last_update = time.time()
