"""Incidents and their lifecycle rules, as pure functions over models.

The state machine (``triggered`` → ``acknowledged`` → ``resolved``, plus ``silenced`` with an
until-time) lives here so the store can apply a transition inside its own transaction and every
adapter gets the same refusals. Functions return a ``Change`` (or None when the action is already
done: actions are idempotent) and raise ``Conflict`` for impossible transitions.
``Incident.allowed_actions`` names the actions that would change something; the functions consult
it, so the buttons an adapter offers and the transitions it may carry out cannot disagree.

Grouping rule: an incident is the **alert group** its sender formed: Alertmanager's and Grafana's
``groupKey``, Falco's rule + hostname (``Alert.group_key``), or, with ``Rules.group_by`` set
(``ALERT_GROUP_BY``), the values of those labels, as if the sender grouped by them. Its key is
``<source>:group:<hash of the group key>``; engine incidents (no group) keep
``<source>:<fingerprint>``, as did every incident stored before groups (those keep their key and
still take their own fingerprint's alerts). The incident lists its ``members`` (one per
fingerprint, as last heard of); repeats increment ``count`` and ``last_seen``. It resolves when
every member has resolved. A re-fire after resolution **reopens** the incident when it was
resolved less than ``reopen_window`` ago, and opens a new one otherwise.
"""

from __future__ import annotations

import enum
import functools
import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, computed_field

from core.errors import Conflict, InvalidInput
from core.models import Actor, ActorKind, OutboxMessage, Role
from core.models.alerts import Alert, AlertSource, AlertStatus, Severity, stable_hash


class IncidentState(enum.StrEnum):
    """Where an incident is in its lifecycle."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    SILENCED = "silenced"
    RESOLVED = "resolved"


class EventKind(enum.StrEnum):
    """What happened to an incident; the bot renders each of these."""

    OPENED = "opened"
    UPDATED = "updated"
    REOPENED = "reopened"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    SILENCED = "silenced"
    UNSILENCED = "unsilenced"
    RESOLVED = "resolved"
    ESCALATED = "escalated"


class IncidentAction(enum.StrEnum):
    """What can be done to an incident (by a person, or ``escalate`` by the scheduler)."""

    ACKNOWLEDGE = "acknowledge"
    UNACKNOWLEDGE = "unacknowledge"
    RESOLVE = "resolve"
    SILENCE = "silence"
    UNSILENCE = "unsilence"
    DIAGNOSE = "diagnose"
    ESCALATE = "escalate"


class Member(BaseModel):
    """One alert of an incident's group (one fingerprint), as last heard of."""

    fingerprint: str
    status: AlertStatus
    severity: Severity
    labels: dict[str, str] = Field(default_factory=dict)
    last_seen: datetime


class _Roster:
    """One members list by fingerprint, with its firing counts and (once asked) its common
    labels: what the rules and the computed fields need, without a scan of the group per alert
    or per access (a webhook of n alerts of one group would cost n scans of up to n members).
    Valid only for the very list it was built for (``members``)."""

    __slots__ = ("members", "by_fingerprint", "firing", "_common")

    def __init__(
        self, by_fingerprint: dict[str, Member], firing: dict[Severity, int] | None = None
    ) -> None:
        self.by_fingerprint = by_fingerprint
        self.members = list(by_fingerprint.values())
        if firing is None:
            firing = {}
            for member in self.members:
                if member.status is AlertStatus.FIRING:
                    firing[member.severity] = firing.get(member.severity, 0) + 1
        self.firing = firing  # firing members per severity (no zero counts)
        self._common: dict[str, str] | None = None

    def with_member(self, member: Member) -> _Roster:
        """The roster with ``member`` replacing its fingerprint's one, moved last (as heard)."""
        by_fingerprint = dict(self.by_fingerprint)
        firing = dict(self.firing)
        known = by_fingerprint.pop(member.fingerprint, None)
        if known is not None and known.status is AlertStatus.FIRING:
            firing[known.severity] -= 1
            if not firing[known.severity]:
                del firing[known.severity]
        if member.status is AlertStatus.FIRING:
            firing[member.severity] = firing.get(member.severity, 0) + 1
        by_fingerprint[member.fingerprint] = member
        return _Roster(by_fingerprint, firing)

    @property
    def common(self) -> dict[str, str]:
        """The labels every member carries with the same value."""
        if self._common is None:
            first, *rest = self.members
            self._common = {
                name: value
                for name, value in sorted(first.labels.items())
                if all(m.labels.get(name) == value for m in rest)
            }
        return self._common

    # A cache, not part of the incident's value: incidents compare equal with or without it.
    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _Roster)

    __hash__ = None  # type: ignore[assignment]


class Incident(BaseModel):
    """One incident: a stateful view of one alert group (or one engine condition)."""

    id: int = 0
    key: str
    source: AlertSource
    fingerprint: str
    title: str
    severity: Severity
    state: IncidentState = IncidentState.TRIGGERED
    security: bool = False
    summary: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generator_url: str | None = None
    group_key: str | None = None
    firing: bool = True
    count: int = 1
    first_seen: datetime
    last_seen: datetime
    acknowledged_by: Actor | None = None
    acknowledged_at: datetime | None = None
    resolved_by: Actor | None = None
    resolved_at: datetime | None = None
    silenced_until: datetime | None = None
    silenced_by: Actor | None = None
    silence_id: str | None = None
    state_before_silence: IncidentState | None = None
    escalation_level: int = 0
    next_escalation_at: datetime | None = None
    pagerduty_triggered: bool = False
    version: int = 0
    # Empty only in documents written before groups and not migrated: see ``group``.
    members: list[Member] = Field(default_factory=list)
    _roster: _Roster | None = PrivateAttr(default=None)

    def roster(self) -> _Roster:
        """The members by fingerprint with their counts (built once per members list)."""
        # Read where pydantic keeps private attributes: ``self._roster`` would go through
        # BaseModel.__getattr__, several times per alert of every webhook.
        roster: _Roster | None = (self.__pydantic_private__ or {}).get("_roster")
        if roster is not None and roster.members is self.members:
            return roster
        roster = _Roster({m.fingerprint: m for m in self.group})
        if self.members:  # a group derived from the fields (before groups) is not kept
            roster.members = self.members
            self._roster = roster
        return roster

    @property
    def group(self) -> list[Member]:
        """The member alerts (an incident from before groups is its own one member)."""
        if self.members:
            return self.members
        status = AlertStatus.FIRING if self.firing else AlertStatus.RESOLVED
        return [
            Member(
                fingerprint=self.fingerprint,
                status=status,
                severity=self.severity,
                labels=self.labels,
                last_seen=self.last_seen,
            )
        ]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def firing_members(self) -> int:
        """How many member alerts are firing."""
        return sum(self.roster().firing.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_members(self) -> int:
        """How many member alerts have resolved."""
        roster = self.roster()
        return len(roster.by_fingerprint) - sum(roster.firing.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def common_labels(self) -> dict[str, str]:
        """The labels every member carries with the same value (what a silence matches)."""
        return dict(self.roster().common)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def differing_labels(self) -> list[str]:
        """Names of the labels whose values differ between members (or some lack)."""
        common = self.roster().common
        return sorted({name for m in self.group for name in m.labels} - set(common))

    @property
    def is_open(self) -> bool:
        """True until resolved."""
        return self.state is not IncidentState.RESOLVED

    @property
    def deadline(self) -> datetime | None:
        """When the scheduler must next look at this incident (escalation or silence end)."""
        if self.state is IncidentState.TRIGGERED:
            return self.next_escalation_at
        if self.state is IncidentState.SILENCED:
            return self.silenced_until
        return None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def allowed_actions(self) -> list[IncidentAction]:
        """The actions that would change this incident now (others are refused or no-ops)."""
        if self.state is IncidentState.RESOLVED:
            return []  # resolving again is a no-op; everything else is refused
        allowed = [
            IncidentAction.ACKNOWLEDGE
            if self.acknowledged_by is None
            else IncidentAction.UNACKNOWLEDGE,
            IncidentAction.RESOLVE,
            # Silencing a silenced incident extends the silence, so it stays allowed.
            IncidentAction.SILENCE,
        ]
        if self.state is IncidentState.SILENCED:
            allowed.append(IncidentAction.UNSILENCE)
        # Diagnosis changes nothing, but only a live incident is worth a diagnosis button.
        allowed.append(IncidentAction.DIAGNOSE)
        if self.state is IncidentState.TRIGGERED and self.next_escalation_at is not None:
            allowed.append(IncidentAction.ESCALATE)  # due at next_escalation_at
        return allowed

    def describe(self) -> str:
        """Short human reference: ``#12 RedisDown``."""
        return f"#{self.id} {self.title}"


class Change(BaseModel):
    """A transition computed by the rules, applied atomically by the store."""

    incident: Incident
    kind: EventKind
    actor: Actor
    detail: str = ""
    audit: bool = True
    outbox: list[OutboxMessage] = Field(default_factory=list)


class IncidentEvent(BaseModel):
    """A stored, ordered notification that an incident changed (what the bot renders)."""

    seq: int
    ts: datetime
    kind: EventKind
    incident: Incident
    actor: Actor
    detail: str = ""


class EscalationStep(BaseModel):
    """How one severity escalates when nobody acknowledges."""

    ack_timeout_seconds: float = Field(gt=0)
    repeat: int = Field(default=1, ge=0, le=20)
    targets: list[str] = Field(default_factory=lambda: ["chat"])


class Rules(BaseModel):
    """Tunable parts of the lifecycle."""

    reopen_window: timedelta = timedelta(hours=1)
    # Label names to regroup alerts by (``ALERT_GROUP_BY``); empty: the sender's own groups.
    group_by: tuple[str, ...] = ()
    escalation: dict[Severity, EscalationStep] = Field(default_factory=dict)
    max_silence: timedelta = timedelta(days=7)

    def first_escalation(self, severity: Severity, now: datetime) -> datetime | None:
        """When a fresh (or re-triggered) incident of ``severity`` escalates first."""
        step = self.escalation.get(severity)
        if step is None or step.repeat == 0:
            return None
        return now + timedelta(seconds=step.ack_timeout_seconds)


@functools.cache  # one per source: an Actor is frozen, and every alert's change names one
def source_actor(source: AlertSource) -> Actor:
    """The actor recorded for changes an alert source causes."""
    return Actor(kind=ActorKind.SYSTEM, id=source.value, name=source.value, role=Role.OPERATOR)


def regroup(alert: Alert, group_by: tuple[str, ...]) -> Alert:
    """``alert`` with the group key its sender would form grouping by the labels ``group_by``
    (Alertmanager's format; a missing label counts as empty); unchanged without ``group_by``
    and for the engine's own alerts, which form no groups."""
    if not group_by or alert.source is AlertSource.ENGINE:
        return alert
    values = ", ".join(
        f"{name}={json.dumps(alert.labels.get(name, ''), ensure_ascii=False)}"
        for name in sorted(set(group_by))
    )
    return alert.model_copy(update={"group_key": f"{{}}:{{{values}}}"})


def incident_key(alert: Alert) -> str:
    """The key of the incident ``alert`` belongs to: its group, or its own condition."""
    if alert.group_key is None or alert.source is AlertSource.ENGINE:
        return legacy_key(alert)
    return f"{alert.source.value}:group:{_group_hash(alert.group_key)}"


@functools.lru_cache(maxsize=4096)  # a webhook's alerts share their group's key
def _group_hash(group_key: str) -> str:
    """Hashed: a group key can be long (every group label), the store indexes this one."""
    return stable_hash(group_key)


def legacy_key(alert: Alert) -> str:
    """The key incidents had before groups (one per fingerprint); open ones stored by the
    old code keep it and still take their own alerts."""
    return f"{alert.source.value}:{alert.fingerprint}"


def _member(alert: Alert, now: datetime) -> Member:
    return Member(
        fingerprint=alert.fingerprint,
        status=alert.status,
        severity=alert.severity,
        labels=alert.labels,
        last_seen=now,
    )


def _with_member(incident: Incident, alert: Alert, now: datetime) -> _Roster:
    """The incident's members with ``alert``'s one replaced (or added) as just heard of."""
    member = _member(alert, now)
    roster = incident.roster()
    known = roster.by_fingerprint.get(alert.fingerprint)
    if known is not None:
        # A resolution may come bare (the engine's clear names no labels or severity): it
        # does not change what the alert was about.
        if not alert.labels:
            member.labels = known.labels
        if alert.status is AlertStatus.RESOLVED:
            member.severity = known.severity
    return roster.with_member(member)


def _group_severity(roster: _Roster, current: Severity) -> Severity:
    """The most severe firing member's severity (``current`` when none fires)."""
    return max(roster.firing, key=lambda s: s.rank) if roster.firing else current


def _updated(incident: Incident, update: dict[str, Any]) -> Incident:
    """``incident`` with ``update`` applied, keeping the roster ``_refresh_from`` built."""
    roster: _Roster | None = update.pop("roster", None)
    copied = incident.model_copy(update=update)
    copied._roster = roster  # built for exactly update["members"]
    return copied


def _new_incident(alert: Alert, now: datetime, rules: Rules) -> Incident:
    return Incident(
        key=incident_key(alert),
        source=alert.source,
        fingerprint=alert.fingerprint,
        title=alert.title,
        severity=alert.severity,
        security=alert.security,
        summary=alert.summary,
        description=alert.description,
        labels=alert.labels,
        annotations=alert.annotations,
        generator_url=alert.generator_url,
        group_key=alert.group_key,
        first_seen=now,
        last_seen=now,
        next_escalation_at=rules.first_escalation(alert.severity, now),
        members=[_member(alert, now)],
    )


def _refresh_from(incident: Incident, alert: Alert, now: datetime) -> dict[str, Any]:
    """What ``alert`` updates on its incident: the members, severity and last-seen always;
    the text only when it is the alert that opened the incident (a group keeps one face)."""
    roster = _with_member(incident, alert, now)
    update: dict[str, Any] = {
        "roster": roster,  # taken out again by ``_updated``
        "members": roster.members,
        "severity": _group_severity(roster, incident.severity),
        "security": incident.security or alert.security,
        "firing": bool(roster.firing),
        "last_seen": now,
    }
    if alert.fingerprint == incident.fingerprint:
        update |= {
            "title": alert.title,
            "summary": alert.summary or incident.summary,
            "description": alert.description or incident.description,
            "labels": alert.labels or incident.labels,
            "annotations": alert.annotations or incident.annotations,
            "generator_url": alert.generator_url or incident.generator_url,
        }
    return update


def plan_alert(
    alert: Alert,
    open_incident: Incident | None,
    last_resolved: Incident | None,
    now: datetime,
    rules: Rules,
) -> Change | None:
    """Decide what one newly received alert does to its incident (its group)."""
    change = _plan_alert(alert, open_incident, last_resolved, now, rules)
    if change is not None:
        # What an alert source does by itself is kept on the incident's timeline (and its
        # alerts); the audit log is for what people and automation do.
        change.audit = False
        if alert.notes:  # what the receiver repaired (e.g. an unreadable time) stays visible
            change.detail = "; ".join(filter(None, [change.detail, *alert.notes]))
    return change


def _plan_alert(
    alert: Alert,
    open_incident: Incident | None,
    last_resolved: Incident | None,
    now: datetime,
    rules: Rules,
) -> Change | None:
    """The transition one alert causes (see ``plan_alert``)."""
    actor = source_actor(alert.source)
    if open_incident is not None:
        return _plan_for_open(alert, open_incident, now, actor)
    if alert.status is AlertStatus.RESOLVED:
        return None  # already resolved here (by hand, or never seen firing): nothing to change
    if (
        last_resolved is not None
        and last_resolved.resolved_at is not None
        and (now - last_resolved.resolved_at < rules.reopen_window)
    ):
        refreshed = _refresh_from(last_resolved, alert, now)
        reopened = _updated(
            last_resolved,
            {
                **refreshed,
                "state": IncidentState.TRIGGERED,
                "count": last_resolved.count + 1,
                "acknowledged_by": None,
                "acknowledged_at": None,
                "resolved_by": None,
                "resolved_at": None,
                "escalation_level": 0,
                "pagerduty_triggered": False,
                "next_escalation_at": rules.first_escalation(refreshed["severity"], now),
            },
        )
        return Change(
            incident=reopened,
            kind=EventKind.REOPENED,
            actor=actor,
            detail="fired again shortly after it was resolved",
        )
    return Change(incident=_new_incident(alert, now, rules), kind=EventKind.OPENED, actor=actor)


def _plan_for_open(alert: Alert, incident: Incident, now: datetime, actor: Actor) -> Change:
    """What one alert of an open incident's group does: it resolves the incident when it was
    the last member still firing, and updates it otherwise."""
    joined = alert.fingerprint not in incident.roster().by_fingerprint
    refreshed = _refresh_from(incident, alert, now)
    members: list[Member] = refreshed["members"]
    if alert.status is AlertStatus.RESOLVED:
        if not refreshed["firing"]:
            resolved = _updated(
                incident,
                {
                    **refreshed,
                    "state": IncidentState.RESOLVED,
                    "resolved_by": actor,
                    "resolved_at": now,
                    "next_escalation_at": None,
                    "silenced_until": None,
                    "state_before_silence": None,
                },
            )
            detail = (
                "the alert cleared at its source"
                if len(members) == 1
                else f"all {len(members)} alerts of the group cleared at their source"
            )
            return Change(incident=resolved, kind=EventKind.RESOLVED, actor=actor, detail=detail)
        firing = sum(refreshed["roster"].firing.values())
        return Change(
            incident=_updated(incident, refreshed),
            kind=EventKind.UPDATED,
            actor=actor,
            detail=f"{alert.title} resolved; {firing} of {len(members)} alerts still firing",
        )
    updated = _updated(incident, {**refreshed, "count": incident.count + 1})
    detail = f"{alert.title} joined the group ({len(members)} alerts)" if joined else ""
    return Change(incident=updated, kind=EventKind.UPDATED, actor=actor, detail=detail)


def _refuse_resolved(incident: Incident, verb: str) -> None:
    if incident.state is IncidentState.RESOLVED:
        by = incident.resolved_by.name if incident.resolved_by else "its source"
        at = incident.resolved_at.strftime("%Y-%m-%d %H:%M UTC") if incident.resolved_at else "?"
        raise Conflict(
            f"incident {incident.describe()} is already resolved (by {by} at {at}); "
            f"there is nothing to {verb}"
        )


def acknowledge(incident: Incident, actor: Actor, now: datetime) -> Change | None:
    """Someone is on it: stop escalating."""
    _refuse_resolved(incident, "acknowledge")
    if IncidentAction.ACKNOWLEDGE not in incident.allowed_actions:
        return None
    update: dict[str, Any] = {
        "acknowledged_by": actor,
        "acknowledged_at": now,
        "next_escalation_at": None,
    }
    if incident.state is IncidentState.SILENCED:
        update["state_before_silence"] = IncidentState.ACKNOWLEDGED
    else:
        update["state"] = IncidentState.ACKNOWLEDGED
    return Change(
        incident=incident.model_copy(update=update), kind=EventKind.ACKNOWLEDGED, actor=actor
    )


def unacknowledge(incident: Incident, actor: Actor, now: datetime, rules: Rules) -> Change | None:
    """Hand the incident back: it is triggered again and escalation restarts."""
    _refuse_resolved(incident, "unacknowledge")
    if IncidentAction.UNACKNOWLEDGE not in incident.allowed_actions:
        return None
    update: dict[str, Any] = {
        "acknowledged_by": None,
        "acknowledged_at": None,
        "escalation_level": 0,
    }
    if incident.state is IncidentState.SILENCED:
        update["state_before_silence"] = IncidentState.TRIGGERED
    else:
        update["state"] = IncidentState.TRIGGERED
        update["next_escalation_at"] = rules.first_escalation(incident.severity, now)
    return Change(
        incident=incident.model_copy(update=update), kind=EventKind.UNACKNOWLEDGED, actor=actor
    )


def resolve(incident: Incident, actor: Actor, now: datetime) -> Change | None:
    """Close the incident by hand."""
    if IncidentAction.RESOLVE not in incident.allowed_actions:
        return None
    resolved = incident.model_copy(
        update={
            "state": IncidentState.RESOLVED,
            "resolved_by": actor,
            "resolved_at": now,
            "next_escalation_at": None,
            "silenced_until": None,
            "state_before_silence": None,
        }
    )
    return Change(incident=resolved, kind=EventKind.RESOLVED, actor=actor)


def silence(
    incident: Incident, actor: Actor, now: datetime, duration: timedelta, rules: Rules
) -> Change:
    """Mute the incident until ``now + duration`` (extends an existing silence)."""
    _refuse_resolved(incident, "silence")  # the one state where SILENCE is not allowed
    if duration <= timedelta(0) or duration > rules.max_silence:
        raise InvalidInput(
            f"silence duration must be between 1 minute and {rules.max_silence.days} days"
        )
    before = incident.state_before_silence or incident.state
    silenced = incident.model_copy(
        update={
            "state": IncidentState.SILENCED,
            "silenced_until": now + duration,
            "silenced_by": actor,
            "state_before_silence": before,
        }
    )
    until = silenced.silenced_until.strftime("%Y-%m-%d %H:%M UTC")  # type: ignore[union-attr]
    return Change(
        incident=silenced, kind=EventKind.SILENCED, actor=actor, detail=f"silenced until {until}"
    )


def unsilence(
    incident: Incident, actor: Actor, now: datetime, rules: Rules, reason: str = ""
) -> Change | None:
    """Lift a silence (by hand, at its end, or because Alertmanager expired it)."""
    if IncidentAction.UNSILENCE not in incident.allowed_actions:
        return None
    back = incident.state_before_silence or IncidentState.TRIGGERED
    update: dict[str, Any] = {
        "state": back,
        "silenced_until": None,
        "silenced_by": None,
        "silence_id": None,
        "state_before_silence": None,
    }
    if back is IncidentState.TRIGGERED:
        update["next_escalation_at"] = rules.first_escalation(incident.severity, now)
    return Change(
        incident=incident.model_copy(update=update),
        kind=EventKind.UNSILENCED,
        actor=actor,
        detail=reason,
    )


def escalate(incident: Incident, actor: Actor, now: datetime, rules: Rules) -> Change | None:
    """Nobody acknowledged in time: raise the level and schedule the next step, if any."""
    due = incident.next_escalation_at
    if IncidentAction.ESCALATE not in incident.allowed_actions or due is None or due > now:
        return None
    step = rules.escalation.get(incident.severity)
    if step is None:
        return None
    level = incident.escalation_level + 1
    following = now + timedelta(seconds=step.ack_timeout_seconds) if level < step.repeat else None
    escalated = incident.model_copy(
        update={"escalation_level": level, "next_escalation_at": following}
    )
    return Change(
        incident=escalated,
        kind=EventKind.ESCALATED,
        actor=actor,
        detail=f"not acknowledged: escalation {level} of {step.repeat} to "
        f"{', '.join(step.targets)}",
    )
