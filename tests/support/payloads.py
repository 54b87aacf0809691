"""Builders of webhook bodies as the real senders shape them (shared by tests and bench)."""

from __future__ import annotations

import json
from typing import Any

NOT_ENDED = "0001-01-01T00:00:00Z"


def am_alert(
    name: str,
    *,
    status: str = "firing",
    severity: str = "critical",
    fingerprint: str | None = None,
    starts_at: str = "2026-11-28T09:00:00Z",
    ends_at: str = NOT_ENDED,
    description: str = "",
    **labels: str,
) -> dict[str, Any]:
    """One alert of an Alertmanager v4 notification."""
    all_labels = {
        "alertname": name,
        "severity": severity,
        "job": "lunia",
        "instance": "lunia-api:8000",
        **labels,
    }
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {
            "summary": f"{name} is {status}",
            "description": description or f"{name} details",
        },
        "startsAt": starts_at,
        "endsAt": ends_at if status == "firing" else "2026-11-28T09:30:00Z",
        "generatorURL": f"http://prometheus:9090/graph?g0.expr={name}",
        "fingerprint": fingerprint or f"fp-{name.lower()}",
    }


def am_payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """An Alertmanager webhook (version 4) body: one notification group of ``alerts``, grouped
    the way a route with ``group_by: [alertname]`` groups them (by ``job`` when the alerts do
    not share an alertname, since one notification carries one group)."""
    firing = any(a["status"] == "firing" for a in alerts)
    names = {a.get("labels", {}).get("alertname") for a in alerts}
    by = "alertname" if len(names) == 1 else "job"
    group = {by: str(alerts[0].get("labels", {}).get(by, "")) if alerts else ""}
    return {
        "version": "4",
        "groupKey": f"{{}}:{{{by}={json.dumps(group[by])}}}",
        "truncatedAlerts": 0,
        "status": status or ("firing" if firing else "resolved"),
        "receiver": "lunia",
        "groupLabels": group,
        "commonLabels": {"job": "lunia"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def grafana_payload(name: str = "HighLatency", *, status: str = "firing") -> dict[str, Any]:
    """A Grafana unified-alerting webhook body with one alert."""
    return {
        "receiver": "lunia",
        "status": status,
        "orgId": 1,
        "version": "1",
        "groupKey": '{}:{alertname="HighLatency"}',
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://grafana:3000/",
        "title": f"[FIRING:1] {name}",
        "state": "alerting",
        "message": "latency high",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, "severity": "warning", "route": "/api/v1/status"},
                "annotations": {"summary": "P99 latency above 200 ms"},
                "startsAt": "2026-11-28T09:00:00Z",
                "endsAt": NOT_ENDED if status == "firing" else "2026-11-28T09:20:00Z",
                "generatorURL": "http://grafana:3000/alerting/grafana/abc/view",
                "fingerprint": "grafana-fp-1",
                "silenceURL": "",
                "dashboardURL": "",
                "panelURL": "",
                "values": {"B": 0.31},
                "valueString": "[ var='B' value=0.31 ]",
            }
        ],
    }


def falco_event(
    rule: str = "Terminal shell in container",
    *,
    priority: str = "Critical",
    uuid: str = "8b0c1ab2-7a3d-4a63-9c07-1f1f0c8a0001",
) -> dict[str, Any]:
    """A falcosidekick webhook body (one Falco event)."""
    return {
        "uuid": uuid,
        "output": f"09:00:00.000000000: {priority} {rule} (user=root container=api)",
        "priority": priority,
        "rule": rule,
        "time": "2026-11-28T09:00:00.123456789Z",
        "output_fields": {
            "container.id": "abc123",
            "container.name": "lunia-api",
            "proc.name": "bash",
            "user.name": "root",
            "evt.time": 1764320400,
        },
        "source": "syscall",
        "tags": ["container", "shell", "mitre_execution"],
        "hostname": "node-1",
    }
