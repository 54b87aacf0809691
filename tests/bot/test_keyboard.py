"""An incident message offers exactly the buttons core's ``allowed_actions`` permits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.callbacks import IncidentButton, Signer, incident_keyboard
from core.models import Actor, ActorKind, Role
from core.models.alerts import AlertSource, Severity
from core.models.incidents import Incident, Rules, acknowledge, resolve, silence

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
SIGNER = Signer(b"k" * 32)


def triggered() -> Incident:
    return Incident(
        id=5,
        key="alertmanager:x",
        source=AlertSource.ALERTMANAGER,
        fingerprint="x",
        title="RedisDown",
        severity=Severity.CRITICAL,
        first_seen=NOW,
        last_seen=NOW,
    )


def labels(incident: Incident, *, diagnose: bool = False) -> list[list[str]] | None:
    markup = incident_keyboard(SIGNER, incident, diagnose=diagnose)
    if markup is None:
        return None
    rows = [[button.text for button in row] for row in markup.inline_keyboard]
    for row in markup.inline_keyboard:  # every button is signed and names this incident
        for button in row:
            data = IncidentButton.unpack(str(button.callback_data))
            assert SIGNER.verify(data) and data.incident == incident.id
    return rows


def test_a_triggered_incident_offers_acknowledge_resolve_silence_and_diagnose() -> None:
    assert labels(triggered(), diagnose=True) == [
        ["👀 Acknowledge", "✅ Resolve"],
        ["🔕 1h", "🔕 4h", "🔕 24h"],
        ["🩺 Diagnose"],
    ]
    assert labels(triggered()) == [["👀 Acknowledge", "✅ Resolve"], ["🔕 1h", "🔕 4h", "🔕 24h"]]


def test_a_silenced_acknowledged_incident_offers_hand_back_and_unsilence() -> None:
    change = acknowledge(triggered(), OTTO, NOW)
    assert change is not None
    silenced = silence(change.incident, OTTO, NOW, timedelta(hours=1), Rules()).incident
    assert labels(silenced) == [["↩️ Unacknowledge", "✅ Resolve"], ["🔔 Unsilence"]]


def test_a_resolved_incident_has_no_buttons() -> None:
    change = resolve(triggered(), OTTO, NOW)
    assert change is not None
    assert labels(change.incident, diagnose=True) is None
