"""Storm boards in chat: each board message is sent once, then edited in place.

The notifier saves what each message of a board should show (``StormBoards.set_part``) and
queues ``{"op": "board", "chat_id", "storm", "part"}``; this module, called by the sender at
delivery, shows the *latest* saved text. So queued updates coalesce: a text already on screen
costs no Bot API call (Telegram would answer 400 "message is not modified" anyway).
"""

from __future__ import annotations

import hashlib

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest

from bot.callbacks import Signer, storm_keyboard
from core.incidents.storm import ShownPart, StormBoards


class BoardPoster:
    """Sends or edits one message of a storm board."""

    def __init__(self, bot: Bot, boards: StormBoards, signer: Signer) -> None:
        self._bot = bot
        self._boards = boards
        self._signer = signer

    async def show(self, chat_id: int, storm_id: str, part: int) -> bool:
        """Bring message ``part`` of the board up to date; False when it already was."""
        wanted = await self._boards.part(storm_id, part)
        markup = storm_keyboard(self._signer, storm_id) if wanted.buttons else None
        digest = hashlib.sha256(f"{wanted.text}\0{wanted.buttons}".encode()).hexdigest()[:16]
        shown = await self._boards.shown(storm_id, part)
        if not wanted.text or (shown is not None and shown.shown_hash == digest):
            return False
        message_id = shown.message_id if shown is not None else None
        if message_id is not None:
            try:
                await self._bot.edit_message_text(
                    text=wanted.text,
                    chat_id=chat_id,
                    message_id=message_id,
                    parse_mode="HTML",
                    reply_markup=markup,
                    disable_web_page_preview=True,
                )
            except TelegramBadRequest as exc:
                if "message to edit not found" in exc.message:
                    message_id = None  # deleted in the chat: post it again
                elif "message is not modified" not in exc.message:
                    raise
        if message_id is None:
            message = await self._bot.send_message(
                chat_id,
                wanted.text,
                parse_mode="HTML",
                reply_markup=markup,
                disable_web_page_preview=True,
            )
            message_id = message.message_id
        await self._boards.set_shown(
            storm_id, part, ShownPart(message_id=message_id, shown_hash=digest)
        )
        return True
