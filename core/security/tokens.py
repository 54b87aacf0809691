"""Temporary API tokens: issued by an admin with a role and an expiry, listed, revoked.

A token's value is shown once, when it is issued; only its sha256 is stored (``token:<id>`` in
the store's small values, with the ids under ``token-index``). Issue and revoke are audited, and
refusals too. The API accepts a live token and refuses an expired or revoked one; the daily
checklist flags tokens due to rotate. Other processes (the CLI, replicas) see changes within
``REFRESH_SECONDS``.

Only a configured admin token, an admin in chat or the CLI issues tokens: a temporary token never
mints another, so a leaked one cannot outlive its own expiry or revocation. Each record names its
issuer, and revoking a token revokes every token it issued (older records included), each with
its own audit entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, SecretStr

from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.models import Actor, ActorKind, AuditRecord, Role, parse_duration, utcnow
from core.models.ops import ChecklistItem, Mark
from core.platform.metrics import Metrics
from core.security.access import Guard
from core.security.audit import AuditLog
from core.security.refusals import RefusalRecorder
from core.store import Store

INDEX_KEY = "token-index"
KEY_PREFIX = "token:"
VALUE_PREFIX = "lt_"  # makes a leaked token recognisable to secret scanners
REFRESH_SECONDS = 2.0
MAX_TTL = timedelta(days=90)
ROTATE_WITHIN = timedelta(hours=24)
FORGET_AFTER = timedelta(days=30)  # expired or revoked records are pruned after this
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ACTOR_PREFIX = "token:"  # the actor id of a temporary token; configured ones are ``<role>-<n>``
MINT_REFUSAL = "a temporary token cannot issue tokens; use a configured admin token"


class TemporaryToken(BaseModel):
    """What is known about a temporary token; never its value."""

    id: str
    name: str
    role: Role
    issued_at: datetime
    expires_at: datetime
    issued_by: str
    # Who issued it, as ``<actor kind>:<actor id>`` (``api:token:<id>`` for a temporary token);
    # None on records written before issuers were kept.
    issuer: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def state(self, now: datetime | None = None) -> str:
        """``live``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if (now or utcnow()) >= self.expires_at else "live"


class IssuedToken(BaseModel):
    """A freshly issued token: the only time its value is available."""

    token: TemporaryToken
    value: SecretStr


class _StoredToken(TemporaryToken):
    sha256: str

    def public(self) -> TemporaryToken:
        return TemporaryToken.model_validate(self.model_dump(exclude={"sha256"}))


# TokenService.list shadows the builtin inside the class.
_Records = list[_StoredToken]
_Items = list[ChecklistItem]


@dataclass(frozen=True)
class TokenCheck:
    """A presented temporary token: its actor when live, else why it is refused."""

    actor: Actor | None
    refusal: str | None = None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def is_temporary(actor: Actor) -> bool:
    """True when ``actor`` authenticated with a temporary token."""
    return actor.kind is ActorKind.API and actor.id.startswith(ACTOR_PREFIX)


def _issuer(actor: Actor) -> str:
    return f"{actor.kind.value}:{actor.id}"


class TokenService:
    """Issues, lists, revokes and resolves temporary API tokens."""

    def __init__(self, store: Store, audit: AuditLog, metrics: Metrics) -> None:
        self._store = store
        self._audit = audit
        self._guard = Guard(audit, metrics)
        self._refusals = RefusalRecorder(audit, metrics)
        self._lock = asyncio.Lock()
        self._cache: dict[str, _StoredToken] = {}
        self._loaded_at: float | None = None

    async def issue(
        self,
        actor: Actor,
        *,
        name: str,
        role: Role | str,
        ttl: timedelta | str,
        now: datetime | None = None,
    ) -> IssuedToken:
        """Issue a token (admin, never a temporary token) with ``role`` that expires after
        ``ttl`` (``8h``, ``30m``...)."""
        name, role, ttl = await self.check_issue(actor, name=name, role=role, ttl=ttl)
        now = now or utcnow()
        async with self._lock:
            records = await self._load()
            if any(r.name == name and r.state(now) == "live" for r in records):
                raise Conflict(f"a live token named {name} exists; revoke it or pick another name")
            value = VALUE_PREFIX + secrets.token_urlsafe(32)
            record = _StoredToken(
                id=secrets.token_hex(4),
                name=name,
                role=role,
                issued_at=now,
                expires_at=now + ttl,
                issued_by=actor.name,
                issuer=_issuer(actor),
                sha256=_digest(value),
            )
            await self._store.set_value(KEY_PREFIX + record.id, record.model_dump(mode="json"))
            kept = [r.id for r in records if not _forgettable(r, now)]
            for gone in {r.id for r in records} - set(kept):
                await self._store.set_value(KEY_PREFIX + gone, None)
            await self._store.set_value(INDEX_KEY, [*kept, record.id])
            self._loaded_at = None
        await self._audit.record(
            AuditRecord(
                actor=actor,
                action="token.issue",
                target=f"token:{record.id}",
                after={"name": name, "role": role.value, "expires_at": record.expires_at},
            )
        )
        return IssuedToken(token=record.public(), value=SecretStr(value))

    async def check_issue(
        self, actor: Actor, *, name: str, role: Role | str, ttl: timedelta | str
    ) -> tuple[str, Role, timedelta]:
        """The validated arguments of an issue ``actor`` may make, or the refusal (audited) or
        ``InvalidInput``; lets an adapter ask for confirmation of exactly what will be issued."""
        if is_temporary(actor):
            await self._refusals.record(
                actor, "token.issue", "temporary_token", target=name, detail=MINT_REFUSAL
            )
            raise PermissionDenied(MINT_REFUSAL)
        await self._guard.require(
            actor, Role.ADMIN, "issuing an API token", action="token.issue", target=name
        )
        return _checked(name, role, ttl)

    async def list(self, actor: Actor) -> list[TemporaryToken]:
        """Every remembered token (admin), newest first: names, roles, expiry, issuer."""
        await self._guard.require(actor, Role.ADMIN, "listing API tokens", action="token.list")
        return [r.public() for r in await self._load()]

    async def revoke(self, actor: Actor, token_id: str) -> TemporaryToken:
        """Revoke a token (admin) and every live token it issued, directly or through others:
        they stop working at once here, within seconds elsewhere."""
        await self._guard.require(
            actor, Role.ADMIN, "revoking an API token", action="token.revoke", target=token_id
        )
        now = utcnow()
        async with self._lock:
            raw = await self._store.get_value(KEY_PREFIX + token_id)
            if raw is None:
                raise NotFound(f"no token with id {token_id}; see the token list")
            record = _StoredToken.model_validate(raw)
            minted = [r for r in _minted_by(record, await self._load()) if r.state(now) == "live"]
            # Revoked before revocation cascaded: revoking again still ends what it issued.
            if record.revoked_at is not None and not minted:
                raise Conflict(f"token {token_id} ({record.name}) is already revoked")
            ended = [r for r in (record, *minted) if r.revoked_at is None]
            for r in ended:
                r.revoked_at, r.revoked_by = now, actor.name
                await self._store.set_value(KEY_PREFIX + r.id, r.model_dump(mode="json"))
            self._loaded_at = None
        for r in ended:
            await self._audit.record(
                AuditRecord(
                    actor=actor,
                    action="token.revoke",
                    target=f"token:{r.id}",
                    before={"name": r.name, "role": r.role.value, "issuer": r.issuer},
                    after={"revoked_at": r.revoked_at},
                    detail="" if r is record else f"issued through revoked token:{token_id}",
                )
            )
        return record.public()

    async def resolve(self, presented: str, *, now: datetime | None = None) -> TokenCheck | None:
        """The check of a presented token, or None when it is no temporary token at all."""
        if not presented.startswith(VALUE_PREFIX):
            return None
        stale = self._loaded_at is None or time.monotonic() - self._loaded_at > REFRESH_SECONDS
        if stale:
            async with self._lock:
                await self._load()
        digest = _digest(presented)
        found = next((r for d, r in self._cache.items() if hmac.compare_digest(d, digest)), None)
        if found is None:
            return None
        state = found.state(now)
        if state != "live":
            return TokenCheck(actor=None, refusal=f"token {state}")
        actor = Actor(
            kind=ActorKind.API, id=ACTOR_PREFIX + found.id, name=found.name, role=found.role
        )
        return TokenCheck(actor=actor)

    async def checklist_items(self, now: datetime | None = None) -> _Items:
        """⚠️ for tokens due to rotate: expired but not revoked, or expiring within 24 h."""
        now = now or utcnow()
        records = await self._load()
        live = [r for r in records if r.state(now) == "live"]
        due = [r for r in records if r.revoked_at is None and r.expires_at - now <= ROTATE_WITHIN]
        if not due:
            return [
                ChecklistItem(
                    name="API tokens: rotation",
                    mark=Mark.OK,
                    reason=f"{len(live)} temporary tokens live, none due to rotate",
                )
            ]
        described = [
            f"{r.name} [{r.id}] "
            + ("expired" if r.expires_at <= now else "expires")
            + f" {r.expires_at:%Y-%m-%dT%H:%MZ}"
            for r in due
        ]
        return [
            ChecklistItem(
                name="API tokens: rotation",
                mark=Mark.WARN,
                reason="rotate (issue a new one, revoke the old): " + ", ".join(described),
            )
        ]

    async def _load(self) -> _Records:
        """Every stored record, newest first, refreshing the resolve cache."""
        ids: list[str] = await self._store.get_value(INDEX_KEY) or []
        records: _Records = []
        for token_id in ids:
            raw: dict[str, Any] | None = await self._store.get_value(KEY_PREFIX + token_id)
            if raw is not None:
                records.append(_StoredToken.model_validate(raw))
        records.sort(key=lambda r: r.issued_at, reverse=True)
        self._cache = {r.sha256: r for r in records}
        self._loaded_at = time.monotonic()
        return records


def _checked(name: str, role: Role | str, ttl: timedelta | str) -> tuple[str, Role, timedelta]:
    """Validated issue arguments, or ``InvalidInput`` saying what is wrong."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            "token name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    try:
        role = Role(str(role).strip().lower())
    except ValueError:
        raise InvalidInput("role must be viewer, operator or admin") from None
    if isinstance(ttl, str):
        ttl = parse_duration(ttl)
    if ttl <= timedelta(0) or ttl > MAX_TTL:
        raise InvalidInput(f"ttl must be between 1s and {MAX_TTL.days}d")
    return name, role, ttl


def _minted_by(root: _StoredToken, records: _Records) -> _Records:
    """Every record issued by ``root``, directly or through tokens it issued.

    Records without an issuer predate it being kept: they count as issued by a token of the same
    name during that token's lifetime (when temporary tokens could still mint). A configured token
    of the same name would match too; revoking one token too many is the safe direction.
    """
    found: _Records = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        ended = parent.revoked_at or parent.expires_at
        for r in records:
            if r.id == root.id or any(r.id == f.id for f in found):
                continue
            direct = r.issuer == _issuer_of_token(parent.id)
            legacy = (
                r.issuer is None
                and r.issued_by == parent.name
                and parent.issued_at <= r.issued_at <= ended
            )
            if direct or legacy:
                found.append(r)
                frontier.append(r)
    return found


def _issuer_of_token(token_id: str) -> str:
    return f"{ActorKind.API.value}:{ACTOR_PREFIX}{token_id}"


def _forgettable(record: _StoredToken, now: datetime) -> bool:
    ended = record.revoked_at or record.expires_at
    return record.state(now) != "live" and now - ended > FORGET_AFTER
