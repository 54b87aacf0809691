"""Button presses: typed, signed callback data and user-bound, expiring confirmations.

Every button's data carries an HMAC (key from the state dir) so a crafted press is refused; all
of it fits Telegram's 64 bytes. Confirmations are single-use tokens bound to the user who asked,
so a forwarded, replayed or someone else's press is refused; they live in the store, so any
replica can take a press.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Update

from core.errors import OperationError
from core.models.incidents import Incident, IncidentAction
from core.security.confirmations import ConfirmationService

MAX_DATA = 64


class Signed(CallbackData, prefix="x"):
    """Base of signed button data: ``sig`` covers every other field."""

    sig: str = ""


class IncidentButton(Signed, prefix="i"):
    """A press on an incident message: a(ck), u(nack), r(esolve), s(ilence), l(ift), d(iagnose)."""

    action: str
    incident: int
    arg: str = ""


class ProposalButton(Signed, prefix="p"):
    """An action the assistant proposed: a(ck), t(oggle core), f(ailover), b(ackup)."""

    kind: str
    target: str = ""
    enabled: str = ""


class ConfirmButton(Signed, prefix="c"):
    """Confirm (``yes``) or cancel a pending dangerous action."""

    token: str
    yes: bool


class StormButton(Signed, prefix="b"):
    """A bulk press on a storm board: a(cknowledge all) or s(ilence the storm for 1 h)."""

    action: str
    storm: str


class Signer:
    """Signs and checks callback data with the state dir's callback-signing key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, unsigned: str) -> str:
        digest = hmac.new(self._key, unsigned.encode(), hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def pack(self, data: Signed) -> str:
        """The signed callback string for ``data``."""
        unsigned = data.model_copy(update={"sig": ""}).pack()
        packed = data.model_copy(update={"sig": self._mac(unsigned)}).pack()
        if len(packed.encode()) > MAX_DATA:
            raise ValueError(f"callback data over {MAX_DATA} bytes: {packed!r}")
        return packed

    def verify(self, data: Signed) -> bool:
        """True when ``data`` was signed by us."""
        unsigned = data.model_copy(update={"sig": ""}).pack()
        return hmac.compare_digest(self._mac(unsigned), data.sig)

    def button(self, text: str, data: Signed) -> InlineKeyboardButton:
        """An inline button carrying signed ``data``."""
        return InlineKeyboardButton(text=text, callback_data=self.pack(data))


def incident_keyboard(
    signer: Signer, incident: Incident, *, diagnose: bool = False
) -> InlineKeyboardMarkup | None:
    """Buttons for the actions the incident's state allows (core's rule; none once resolved)."""
    allowed = incident.allowed_actions
    if not allowed:
        return None

    def b(text: str, action: str, arg: str = "") -> InlineKeyboardButton:
        return signer.button(text, IncidentButton(action=action, incident=incident.id, arg=arg))

    first = []
    if IncidentAction.ACKNOWLEDGE in allowed:
        first.append(b("👀 Acknowledge", "a"))
    if IncidentAction.UNACKNOWLEDGE in allowed:
        first.append(b("↩️ Unacknowledge", "u"))
    if IncidentAction.RESOLVE in allowed:
        first.append(b("✅ Resolve", "r"))
    rows = [first]
    # One row for the silence: lift it while silenced (extending it stays a /silence command).
    if IncidentAction.UNSILENCE in allowed:
        rows.append([b("🔔 Unsilence", "l")])
    elif IncidentAction.SILENCE in allowed:
        rows.append([b(f"🔕 {d}", "s", d) for d in ("1h", "4h", "24h")])
    if diagnose and IncidentAction.DIAGNOSE in allowed:
        rows.append([b("🩺 Diagnose", "d")])
    return InlineKeyboardMarkup(inline_keyboard=[row for row in rows if row])


def storm_keyboard(signer: Signer, storm_id: str) -> InlineKeyboardMarkup:
    """The bulk buttons on a storm board's first message."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                signer.button("👀 Acknowledge all", StormButton(action="a", storm=storm_id)),
                signer.button("🔕 Silence the storm 1h", StormButton(action="s", storm=storm_id)),
            ]
        ]
    )


# The update being handled (set by the access middleware), and whether it is being replayed
# after its asker confirmed: what a confirmation keeps, and how it is carried out.
_HANDLING: ContextVar[Update | None] = ContextVar("lunia_bot_update", default=None)
_CONFIRMED: ContextVar[bool] = ContextVar("lunia_bot_confirmed", default=False)


@contextmanager
def handling(update: Update | None) -> Iterator[None]:
    """Mark ``update`` as the one being handled, for a confirmation it may ask for."""
    token = _HANDLING.set(update)
    try:
        yield
    finally:
        _HANDLING.reset(token)


@dataclass
class Pending:
    """A confirmed request: who asked, what for, and the update that asked (to replay)."""

    user_id: int
    description: str
    update: dict[str, Any]

    @property
    def answers_press(self) -> bool:
        """A replayed button press answers the Confirm press itself."""
        return "callback_query" in self.update


class Confirmations:
    """Single-use confirmation tokens bound to a user, expiring after ``ttl`` seconds.

    They are kept by core's ``ConfirmationService`` (in the store), so a Confirm press that
    reaches another replica works: what it confirms is the update that asked, handled again
    with ``confirmed()`` true, so the handler's action runs with ``confirm=True``.
    """

    def __init__(self, service: ConfirmationService) -> None:
        self._service = service

    @property
    def ttl(self) -> float:
        """Seconds a confirmation stays valid."""
        return self._service.ttl.total_seconds()

    @staticmethod
    def confirmed() -> bool:
        """True while a confirmed request is being replayed."""
        return _CONFIRMED.get()

    async def ask(self, user_id: int, description: str) -> str:
        """Keep the update being handled for ``user_id`` to confirm; return the token."""
        update = _HANDLING.get()
        if update is None:
            raise RuntimeError("a confirmation is asked for outside the handling of an update")
        raw = update.model_dump(mode="json", by_alias=True, exclude_none=True)
        pending = await self._service.ask(str(user_id), description, {"update": raw})
        return pending.token

    def keyboard(self, signer: Signer, token: str) -> InlineKeyboardMarkup:
        """Confirm / Cancel buttons for ``token``."""
        return InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    signer.button("⚠️ Confirm", ConfirmButton(token=token, yes=True)),
                    signer.button("Cancel", ConfirmButton(token=token, yes=False)),
                ]
            ]
        )

    async def take(self, token: str, user_id: int) -> Pending | str:
        """The pending request for this user (consumed), or why it cannot be had."""
        try:
            taken = await self._service.take(token, str(user_id))
        except OperationError as exc:
            return exc.message
        return Pending(user_id, taken.description, taken.payload["update"])

    @staticmethod
    async def replay(
        pending: Pending, dispatcher: Dispatcher, bot: Bot, press: CallbackQuery
    ) -> None:
        """Handle the asking update again, confirmed; a button press answers ``press``."""
        raw = dict(pending.update)
        if pending.answers_press:  # the original press was answered long ago
            raw["callback_query"] = {**raw["callback_query"], "id": press.id}
        update = Update.model_validate(raw, context={"bot": bot})
        token = _CONFIRMED.set(True)
        try:
            await dispatcher.feed_update(bot, update)
        finally:
            _CONFIRMED.reset(token)
