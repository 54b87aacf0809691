"""Feature flags: typed, overridable at runtime, audited, and read live by the services.

Precedence: runtime override (persisted in the store) > environment (``.env`` included) > default;
every read says which source won. Who may flip what, and which changes need an explicit
confirmation, is decided here so every adapter applies the same rule.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from core.config.settings import Settings
from core.errors import (
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    LuniaError,
    NotFound,
)
from core.models import Actor, AuditRecord, Role, utcnow
from core.platform.metrics import Metrics
from core.security.access import Guard
from core.security.audit import AuditLog
from core.store import FlagOverride, FlagVersion, Store

logger = logging.getLogger(__name__)

_TRUE = {"true", "on", "1", "yes", "y", "enable", "enabled"}
_FALSE = {"false", "off", "0", "no", "n", "disable", "disabled"}
_VENUE_ID = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


class FlagKind(enum.StrEnum):
    """The type of a flag's value."""

    BOOL = "bool"
    VENUE = "venue"


class Source(enum.StrEnum):
    """Where a flag's effective value came from."""

    OVERRIDE = "override"
    ENV = "env"
    DEFAULT = "default"


@dataclass(frozen=True)
class FlagDefinition:
    """One flag: its type, default, meaning and how dangerous each value is."""

    name: str
    kind: FlagKind
    default: Any
    description: str
    # Values that can move money or weaken security: setting them needs admin + confirmation.
    dangerous_values: tuple[Any, ...] = ()
    dangerous_any_change: bool = False
    applies: str = "immediately"
    # Read from the environment at start only (it chooses the store the overrides live in).
    env_only: bool = False

    def parse(self, raw: Any) -> Any:
        """Turn user input (chat text, JSON, CLI) into a typed value or raise ``InvalidInput``."""
        if self.kind is FlagKind.BOOL:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise InvalidInput(f"{self.name} takes true or false (on/off, yes/no), not {raw!r}")
        text = str(raw).strip().lower()
        if not _VENUE_ID.fullmatch(text):
            raise InvalidInput(f"{self.name} takes a ccxt exchange id such as okx, not {raw!r}")
        return text

    def is_dangerous(self, old: Any, new: Any) -> bool:
        """True when moving from ``old`` to ``new`` needs admin and confirmation."""
        if old == new:
            return False
        return self.dangerous_any_change or new in self.dangerous_values


def _bool(name: str, default: bool, description: str, **kw: Any) -> FlagDefinition:
    return FlagDefinition(name, FlagKind.BOOL, default, description, **kw)


# The runbook's §5 table, plus the operational switches it names elsewhere.
CATALOGUE: tuple[FlagDefinition, ...] = (
    _bool("FRONTEND_SIGNAL_HEALTH_ENABLED", True, "Serves the Signal Health page"),
    _bool(
        "INFRA_PROD_ENABLED",
        False,
        "Production hardening (strict secrets, no chaos)",
        dangerous_values=(False,),
    ),
    _bool(
        "BINANCE_FORCE_MOCK",
        False,
        "Forces paper trading on every venue",
        dangerous_values=(False,),
    ),
    _bool(
        "BINANCE_LIVE_TRADING",
        True,
        "Allows live spot orders on real venues",
        dangerous_values=(True,),
    ),
    _bool("SELF_HEALING_ENABLED", True, "Runs the health monitor loop and its remedies"),
    _bool("AUTO_BACKUP_ENABLED", True, "Takes scheduled backups"),
    _bool(
        "ENABLE_REDIS",
        False,
        "Uses Redis as the shared store and bus",
        dangerous_any_change=True,
        applies="at start, from the environment (.env)",
        env_only=True,
    ),
    _bool("LLM_RATE_LIMITED", False, "Forces the rule-based assistant (no LLM calls)"),
    _bool(
        "SANDBOX_ENABLED", False, "Switches every venue to sandbox/paper", dangerous_any_change=True
    ),
    FlagDefinition(
        "EXCHANGE_FAILOVER", FlagKind.VENUE, "okx", "Standby venue used on failover (ccxt id)"
    ),
)


class FlagState(BaseModel):
    """A flag as read now: value, where it came from, and who may change it."""

    name: str
    kind: FlagKind
    value: Any
    default: Any
    env: Any = None
    source: Source
    description: str
    applies: str
    override_set_by: str | None = None
    override_set_at: str | None = None
    # Bumped by every runtime change (set or clear); a change names the version it was based on.
    version: int = 0


ChangeListener = Callable[[FlagState, Actor], Awaitable[None]]
# Says why a value needs admin and confirmation (e.g. "okx would trade live funds"), or None.
DangerRule = Callable[[Any], str | None]


class FlagService:
    """Reads and flips feature flags; services ask it for live values, never a copy."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self._definitions = {d.name: d for d in CATALOGUE}
        self._env: dict[str, Any] = {}
        for name in self._definitions:
            field = name.lower()
            if field in settings.model_fields_set:
                self._env[name] = getattr(settings, field)
        self._store = store
        self._metrics = metrics
        self._guard = Guard(AuditLog(store, metrics), metrics)
        self._overrides: dict[str, FlagOverride] = {}
        self._versions: dict[str, FlagVersion] = {}
        self._listeners: list[ChangeListener] = []
        self._danger_rules: dict[str, list[DangerRule]] = {}
        # A venue flag takes only the venues the settings configure: a bogus or unvetted id can
        # neither break automatic failover nor point trading at an exchange nobody set up.
        self._venues = tuple(dict.fromkeys((settings.exchange_primary, settings.exchange_failover)))
        self._loaded = False

    async def load(self) -> None:
        """Read persisted overrides; changes made by another process are announced."""
        stored = await self._store.flag_overrides()
        versions = await self._store.flag_versions()
        fresh = {
            k: v
            for k, v in stored.items()
            if k in self._definitions
            and not self._definitions[k].env_only
            and self._acceptable(self._definitions[k], v.value)
        }
        for name in set(stored) - set(self._definitions):
            logger.warning("ignoring override for unknown flag %s", name)
        before = {n: self.get(n).value for n in self._definitions}
        self._overrides = fresh
        self._versions = versions
        self._export_metrics()
        if not self._loaded:
            self._loaded = True
            return
        for name, old in before.items():
            state = self.get(name)
            if state.value != old:
                override = fresh.get(name)
                actor = override.set_by if override else Actor.system("flags")
                logger.info("flag %s changed elsewhere to %s", name, _show(state.value))
                await self._notify(state, actor)

    async def watch(self, interval: float) -> None:
        """Reload overrides every ``interval`` seconds (CLI or other replicas may write them)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except LuniaError as exc:
                logger.warning("could not reload flag overrides: %s", exc)

    def _acceptable(self, d: FlagDefinition, value: Any) -> bool:
        if d.kind is FlagKind.VENUE and value not in self._venues:
            logger.warning(
                "ignoring stored override %s=%s: not a configured venue (%s)",
                d.name,
                value,
                ", ".join(self._venues),
            )
            return False
        return True

    @property
    def venues(self) -> tuple[str, ...]:
        """The venues the settings configure (EXCHANGE_PRIMARY, EXCHANGE_FAILOVER)."""
        return self._venues

    def add_danger_rule(self, name: str, rule: DangerRule) -> None:
        """Make values of ``name`` that ``rule`` names need admin and confirmation (the venue
        service says which venues would trade with real keys)."""
        self._danger_rules.setdefault(self.definition(name).name, []).append(rule)

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener`` after every change (bot announcements, venue switching)."""
        self._listeners.append(listener)

    def definition(self, name: str) -> FlagDefinition:
        """The definition of ``name`` (case-insensitive) or ``NotFound`` listing valid names."""
        definition = self._definitions.get(name.strip().upper())
        if definition is None:
            known = ", ".join(sorted(self._definitions))
            raise NotFound(f"unknown flag {name!r}; flags are: {known}")
        return definition

    def get(self, name: str) -> FlagState:
        """The flag's effective value and its source."""
        d = self.definition(name)
        override = self._overrides.get(d.name)
        if override is not None:
            value, source = override.value, Source.OVERRIDE
        elif d.name in self._env:
            value, source = self._env[d.name], Source.ENV
        else:
            value, source = d.default, Source.DEFAULT
        return FlagState(
            name=d.name,
            kind=d.kind,
            value=value,
            default=d.default,
            env=self._env.get(d.name),
            source=source,
            description=d.description,
            applies=d.applies,
            override_set_by=override.set_by.describe() if override else None,
            override_set_at=override.set_at.isoformat() if override else None,
            version=self._version(d.name),
        )

    def _version(self, name: str) -> int:
        found = self._versions.get(name)
        return 0 if found is None else found.version

    def value(self, name: str) -> Any:
        """Just the effective value (what services check on their hot paths)."""
        return self.get(name).value

    def enabled(self, name: str) -> bool:
        """The effective value of a boolean flag."""
        return bool(self.value(name))

    def check_chaos_allowed(self) -> None:
        """Raise ``Conflict`` while INFRA_PROD_ENABLED is on: no chaos drills in production."""
        # The effective value, so a runtime override refuses as surely as the environment does;
        # the CLI asks before it contacts an instance, the venue service before it injects a fault.
        if self.enabled("INFRA_PROD_ENABLED"):
            raise Conflict("chaos drills are refused while INFRA_PROD_ENABLED is on")

    def states(self) -> list[FlagState]:
        """Every flag, in catalogue order."""
        return [self.get(d.name) for d in CATALOGUE]

    def differing_from_default(self) -> list[FlagState]:
        """Flags whose effective value is not the default (for /status)."""
        return [f for f in self.states() if f.value != f.default]

    def _fallback(self, d: FlagDefinition) -> Any:
        return self._env.get(d.name, d.default)

    async def _authorize(
        self, actor: Actor, d: FlagDefinition, old: Any, new: Any, confirm: bool, action: str
    ) -> None:
        why = [r for rule in self._danger_rules.get(d.name, ()) if old != new and (r := rule(new))]
        dangerous = d.is_dangerous(old, new) or bool(why)
        await self._guard.require(
            actor,
            Role.ADMIN if dangerous else Role.OPERATOR,
            f"changing {d.name}",
            action=action,
            target=d.name,
            before=old,
            after=new,
        )
        if dangerous and not confirm:
            raise ConfirmationRequired(
                f"setting {d.name} from {_show(old)} to {_show(new)} can move money or weaken "
                f"security{''.join(f' ({w})' for w in why)}; repeat with confirmation to proceed"
            )

    @staticmethod
    def _refuse_env_only(d: FlagDefinition) -> None:
        if d.env_only:
            raise InvalidInput(
                f"{d.name} is read from the environment at start (it chooses where state, "
                f"overrides included, is kept): set {d.name} in .env and restart; see RUNBOOK §2.2"
            )

    def _parse(self, d: FlagDefinition, raw: Any) -> Any:
        value = d.parse(raw)
        if d.kind is FlagKind.VENUE and value not in self._venues:
            raise InvalidInput(
                f"{d.name} takes one of the configured venues ({', '.join(self._venues)}), not "
                f"{raw!r}: set EXCHANGE_PRIMARY/EXCHANGE_FAILOVER in .env to configure another"
            )
        return value

    async def set(
        self,
        name: str,
        raw: Any,
        actor: Actor,
        *,
        confirm: bool = False,
        expected_version: int | None = None,
    ) -> FlagState:
        """Override a flag at runtime; persisted, audited and effective immediately. Refused
        (``Conflict``) unless the flag is still at ``expected_version`` (default: the version
        this process last read), so replicas cannot silently undo each other's changes."""
        d = self.definition(name)
        self._refuse_env_only(d)
        new = self._parse(d, raw)
        current = self.get(d.name)
        await self._authorize(actor, d, current.value, new, confirm, "flag.set")
        if current.source is Source.OVERRIDE and current.value == new:
            return current
        override = FlagOverride(name=d.name, value=new, set_by=actor, set_at=utcnow())
        expected = current.version if expected_version is None else expected_version
        await self._compare_and_set(
            lambda: self._store.put_flag_override(
                override,
                AuditRecord(
                    actor=actor,
                    action="flag.set",
                    target=d.name,
                    before={"value": current.value, "source": current.source.value},
                    after={"value": new, "source": Source.OVERRIDE.value},
                ),
                expected,
            )
        )
        self._overrides[d.name] = override
        self._bumped(d.name, expected, actor)
        return await self._changed(d, actor, "set")

    async def unset(
        self,
        name: str,
        actor: Actor,
        *,
        confirm: bool = False,
        expected_version: int | None = None,
    ) -> FlagState:
        """Clear a runtime override so the flag falls back to env, then default (compared
        against ``expected_version`` like ``set``)."""
        d = self.definition(name)
        self._refuse_env_only(d)
        current = self.get(d.name)
        if current.source is not Source.OVERRIDE:
            return current
        new = self._fallback(d)
        await self._authorize(actor, d, current.value, new, confirm, "flag.unset")
        expected = current.version if expected_version is None else expected_version
        await self._compare_and_set(
            lambda: self._store.delete_flag_override(
                d.name,
                AuditRecord(
                    actor=actor,
                    action="flag.unset",
                    target=d.name,
                    before={"value": current.value, "source": Source.OVERRIDE.value},
                    after={
                        "value": new,
                        "source": (Source.ENV if d.name in self._env else Source.DEFAULT).value,
                    },
                ),
                expected,
            )
        )
        self._overrides.pop(d.name, None)
        self._bumped(d.name, expected, actor)
        return await self._changed(d, actor, "unset")

    async def _compare_and_set(self, write: Callable[[], Awaitable[object]]) -> None:
        try:
            await write()
        except Conflict:
            # Someone else changed the flag: adopt their change (listeners hear of it), so the
            # reader sees what they would overwrite before trying again.
            await self.load()
            raise

    def _bumped(self, name: str, expected: int, actor: Actor) -> None:
        self._versions[name] = FlagVersion(
            name=name, version=expected + 1, changed_by=actor, changed_at=utcnow()
        )

    async def _changed(self, d: FlagDefinition, actor: Actor, action: str) -> FlagState:
        state = self.get(d.name)
        self._metrics.flag_changes.labels(d.name, action).inc()
        self._metrics.audit_entries.labels("ok").inc()
        self._export_metrics()
        logger.info(
            "flag %s is now %s (%s) by %s",
            d.name,
            _show(state.value),
            state.source.value,
            actor.describe(),
        )
        await self._notify(state, actor)
        return state

    async def _notify(self, state: FlagState, actor: Actor) -> None:
        for listener in self._listeners:
            try:
                await listener(state, actor)
            except Exception:
                logger.exception("flag listener failed for %s", state.name)

    def _export_metrics(self) -> None:
        self._metrics.flag_info.clear()
        for state in self.states():
            self._metrics.flag_info.labels(state.name, _show(state.value), state.source.value).set(
                1
            )
            if state.kind is FlagKind.BOOL:
                self._metrics.flag_enabled.labels(state.name).set(1 if state.value else 0)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
