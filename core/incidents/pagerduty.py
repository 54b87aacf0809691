"""PagerDuty Events API v2: escalations trigger, acknowledge and resolve one alert per incident,
or one per alert storm.

Events are queued in the ``pagerduty`` outbox and sent by an ``OutboxWorker`` with this module's
``deliver``; the routing key is added at send time so it is never written to the state database.
An incident's own events are queued with the change that caused them. ``StormPager`` follows the
incidents that page with a ``StormDetector`` for the ``pagerduty`` destination: the incidents of a
storm page once, under the storm's dedup key, and that page is updated, acknowledged and resolved
as the storm grows and its incidents are handled. It reads the stored event log (every replica's
changes) with the escalations, so it decides in the one place that pages.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from core.incidents.storm import Storm, StormDetector, Verdict
from core.models import OutboxItem, OutboxMessage
from core.models.alerts import Severity
from core.models.incidents import EventKind, Incident, IncidentEvent, IncidentState, Rules
from core.platform.metrics import Metrics
from core.platform.outbox import Delivery

logger = logging.getLogger(__name__)

CHANNEL = "pagerduty"
_PD_SEVERITY = {Severity.CRITICAL: "critical", Severity.WARNING: "warning", Severity.INFO: "info"}
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
# The storm detector's destination for paging (chats are numbers, so this cannot clash).
DESTINATION = "pagerduty"
STORM_TITLES = 5  # titles a storm page names; the count and incident ids say the rest
_HANDLED = (IncidentState.ACKNOWLEDGED, IncidentState.SILENCED, IncidentState.RESOLVED)
STORM_CURSOR = "pagerduty-storms"  # the storm pager's place in the incident event log
# Events older than this teach the pager what happened (a first run reads the whole log) but
# page nobody: nobody is woken for a storm long over.
STALE_EVENTS = timedelta(hours=1)


def dedup_key(incident: Incident) -> str:
    """The one PagerDuty dedup key of an incident, for trigger, acknowledge and resolve."""
    return f"lunia-incident-{incident.id}"


def event_for(incident: Incident, action: str) -> OutboxMessage:
    """The outbox message for ``action`` (trigger | acknowledge | resolve) on ``incident``."""
    body: dict[str, Any] = {"event_action": action, "dedup_key": dedup_key(incident)}
    if action == "trigger":
        body["payload"] = {
            "summary": f"[{incident.severity.value}] {incident.title}: "
            f"{incident.summary or incident.title}"[:1024],
            "source": incident.labels.get("instance") or incident.source.value,
            "severity": _PD_SEVERITY[incident.severity],
            "component": incident.labels.get("job") or incident.source.value,
            "group": incident.labels.get("alertname") or incident.title,
            "class": incident.source.value,
            "custom_details": {
                "incident_id": incident.id,
                "labels": incident.labels,
                "count": incident.count,
            },
        }
        if incident.generator_url:
            body["links"] = [{"href": incident.generator_url, "text": "Source"}]
    return OutboxMessage(channel=CHANNEL, key=dedup_key(incident), payload=body)


def pages(incident: Incident, rules: Rules) -> bool:
    """True when escalating ``incident`` pages PagerDuty."""
    step = rules.escalation.get(incident.severity)
    return step is not None and "pagerduty" in step.targets


def storm_dedup_key(storm: Storm) -> str:
    """The one PagerDuty dedup key of a storm, for its trigger, updates, acknowledge, resolve."""
    return f"storm:{storm.id}"


def storm_event_for(storm: Storm, members: list[Incident], action: str) -> OutboxMessage:
    """The outbox message for ``action`` on the page of ``storm`` (``members`` in its order)."""
    key = storm_dedup_key(storm)
    body: dict[str, Any] = {"event_action": action, "dedup_key": key}
    if action == "trigger":
        worst = max((m.severity for m in members), key=_SEVERITY_RANK.__getitem__)
        still_open = sum(1 for m in members if m.is_open)
        titles = [m.title for m in members[:STORM_TITLES]]
        more = f" and {len(members) - len(titles)} more" if len(members) > len(titles) else ""
        # The summary changes as the storm grows, not as it is worked off: it decides updates.
        body["payload"] = {
            "summary": f"[{worst.value}] alert storm: {len(members)} incidents: "
            f"{'; '.join(titles)}{more}"[:1024],
            "source": "lunia",
            "severity": _PD_SEVERITY[worst],
            "component": "alert storm",
            "group": key,
            "class": "storm",
            "custom_details": {
                "storm_id": storm.id,
                "started": storm.started.isoformat(),
                "incidents": len(members),
                "open": still_open,
                "incident_ids": [m.id for m in members],
                "titles": titles,
            },
        }
    return OutboxMessage(channel=CHANNEL, key=key, payload=body)


@dataclass
class _StormPage:
    """What the pager knows of one storm's page."""

    storm: Storm
    members: dict[int, Incident] = field(default_factory=dict)
    sent: str | None = None  # the summary last sent; None: not paged (yet)
    sent_at: datetime | None = None
    acknowledged: bool = False

    def summary(self) -> str:
        ordered = self.ordered()
        return str(storm_event_for(self.storm, ordered, "trigger").payload["payload"]["summary"])

    def ordered(self) -> list[Incident]:
        return [self.members[n] for n in self.storm.incident_ids if n in self.members]


class StormPager:
    """Pages once per alert storm instead of once per incident.

    Fed every stored incident event in order (``observe``); the incidents that page and open
    faster than ``StormDetector`` allows form a storm for the ``pagerduty`` destination. While an
    incident belongs to a storm, ``holds`` says its escalation must not page on its own: the first
    escalation of any of the storm's incidents triggers the storm's page instead, which is updated
    (same dedup key) as the storm grows, at most every ``update_interval``, acknowledged when every
    incident of it is acknowledged, silenced or resolved, and resolved when all are resolved.
    """

    def __init__(
        self,
        rules: Rules,
        *,
        threshold: int = 5,
        window: timedelta = timedelta(seconds=10),
        update_interval: timedelta = timedelta(seconds=60),
    ) -> None:
        self._rules = rules
        self._detector = StormDetector(threshold, window)
        self._update_interval = update_interval
        # Incidents that opened within the window: a storm beginning takes them in with their
        # latest state, though they opened before anyone knew of it.
        self._recent: OrderedDict[int, tuple[datetime, Incident]] = OrderedDict()
        self._pages: dict[str, _StormPage] = {}
        self._member_of: dict[int, str] = {}

    def holds(self, incident_id: int) -> bool:
        """True while the incident belongs to a storm whose page stands for it."""
        return incident_id in self._member_of

    def observe(self, event: IncidentEvent, now: datetime) -> list[OutboxMessage]:
        """Follow one stored event; the storm page events it implies."""
        incident = event.incident
        if event.kind is EventKind.OPENED and pages(incident, self._rules):
            self._remember(event)
            if self._detector.observe(event, DESTINATION) is Verdict.STORM:
                self._join(incident)
        elif incident.id in self._recent:
            self._recent[incident.id] = (self._recent[incident.id][0], incident)
        page = self._page_of(incident.id)
        if page is None:
            return []
        page.members[incident.id] = incident
        stale = now - event.ts > STALE_EVENTS
        if event.kind is EventKind.ESCALATED and page.sent is None and not stale:
            return self._trigger(page, now)  # nobody took any of them in time: page now
        messages = self._settle(page)
        return [] if stale else messages

    def due(self, now: datetime) -> list[OutboxMessage]:
        """The updates of grown storm pages whose ``update_interval`` has passed (asked after
        a batch of events, so a burst of openings is one update)."""
        messages: list[OutboxMessage] = []
        for page in self._pages.values():
            if page.sent is None or page.sent_at is None:
                continue
            if now - page.sent_at >= self._update_interval and page.summary() != page.sent:
                messages.extend(self._trigger(page, now))
        return messages

    def _remember(self, event: IncidentEvent) -> None:
        self._recent[event.incident.id] = (event.ts, event.incident)
        while self._recent:
            first_id, (opened, _) = next(iter(self._recent.items()))
            if opened >= event.ts - self._detector.window:
                break
            del self._recent[first_id]

    def _join(self, incident: Incident) -> None:
        storm = self._detector.storm_at(DESTINATION)
        assert storm is not None  # noqa: S101 - the detector just said STORM
        page = self._pages.setdefault(storm.id, _StormPage(storm))
        for number in storm.incident_ids:
            if number not in page.members and number in self._recent:
                page.members[number] = self._recent[number][1]
                self._member_of[number] = storm.id
        page.members[incident.id] = incident
        self._member_of[incident.id] = storm.id

    def _page_of(self, incident_id: int) -> _StormPage | None:
        storm_id = self._member_of.get(incident_id)
        return None if storm_id is None else self._pages.get(storm_id)

    def _trigger(self, page: _StormPage, now: datetime) -> list[OutboxMessage]:
        page.sent, page.sent_at = page.summary(), now
        return [storm_event_for(page.storm, page.ordered(), "trigger")]

    def _settle(self, page: _StormPage) -> list[OutboxMessage]:
        """Resolve or acknowledge a sent page as its incidents now stand."""
        if page.sent is None:
            if all(not m.is_open for m in page.members.values()):
                self._forget(page)  # over before anyone was paged: nothing to take back
            return []
        members = page.ordered()
        if all(not m.is_open for m in members):
            self._forget(page)
            return [storm_event_for(page.storm, members, "resolve")]
        handled = all(m.state in _HANDLED for m in members)
        if handled and not page.acknowledged:
            page.acknowledged = True
            return [storm_event_for(page.storm, members, "acknowledge")]
        if not handled:
            page.acknowledged = False  # an incident was handed back or opened: not taken
        return []

    def _forget(self, page: _StormPage) -> None:
        """The page is over: its incidents page on their own again should they reopen."""
        self._pages.pop(page.storm.id, None)
        for number in page.members:
            if self._member_of.get(number) == page.storm.id:
                del self._member_of[number]


class PagerDutySender:
    """Delivers queued events to the Events API, classifying failures for the outbox."""

    def __init__(
        self, url: str, routing_key: SecretStr, metrics: Metrics, *, timeout: float = 10.0
    ) -> None:
        self._url = url
        self._routing_key = routing_key
        self._metrics = metrics
        self._client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def deliver(self, item: OutboxItem) -> Delivery:
        """Send one event; 429/5xx/network errors are retried, other 4xx are final."""
        action = str(item.payload.get("event_action"))
        body = {**item.payload, "routing_key": self._routing_key.get_secret_value()}
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            self._metrics.pagerduty_sends.labels(action, "network_error").inc()
            return Delivery.retry(f"PagerDuty unreachable: {type(exc).__name__}")
        status = response.status_code
        if status in (200, 201, 202):
            self._metrics.pagerduty_sends.labels(action, "ok").inc()
            return Delivery.ok()
        if status == 429 or status >= 500:
            self._metrics.pagerduty_sends.labels(action, "retry").inc()
            retry_after = response.headers.get("retry-after")
            after = float(retry_after) if retry_after and retry_after.isdigit() else None
            return Delivery.retry(f"PagerDuty answered {status}", after)
        self._metrics.pagerduty_sends.labels(action, "rejected").inc()
        return Delivery.failed(f"PagerDuty rejected the event ({status}): {response.text[:300]}")
