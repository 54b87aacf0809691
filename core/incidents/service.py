"""Incidents: alerts in, grouped, acted on by people, escalated when nobody does.

``IncidentService`` is the one place alerts become incidents (webhooks and the engine's own
``raise_engine`` use the same path) and the one place acknowledge / resolve / silence happen,
whatever the adapter. Every change is stored with its event and audit entry in one transaction,
then published on the bus for the bot.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel

from core.errors import (
    Conflict,
    InvalidInput,
    LuniaError,
    NotFound,
    Queued,
    StoreUnavailable,
    Unavailable,
)
from core.incidents import email as security_mail
from core.incidents import pagerduty
from core.incidents.alertmanager import AlertmanagerClient
from core.models import Actor, ActorKind, Role, parse_duration, utcnow
from core.models import incidents as rules_
from core.models.alerts import Alert, AlertSource, AlertStatus, Severity
from core.models.incidents import (
    Change,
    EventKind,
    Incident,
    IncidentEvent,
    IncidentState,
    Rules,
)
from core.platform.bus import Bus
from core.platform.metrics import Metrics
from core.platform.outbox import OutboxWorker
from core.platform.spool import LocalSpool, SpoolKind
from core.security.access import Guard
from core.security.audit import AuditLog
from core.store import IncidentMutation, Store, StoredAlert

logger = logging.getLogger(__name__)

# The most incidents one list returns, whichever adapter asks (API, chat).
INCIDENT_LIST_MAX = 500
STORM_BATCH = 500  # incident events the storm pager reads per store call


class IngestResult(BaseModel):
    """What a webhook's alerts did: how many were new, re-deliveries, which incidents moved.
    ``spooled``: Redis was unreachable; the alerts are kept locally and applied when it is back."""

    accepted: int
    duplicates: int
    incidents: list[int]
    spooled: bool = False


class IncidentDetail(BaseModel):
    """One incident with its newest alerts and its timeline."""

    incident: Incident
    alerts: list[StoredAlert]
    timeline: list[IncidentEvent]


class IncidentService:
    """Creates incidents from alerts and carries out every action on them."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        metrics: Metrics,
        rules: Rules,
        *,
        alertmanager: AlertmanagerClient | None = None,
        pagerduty_outbox: OutboxWorker | None = None,
        security_mail_outbox: OutboxWorker | None = None,
        spool: LocalSpool | None = None,
        storm_pager: pagerduty.StormPager | None = None,
    ) -> None:
        self._store = store
        self._spool = spool
        self._bus = bus
        self._metrics = metrics
        self._guard = Guard(AuditLog(store, metrics), metrics)
        self.rules = rules
        self._alertmanager = alertmanager
        self._pagerduty = pagerduty_outbox
        # A storm pages once: its incidents' escalations update one page instead of each paging.
        if storm_pager is None and pagerduty_outbox is not None:
            storm_pager = pagerduty.StormPager(rules)
        self._storm_pager = storm_pager
        self._storm_cursor: int | None = None  # the last stored event the storm pager has seen
        self._security_mail = security_mail_outbox

    # -- alerts in -------------------------------------------------------------------------

    async def ingest(self, alerts: Sequence[Alert]) -> IngestResult:
        """Store alerts durably and update their incidents; re-deliveries change nothing.
        With Redis unreachable they are kept in the local spool instead (``spooled``)."""
        try:
            return await self._ingest(alerts)
        except StoreUnavailable:
            if self._spool is None or not alerts:
                raise
            payload = {"alerts": [a.model_dump(mode="json") for a in alerts]}
            await self._spool.add(SpoolKind.ALERTS, payload)
            self._metrics.alerts_received.labels(alerts[0].source.value, "spooled").inc(len(alerts))
            logger.warning("store unreachable: %d alert(s) spooled for replay", len(alerts))
            return IngestResult(accepted=len(alerts), duplicates=0, incidents=[], spooled=True)

    async def _ingest(self, alerts: Sequence[Alert]) -> IngestResult:
        now = utcnow()

        def plan(alert: Alert, open_: Incident | None, resolved: Incident | None) -> Change | None:
            change = rules_.plan_alert(alert, open_, resolved, now, self.rules)
            return self._with_pagerduty(change) if change else None

        if self.rules.group_by:  # ALERT_GROUP_BY: our own groups instead of the senders'
            alerts = [rules_.regroup(alert, self.rules.group_by) for alert in alerts]
        outcome = await self._store.ingest_alerts(alerts, plan, now)
        for source, received in Counter(alert.source.value for alert in alerts).items():
            self._metrics.alerts_received.labels(source, "received").inc(received)
        if outcome.duplicates:
            source = alerts[0].source.value
            self._metrics.alerts_received.labels(source, "duplicate").inc(outcome.duplicates)
        await self._after(outcome.events)
        return IngestResult(
            accepted=outcome.accepted,
            duplicates=outcome.duplicates,
            incidents=sorted({e.incident.id for e in outcome.events}),
        )

    async def raise_engine(
        self,
        key: str,
        title: str,
        severity: Severity,
        summary: str = "",
        *,
        labels: dict[str, str] | None = None,
        security: bool = False,
    ) -> Incident | None:
        """The engine reports a problem of its own (failover, Redis down, stale backup, ...)."""
        alert = Alert(
            source=AlertSource.ENGINE,
            fingerprint=key,
            dedup_key=uuid.uuid4().hex,
            status=AlertStatus.FIRING,
            severity=severity,
            title=title,
            summary=summary,
            labels={"alertname": title, **(labels or {})},
            starts_at=utcnow(),
            security=security,
        )
        result = await self.ingest([alert])
        return await self._store.get_incident(result.incidents[0]) if result.incidents else None

    async def clear_engine(self, key: str, title: str, summary: str = "") -> None:
        """The engine's problem ``key`` has cleared: resolve its incident if open."""
        alert = Alert(
            source=AlertSource.ENGINE,
            fingerprint=key,
            dedup_key=uuid.uuid4().hex,
            status=AlertStatus.RESOLVED,
            severity=Severity.INFO,
            title=title,
            summary=summary,
            ends_at=utcnow(),
        )
        await self.ingest([alert])

    # -- reading ---------------------------------------------------------------------------

    async def list(
        self,
        *,
        state: IncidentState | None = None,
        severity: Severity | None = None,
        open_only: bool = False,
        limit: int = 50,
    ) -> list[Incident]:
        """Incidents newest first, optionally by state and severity."""
        if not 1 <= limit <= INCIDENT_LIST_MAX:
            raise InvalidInput(f"limit must be between 1 and {INCIDENT_LIST_MAX}")
        states: list[IncidentState] | None = [state] if state else None
        if open_only and states is None:
            states = [s for s in IncidentState if s is not IncidentState.RESOLVED]
        return await self._store.list_incidents(states=states, severity=severity, limit=limit)

    async def get(self, incident_id: int) -> Incident:
        """One incident, or ``NotFound``."""
        incident = await self._store.get_incident(incident_id)
        if incident is None:
            raise NotFound(f"no incident #{incident_id}")
        return incident

    async def detail(self, incident_id: int) -> IncidentDetail:
        """One incident with its newest alerts and full timeline."""
        incident = await self.get(incident_id)
        return IncidentDetail(
            incident=incident,
            alerts=await self._store.incident_alerts(incident_id, limit=20),
            timeline=await self._store.incident_events(incident_id=incident_id, limit=200),
        )

    # -- actions ---------------------------------------------------------------------------

    async def acknowledge(self, incident_id: int, actor: Actor) -> Incident:
        """Take the incident: escalation stops."""
        await self._guard.require(
            actor,
            Role.OPERATOR,
            "acknowledging an incident",
            action="incident.acknowledge",
            target=f"#{incident_id}",
        )
        try:
            return await self._change(incident_id, lambda i: rules_.acknowledge(i, actor, utcnow()))
        except StoreUnavailable:
            if self._spool is None:
                raise
            payload = {"incident_id": incident_id, "actor": actor.model_dump(mode="json")}
            await self._spool.add(SpoolKind.ACKNOWLEDGE, payload)
            raise Queued(
                f"Redis is unreachable: your acknowledgement of #{incident_id} is kept and "
                "will be applied as soon as it is back (escalation may still page meanwhile)"
            ) from None

    async def replay_spool(self) -> tuple[int, int]:
        """Apply what the spool kept while Redis was unreachable, oldest first; returns
        (alerts, acknowledgements) replayed. Stops, keeping the rest, if the store fails again."""
        if self._spool is None:
            return 0, 0
        alerts = acks = 0
        while entries := await self._spool.entries(100):
            for entry in entries:
                if entry.kind is SpoolKind.ALERTS:
                    batch = [Alert.model_validate(a) for a in entry.payload["alerts"]]
                    await self._ingest(batch)  # re-delivery safe: dedup keys
                    alerts += len(batch)
                else:
                    incident_id = int(entry.payload["incident_id"])
                    actor = Actor.model_validate(entry.payload["actor"])
                    try:
                        await self._change(incident_id, _acknowledging(actor))
                    except (Conflict, NotFound) as exc:  # resolved or acked meanwhile
                        logger.info("spooled ack of #%d not applied: %s", incident_id, exc)
                    acks += 1
                await self._spool.forget(entry.seq)
        return alerts, acks

    async def unacknowledge(self, incident_id: int, actor: Actor) -> Incident:
        """Hand the incident back: it is triggered again and escalation restarts."""
        await self._guard.require(
            actor,
            Role.OPERATOR,
            "unacknowledging an incident",
            action="incident.unacknowledge",
            target=f"#{incident_id}",
        )
        return await self._change(
            incident_id, lambda i: rules_.unacknowledge(i, actor, utcnow(), self.rules)
        )

    async def resolve(self, incident_id: int, actor: Actor) -> Incident:
        """Close the incident (lifting its Alertmanager silence, if any)."""
        await self._guard.require(
            actor,
            Role.OPERATOR,
            "resolving an incident",
            action="incident.resolve",
            target=f"#{incident_id}",
        )
        before = await self.get(incident_id)
        incident = await self._change(incident_id, lambda i: rules_.resolve(i, actor, utcnow()))
        if before.silence_id:
            await self._expire_quietly(before.silence_id)
        return incident

    async def silence(self, incident_id: int, actor: Actor, duration: str | timedelta) -> Incident:
        """Mute the incident for ``duration``; Alertmanager incidents get a real silence."""
        await self._guard.require(
            actor,
            Role.OPERATOR,
            "silencing an incident",
            action="incident.silence",
            target=f"#{incident_id}",
        )
        span = parse_duration(duration) if isinstance(duration, str) else duration
        if span < timedelta(minutes=1):
            raise InvalidInput("silence duration must be at least 1 minute")
        current = await self.get(incident_id)
        now = utcnow()
        change = rules_.silence(current, actor, now, span, self.rules)  # validates first
        silence_id, note = await self._upstream_silence(current, change, actor)
        if silence_id:
            change.incident.silence_id = silence_id
            if current.silence_id and current.silence_id != silence_id:
                await self._expire_quietly(current.silence_id)
        change.detail = f"{change.detail}{note}"
        return await self._change(incident_id, lambda _: change)

    async def unsilence(self, incident_id: int, actor: Actor) -> Incident:
        """Lift a silence before its end (and in Alertmanager)."""
        await self._guard.require(
            actor,
            Role.OPERATOR,
            "lifting a silence",
            action="incident.unsilence",
            target=f"#{incident_id}",
        )
        before = await self.get(incident_id)
        incident = await self._change(
            incident_id, lambda i: rules_.unsilence(i, actor, utcnow(), self.rules)
        )
        if before.silence_id:
            await self._expire_quietly(before.silence_id)
        return incident

    async def _upstream_silence(
        self, incident: Incident, change: Change, actor: Actor
    ) -> tuple[str | None, str]:
        if self._alertmanager is None or incident.source is not AlertSource.ALERTMANAGER:
            return None, ""
        until = change.incident.silenced_until
        assert until is not None  # noqa: S101 - rules_.silence always sets it
        try:
            # The group's common labels: every member matches, nothing narrower would.
            silence_id = await self._alertmanager.create_silence(
                incident.common_labels,
                until,
                actor.describe(),
                f"Lunia incident {incident.describe()} silenced from the control plane",
            )
        except Unavailable as exc:
            logger.warning("Alertmanager silence for %s failed: %s", incident.describe(), exc)
            return None, f"; Alertmanager silence FAILED ({exc.message}), silenced here only"
        return silence_id, f"; Alertmanager silence {silence_id}"

    async def _expire_quietly(self, silence_id: str) -> None:
        if self._alertmanager is None:
            return
        try:
            await self._alertmanager.expire_silence(silence_id)
        except Unavailable as exc:
            logger.warning("could not expire Alertmanager silence %s: %s", silence_id, exc)

    # -- timers ----------------------------------------------------------------------------

    async def run_deadlines(self, now: datetime | None = None) -> int:
        """Escalate unacknowledged incidents and end silences whose time has come."""
        now = now or utcnow()
        system = Actor(
            kind=ActorKind.SCHEDULER, id="escalation", name="escalation", role=Role.ADMIN
        )
        handled = 0
        await self._page_storms(now)  # storms known before anything escalates into one
        for incident in await self._store.list_incidents(due_before=now, limit=500):

            def step(current: Incident) -> Change | None:
                if current.state is IncidentState.SILENCED:
                    return rules_.unsilence(
                        current, system, now, self.rules, reason="the silence ended"
                    )
                change = rules_.escalate(current, system, now, self.rules)
                return self._with_pagerduty(change) if change else None

            try:
                _, event = await self._store.change_incident(incident.id, step)
            except LuniaError as exc:
                logger.warning("deadline of %s not handled: %s", incident.describe(), exc)
                continue
            if event is not None:
                handled += 1
                await self._after([event])
        await self._page_storms(now)  # the escalations just made page their storms
        return handled

    async def sync_silences(self) -> int:
        """Reflect silences that expired or were lifted in Alertmanager back onto incidents."""
        if self._alertmanager is None:
            return 0
        actor = Actor(
            kind=ActorKind.SYSTEM, id="alertmanager", name="alertmanager", role=Role.OPERATOR
        )
        lifted = 0
        silenced = await self._store.list_incidents(states=[IncidentState.SILENCED], limit=500)
        for incident in silenced:
            if not incident.silence_id:
                continue
            try:
                state = await self._alertmanager.silence_state(incident.silence_id)
            except Unavailable as exc:
                logger.warning("cannot check silence %s: %s", incident.silence_id, exc)
                return lifted
            if state != "expired":
                continue
            _, event = await self._store.change_incident(
                incident.id, self._lift_if_still(incident.silence_id, actor)
            )
            if event is not None:
                lifted += 1
                await self._after([event])
        return lifted

    def _lift_if_still(self, silence_id: str, actor: Actor) -> IncidentMutation:
        def lift(current: Incident) -> Change | None:
            if current.silence_id != silence_id:  # re-silenced meanwhile: leave it
                return None
            return rules_.unsilence(
                current,
                actor,
                utcnow(),
                self.rules,
                reason="the silence was lifted in Alertmanager",
            )

        return lift

    # -- plumbing --------------------------------------------------------------------------

    def _with_pagerduty(self, change: Change) -> Change:
        """Attach the PagerDuty event (and security email) a change implies, written in the
        same transaction as the change."""
        opened = change.kind in (EventKind.OPENED, EventKind.REOPENED)
        if self._security_mail is not None and change.incident.security and opened:
            change.outbox.append(security_mail.message_for(change.incident))
        if self._pagerduty is None:
            return change
        incident = change.incident
        if change.kind is EventKind.ESCALATED:
            step = self.rules.escalation.get(incident.severity)
            wanted = step is not None and "pagerduty" in step.targets
            in_storm = self._storm_pager is not None and self._storm_pager.holds(incident.id)
            if wanted and incident.id and not incident.pagerduty_triggered and not in_storm:
                change.outbox.append(pagerduty.event_for(incident, "trigger"))
                change.incident.pagerduty_triggered = True
        elif incident.pagerduty_triggered and change.kind is EventKind.ACKNOWLEDGED:
            change.outbox.append(pagerduty.event_for(incident, "acknowledge"))
        elif incident.pagerduty_triggered and change.kind is EventKind.RESOLVED:
            change.outbox.append(pagerduty.event_for(incident, "resolve"))
        return change

    async def _change(self, incident_id: int, mutate: IncidentMutation) -> Incident:
        def with_side_effects(current: Incident) -> Change | None:
            change = mutate(current)
            return self._with_pagerduty(change) if change else None

        incident, event = await self._store.change_incident(incident_id, with_side_effects)
        if event is not None:
            await self._after([event])
        return incident

    async def _after(self, events: Sequence[IncidentEvent]) -> None:
        """Publish, count, and wake the PagerDuty sender for what just changed."""
        if not events:
            return
        for event in events:
            self._observe(event)
        await self._bus.publish_many(events)  # one round trip per webhook, not one per event
        for worker in (self._pagerduty, self._security_mail):
            if worker is not None:
                worker.wake()
        await self.export_open_counts()

    async def _page_storms(self, now: datetime) -> None:
        """Show the storm pager every stored event since its cursor, whichever replica stored
        it, and queue the storm page events that follow with the new cursor (one transaction);
        then the updates held back until ``now``. Runs with the escalations, on the leader."""
        if self._storm_pager is None or self._pagerduty is None:
            return
        if self._storm_cursor is None:
            self._storm_cursor = await self._store.get_cursor(pagerduty.STORM_CURSOR)
        while True:
            events = await self._store.incident_events(
                after_seq=self._storm_cursor, limit=STORM_BATCH
            )
            if not events:
                break
            messages = [m for e in events for m in self._storm_pager.observe(e, now)]
            await self._store.outbox_add(messages, cursor=(pagerduty.STORM_CURSOR, events[-1].seq))
            self._storm_cursor = events[-1].seq
            if len(events) < STORM_BATCH:
                break
        if due := self._storm_pager.due(now):
            await self._store.outbox_add(due)
        self._pagerduty.wake()

    async def count_open(self) -> dict[Severity, int]:
        """Open incidents per severity."""
        return await self._store.count_open_incidents()

    async def export_open_counts(self) -> dict[Severity, int]:
        """Set ``incidents_open`` from the store (another replica, or a restore, changed it)."""
        counts = await self.count_open()
        for severity, count in counts.items():
            self._metrics.incidents_open.labels(severity.value).set(count)
        return counts

    def _observe(self, event: IncidentEvent) -> None:
        incident = event.incident
        if event.kind is EventKind.ACKNOWLEDGED and incident.acknowledged_at:
            waited = (incident.acknowledged_at - incident.first_seen).total_seconds()
            self._metrics.time_to_ack.labels(incident.severity.value).observe(max(waited, 0))
        elif event.kind is EventKind.ESCALATED:
            step = self.rules.escalation.get(incident.severity)
            for target in step.targets if step else []:
                self._metrics.escalations.labels(incident.severity.value, target).inc()
        level = logging.INFO if event.kind is not EventKind.UPDATED else logging.DEBUG
        if logger.isEnabledFor(level):  # the descriptions cost more than the check, per alert
            logger.log(
                level,
                "incident %s %s by %s",
                incident.describe(),
                event.kind.value,
                event.actor.describe(),
            )


def _acknowledging(actor: Actor) -> IncidentMutation:
    """The mutation that acknowledges an incident as ``actor`` (for replays)."""

    def mutate(incident: Incident) -> Change | None:
        return rules_.acknowledge(incident, actor, utcnow())

    return mutate
