"""The ``Store`` protocol: where all durable control-plane state lives.

Two implementations are held to one contract suite (``tests/core/test_store_contract.py``):
``SqliteStore`` (embedded default) and, later, a Redis store shared by replicas. Every mutating
method that changes state on behalf of an actor takes the ``AuditRecord`` describing it and writes
both in one transaction, so no change is ever left unaudited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from core.errors import Conflict
from core.models import (
    Actor,
    AuditEntry,
    AuditRecord,
    OutboxItem,
    OutboxMessage,
    OutboxStats,
)
from core.models.alerts import Alert, Severity
from core.models.cluster import Heartbeat
from core.models.incidents import Change, EventKind, Incident, IncidentEvent, IncidentState
from core.models.trading import Holding, VenueAccount
from core.models.venues import OrderRecord, OrderStatus
from core.store.portable import PortableState

AlertPlanner = Callable[[Alert, Incident | None, Incident | None], Change | None]
IncidentMutation = Callable[[Incident], Change | None]


class FlagOverride(BaseModel):
    """A runtime flag value set from chat, API or CLI; it wins over env and default."""

    name: str
    value: Any
    set_by: Actor
    set_at: datetime


class FlagVersion(BaseModel):
    """How often a flag was changed at runtime (its version) and by whom last; kept when an
    override is cleared, so a change based on an older read is refused (compare-and-set)."""

    name: str
    version: int
    changed_by: Actor
    changed_at: datetime


def flag_version_conflict(name: str, current: FlagVersion | None, expected: int) -> Conflict:
    """The refusal of a flag change based on version ``expected`` when ``current`` is newer."""
    if current is None:
        return Conflict(f"{name} is at version 0, not {expected}: read it again and retry")
    return Conflict(
        f"{name} was changed meanwhile by {current.changed_by.describe()} at "
        f"{current.changed_at.isoformat(timespec='seconds')} (version {current.version}, your "
        f"change was based on version {expected}): read it again and retry"
    )


class PnlPoint(BaseModel):
    """One core's realized and unrealized PnL (USDT) at one time, for charts."""

    core: str
    ts: datetime
    realized: float
    unrealized: float

    @property
    def total(self) -> float:
        """Realized plus unrealized."""
        return self.realized + self.unrealized


def splice_incident(head_json: str, incident_json: str) -> str:
    """A stored event's JSON: the members of ``head_json`` (an object with at least one) and
    ``"incident"``, the incident's JSON as just stored, spliced in rather than serialised a
    second time (a big group's member list is most of an event)."""
    return f'{head_json[:-1]},"incident":{incident_json}}}'


class HeldChange:
    """One webhook's consecutive updates of one incident, kept as a single change until
    something else comes: a group's alerts arrive together, and a save plus an event per
    member would write the whole member list once per member (quadratic in the group's size).
    ``rows`` are the stored-alert rows waiting for the incident's id (set when it is applied)."""

    # Details of merged updates shown on the timeline; the rest are counted.
    SHOWN = 3

    def __init__(self, change: Change, before: IncidentState | None) -> None:
        self.change = change
        self.before = before
        self.rows: list[list[Any]] = []
        self._details = [change.detail] if change.detail else []
        self._hidden = 0
        self._joined = self._resolved = 0  # what the hidden ones did

    def covers(self, *keys: str) -> bool:
        """Whether the held incident is the open incident of one of ``keys``."""
        return self.change.incident.is_open and self.change.incident.key in keys

    def absorb(self, change: Change) -> bool:
        """Take in ``change`` if it only updates the held incident further."""
        held = self.change.incident
        if not (
            change.kind is EventKind.UPDATED
            and held.is_open
            and (change.incident.id, change.incident.key) == (held.id, held.key)
        ):
            return False
        if change.detail and len(self._details) < self.SHOWN:
            self._details.append(change.detail)
        elif change.detail:  # counted by what it did (both O(1): length, roster's count)
            self._hidden += 1
            self._joined += len(change.incident.group) > len(held.group)
            self._resolved += change.incident.firing_members < held.firing_members
        # In place: the held change is ours alone (``final`` hands out a copy).
        self.change.outbox.extend(change.outbox)
        self.change.incident = change.incident
        return True

    def final(self) -> Change:
        """The change to apply: the last state, the first details, and how many alerts of
        the rest joined the group or resolved."""
        more = (
            [f"and {self._hidden} more: {self._joined} joined, {self._resolved} resolved"]
            if self._hidden
            else []
        )
        return self.change.model_copy(update={"detail": "; ".join([*self._details, *more])})

    def rebase(self, change: Change, saved: Incident) -> Change:
        """``change`` planned on the held incident, pointed at ``saved`` (as it was applied)."""
        held = self.change.incident
        if (change.incident.id, change.incident.key) != (held.id, held.key):
            return change
        incident = change.incident.model_copy(update={"id": saved.id, "version": saved.version})
        return change.model_copy(update={"incident": incident})


class HeldChanges(dict[str, HeldChange]):
    """A webhook's held changes, one per incident key: a webhook interleaving alerts of several
    groups (``ALERT_GROUP_BY`` regroups) still saves each incident once, with one event."""

    def open_one(self, *keys: str) -> HeldChange | None:
        """The held change whose open incident is the one of ``keys``, if any."""
        return next((self[k] for k in keys if k in self and self[k].covers(*keys)), None)

    def take(self, *keys: str) -> list[HeldChange]:
        """Remove what is held for ``keys`` (to be saved before an alert of theirs is planned
        on the stored incidents: a held resolution must be stored for a reopening to see it)."""
        return [self.pop(k) for k in dict.fromkeys(keys) if k in self]


class IngestOutcome(BaseModel):
    """What storing one webhook's alerts did."""

    accepted: int
    duplicates: int
    events: list[IncidentEvent]


class StoredAlert(BaseModel):
    """An alert as received, linked to its incident."""

    id: int
    incident_id: int | None
    received_at: datetime
    alert: Alert


class StoreSnapshot(BaseModel):
    """What ``Store.snapshot`` wrote: its files, the schema version and what it holds."""

    kind: str
    schema_version: int
    files: list[str]
    counts: dict[str, int]


# -- security state (rate limits, throttles, confirmations: shared by every replica) -------------


class RateLimitHit(BaseModel):
    """The answer to one hit on a rate limit: allowed, or how long until a slot frees up."""

    allowed: bool
    retry_after: float = 0.0


class Confirmation(BaseModel):
    """A dangerous action waiting for its asker to confirm: single use, bound to ``owner``."""

    token: str
    owner: str
    description: str
    payload: dict[str, Any]
    expires_at: datetime


class ConfirmationTake(BaseModel):
    """What consuming a confirmation found: ``taken`` (it is yours and now gone), ``missing``
    (never asked, used or long gone), ``not_owner`` (kept for its owner) or ``expired`` (gone)."""

    outcome: Literal["taken", "missing", "not_owner", "expired"]
    confirmation: Confirmation | None = None


class RestoreGuard(BaseModel):
    """A restore under way: trading pauses on every replica until it is cleared or expires (so a
    restore that crashed cannot pause trading forever)."""

    backup_id: str
    by: str
    started_at: datetime
    expires_at: datetime


class Store(Protocol):
    """Durable state of the control plane."""

    @property
    def kind(self) -> str:
        """``sqlite`` or ``redis``: the kind a snapshot of this store is, in a backup."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def schema_version(self) -> int:
        """The schema version the store is at."""

    async def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Seal ``record`` onto the end of the hash chain and return the entry."""

    async def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Entries with ``seq > after_seq`` in chain order, optionally within a time range."""

    async def audit_tail(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""

    async def audit_head(self) -> tuple[int, str] | None:
        """The (seq, hash) recorded as the chain's head, or None when the log is empty."""

    async def flag_overrides(self) -> dict[str, FlagOverride]:
        """Every runtime flag override by name."""

    async def flag_versions(self) -> dict[str, FlagVersion]:
        """Every flag's version by name (flags never changed at runtime are absent: version 0)."""

    async def put_flag_override(
        self, override: FlagOverride, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Set an override, bump the flag's version and audit it atomically; ``Conflict``
        naming who changed it last when ``expected_version`` is given and is not current."""

    async def delete_flag_override(
        self, name: str, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Clear an override like ``put_flag_override`` sets one (version bumped, checked)."""

    async def ingest_alerts(
        self, alerts: Sequence[Alert], plan: AlertPlanner, now: datetime
    ) -> IngestOutcome:
        """Store new alerts (skipping re-deliveries; an outbox message of a change naming
        ``incident_id`` 0 gets the new incident's id) and apply ``plan`` to their incidents,
        all in one transaction: either every alert is durable or none is."""

    async def change_incident(
        self, incident_id: int, mutate: IncidentMutation
    ) -> tuple[Incident, IncidentEvent | None]:
        """Read-modify-write one incident atomically; ``NotFound`` if absent."""

    async def get_incident(self, incident_id: int) -> Incident | None:
        """One incident by id."""

    async def list_incidents(
        self,
        *,
        states: Sequence[IncidentState] | None = None,
        severity: Severity | None = None,
        due_before: datetime | None = None,
        limit: int = 50,
    ) -> list[Incident]:
        """Incidents newest first, filtered; ``due_before`` selects escalation/silence deadlines."""

    async def count_open_incidents(self) -> dict[Severity, int]:
        """Open (not resolved) incidents by severity."""

    async def incident_alerts(self, incident_id: int, limit: int = 50) -> list[StoredAlert]:
        """The newest alerts of an incident, newest first."""

    async def incident_events(
        self, *, incident_id: int | None = None, after_seq: int = 0, limit: int = 100
    ) -> list[IncidentEvent]:
        """Incident events in order (all incidents, or one incident's timeline)."""

    async def outbox_add(
        self, messages: Sequence[OutboxMessage], *, cursor: tuple[str, int] | None = None
    ) -> None:
        """Queue messages for delivery; with ``cursor``, also save that consumer position in
        the same transaction (so an event is turned into messages exactly once)."""

    async def outbox_due(self, channel: str, now: datetime, limit: int) -> list[OutboxItem]:
        """Pending messages of ``channel`` whose time has come, oldest first."""

    async def outbox_finish(
        self, item_id: int, *, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """Mark delivered (no error), rescheduled (``retry_at``) or failed for good. A finished
        message (delivered or failed) drops its payload; a ``sensitive`` one's is wiped from
        disk too (SQLite's WAL truncated)."""

    async def outbox_prune(self, before: datetime) -> int:
        """Delete delivered messages finished before ``before`` (never a pending or failed
        one); returns how many went."""

    async def outbox_stats(self, channel: str) -> OutboxStats:
        """Depth and oldest pending message of ``channel``."""

    async def get_value(self, key: str) -> Any:
        """A small JSON value saved by an adapter (e.g. which Telegram message shows an
        incident), or None."""

    async def set_value(self, key: str, value: Any) -> None:
        """Save (or, with None, delete) a small JSON value."""

    async def get_cursor(self, name: str) -> int:
        """A consumer's saved position in the event log (0 when new)."""

    async def set_cursor(self, name: str, value: int) -> None:
        """Save a consumer's position in the event log."""

    # -- trading engine (core/trading/engine.py) ---------------------------------------------------

    async def engine_state(self) -> dict[str, Any]:
        """Every persisted engine setting (active venue, halt, core switches) by key."""

    async def put_engine_state(self, key: str, value: Any, audit: AuditRecord) -> AuditEntry:
        """Set one engine setting and audit it atomically."""

    async def save_order(self, order: OrderRecord, holdings: Sequence[Holding] = ()) -> None:
        """Insert or update an order, keyed by its client order id; with ``holdings`` (the
        positions a fill of it changed), save those in the same transaction, so a fill is
        booked on both or on neither."""

    async def holdings(self) -> list[Holding]:
        """Every booked position (closed ones too: they carry realized PnL), by core and symbol."""

    async def save_holdings(self, holdings: Sequence[Holding]) -> None:
        """Insert or replace positions by core and symbol (the marks, refreshed on a schedule)."""

    async def venue_account(self, venue: str) -> VenueAccount | None:
        """A paper venue's saved account, or None before its first order."""

    async def save_venue_account(self, account: VenueAccount) -> None:
        """Save a paper venue's account (balances, resting and recent orders)."""

    async def list_orders(
        self,
        *,
        limit: int = 100,
        statuses: Sequence[OrderStatus] | None = None,
        core: str | None = None,
    ) -> list[OrderRecord]:
        """Orders newest first, optionally by status and core."""

    async def add_pnl_points(self, points: Sequence[PnlPoint]) -> None:
        """Append PnL points (a point repeated for the same core and time replaces it)."""

    async def pnl_points(self, *, since: datetime, core: str | None = None) -> list[PnlPoint]:
        """PnL points at or after ``since``, oldest first."""

    async def pnl_baseline(self, at: datetime, cores: Sequence[str]) -> list[PnlPoint]:
        """Each of ``cores``' latest PnL point at or before ``at`` (a core without one is left
        out): where a change over a window starts."""

    async def prune_pnl_points(self, before: datetime) -> int:
        """Delete PnL points older than ``before``; return how many went."""

    # -- backups (core/backups/) -------------------------------------------------------------------

    async def snapshot(self, dest_dir: Path) -> StoreSnapshot:
        """Write a consistent copy of all state into the empty ``dest_dir`` (files mode 0600)
        without stopping writers, and say what it holds."""

    async def restore(self, source_dir: Path) -> dict[str, int]:
        """Replace all state with the snapshot in ``source_dir`` in one atomic step, while open
        (concurrent readers see the old state or the new one, never a mix); return the counts
        as restored, taken before any other write can land."""

    async def export_portable(self) -> PortableState:
        """All durable state as a store-neutral copy (also written by ``snapshot``)."""

    async def load_portable(self, state: PortableState) -> dict[str, int]:
        """Replace all state with a portable copy taken from any kind of store, in one atomic
        step like ``restore``; return the counts as loaded."""

    async def counts(self) -> dict[str, int]:
        """Rows (or records) per kind of state, to compare a restore against its manifest."""

    async def integrity_problems(self) -> list[str]:
        """What the storage engine's own consistency check finds (empty when sound)."""

    def trial_store(self, workdir: Path) -> Store:
        """A new, empty store of the same kind, isolated under ``workdir``, for trial restores."""

    async def put_restore_guard(self, guard: RestoreGuard | None) -> None:
        """Mark (or, with None, clear) a restore under way, seen by every process sharing the
        store; ``restore`` keeps the mark as it is (it is not part of any snapshot's state)."""

    async def restore_guard(self, now: datetime) -> RestoreGuard | None:
        """The restore under way at ``now``; None when there is none or its mark expired."""

    # -- heartbeats (core/ops/cluster.py: every process of a deployment) ------------------------

    async def put_heartbeat(self, beat: Heartbeat) -> None:
        """Save this process's latest beat (replacing its previous one); it is seen by every
        process sharing the store until ``beat.expires_at``."""

    async def heartbeats(self, now: datetime) -> list[Heartbeat]:
        """The beats not yet expired at ``now``, one per process, by role then instance."""

    async def drop_heartbeat(self, instance: str) -> None:
        """Forget a process's beat at once (it shut down cleanly)."""

    # -- security state (core/security: rate limits, refusal throttle, confirmations) --------------

    async def hit_rate_limit(
        self, key: str, *, limit: int, window: timedelta, now: datetime
    ) -> RateLimitHit:
        """Count one hit on ``key`` unless ``limit`` hits already fell within the sliding
        ``window`` before ``now``; atomic across every process sharing the store."""

    async def put_confirmation(self, confirmation: Confirmation) -> None:
        """Keep a pending confirmation until it is taken or expires."""

    async def take_confirmation(self, token: str, owner: str, now: datetime) -> ConfirmationTake:
        """Consume the confirmation ``token`` if ``owner`` asked for it and it has not expired,
        atomically: of concurrent takes by any processes, exactly one gets it."""
