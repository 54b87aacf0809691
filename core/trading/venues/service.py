"""The venue service: which venue trades now, how each is doing, and failover between them.

Each venue name resolves, live on every call, to a ``CcxtVenue`` or a ``PaperVenue``:
paper when ``BINANCE_FORCE_MOCK`` is on, when the venue has no credentials, or when
``BINANCE_LIVE_TRADING`` is off (``SANDBOX_ENABLED`` with credentials means the venue's testnet).
The primary (``EXCHANGE_PRIMARY``) and the standby (the ``EXCHANGE_FAILOVER`` flag) are probed on
a schedule; a run of failures, a ban or maintenance fails over automatically after pre-checking
the standby. Operators fail over and back by hand through the same methods.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.config.settings import Settings, VenueCredentials
from core.errors import (
    ConfigError,
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    VenueBanned,
    VenueError,
    VenueRateLimited,
    VenueUnavailable,
)
from core.flags import FlagService
from core.incidents.service import IncidentService
from core.models import Actor, ActorKind, AuditRecord, Role, utcnow
from core.models.alerts import Severity
from core.models.venues import Balance, Ticker, Venue, VenueMode
from core.platform.metrics import Metrics
from core.security.access import Guard
from core.security.audit import AuditLog
from core.store import Store
from core.trading.venues.ccxt import CcxtVenue, known_exchange
from core.trading.venues.paper import PaperVenue, PriceSource, RandomWalkPrices

logger = logging.getLogger(__name__)

FAILOVER_INCIDENT = "venue:failover"
STATE_KEY = "venue.active"


class VenueInfo(BaseModel):
    """One venue as ``/venues`` shows it."""

    name: str
    role: str  # primary | standby | other
    active: bool
    mode: VenueMode
    mode_reason: str
    healthy: bool | None
    consecutive_failures: int
    last_probe_at: datetime | None
    last_error: str | None
    banned: bool
    maintenance: bool
    chaos: bool


class VenuesStatus(BaseModel):
    """Where the engine trades and whether it has failed over."""

    primary: str
    standby: str
    active: str
    failed_over: bool
    since: datetime | None
    reason: str
    items: list[VenueInfo]


class PrecheckResult(BaseModel):
    """Whether a venue can take over: reachable, balances readable."""

    venue: str
    mode: VenueMode
    ok: bool
    reachable: bool
    balances_readable: bool
    balances: dict[str, float]
    detail: str

    def summary(self) -> str:
        """One line for people."""
        if self.ok:
            shown = ", ".join(f"{v:.8g} {k}" for k, v in sorted(self.balances.items())[:4])
            return f"pre-check of {self.venue} ({self.mode.value}) passed: reachable, balances " + (
                shown or "empty"
            )
        return f"pre-check of {self.venue} ({self.mode.value}) FAILED: {self.detail}"


@dataclass
class _Health:
    failures: int = 0
    last_probe_at: datetime | None = None
    last_error: str | None = None
    healthy: bool | None = None
    banned: bool = False
    maintenance: bool = False


class VenueService:
    """Routes trading to the active venue and fails over when it breaks."""

    def __init__(
        self,
        settings: Settings,
        flags: FlagService,
        store: Store,
        incidents: IncidentService,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._flags = flags
        self._store = store
        self._incidents = incidents
        self._metrics = metrics
        self._guard = Guard(AuditLog(store, metrics), metrics)
        self._live: dict[tuple[str, bool], CcxtVenue] = {}
        self._paper: dict[str, PaperVenue] = {}
        self._credentials: dict[str, VenueCredentials] = {}
        self._health: dict[str, _Health] = {}
        self._chaos: set[str] = set()
        self._active = settings.exchange_primary
        self._since: datetime | None = None
        self._reason = ""
        self._lock = asyncio.Lock()
        # Pointing the standby at a venue that trades real funds is an admin's confirmed choice.
        flags.add_danger_rule("EXCHANGE_FAILOVER", self._live_standby)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the configured venues, then restore which venue was active (a failover survives
        a restart)."""
        for variable, name in (
            ("EXCHANGE_PRIMARY", self._settings.exchange_primary),
            ("EXCHANGE_FAILOVER", self._settings.exchange_failover),
        ):
            if not known_exchange(name):
                raise ConfigError(f"{variable}: {name!r} is not a ccxt exchange id")
        await self.reload()
        logger.info("trading on %s (%s)", self._active, self.mode_of(self._active)[0].value)

    async def reload(self) -> None:
        """Adopt the active venue from the store (another replica may have failed over)."""
        state = (await self._store.engine_state()).get(STATE_KEY)
        if isinstance(state, dict) and str(state.get("active")) in self.configured:
            active = str(state["active"])
            if active != self._active and self._since is not None:
                logger.warning("another replica switched trading to %s", active)
            self._active = active
            self._reason = str(state.get("reason", ""))
            since = state.get("since")
            self._since = datetime.fromisoformat(since) if isinstance(since, str) else None
        self._export()

    async def close(self) -> None:
        """Close every ccxt client."""
        venues, self._live = list(self._live.values()), {}
        for venue in venues:
            await venue.close()

    # -- which venue, in which mode ---------------------------------------------------------

    @property
    def primary(self) -> str:
        """The primary venue (``EXCHANGE_PRIMARY``)."""
        return self._settings.exchange_primary

    @property
    def standby(self) -> str:
        """The standby venue (the ``EXCHANGE_FAILOVER`` flag, read live)."""
        return str(self._flags.value("EXCHANGE_FAILOVER"))

    @property
    def configured(self) -> tuple[str, ...]:
        """The venues trading may move to: those the settings configure."""
        return self._flags.venues

    @property
    def active_name(self) -> str:
        """The venue trading now."""
        return self._active

    @property
    def failed_over(self) -> bool:
        """True while trading anywhere but the primary."""
        return self._active != self.primary

    def credentials(self, name: str) -> VenueCredentials:
        """The venue's credentials from the environment (read once per process)."""
        if name not in self._credentials:
            self._credentials[name] = self._settings.venue_credentials(name)
        return self._credentials[name]

    def mode_of(self, name: str) -> tuple[VenueMode, str]:
        """How ``name`` trades right now, and why."""
        if self._flags.enabled("BINANCE_FORCE_MOCK"):
            return VenueMode.PAPER, "BINANCE_FORCE_MOCK is on"
        if not self.credentials(name).complete:
            upper = name.upper()
            return VenueMode.PAPER, f"no {upper}_API_KEY/{upper}_SECRET configured"
        if self._flags.enabled("SANDBOX_ENABLED"):
            return VenueMode.SANDBOX, "SANDBOX_ENABLED is on"
        if not self._flags.enabled("BINANCE_LIVE_TRADING"):
            return VenueMode.PAPER, "BINANCE_LIVE_TRADING is off"
        return VenueMode.LIVE, "credentials configured, live trading on"

    def _live_funds(self, name: Any) -> str | None:
        """Why trading on ``name`` needs an admin's confirmation, or None (paper/sandbox)."""
        if str(name) in self.configured and self.mode_of(str(name))[0] is VenueMode.LIVE:
            return f"{name} has API keys and would trade live funds"
        return None

    def _live_standby(self, name: Any) -> str | None:
        # The primary as standby means "no failover": no funds move anywhere.
        return None if name == self.primary else self._live_funds(name)

    def venue(self, name: str) -> Venue:
        """The venue object ``name`` trades through now (paper or ccxt)."""
        if not known_exchange(name):
            raise InvalidInput(f"{name!r} is not a ccxt exchange id")
        mode, _ = self.mode_of(name)
        if mode is VenueMode.PAPER:
            return self._paper_venue(name)
        return self._ccxt(name, sandbox=mode is VenueMode.SANDBOX, public=False)

    def active(self) -> Venue:
        """The venue trading now."""
        return self.venue(self._active)

    def _ccxt(self, name: str, *, sandbox: bool, public: bool) -> CcxtVenue:
        key = (f"{name}:public" if public else name, sandbox)
        if key not in self._live:
            creds = self.credentials(name)
            if public:  # public prices only: no keys sent anywhere
                creds = VenueCredentials(api_url=creds.api_url)
            self._live[key] = CcxtVenue(
                name, creds, sandbox=sandbox, timeout_seconds=self._settings.venue_timeout_seconds
            )
        return self._live[key]

    def _paper_venue(self, name: str) -> PaperVenue:
        if name not in self._paper:
            prices: PriceSource
            if self._settings.paper_prices == "venue":
                prices = self._ccxt(name, sandbox=False, public=True)
            else:
                prices = RandomWalkPrices(self._settings.paper_seed)
            self._paper[name] = PaperVenue(
                name,
                prices,
                start_balance={"USDT": self._settings.paper_start_balance},
                fee_rate=self._settings.paper_fee_rate,
                ledger=self._store,
            )
        return self._paper[name]

    async def keep_paper_accounts(self) -> None:
        """After a restore, write the paper venues' live accounts back over the restored ones:
        a paper venue is an exchange, and an exchange is not rewound by our backup."""
        for venue in self._paper.values():
            await venue.persist()

    # -- calls the engine makes, with failures counted toward failover -----------------------

    def check_fault(self, name: str) -> None:
        """Raise the injected outage of a chaos drill, if one is on for ``name``."""
        if name in self._chaos:
            raise VenueUnavailable(name, "unreachable (chaos drill: outage injected)")

    async def ticker(self, symbol: str) -> Ticker:
        """The active venue's ticker; a failure counts toward failover."""
        name = self._active
        try:
            self.check_fault(name)
            ticker = await self.venue(name).ticker(symbol)
        except VenueError as exc:
            await self.record_failure(name, exc)
            raise
        return ticker

    async def record_failure(self, name: str, exc: VenueError) -> None:
        """Count a failed call to ``name``; fail over if the primary has tripped."""
        if isinstance(exc, VenueRateLimited):
            return  # our pace, not the venue's health
        health = self._health.setdefault(name, _Health())
        health.failures += 1
        health.healthy = False
        health.last_error = exc.message
        health.banned = health.banned or isinstance(exc, VenueBanned)
        health.maintenance = isinstance(exc, VenueUnavailable) and exc.maintenance
        logger.warning("venue %s failed (%d in a row): %s", name, health.failures, exc.message)
        await self._maybe_fail_over()

    def record_success(self, name: str) -> None:
        """A call to ``name`` worked: its failure run is over."""
        health = self._health.setdefault(name, _Health())
        health.failures, health.healthy = 0, True
        health.banned = health.maintenance = False
        health.last_error = None

    # -- probing and automatic failover -----------------------------------------------------

    async def probe(self) -> VenuesStatus:
        """Probe the primary and the standby; fail over if the primary has tripped."""
        for name in dict.fromkeys((self.primary, self.standby)):
            health = self._health.setdefault(name, _Health())
            health.last_probe_at = utcnow()
            try:
                self.check_fault(name)
                await self.venue(name).probe()
            except VenueError as exc:
                await self.record_failure(name, exc)
            else:
                self.record_success(name)
        return self.status()

    def _tripped(self, name: str) -> str | None:
        health = self._health.get(name)
        if health is None:
            return None
        if health.banned:
            return f"{name} banned this client: {health.last_error}"
        if health.maintenance:
            return f"{name} is in maintenance: {health.last_error}"
        if health.failures >= self._settings.failover_after_failures:
            return f"{name} failed {health.failures} times in a row: {health.last_error}"
        return None

    async def _maybe_fail_over(self) -> None:
        if self.failed_over or self.standby == self.primary:
            return
        reason = self._tripped(self.primary)
        if reason is None:
            return
        async with self._lock:
            if self.failed_over:
                return
            standby = self.standby
            check = await self.precheck(standby)
            if not check.ok:
                logger.error("cannot fail over to %s: %s", standby, check.summary())
                await self._incidents.raise_engine(
                    "venue:failover-blocked",
                    f"{self.primary} is down and failover to {standby} is blocked",
                    Severity.CRITICAL,
                    f"{reason}; {check.summary()}",
                    labels={"venue": self.primary, "standby": standby},
                )
                return
            await self._switch(standby, Actor.system("failover"), reason, automatic=True)

    # -- operator actions -------------------------------------------------------------------

    async def precheck(self, name: str) -> PrecheckResult:
        """Can ``name`` take over? Reachable (markets and a ticker) and balances readable."""
        mode, _ = self.mode_of(name)
        venue = self.venue(name)
        reachable = readable = False
        balances: dict[str, Balance] = {}
        detail = ""
        try:
            self.check_fault(name)
            await venue.probe()
            reachable = True
            balances = await venue.balances()
            readable = True
        except VenueError as exc:
            detail = exc.message
        return PrecheckResult(
            venue=name,
            mode=mode,
            ok=reachable and readable,
            reachable=reachable,
            balances_readable=readable,
            balances={a: b.total for a, b in balances.items()},
            detail=detail or "ok",
        )

    async def _authorize(self, actor: Actor, role: Role, action: str, target: str) -> None:
        await self._guard.require(actor, role, action, action=action, target=target)

    async def failover(
        self, actor: Actor, *, to: str | None = None, confirm: bool = False, reason: str = ""
    ) -> VenuesStatus:
        """Switch trading to ``to`` (default: the standby) after a pre-check; needs confirm, and
        an admin when the target would trade live funds."""
        target = (to or self.standby).strip().lower()
        await self._authorize(actor, Role.OPERATOR, "venue.failover", target)
        if target not in self.configured:
            raise InvalidInput(
                f"{target!r} is not a configured venue; trading may move to: "
                f"{', '.join(self.configured)}"
            )
        if target == self._active:
            raise Conflict(f"already trading on {target}")
        if target == self.primary:
            return await self.failback(actor)
        live = self._live_funds(target)
        if live is not None and not self._preapproved(actor, target):
            # The same rule as BINANCE_LIVE_TRADING: real money moves only on an admin's word.
            await self._authorize(actor, Role.ADMIN, "venue.failover", target)
        check = await self.precheck(target)
        if not confirm:
            raise ConfirmationRequired(
                f"failover from {self._active} to {target}: {check.summary()}"
                + (f"; {live}" if live else "")
                + "; repeat with confirm to switch"
            )
        if not check.ok:
            raise Conflict(f"not switching: {check.summary()}")
        async with self._lock:
            await self._switch(
                target, actor, reason or f"manual failover by {actor.describe()}", automatic=False
            )
        return self.status()

    def _preapproved(self, actor: Actor, target: str) -> bool:
        """Automation (self-healing, the engine) may move to the configured standby on an outage:
        a live standby is either the deployment's own configuration or an admin's confirmed
        override of ``EXCHANGE_FAILOVER``, so the admin's word was given when it was chosen."""
        automated = actor.kind in (ActorKind.SELF_HEALING, ActorKind.SYSTEM)
        return automated and target == self.standby

    async def failback(self, actor: Actor) -> VenuesStatus:
        """Return trading to the primary after a pre-check; ends a chaos drill."""
        await self._authorize(actor, Role.OPERATOR, "venue.failback", self.primary)
        if not self.failed_over:
            raise Conflict(f"already trading on the primary {self.primary}")
        self._chaos.discard(self.primary)
        check = await self.precheck(self.primary)
        if not check.ok:
            raise Conflict(f"not failing back: {check.summary()}")
        async with self._lock:
            before = self._active
            self.record_success(self.primary)
            await self._store.put_engine_state(
                STATE_KEY,
                {"active": self.primary, "since": None, "reason": ""},
                AuditRecord(
                    actor=actor,
                    action="venue.failback",
                    target=self.primary,
                    before={"active": before},
                    after={"active": self.primary},
                    detail=check.summary(),
                ),
            )
            self._active, self._since, self._reason = self.primary, None, ""
            self._export()
        logger.warning("failed back to %s by %s", self.primary, actor.describe())
        await self._incidents.clear_engine(
            FAILOVER_INCIDENT, f"Trading failed over to {before}", f"failed back to {self.primary}"
        )
        return self.status()

    async def _switch(self, target: str, actor: Actor, reason: str, *, automatic: bool) -> None:
        before = self._active
        now = utcnow()
        await self._store.put_engine_state(
            STATE_KEY,
            {"active": target, "since": now.isoformat(), "reason": reason},
            AuditRecord(
                actor=actor,
                action="venue.failover",
                target=target,
                before={"active": before},
                after={"active": target},
                detail=f"{'automatic' if automatic else 'manual'}: {reason}",
            ),
        )
        self._active, self._since, self._reason = target, now, reason
        self._export()
        logger.warning("FAILOVER %s -> %s (%s): %s", before, target, actor.describe(), reason)
        await self._incidents.raise_engine(
            FAILOVER_INCIDENT,
            f"Trading failed over to {target}",
            Severity.CRITICAL if automatic else Severity.WARNING,
            f"from {before}: {reason}. Fail back with /failback or POST /api/v1/failback.",
            labels={"from": before, "to": target, "automatic": str(automatic).lower()},
        )

    async def chaos_exchange_outage(self, actor: Actor, *, confirm: bool = False) -> VenuesStatus:
        """Drill (admin, confirmed): inject a primary outage; automatic failover must act."""
        await self._authorize(actor, Role.ADMIN, "chaos.exchange-failover", self.primary)
        self._flags.check_chaos_allowed()
        if self.failed_over:
            raise Conflict(f"already failed over to {self._active}; fail back first")
        if not confirm:
            raise ConfirmationRequired(
                f"the drill makes {self.primary} look down until failback, so trading fails over "
                f"to {self.standby}; repeat with confirm to start it"
            )
        await self._store.append_audit(
            AuditRecord(
                actor=actor,
                action="chaos.exchange-failover",
                target=self.primary,
                detail="outage injected into the primary; failback ends the drill",
            )
        )
        self._chaos.add(self.primary)
        logger.warning("chaos drill: outage injected into %s by %s", self.primary, actor.describe())
        for _ in range(self._settings.failover_after_failures):
            await self.probe()
            if self.failed_over:
                break
        return self.status()

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> VenuesStatus:
        """Primary, standby, active venue and each one's health."""
        names = list(dict.fromkeys((self.primary, self.standby, self._active)))
        items = []
        for name in names:
            health = self._health.get(name, _Health())
            mode, why = self.mode_of(name)
            role = (
                "primary"
                if name == self.primary
                else "standby"
                if name == self.standby
                else "other"
            )
            items.append(
                VenueInfo(
                    name=name,
                    role=role,
                    active=name == self._active,
                    mode=mode,
                    mode_reason=why,
                    healthy=health.healthy,
                    consecutive_failures=health.failures,
                    last_probe_at=health.last_probe_at,
                    last_error=health.last_error,
                    banned=health.banned,
                    maintenance=health.maintenance,
                    chaos=name in self._chaos,
                )
            )
        return VenuesStatus(
            primary=self.primary,
            standby=self.standby,
            active=self._active,
            failed_over=self.failed_over,
            since=self._since,
            reason=self._reason,
            items=items,
        )

    def adopt_health(self, published: VenuesStatus) -> None:
        """Take the venues' probe health from the process that probes them (the leading worker,
        through its heartbeat), so a replica that never probes reports what was found."""
        for item in published.items:
            self._health[item.name] = _Health(
                failures=item.consecutive_failures,
                last_probe_at=item.last_probe_at,
                last_error=item.last_error,
                healthy=item.healthy,
                banned=item.banned,
                maintenance=item.maintenance,
            )

    def _export(self) -> None:
        self._metrics.exchange_failover.set(1 if self.failed_over else 0)
