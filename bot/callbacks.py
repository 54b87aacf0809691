"""Button presses: typed, signed callback data and user-bound, expiring confirmations.

Every button's data carries an HMAC (key from the state dir) so a crafted press is refused; all
of it fits Telegram's 64 bytes. Confirmations are single-use tokens bound to the user who asked,
so a forwarded, replayed or someone else's press is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from core.models.incidents import Incident, IncidentAction

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


Action = Callable[[], Awaitable[str]]


@dataclass
class Pending:
    """A dangerous action waiting for its asker's confirmation."""

    user_id: int
    description: str
    action: Action
    expires: float


class Confirmations:
    """Single-use confirmation tokens, bound to a user, expiring after ``ttl`` seconds."""

    def __init__(self, ttl: float = 120.0) -> None:
        self.ttl = ttl
        self._pending: dict[str, Pending] = {}

    def ask(self, user_id: int, description: str, action: Action) -> str:
        """Register ``action`` and return its token."""
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
        token = secrets.token_urlsafe(9)
        self._pending[token] = Pending(user_id, description, action, now + self.ttl)
        return token

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

    def take(self, token: str, user_id: int) -> Pending | str:
        """The pending action for this user (consumed), or why it cannot be had."""
        pending = self._pending.get(token)
        if pending is None:
            return "This confirmation was already used or has expired; ask again."
        if pending.user_id != user_id:
            return "Only the person who asked can confirm this."
        del self._pending[token]
        if pending.expires < time.monotonic():
            return "This confirmation has expired; ask again."
        return pending
