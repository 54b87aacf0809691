"""Who may do what: roles, the one bearer-token authenticator and the single permission check.

Deny by default: an actor with no role can do nothing, and every refusal names the role needed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from core.config.settings import ApiToken, Settings
from core.errors import PermissionDenied, Unauthenticated
from core.models import Actor, ActorKind, Role
from core.security.refusals import RefusalRecorder

if TYPE_CHECKING:
    from core.platform.metrics import Metrics
    from core.security.audit import AuditLog
    from core.security.tokens import TokenService


def require(actor: Actor, needed: Role, action: str) -> None:
    """Raise ``PermissionDenied`` unless ``actor`` holds at least ``needed``."""
    if actor.role is None or not actor.role.allows(needed):
        held = actor.role.value if actor.role else "no role"
        raise PermissionDenied(f"{action} needs the {needed.value} role; you have {held}")


class Guard:
    """The permission check for mutating operations: a refusal is counted and audited, so
    attempts show in the audit log whichever adapter they came through."""

    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self._refusals = RefusalRecorder(audit, metrics)

    async def require(
        self,
        actor: Actor,
        needed: Role,
        what: str,
        *,
        action: str,
        target: str = "",
        before: Any = None,
        after: Any = None,
    ) -> None:
        """``require``, and on refusal one ``outcome="denied"`` audit entry naming ``action``."""
        try:
            require(actor, needed, what)
        except PermissionDenied as exc:
            await self._refusals.record(
                actor,
                action,
                "role",
                target=target,
                before=before,
                after=after,
                detail=exc.message,
            )
            raise


def telegram_role(settings: Settings, user_id: int) -> Role | None:
    """The role a Telegram user holds (highest listed wins); None means no access at all.

    Being a member of the ops group grants nothing: only the id lists do.
    """
    if user_id in settings.telegram_admins:
        return Role.ADMIN
    if user_id in settings.telegram_operators:
        return Role.OPERATOR
    if user_id in settings.telegram_viewers:
        return Role.VIEWER
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthority:
    """Maps bearer tokens to API actors without ever storing or logging the tokens."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        self._entries = [(_digest(t.token), t.name, t.role) for t in tokens]

    def names(self) -> list[tuple[str, Role]]:
        """Token names and roles, for access reviews."""
        return [(name, role) for _, name, role in self._entries]

    def resolve(self, presented: str) -> Actor | None:
        """The actor for a presented token, or None; compares every entry in constant time."""
        digest = _digest(presented)
        found: Actor | None = None
        for known, name, role in self._entries:
            if hmac.compare_digest(known, digest):
                found = Actor(kind=ActorKind.API, id=name, name=name, role=role)
        return found


class Authenticator:
    """The one bearer-token policy of every HTTP entry point: configured tokens, then live
    temporary ones; a missing, unknown, expired or revoked token is refused (and recorded)."""

    def __init__(
        self, tokens: TokenAuthority, temporary: TokenService, refusals: RefusalRecorder
    ) -> None:
        self._tokens = tokens
        self._temporary = temporary
        self._refusals = refusals

    async def authenticate(self, presented: str | None, *, caller: str) -> Actor:
        """The API actor for ``presented``, or ``Unauthenticated`` saying why not; ``caller``
        (e.g. the client address) names who is refused in the audit log."""
        if not presented:
            raise await self._refuse(
                "missing_token", "missing bearer token (Authorization: Bearer <token>)", caller
            )
        actor = self._tokens.resolve(presented)
        if actor is not None:
            return actor
        check = await self._temporary.resolve(presented)
        if check is not None and check.refusal is not None:
            raise await self._refuse("expired_token", check.refusal, caller)
        if check is None or check.actor is None:
            raise await self._refuse("bad_token", "invalid bearer token", caller)
        return check.actor

    async def check_secret(
        self,
        presented: str | None,
        expected: str,
        *,
        channel: str,
        caller: str,
        message: str,
        reason: str = "bad_token",
    ) -> None:
        """Compare a webhook's shared secret in constant time; refuse (and record) a mismatch."""
        if not hmac.compare_digest((presented or "").encode(), expected.encode()):
            raise await self._refuse(reason, message, caller, channel=channel)

    async def _refuse(
        self, reason: str, message: str, caller: str, *, channel: str = "api"
    ) -> Unauthenticated:
        principal = Actor(kind=ActorKind.API, id=caller, name=caller, role=None)
        await self._refusals.record(
            principal, f"{channel}.unauthenticated", reason, channel=channel, detail=message
        )
        return Unauthenticated(message, reason=reason)
