"""The SQLite statements the hot paths run, and their query plans (issue 18 point 2).

``exercise`` drives what every webhook, escalation tick and chat delivery does on a store that
already holds history; ``plans`` asks SQLite how it would run each statement that was traced.
The test (tests/core/test_query_plans.py) holds every plan to an index; the bench
(bench/query_plans.py) prints them.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import httpx

from core.control_plane import ControlPlane
from core.models import Actor, utcnow
from tests.support.payloads import am_alert, am_payload

# Tables that grow with history: a full scan of any of them costs more every day.
GROWING_TABLES = ("incidents", "alerts", "incident_events", "outbox", "audit")
_SCAN = re.compile(rf"^SCAN ({'|'.join(GROWING_TABLES)})\b")
_QUERY = re.compile(r"^\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", re.IGNORECASE)
_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\bNULL\b")
_LISTS = re.compile(r"\((?:\?,\s*)+\?\)")


async def seed(client: httpx.AsyncClient, headers: dict[str, str], incidents: int) -> None:
    """History first: ``incidents`` alerts, each an incident of its own."""
    for i in range(incidents):
        body = am_payload(am_alert(f"Old{i}", fingerprint=f"old-{i}", job=f"old{i}"))
        response = await client.post("/api/v1/alerts/alertmanager", json=body, headers=headers)
        assert response.status_code == 200, response.text


async def exercise(plane: ControlPlane, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """New groups, re-deliveries, an alert joining, resolutions, a reopening, an acknowledgement,
    the escalation tick, the open counts and the chat outbox: what production does all day."""

    async def post(*alerts: dict[str, object]) -> list[int]:
        response = await client.post(
            "/api/v1/alerts/alertmanager", json=am_payload(*alerts), headers=headers
        )
        assert response.status_code == 200, response.text
        incidents: list[int] = response.json()["incidents"]
        return incidents

    group = [am_alert(f"Hot{i}", fingerprint=f"hot-{i}", job="hot") for i in range(5)]
    await post(*group)  # a new group: one incident
    await post(*group)  # Alertmanager's repeat: duplicates
    await post(am_alert("Hot5", fingerprint="hot-5", job="hot"))  # joins the open group
    resolved = [
        am_alert(
            f"Hot{i}",
            fingerprint=f"hot-{i}",
            job="hot",
            status="resolved",
            ends_at="2026-11-28T09:30:00Z",
        )
        for i in range(6)
    ]
    await post(*resolved)  # the group clears: resolved
    [opened] = await post(  # fires again: reopened
        am_alert("Hot0", fingerprint="hot-0", job="hot", starts_at="2026-11-28T10:00:00Z")
    )
    await plane.incidents.acknowledge(opened, Actor.system("hot-paths"))
    await plane.incidents.run_deadlines(utcnow() + timedelta(hours=1))
    await plane.incidents.count_open()
    await plane.store.outbox_due("telegram", utcnow(), 50)
    await plane.store.outbox_stats("telegram")
    await plane.store.incident_alerts(opened)
    await plane.store.incident_events(after_seq=0, limit=50)


def shape(statement: str) -> str:
    """A statement with its literals replaced by ``?`` (one entry per distinct query)."""
    return _LISTS.sub("(?, …)", " ".join(_LITERALS.sub("?", statement).split()))


def plans(db: Path, statements: list[str]) -> dict[str, list[str]]:
    """Each distinct query among ``statements`` (by shape) with SQLite's plan for it."""
    found: dict[str, list[str]] = {}
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        for statement in statements:
            key = shape(statement)
            if key in found or not _QUERY.match(statement):
                continue
            rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
            found[key] = [str(row[-1]) for row in rows]
    finally:
        conn.close()
    return found


def full_scans(plan: list[str]) -> list[str]:
    """The steps of ``plan`` that read a growing table whole."""
    return [step for step in plan if _SCAN.match(step)]
