"""Who may do what: roles, API token resolution and the single permission check.

Deny by default: an actor with no role can do nothing, and every refusal names the role needed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from core.config.settings import ApiToken, Settings
from core.errors import PermissionDenied
from core.models import Actor, ActorKind, AuditRecord, Role

if TYPE_CHECKING:
    from core.platform.metrics import Metrics
    from core.security.audit import AuditLog


def require(actor: Actor, needed: Role, action: str) -> None:
    """Raise ``PermissionDenied`` unless ``actor`` holds at least ``needed``."""
    if actor.role is None or not actor.role.allows(needed):
        held = actor.role.value if actor.role else "no role"
        raise PermissionDenied(f"{action} needs the {needed.value} role; you have {held}")


class Guard:
    """The permission check for mutating operations: a refusal is counted and audited, so
    attempts show in the audit log whichever adapter they came through."""

    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self._audit = audit
        self._metrics = metrics

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
            self._metrics.auth_denied.labels(actor.kind.value, "role").inc()
            self._metrics.audit_entries.labels("denied").inc()
            await self._audit.record(
                AuditRecord(
                    actor=actor,
                    action=action,
                    target=target,
                    before=before,
                    after=after,
                    outcome="denied",
                    detail=exc.message,
                )
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
