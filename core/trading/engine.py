"""The trading engine: runs the cores, places their orders, and owns halt and read-only mode.

Every order passes the same gates in order: read-only mode, halt, the risk manager, then the
active venue (``VenueService``). Each core runs in its own supervised task: a crash raises an
incident and the core restarts with exponential backoff, without taking the engine down. Core
switches and the halt survive a restart (engine state in the store, audited with each change).

Positions are state too: a fill is booked on the order and the positions it moves in one store
transaction, and the portfolio is rebuilt from the store when trading starts (at start, on a
worker takeover) and after a restore, then reconciled with the venues: open orders the venue
knows and the store does not are adopted (so a halt cancels them), fills missed meanwhile are
booked, and what differed is audited and raised in chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, computed_field

from core.config.settings import Settings
from core.errors import (
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    OperationError,
    OrderRejected,
    StoreError,
    StoreUnavailable,
    VenueError,
)
from core.incidents.service import IncidentService
from core.models import Actor, AuditRecord, Role, utcnow
from core.models.alerts import Severity
from core.models.ops import ChecklistItem, Mark, StatusLine
from core.models.trading import PnlWindow, TradingMode
from core.models.venues import (
    Order,
    OrderRecord,
    OrderRequest,
    OrderStatus,
    Venue,
    VenueMode,
)
from core.platform.metrics import Metrics
from core.platform.tasks import cancel_and_wait
from core.security.access import Guard, require
from core.security.audit import AuditLog
from core.store import PnlPoint, Store
from core.trading.portfolio import CorePnl, Portfolio, Position
from core.trading.risk import ExposureReport, RiskManager
from core.trading.strategies import Core, CoreContext, Intent
from core.trading.venues.service import VenueService

logger = logging.getLogger(__name__)

HALT_KEY = "engine.halt"
# The most orders one list returns, whichever adapter asks (API, chat).
ORDER_LIST_MAX = 500
PNL_RETENTION = timedelta(days=30)
RATE_WINDOW = timedelta(minutes=5)  # signal and tick rates are averaged over this
_OPEN = (OrderStatus.NEW, OrderStatus.OPEN)
_PAGE = 500  # open orders read per page when a halt cancels them all
# The core booked for orders found on a venue that the store did not know (placed by a process
# whose record was lost, e.g. after the backup a restore went back to).
ADOPTED_CORE = "adopted"
RECONCILE_INCIDENT = "trading:reconcile"
# A restore done by any replica: the trading leader rebuilds and reconciles when it changes.
RESTORED_KEY = "trading.restored"
# How far back missed fills are looked for when the store holds few orders.
RECONCILE_LOOKBACK = timedelta(days=7)


class CoreInfo(BaseModel):
    """A core as ``/cores`` shows it."""

    name: str
    description: str
    essential: bool
    enabled: bool
    running: bool
    symbols: list[str]
    realized: float
    unrealized: float
    pnl: float
    crashes: int
    crashing: bool = False  # the last tick crashed; the supervisor is backing off
    last_error: str | None
    last_run_at: datetime | None
    last_signal_at: datetime | None = None
    ticks_per_minute: float = 0.0
    signals_per_minute: float = 0.0


class EngineState(BaseModel):
    """Whether the engine may trade, and why not."""

    halted: bool
    halted_by: str | None = None
    halted_at: datetime | None = None
    halt_reason: str = ""
    read_only: bool
    read_only_reason: str = ""
    mode: TradingMode = Field(
        description="trading, read-only or halted (a halt outranks read-only mode)"
    )
    active_venue: str

    @property
    def why(self) -> str:
        """Why the engine does not trade now (empty while it trades)."""
        if self.mode is TradingMode.HALTED:
            return self.halt_reason or "no reason given"
        return self.read_only_reason


class HaltReport(BaseModel):
    """What a halt did: the engine state and the orders it canceled (or could not)."""

    state: EngineState
    canceled: list[OrderRecord]
    failed: list[str]


class PnlReport(BaseModel):
    """PnL over a window: the change since the window began (from recorded points), the
    running totals now per core, and the history (for charts)."""

    window: PnlWindow
    since: datetime
    total: float = Field(description="realized plus unrealized now, over the whole history")
    change: float = Field(description="change of the total over the window")
    change_since: datetime | None = Field(
        description="when the change is measured from: the last point recorded at or before "
        "the window's start, else the first one inside it (None: nothing recorded yet)"
    )
    full_window: bool = Field(description="the recorded history covers the whole window")
    cores: list[CorePnl]
    core_changes: dict[str, float]
    points: list[PnlPoint]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """What the change covers, in words: the window, or since when if history is shorter."""
        if self.full_window:
            return f"last {self.window}"
        if self.change_since is None:
            return f"{self.window}: no history recorded yet"
        return f"since {self.change_since.isoformat(timespec='minutes')} (history < {self.window})"


class ReconcileReport(BaseModel):
    """What reconciling the store with the venues found and did."""

    reason: str
    at: datetime
    venues: list[str]
    adopted: list[OrderRecord] = Field(description="open orders the store did not know")
    fills: list[OrderRecord] = Field(description="orders whose missed fills were booked")
    closed: list[OrderRecord] = Field(description="stored open orders the venue had finished")
    errors: list[str]

    @property
    def differences(self) -> int:
        """How many orders differed between the store and the venues."""
        return len(self.adopted) + len(self.fills) + len(self.closed)

    def summary(self) -> str:
        """One line per difference kind, for chat and the audit entry."""
        parts = [
            f"{len(self.adopted)} open order(s) adopted"
            + (
                f" ({', '.join(o.client_order_id for o in self.adopted[:5])})"
                if self.adopted
                else ""
            ),
            f"{len(self.fills)} order(s) with missed fills booked",
            f"{len(self.closed)} stored open order(s) closed on the venue",
        ]
        if self.errors:
            parts.append("could not check: " + "; ".join(self.errors))
        return f"after {self.reason} on {', '.join(self.venues)}: " + ", ".join(parts)


def _as_record(order: Order, core: str, mode: VenueMode) -> OrderRecord:
    """The engine's record of a venue's order."""
    fields = order.model_dump(exclude={"core", "mode", "error"})
    return OrderRecord(**fields, core=core, mode=mode)


def _remember(known: dict[str, OrderRecord], record: OrderRecord) -> None:
    """Index an order as last booked, by client order id and by the venue's order id (trades
    name only the latter)."""
    known[record.client_order_id] = record
    if record.venue_order_id:
        known[f"{record.venue}#{record.venue_order_id}"] = record


@dataclass
class _Runtime:
    crashes: int = 0
    consecutive: int = 0
    last_error: str | None = None
    last_run_at: datetime | None = None
    last_signal_at: datetime | None = None
    # Times of recent completed ticks and emitted signals (intents), for per-minute rates.
    ticks: deque[datetime] = field(default_factory=deque)
    signals: deque[datetime] = field(default_factory=deque)
    since: datetime = field(default_factory=utcnow)

    def note(self, times: deque[datetime], at: datetime) -> None:
        """Record an event at ``at`` and forget those older than the rate window."""
        times.append(at)
        horizon = at - RATE_WINDOW
        while times and times[0] < horizon:
            times.popleft()

    def per_minute(self, times: deque[datetime], now: datetime) -> float:
        """Events per minute over the rate window ending ``now`` (since start, if shorter, but
        never over less than a minute: a core's first signal is 1/min, not 120/min)."""
        span = max(min(RATE_WINDOW, now - self.since).total_seconds(), 60.0)
        recent = sum(1 for t in times if t >= now - RATE_WINDOW)
        return round(recent * 60 / span, 2)


class TradingEngine:
    """Cores, orders, portfolio, risk, halt and read-only mode."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        venues: VenueService,
        incidents: IncidentService,
        metrics: Metrics,
        cores: Sequence[Core] = (),
    ) -> None:
        self._settings = settings
        self._store = store
        self._venues = venues
        self._incidents = incidents
        self._metrics = metrics
        self._guard = Guard(AuditLog(store, metrics), metrics)
        self.portfolio = Portfolio()
        self.risk = RiskManager(
            self.portfolio,
            max_symbol_exposure=settings.risk_max_symbol_exposure,
            max_total_exposure=settings.risk_max_total_exposure,
        )
        self._cores: dict[str, Core] = {}
        self._runtime: dict[str, _Runtime] = {}
        self._enabled: dict[str, bool] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._halt: dict[str, Any] | None = None
        self._read_only: str | None = None
        self._started = False
        self._restored_seen: Any = None  # the last restore marker acted upon
        self._restored_now: Any = None  # the marker as last read before an order
        self._order_lock = asyncio.Lock()
        # Raises (an OperationError) when this process must not trade now: the worker lease's
        # local check, so a leader that was paused past its lease cannot tick or order once more.
        self._fence: Callable[[], object] | None = None
        for core in cores:
            self.register(core)

    # -- lifecycle -------------------------------------------------------------------------

    def register(self, core: Core) -> None:
        """Add a core (enabled unless a persisted switch says otherwise)."""
        if core.name in self._cores:
            raise Conflict(f"a core named {core.name!r} is already registered")
        self._cores[core.name] = core
        self._runtime[core.name] = _Runtime()
        self._enabled.setdefault(core.name, True)
        self._metrics.core_pnl.labels(core.name).set(0)
        if self._started:
            self._spawn(core)

    async def start(self) -> None:
        """Restore core switches, the halt and the positions, reconcile with the venues, then
        start each core's supervised loop (at start, and when this worker takes over)."""
        await self.reload()  # not started yet: this rebuilds the positions from the store
        await self.reconcile("start or takeover")
        self._started = True
        for core in self._cores.values():
            self._spawn(core)
        if self._halt:
            logger.warning("trading is HALTED (since %s); resume to trade", self._halt.get("at"))

    async def reload(self) -> None:
        """Adopt core switches and the halt from the store (another replica may have changed
        them: a halt through any API replica stops the worker's loops at their next tick)."""
        state = await self._store.engine_state()
        for key, value in state.items():
            if key.startswith("core.") and isinstance(value, dict):
                self._enabled[key.removeprefix("core.")] = bool(value.get("enabled", True))
        self._adopt_halt(state)
        restored = state.get(RESTORED_KEY)
        if not self._started:
            # Not trading here (an API replica, a standby): show the leader's booked positions.
            self._restored_seen = restored
            await self.rebuild()
        elif restored != self._restored_seen:
            async with self._order_lock:
                if restored != self._restored_seen:  # an order may have caught up meanwhile
                    await self._catch_up(restored)

    async def rebuild(self) -> None:
        """Load every booked position from the store (marks as last saved, until a ticker)."""
        self.portfolio.load(await self._store.holdings())
        self._export_metrics()

    async def note_restore(self, actor: Actor) -> None:
        """A restore just replaced the state (called by the process that restored): tell the
        trading leader, wherever it runs, to rebuild and reconcile; at once if it is this one."""
        marker = {"at": utcnow().isoformat(), "by": actor.describe()}
        await self._store.put_engine_state(
            RESTORED_KEY,
            marker,
            AuditRecord(
                actor=actor,
                action="trading.rebuild",
                target="engine",
                after=marker,
                detail="a restore replaced the state: positions rebuilt and venues reconciled",
            ),
        )
        if self._started:
            async with self._order_lock:
                await self._catch_up(marker)

    async def _catch_up(self, marker: Any) -> None:
        """Rebuild and reconcile after a restore (the caller holds the order lock)."""
        self._restored_seen = marker
        by = marker.get("by") if isinstance(marker, dict) else None
        logger.warning("state restored (by %s): rebuilding positions, reconciling venues", by)
        # Paper venues are exchanges: their live accounts go back over the restored ones.
        await self._venues.keep_paper_accounts()
        await self.rebuild()
        await self._reconcile("a restore")

    def _adopt_halt(self, state: dict[str, Any]) -> None:
        halt = state.get(HALT_KEY)
        halted = halt if isinstance(halt, dict) and halt.get("halted") else None
        if (halted is None) != (self._halt is None) and self._started:
            logger.warning("trading %s by another replica", "HALTED" if halted else "resumed")
        self._halt = halted

    async def _read_halt(self) -> bool:
        """Adopt the halt as the store has it now; True while halted. Read before each order
        and when one returns, so a halt through any replica stops this one at once."""
        state = await self._store.engine_state()
        self._adopt_halt(state)
        self._restored_now = state.get(RESTORED_KEY)
        return self._halt is not None

    async def follow_shared_state(self, interval: float) -> None:
        """With Redis, other replicas change engine state: adopt halt, core switches and the
        active venue from the store every ``interval`` seconds (a task of the control plane)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
                await self._venues.reload()
            except StoreError as exc:
                logger.warning("could not reload shared engine state: %s", exc)

    async def close(self) -> None:
        """Stop every core loop."""
        self._started = False
        tasks, self._tasks = list(self._tasks.values()), {}
        await cancel_and_wait(*tasks)

    def _spawn(self, core: Core) -> None:
        self._tasks[core.name] = asyncio.create_task(
            self._supervise(core.name), name=f"core:{core.name}"
        )

    async def _supervise(self, name: str) -> None:
        """Tick the core forever; after a crash, wait with exponential backoff."""
        delay = self._settings.core_tick_seconds
        while True:
            await asyncio.sleep(delay)
            delay = self._settings.core_tick_seconds
            if not self.core_running(name):
                continue
            if not await self.run_core(name):
                streak = self._runtime[name].consecutive
                delay = min(
                    self._settings.core_restart_backoff_seconds * 2 ** (streak - 1),
                    self._settings.core_restart_backoff_max_seconds,
                )
                logger.warning("core %s restarts in %.3gs (crash %d in a row)", name, delay, streak)

    # -- running cores ----------------------------------------------------------------------

    def core_running(self, name: str) -> bool:
        """True when the core is enabled and trading is not halted."""
        return self._enabled.get(name, False) and self._halt is None

    async def tick(self) -> None:
        """Run every running core once (what each core's loop does on its tick)."""
        for name in list(self._cores):
            if self.core_running(name):
                await self.run_core(name)

    def set_fence(self, check: Callable[[], object]) -> None:
        """Call ``check`` before every tick and order; it raises when this process may not trade."""
        self._fence = check

    async def run_core(self, name: str) -> bool:
        """One tick of one core; False if it crashed (incident raised, engine unharmed)."""
        core, runtime = self._cores[name], self._runtime[name]
        runtime.last_run_at = utcnow()
        try:
            if self._fence is not None:
                self._fence()
            await self._check_restore()
            await self._run_once(core)
        except asyncio.CancelledError:
            raise
        except OperationError as exc:  # the venue or a rule said no: not the core's fault
            runtime.last_error = exc.message
            logger.warning("core %s could not trade: %s", name, exc.message)
            return True
        except Exception as exc:
            runtime.crashes += 1
            runtime.consecutive += 1
            runtime.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("core %s crashed", name)
            await self._incidents.raise_engine(
                f"core:{name}",
                f"Core {name} crashed",
                Severity.CRITICAL if core.essential else Severity.WARNING,
                f"{runtime.last_error}; restarting with backoff",
                labels={"core": name},
            )
            return False
        if runtime.consecutive:
            runtime.consecutive = 0
            await self._incidents.clear_engine(
                f"core:{name}", f"Core {name} crashed", "the core runs again"
            )
        runtime.last_error = None
        runtime.note(runtime.ticks, utcnow())
        self._metrics.core_ticks.labels(name).inc()
        return True

    async def _run_once(self, core: Core) -> None:
        prices = {}
        for symbol in core.symbols:
            ticker = await self._venues.ticker(symbol)
            self.portfolio.mark(symbol, ticker.last)
            prices[symbol] = ticker.last
        self._venues.record_success(self._venues.active_name)
        intents = await core.decide(
            CoreContext(prices=prices, positions=self.portfolio.quantities(core.name))
        )
        runtime = self._runtime[core.name]
        for _ in intents:
            runtime.last_signal_at = utcnow()
            runtime.note(runtime.signals, runtime.last_signal_at)
        for intent in intents:
            if not self.core_running(core.name):
                break  # switched off or halted meanwhile
            try:
                await self.place_order(core.name, intent)
            except OrderRejected as exc:
                logger.info("order of core %s refused: %s", core.name, exc.message)
        self._export_metrics()

    # -- orders -----------------------------------------------------------------------------

    def _refusal(self) -> str | None:
        if self._read_only is not None:
            return f"the engine is in read-only mode ({self._read_only}): no new orders"
        if self._halt is not None:
            return (
                f"trading is halted (by {self._halt.get('by')} at {self._halt.get('at')}): "
                "resume before placing orders"
            )
        return None

    async def _restore_refusal(self) -> str | None:
        """Why no order may go out while a backup is restored (by any replica): the mark in the
        store, read before each tick and order like the halt."""
        guard = await self._store.restore_guard(utcnow())
        if guard is None:
            return None
        return (
            f"backup {guard.backup_id} is being restored by {guard.by} (since "
            f"{guard.started_at.isoformat(timespec='seconds')}): trading pauses until it ends"
        )

    async def _check_restore(self) -> None:
        refusal = await self._restore_refusal()
        if refusal is not None:
            raise OperationError(refusal)

    async def place_order(self, core: str, intent: Intent) -> OrderRecord:
        """Place one order for ``core`` on the active venue, through every gate."""
        # One order at a time: the risk check must see the fills of the order before it.
        async with self._order_lock:
            return await self._place(core, intent)

    async def _place(self, core: str, intent: Intent) -> OrderRecord:
        venue_name = self._venues.active_name
        if self._fence is not None:
            self._fence()
        if self._read_only is None:  # read-only already refuses, and its store may be gone
            try:
                await self._read_halt()
            except StoreUnavailable as exc:
                self._metrics.orders.labels(venue_name, intent.side.value, "rejected").inc()
                raise OrderRejected(
                    "the store cannot be reached, so the halt state cannot be confirmed: "
                    "no new orders"
                ) from exc
        refusal = self._refusal()
        if refusal is None:
            refusal = await self._restore_refusal()
        if refusal is not None:
            self._metrics.orders.labels(venue_name, intent.side.value, "rejected").inc()
            raise OrderRejected(refusal)
        if self._started and self._restored_now != self._restored_seen:
            # Another replica restored a backup since this one last looked: no order is checked
            # against the positions from before it.
            await self._catch_up(self._restored_now)
        venue = self._venues.venue(venue_name)
        price = intent.price or self.portfolio.price(intent.symbol)
        if price is None:
            price = (await self._venues.ticker(intent.symbol)).last
            self.portfolio.mark(intent.symbol, price)
        try:
            self.risk.check(intent.symbol, intent.side, intent.amount, price)
        except OrderRejected:
            self._metrics.orders.labels(venue_name, intent.side.value, "rejected").inc()
            raise
        request = OrderRequest(
            symbol=intent.symbol,
            side=intent.side,
            amount=intent.amount,
            type=intent.type,
            price=intent.price,
        )
        record = OrderRecord(
            client_order_id=request.client_order_id,
            venue=venue_name,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            amount=request.amount,
            price=request.price,
            status=OrderStatus.NEW,
            core=core,
            mode=venue.mode,
        )
        await self._store.save_order(record)  # before sending: a lost answer can be looked up
        try:
            self._venues.check_fault(venue_name)
            order = await venue.place(request)
        except VenueError as exc:
            await self._finish(record, OrderStatus.FAILED, exc.message)
            await self._venues.record_failure(venue_name, exc)
            raise
        except OperationError as exc:
            await self._finish(record, OrderStatus.REJECTED, exc.message)
            raise
        self._venues.record_success(venue_name)
        record = _as_record(order, core, venue.mode)
        await self._book(record)
        self._metrics.orders.labels(venue_name, record.side.value, record.status.value).inc()
        self._export_metrics()
        logger.info(
            "order %s %s %s %.8g %s on %s: %s",
            record.client_order_id,
            core,
            record.side.value,
            record.amount,
            record.symbol,
            venue_name,
            record.status.value,
        )
        # A halt may have landed (here or on another replica) while the venue call was out.
        if record.status in _OPEN and (self._halt is not None or await self._read_halt()):
            record = await self._cancel_landed(record)
        return record

    async def _cancel_landed(self, record: OrderRecord) -> OrderRecord:
        """Cancel an order that came back open after a halt landed while it was in flight."""
        try:
            order = await self._venues.venue(record.venue).cancel(record)
        except OperationError as exc:
            logger.error(
                "order %s landed after the halt and could not be canceled: %s",
                record.client_order_id,
                exc.message,
            )
            return record
        done = _as_record(order, record.core, record.mode)
        await self._book(done, record)
        self._metrics.orders.labels(done.venue, done.side.value, done.status.value).inc()
        logger.warning(
            "order %s landed after the halt: %s", done.client_order_id, done.status.value
        )
        return done

    async def _book(self, record: OrderRecord, booked: OrderRecord | None = None) -> None:
        """Save ``record`` with the position its fills since ``booked`` moved, in one store
        transaction; the portfolio follows once the store has it."""
        holding = self.portfolio.fill(record.core, record, booked)
        await self._store.save_order(record, [holding] if holding else ())
        if holding is not None:
            self.portfolio.put(holding)

    async def _finish(self, record: OrderRecord, status: OrderStatus, error: str) -> None:
        self._metrics.orders.labels(record.venue, record.side.value, status.value).inc()
        await self._store.save_order(
            record.model_copy(update={"status": status, "error": error, "updated_at": utcnow()})
        )

    async def sync_open_orders(self) -> list[OrderRecord]:
        """Ask the venues about our open orders; book the fills that happened meanwhile."""
        changed = []
        for record in await self._store.list_orders(limit=500, statuses=[OrderStatus.OPEN]):
            try:
                order = await self._venues.venue(record.venue).fetch_order(
                    record.symbol, record.client_order_id
                )
            except VenueError as exc:
                logger.warning("cannot sync order %s: %s", record.client_order_id, exc.message)
                continue
            if order is None or order.status is OrderStatus.OPEN:
                continue
            updated = _as_record(order, record.core, record.mode)
            await self._book(updated, record)
            self._metrics.orders.labels(
                updated.venue, updated.side.value, updated.status.value
            ).inc()
            changed.append(updated)
        self._export_metrics()
        return changed

    async def reconcile(self, reason: str) -> ReconcileReport:
        """Compare the store with the venues (the active one and any holding our open orders):
        adopt open orders only the venue knows, book fills missed meanwhile, close stored
        orders the venue finished; audit and raise in chat whatever differed."""
        async with self._order_lock:
            return await self._reconcile(reason)

    async def _reconcile(self, reason: str) -> ReconcileReport:
        """Reconcile; the caller holds the order lock."""
        recent = await self._store.list_orders(limit=ORDER_LIST_MAX)
        resting = await self._store.list_orders(limit=ORDER_LIST_MAX, statuses=list(_OPEN))
        known: dict[str, OrderRecord] = {}
        for record in [*reversed(recent), *resting]:  # the newest state of each wins
            _remember(known, record)
        full = len(recent) == ORDER_LIST_MAX
        since = recent[-1].created_at if full else utcnow() - RECONCILE_LOOKBACK
        report = ReconcileReport(
            reason=reason,
            at=utcnow(),
            venues=sorted({self._venues.active_name} | {r.venue for r in resting}),
            adopted=[],
            fills=[],
            closed=[],
            errors=[],
        )
        for name in report.venues:
            try:
                await self._reconcile_venue(name, resting, known, since, report)
            except OperationError as exc:
                report.errors.append(f"{name}: {exc.message}")
        self._export_metrics()
        await self._report(report)
        return report

    async def _reconcile_venue(
        self,
        name: str,
        resting: list[OrderRecord],
        known: dict[str, OrderRecord],
        since: datetime,
        report: ReconcileReport,
    ) -> None:
        venue = self._venues.venue(name)
        for record in (r for r in resting if r.venue == name):
            found = await venue.fetch_order(record.symbol, record.client_order_id)
            if found is None or (found.status, found.filled) == (record.status, record.filled):
                continue
            updated = _as_record(found, record.core, record.mode)
            await self._book(updated, record)
            _remember(known, updated)
            if updated.filled > record.filled:
                report.fills.append(updated)
            elif updated.status not in _OPEN:
                report.closed.append(updated)
        for order in await venue.open_orders():
            if self._known(known, order) is None:
                adopted = await self._adopt(order, venue, known)
                report.adopted.append(adopted)
        symbols = sorted(
            {s for c in self._cores.values() for s in c.symbols}
            | {h.symbol for h in self.portfolio.holdings()}
        )
        for order in await venue.filled_since(since, symbols):
            booked = self._known(known, order)
            if booked is None:
                report.fills.append(await self._adopt(order, venue, known))
            elif order.filled > booked.filled + 1e-12:
                updated = _as_record(order, booked.core, booked.mode).model_copy(
                    update={"client_order_id": booked.client_order_id}
                )
                await self._book(updated, booked)
                _remember(known, updated)
                report.fills.append(updated)

    @staticmethod
    def _known(known: dict[str, OrderRecord], order: Order) -> OrderRecord | None:
        by_venue_id = known.get(f"{order.venue}#{order.venue_order_id}")
        return known.get(order.client_order_id) or by_venue_id

    async def _adopt(
        self, order: Order, venue: Venue, known: dict[str, OrderRecord]
    ) -> OrderRecord:
        """Record a venue's order the store did not know (booked to the ``adopted`` core)."""
        record = _as_record(order, ADOPTED_CORE, venue.mode)
        await self._book(record)
        _remember(known, record)
        logger.warning(
            "adopted order %s on %s (%s, %s %.8g %s, filled %.8g)",
            record.client_order_id,
            record.venue,
            record.status.value,
            record.side.value,
            record.amount,
            record.symbol,
            record.filled,
        )
        return record

    async def _report(self, report: ReconcileReport) -> None:
        """Audit and raise in chat what reconciling changed or could not check."""
        if not report.differences and not report.errors:
            logger.info("reconciled %s after %s: no differences", report.venues, report.reason)
            return
        summary = report.summary()
        logger.warning("reconciliation %s", summary)
        await self._store.append_audit(
            AuditRecord(
                actor=Actor.system("reconcile"),
                action="trading.reconcile",
                target=",".join(report.venues),
                after={
                    "adopted": [o.client_order_id for o in report.adopted],
                    "fills": [o.client_order_id for o in report.fills],
                    "closed": [o.client_order_id for o in report.closed],
                    "errors": report.errors,
                },
                detail=summary,
            )
        )
        await self._incidents.raise_engine(
            RECONCILE_INCIDENT,
            "Venue reconciliation found differences"
            if report.differences
            else "Venue reconciliation could not check every venue",
            Severity.WARNING,
            summary + ". Adopted orders are open in /orders (core adopted); /halt cancels them.",
            labels={"reason": report.reason},
        )

    async def orders(
        self, *, limit: int = 50, status: OrderStatus | None = None, core: str | None = None
    ) -> list[OrderRecord]:
        """Recent orders, newest first."""
        if not 1 <= limit <= ORDER_LIST_MAX:
            raise InvalidInput(f"limit must be between 1 and {ORDER_LIST_MAX}")
        return await self._store.list_orders(
            limit=limit, statuses=[status] if status else None, core=core
        )

    # -- operator actions -------------------------------------------------------------------

    async def _authorize(self, actor: Actor, role: Role, action: str, target: str) -> None:
        await self._guard.require(actor, role, action, action=action, target=target)

    def _core(self, name: str) -> Core:
        core = self._cores.get(name)
        if core is None:
            known = ", ".join(sorted(self._cores)) or "none"
            raise NotFound(f"no core {name!r}; cores are: {known}")
        return core

    async def toggle_core(
        self, name: str, actor: Actor, *, enabled: bool | None = None, confirm: bool = False
    ) -> CoreInfo:
        """Switch a core on or off (flip when ``enabled`` is None); persisted and audited."""
        await self._authorize(actor, Role.OPERATOR, "core.toggle", name)
        core = self._core(name)
        before = self._enabled.get(name, True)
        after = (not before) if enabled is None else enabled
        if core.essential and before and not after and not confirm:
            raise ConfirmationRequired(
                f"core {name} is essential; switching it off stops its trading. "
                "Repeat with confirm to proceed"
            )
        if before != after:
            await self._store.put_engine_state(
                f"core.{name}",
                {"enabled": after},
                AuditRecord(
                    actor=actor,
                    action="core.toggle",
                    target=name,
                    before={"enabled": before},
                    after={"enabled": after},
                ),
            )
            self._enabled[name] = after
            logger.warning(
                "core %s %s by %s", name, "enabled" if after else "disabled", actor.describe()
            )
        return self.core(name)

    async def halt(self, actor: Actor, *, confirm: bool = False, reason: str = "") -> HaltReport:
        """Kill switch: stop every core and cancel every open order (any operator: stopping is
        the safe direction; confirmed, audited). The halt is in the store before anything else."""
        await self._authorize(actor, Role.OPERATOR, "engine.halt", "engine")
        if not confirm:
            shown = await self._store.list_orders(limit=_PAGE + 1, statuses=list(_OPEN))
            count = f"{_PAGE}+" if len(shown) > _PAGE else str(len(shown))
            raise ConfirmationRequired(
                f"halting stops every core and cancels {count} open order(s); "
                "repeat with confirm to halt"
            )
        # Written whatever this replica believes: its cached view may be stale (another replica
        # may have resumed), and every replica reads this key before each order.
        was_halted = await self._read_halt()
        halt = {
            "halted": True,
            "by": actor.describe(),
            "at": utcnow().isoformat(),
            "reason": reason,
        }
        await self._store.put_engine_state(
            HALT_KEY,
            halt,
            AuditRecord(
                actor=actor,
                action="engine.halt",
                target="engine",
                before={"halted": was_halted},
                after={"halted": True},
                detail=reason,
            ),
        )
        self._halt = halt
        logger.warning("trading HALTED by %s: %s", actor.describe(), reason or "no reason given")
        canceled, failed = await self._cancel_all()
        return HaltReport(state=self.state(), canceled=canceled, failed=failed)

    async def _cancel_all(self) -> tuple[list[OrderRecord], list[str]]:
        """Cancel every open order, page by page until none is left that was not tried."""
        canceled: list[OrderRecord] = []
        failed: list[str] = []
        tried: set[str] = set()
        while True:
            # Canceled orders leave the open statuses; the ones that could not be canceled stay,
            # so the page grows by the orders tried to reach those not tried yet.
            page = await self._store.list_orders(limit=_PAGE + len(tried), statuses=list(_OPEN))
            fresh = [r for r in page if r.client_order_id not in tried]
            if not fresh:
                return canceled, failed
            for record in fresh:
                tried.add(record.client_order_id)
                outcome = await self._cancel_one(record)
                if isinstance(outcome, str):
                    failed.append(outcome)
                elif outcome is not None:
                    canceled.append(outcome)

    async def _cancel_one(self, record: OrderRecord) -> OrderRecord | str | None:
        """The canceled order, why it could not be canceled, or None (nothing rested)."""
        try:
            if record.status is OrderStatus.NEW:
                # never acknowledged: look it up; only a resting order needs canceling
                found = await self._venues.venue(record.venue).fetch_order(
                    record.symbol, record.client_order_id
                )
                if found is None or found.status is not OrderStatus.OPEN:
                    status = found.status if found else OrderStatus.FAILED
                    await self._store.save_order(record.model_copy(update={"status": status}))
                    return None
                record = _as_record(found, record.core, record.mode)
            order = await self._venues.venue(record.venue).cancel(record)
        except OperationError as exc:
            return f"{record.client_order_id} on {record.venue}: {exc.message}"
        done = _as_record(order, record.core, record.mode)
        await self._book(done, record)
        self._metrics.orders.labels(done.venue, done.side.value, done.status.value).inc()
        return done

    async def resume(self, actor: Actor, *, confirm: bool = False) -> EngineState:
        """Undo a halt: cores that are enabled trade again (admin only, confirmed, audited)."""
        await self._authorize(actor, Role.ADMIN, "engine.resume", "engine")
        if not await self._read_halt() or self._halt is None:
            raise Conflict("trading is not halted")
        if not confirm:
            raise ConfirmationRequired(
                "resuming lets every enabled core trade again; repeat with confirm"
            )
        await self._store.put_engine_state(
            HALT_KEY,
            {"halted": False, "by": actor.describe(), "at": utcnow().isoformat()},
            AuditRecord(
                actor=actor,
                action="engine.resume",
                target="engine",
                before={"halted": True, "since": self._halt.get("at")},
                after={"halted": False},
            ),
        )
        self._halt = None
        logger.warning("trading resumed by %s", actor.describe())
        return self.state()

    async def enter_read_only(self, reason: str, actor: Actor) -> EngineState:
        """Refuse new orders until ``leave_read_only`` (used when the shared store is lost)."""
        await self._switch_read_only(actor, reason or "no reason given")
        return self.state()

    async def leave_read_only(self, actor: Actor) -> EngineState:
        """Accept orders again."""
        await self._switch_read_only(actor, None)
        return self.state()

    async def _switch_read_only(self, actor: Actor, reason: str | None) -> None:
        require(actor, Role.OPERATOR, "switching read-only mode")
        before, self._read_only = self._read_only, reason
        if before == reason:
            return
        logger.warning("read-only mode %s by %s", "ON" if reason else "OFF", actor.describe())
        try:  # the switch must work even when the store is what failed
            await self._store.append_audit(
                AuditRecord(
                    actor=actor,
                    action="engine.read_only",
                    target="engine",
                    before={"read_only": before is not None},
                    after={"read_only": reason is not None},
                    detail=reason or "",
                )
            )
        except StoreError as exc:
            logger.error("read-only switch not audited (store failed): %s", exc)

    # -- reading ----------------------------------------------------------------------------

    @property
    def mode(self) -> TradingMode:
        """Trading, read-only or halted: the one place this is decided."""
        if self._halt is not None:
            return TradingMode.HALTED
        if self._read_only is not None:
            return TradingMode.READ_ONLY
        return TradingMode.TRADING

    def state(self) -> EngineState:
        """Halt, read-only mode and the active venue."""
        halt = self._halt or {}
        at = halt.get("at")
        return EngineState(
            halted=self._halt is not None,
            halted_by=halt.get("by"),
            halted_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
            halt_reason=str(halt.get("reason", "")),
            read_only=self._read_only is not None,
            read_only_reason=self._read_only or "",
            mode=self.mode,
            active_venue=self._venues.active_name,
        )

    def core(self, name: str) -> CoreInfo:
        """One core with its switch, health and PnL."""
        core, runtime = self._core(name), self._runtime[name]
        pnl = self.portfolio.pnl(name)
        now = utcnow()
        return CoreInfo(
            name=name,
            description=core.description,
            essential=core.essential,
            enabled=self._enabled.get(name, True),
            running=self.core_running(name),
            symbols=list(core.symbols),
            realized=pnl.realized,
            unrealized=pnl.unrealized,
            pnl=pnl.total,
            crashes=runtime.crashes,
            crashing=runtime.consecutive > 0,
            last_error=runtime.last_error,
            last_run_at=runtime.last_run_at,
            last_signal_at=runtime.last_signal_at,
            ticks_per_minute=runtime.per_minute(runtime.ticks, now),
            signals_per_minute=runtime.per_minute(runtime.signals, now),
        )

    def cores(self) -> list[CoreInfo]:
        """Every registered core."""
        return [self.core(n) for n in sorted(self._cores)]

    def positions(self, core: str | None = None) -> list[Position]:
        """Open positions (optionally of one core)."""
        return [p for p in self.portfolio.positions(core) if abs(p.quantity) > 1e-12]

    def exposure(self) -> ExposureReport:
        """Total and per-symbol exposure against the risk limits."""
        return self.risk.report()

    def _names(self) -> list[str]:
        """Registered cores, and any other core holding positions (``adopted``)."""
        held = {h.core for h in self.portfolio.holdings()}
        return sorted(set(self._cores) | held)

    async def pnl(
        self, window: PnlWindow | str = PnlWindow.DAY, *, history: bool = True
    ) -> PnlReport:
        """PnL's change over ``window`` (24h or 7d) from recorded points, per core and in all,
        the totals now, and (with ``history``) the recorded points of the window."""
        window = PnlWindow.parse(window)
        since = utcnow() - window.delta
        names = self._names()
        cores = [self.portfolio.pnl(n) for n in names]
        baseline = {p.core: p for p in await self._store.pnl_baseline(since, names)}
        points = await self._store.pnl_points(since=since) if history else []
        full = bool(baseline)
        if not baseline:  # history shorter than the window: from the first point inside it
            first = points or await self._store.pnl_points(since=since)
            for point in first:
                baseline.setdefault(point.core, point)
        starts = [p.ts for p in baseline.values()]
        changes = {
            c.core: c.total - (baseline[c.core].total if c.core in baseline else 0.0) for c in cores
        }
        return PnlReport(
            window=window,
            since=since,
            total=sum(c.total for c in cores),
            change=sum(changes.values()),
            change_since=(max(starts) if full else min(starts)) if starts else None,
            full_window=full,
            cores=cores,
            core_changes=changes,
            points=points,
        )

    async def status_lines(self) -> list[StatusLine]:
        """PnL, exposure, active venue and, unless it trades, the engine's mode for ``/status``."""
        pnl = await self.pnl(PnlWindow.DAY, history=False)
        exposure = self.exposure()
        venues = self._venues.status()
        state = self.state()
        lines = [
            StatusLine(
                label="PnL 24h" if pnl.full_window else "PnL",
                value=f"{pnl.change:+,.2f} USDT"
                + ("" if pnl.full_window else f" {pnl.label}")
                + f"; total {pnl.total:+,.2f} USDT",
            ),
            StatusLine(
                label="exposure",
                value=f"{exposure.total:,.2f} / {exposure.limit:,.0f} USDT",
                ok=exposure.total <= exposure.limit,
            ),
            StatusLine(
                label="venue",
                value=venues.active + (" (failed over)" if venues.failed_over else ""),
                ok=not venues.failed_over,
            ),
        ]
        if state.mode is not TradingMode.TRADING:
            lines.append(
                StatusLine(label="trading", ok=False, value=f"{state.mode.upper()}: {state.why}")
            )
        return lines

    async def checklist_items(self) -> list[ChecklistItem]:
        """Key metrics of runbook §1 (core_pnl, risk_exposure) and the venue in use."""
        return [
            ChecklistItem(
                name=f"key metrics: {line.label}",
                reason=line.value,
                mark=Mark.OK if line.ok else Mark.WARN,
            )
            for line in await self.status_lines()
        ]

    async def record_pnl(self) -> list[PnlPoint]:
        """Persist one PnL point per core (the scheduler's snapshot job); prune old ones."""
        now = utcnow()
        points = []
        for name in self._names():
            pnl = self.portfolio.pnl(name)
            points.append(
                PnlPoint(core=name, ts=now, realized=pnl.realized, unrealized=pnl.unrealized)
            )
        await self._store.add_pnl_points(points)
        # The marks with it, so exposure right after a restart is near the last one seen.
        await self._store.save_holdings(self.portfolio.holdings())
        with contextlib.suppress(StoreError):
            await self._store.prune_pnl_points(now - PNL_RETENTION)
        self._export_metrics()
        return points

    def _export_metrics(self) -> None:
        for name in self._cores:
            self._metrics.core_pnl.labels(name).set(self.portfolio.pnl(name).total)
        self._metrics.risk_exposure.set(self.portfolio.total_exposure())
