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
    storm = storms.storm_at(OPS)
    assert storm is not None
    # The openings that made the storm are on its board too: "acknowledge all" means all.
    assert storm.incident_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert storm.started == T0 + timedelta(seconds=3)
    assert storm.last_opened == T0 + timedelta(seconds=4)
    assert storms.active(T0 + timedelta(seconds=14)) == [storm]
    assert storms.active(T0 + timedelta(seconds=15)) == []  # a quiet window ends it


def test_a_held_incident_stays_on_the_board_and_others_still_get_messages() -> None:
    storms = StormDetector(threshold=1, window=timedelta(seconds=10))
    assert storms.observe(event(1), OPS) is Verdict.SINGLE
    assert storms.observe(event(2), OPS) is Verdict.STORM
    # Later changes of the held incident get no message of their own (it has none to edit) ...
    assert storms.observe(event(2, EventKind.ACKNOWLEDGED, 1), OPS) is Verdict.STORM
    # ... while those of an incident shown singly still do.
    assert storms.observe(event(1, EventKind.ACKNOWLEDGED, 1), OPS) is Verdict.SINGLE
    # Only openings count towards a storm: updates and reopenings are not new arrivals.
    assert storms.observe(event(1, EventKind.REOPENED, 2), OPS) is Verdict.SINGLE
    storm = storms.storm_at(OPS)
    assert storm is not None and storm.incident_ids == [1, 2]
    # An hour after the storm, the board is no longer the incident's place in chat.
    assert storms.observe(event(2, EventKind.REOPENED, 3601), OPS) is Verdict.SINGLE


def test_the_window_slides_on_event_time() -> None:
    storms = StormDetector(threshold=2, window=timedelta(seconds=10))
    assert storms.observe(event(1, seconds=0), OPS) is Verdict.SINGLE
    assert storms.observe(event(2, seconds=5), OPS) is Verdict.SINGLE
    assert storms.observe(event(3, seconds=9), OPS) is Verdict.STORM
    # 11 s later the first two openings have left the window: a single message again.
    assert storms.observe(event(4, seconds=20), OPS) is Verdict.SINGLE


def test_a_storm_after_a_quiet_window_is_a_new_storm() -> None:
    storms = StormDetector(threshold=1, window=timedelta(seconds=10))
    storms.observe(event(1, seconds=0), OPS)
    storms.observe(event(2, seconds=1), OPS)
    first = storms.storm_at(OPS)
    storms.observe(event(3, seconds=30), OPS)
    storms.observe(event(4, seconds=31), OPS)
    second = storms.storm_at(OPS)
    assert first is not None and second is not None and first.id != second.id
    assert (first.incident_ids, second.incident_ids) == ([1, 2], [3, 4])


def test_each_destination_storms_on_its_own() -> None:
    storms = StormDetector(threshold=2, window=timedelta(seconds=10))
    for n in (1, 2, 3):
        storms.observe(event(n), OPS)
    assert storms.observe(event(4), SECURITY) is Verdict.SINGLE
    assert storms.observe(event(5), SECURITY) is Verdict.SINGLE
    assert storms.observe(event(6), SECURITY) is Verdict.STORM
    active = {s.destination: s.incident_ids for s in storms.active(T0)}
    assert active == {OPS: [1, 2, 3], SECURITY: [4, 5, 6]}


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
