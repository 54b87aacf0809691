"""PagerDuty Events API v2: escalations trigger, acknowledge and resolve one alert per incident.

Events are queued in the ``pagerduty`` outbox with the change that caused them and sent by an
``OutboxWorker`` with this module's ``deliver``; the routing key is added at send time so it is
never written to the state database.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import SecretStr

from core.models import OutboxItem, OutboxMessage
from core.models.alerts import Severity
from core.models.incidents import Incident
from core.platform.metrics import Metrics
from core.platform.outbox import Delivery

logger = logging.getLogger(__name__)

CHANNEL = "pagerduty"
_PD_SEVERITY = {Severity.CRITICAL: "critical", Severity.WARNING: "warning", Severity.INFO: "info"}


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
