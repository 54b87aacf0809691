"""Storm detection and chat routing: the core rules the Telegram notifier (and later paging)
follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.incidents.routing import ChatRouting
from core.incidents.storm import StormDetector, Verdict
from core.models import Actor
from core.models.alerts import AlertSource, Severity
from core.models.incidents import EventKind, Incident, IncidentEvent
from tests.conftest import SettingsFactory

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
OPS, SECURITY, ESCALATION = -1001, -1002, -1003


def incident(number: int, *, security: bool = False) -> Incident:
    return Incident(
        id=number,
        key=f"alertmanager:f{number}",
        source=AlertSource.ALERTMANAGER,
        fingerprint=f"f{number}",
        title=f"Storm{number}",
        severity=Severity.WARNING,
        security=security,
        first_seen=T0,
        last_seen=T0,
    )


_seq = iter(range(1, 10_000))


def event(number: int, kind: EventKind = EventKind.OPENED, seconds: float = 0) -> IncidentEvent:
    return IncidentEvent(
        seq=next(_seq),
        ts=T0 + timedelta(seconds=seconds),
        kind=kind,
        incident=incident(number),
        actor=Actor.system("test"),
    )


def test_openings_over_the_threshold_join_a_storm() -> None:
    storms = StormDetector(threshold=5, window=timedelta(seconds=10))
    verdicts = [storms.observe(event(n, seconds=n * 0.5), OPS) for n in range(1, 9)]
    assert verdicts == [Verdict.SINGLE] * 5 + [Verdict.STORM] * 3
    assert storms.holding
    [storm] = storms.take_storms()
    assert storm.destination == OPS
    assert [i.id for i in storm.incidents] == [6, 7, 8]
    assert storm.window_seconds == 10
    assert not storms.holding
    assert storms.take_storms() == []  # taken once


def test_a_held_incident_stays_in_the_storm_and_others_still_get_messages() -> None:
    storms = StormDetector(threshold=1, window=timedelta(seconds=10))
    assert storms.observe(event(1), OPS) is Verdict.SINGLE
    assert storms.observe(event(2), OPS) is Verdict.STORM
    # Later changes of the held incident get no message of their own (it has none to edit) ...
    assert storms.observe(event(2, EventKind.ACKNOWLEDGED, 1), OPS) is Verdict.STORM
    # ... while those of an incident shown singly still do.
    assert storms.observe(event(1, EventKind.ACKNOWLEDGED, 1), OPS) is Verdict.SINGLE
    # Only openings count towards a storm: updates and reopenings are not new arrivals.
    assert storms.observe(event(1, EventKind.REOPENED, 2), OPS) is Verdict.SINGLE
    assert [i.id for s in storms.take_storms() for i in s.incidents] == [2]


def test_the_window_slides_on_event_time() -> None:
    storms = StormDetector(threshold=2, window=timedelta(seconds=10))
    assert storms.observe(event(1, seconds=0), OPS) is Verdict.SINGLE
    assert storms.observe(event(2, seconds=5), OPS) is Verdict.SINGLE
    assert storms.observe(event(3, seconds=9), OPS) is Verdict.STORM
    # 11 s later the first two openings have left the window: a single message again.
    assert storms.observe(event(4, seconds=20), OPS) is Verdict.SINGLE


def test_each_destination_storms_on_its_own() -> None:
    storms = StormDetector(threshold=2, window=timedelta(seconds=10))
    for n in (1, 2, 3):
        storms.observe(event(n), OPS)
    assert storms.observe(event(4), SECURITY) is Verdict.SINGLE
    assert storms.observe(event(5), SECURITY) is Verdict.SINGLE
    assert storms.observe(event(6), SECURITY) is Verdict.STORM
    taken = {s.destination: [i.id for i in s.incidents] for s in storms.take_storms()}
    assert taken == {OPS: [3], SECURITY: [6]}


def test_routing_sends_security_incidents_apart(make_settings: SettingsFactory) -> None:
    routing = ChatRouting.from_settings(
        make_settings(
            telegram_ops_chat_id=OPS,
            telegram_security_chat_id=SECURITY,
            telegram_escalation_chat_id=ESCALATION,
        )
    )
    assert routing.chat_for(incident(1)) == OPS
    assert routing.chat_for(incident(2, security=True)) == SECURITY
    assert routing.escalation == ESCALATION


def test_routing_falls_back_to_the_ops_chat(make_settings: SettingsFactory) -> None:
    routing = ChatRouting.from_settings(make_settings(telegram_ops_chat_id=OPS))
    assert routing.chat_for(incident(1, security=True)) == OPS
    assert routing.escalation == OPS
    nowhere = ChatRouting.from_settings(make_settings())
    assert nowhere.chat_for(incident(1)) is None
    assert nowhere.escalation is None
