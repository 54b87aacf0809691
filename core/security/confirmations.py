"""Pending confirmations of dangerous actions: single use, bound to the person who asked,
expiring, and kept in the store so that a Confirm press reaching another replica still works.

What the action is travels as an opaque JSON ``payload`` chosen by the adapter (the bot keeps
the update that asked, and replays it confirmed); core only guards who may take it, and once.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from core.errors import Conflict, PermissionDenied
from core.models import utcnow
from core.store import Confirmation, Store

CONFIRM_TTL = timedelta(seconds=120)


class ConfirmationService:
    """Asks for and takes confirmations; each can be taken once, by its owner, before expiry."""

    def __init__(self, store: Store, *, ttl: timedelta = CONFIRM_TTL) -> None:
        self._store = store
        self.ttl = ttl

    async def ask(self, owner: str, description: str, payload: dict[str, Any]) -> Confirmation:
        """Keep a new pending confirmation for ``owner`` and return it (with its token)."""
        pending = Confirmation(
            token=secrets.token_urlsafe(9),
            owner=owner,
            description=description,
            payload=payload,
            expires_at=utcnow() + self.ttl,
        )
        await self._store.put_confirmation(pending)
        return pending

    async def take(self, token: str, owner: str) -> Confirmation:
        """Consume ``token`` for ``owner``; ``PermissionDenied`` for someone else's (it stays
        theirs), ``Conflict`` when it was used, never existed or expired."""
        taken = await self._store.take_confirmation(token, owner, utcnow())
        if taken.outcome == "not_owner":
            raise PermissionDenied("Only the person who asked can confirm this.")
        if taken.outcome == "expired":
            raise Conflict("This confirmation has expired; ask again.")
        if taken.confirmation is None:
            raise Conflict("This confirmation was already used or has expired; ask again.")
        return taken.confirmation
