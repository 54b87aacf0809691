"""``Incident.allowed_actions`` agrees with the state machine, in every state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.control_plane import ControlPlane
from core.errors import Conflict
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, ActorKind, Role
from core.models.alerts import AlertSource, Severity
from core.models.incidents import (
    Change,
    EscalationStep,
    Incident,
    IncidentAction,
    IncidentState,
    Rules,
    acknowledge,
    escalate,
    resolve,
    silence,
    unacknowledge,
    unsilence,
)
from tests.conftest import ADMIN_TOKEN
from tests.support.payloads import am_alert, am_payload

OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
RULES = Rules(escalation={Severity.CRITICAL: EscalationStep(ack_timeout_seconds=60, repeat=3)})
LATER = NOW + timedelta(hours=2)  # past any escalation deadline set at NOW

Transition = Callable[[Incident], Change | None]

# Each action that the state machine carries out, applied at LATER.
TRANSITIONS: dict[IncidentAction, Transition] = {
    IncidentAction.ACKNOWLEDGE: lambda i: acknowledge(i, OTTO, LATER),
    IncidentAction.UNACKNOWLEDGE: lambda i: unacknowledge(i, OTTO, LATER, RULES),
    IncidentAction.RESOLVE: lambda i: resolve(i, OTTO, LATER),
    IncidentAction.SILENCE: lambda i: silence(i, OTTO, LATER, timedelta(hours=1), RULES),
    IncidentAction.UNSILENCE: lambda i: unsilence(i, OTTO, LATER, RULES),
    IncidentAction.ESCALATE: lambda i: escalate(i, OTTO, LATER, RULES),
}


def fresh(severity: Severity = Severity.CRITICAL) -> Incident:
    return Incident(
        id=7,
        key="alertmanager:abc",
        source=AlertSource.ALERTMANAGER,
        fingerprint="abc",
        title="RedisDown",
        severity=severity,
        first_seen=NOW,
        last_seen=NOW,
        next_escalation_at=RULES.first_escalation(severity, NOW),
    )


def then(incident: Incident, change: Change | None) -> Incident:
    assert change is not None
    return change.incident


def states() -> dict[str, Incident]:
    """Every state an incident can be in, each reached through the state machine itself."""
    triggered = fresh()
    acked = then(triggered, acknowledge(triggered, OTTO, NOW))
    silenced = then(triggered, silence(triggered, OTTO, NOW, timedelta(hours=1), RULES))
    return {
        "triggered, escalation due": triggered,
        "triggered, no escalation policy": fresh(Severity.INFO),
        "acknowledged": acked,
        "silenced": silenced,
        "silenced, then acknowledged": then(silenced, acknowledge(silenced, OTTO, NOW)),
        "acknowledged, then silenced": then(
            acked, silence(acked, OTTO, NOW, timedelta(hours=1), RULES)
        ),
        "handed back": then(acked, unacknowledge(acked, OTTO, NOW, RULES)),
        "resolved": then(triggered, resolve(triggered, OTTO, NOW)),
    }


@pytest.mark.parametrize("name", list(states()))
def test_allowed_actions_succeed_and_the_rest_are_refused_or_change_nothing(name: str) -> None:
    incident = states()[name]
    allowed = incident.allowed_actions
    for action, transition in TRANSITIONS.items():
        if action in allowed:
            change = transition(incident)
            assert change is not None, f"{name}: {action} is allowed but changed nothing"
            assert change.incident != incident
        else:
            try:
                outcome = transition(incident)
            except Conflict:
                continue
            assert outcome is None, f"{name}: {action} is not allowed but changed the incident"


@pytest.mark.parametrize("name", list(states()))
def test_diagnosis_is_offered_while_the_incident_is_open(name: str) -> None:
    incident = states()[name]
    assert (IncidentAction.DIAGNOSE in incident.allowed_actions) is incident.is_open


def test_each_state_allows_what_on_call_expects() -> None:
    found = {name: set(i.allowed_actions) for name, i in states().items()}
    a = IncidentAction
    assert found["triggered, escalation due"] == {
        a.ACKNOWLEDGE,
        a.RESOLVE,
        a.SILENCE,
        a.DIAGNOSE,
        a.ESCALATE,
    }
    assert found["acknowledged"] == {a.UNACKNOWLEDGE, a.RESOLVE, a.SILENCE, a.DIAGNOSE}
    assert found["silenced"] == {a.ACKNOWLEDGE, a.RESOLVE, a.SILENCE, a.UNSILENCE, a.DIAGNOSE}
    assert found["resolved"] == set()


def test_allowed_actions_are_recomputed_not_stored() -> None:
    triggered = fresh()
    # A stored document carries the field; reading it back recomputes it from the state.
    stale = triggered.model_dump(mode="json") | {"state": IncidentState.RESOLVED.value}
    assert Incident.model_validate(stale).allowed_actions == []


async def test_the_api_shows_allowed_actions(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("RedisDown"))))
    [incident_id] = result.incidents
    await plane.incidents.acknowledge(incident_id, OTTO)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    detail = (await client.get(f"/api/v1/incidents/{incident_id}", headers=auth)).json()
    assert detail["incident"]["allowed_actions"] == [
        "unacknowledge",
        "resolve",
        "silence",
        "diagnose",
    ]
    listed = (await client.get("/api/v1/incidents", headers=auth)).json()["items"]
    assert listed[0]["allowed_actions"] == detail["incident"]["allowed_actions"]
