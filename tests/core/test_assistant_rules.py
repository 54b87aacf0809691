"""The rule-based assistant: intent matching over many phrasings (typos included), templated
answers from real core data, and the packaged runbook keyed by the Prometheus alert names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.assistant.rules import match_intent
from core.assistant.runbook import Runbook
from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, ActorKind, Role
from tests.support.payloads import am_alert, am_payload

VIC = Actor(kind=ActorKind.TELEGRAM, id="3", name="vic", role=Role.VIEWER)
OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/lunia.rules.yml"

PHRASINGS: list[tuple[str, str]] = [
    # PnL
    ("what's our PnL?", "pnl"),
    ("whats our pnl", "pnl"),
    ("wat is the pnll today", "pnl"),
    ("show me the P&L", "pnl"),
    ("profit and loss for the last 7d", "pnl"),
    ("how much money did we make?", "pnl"),
    ("are we profitable", "pnl"),
    ("proffit?", "pnl"),
    # exposure
    ("what's our exposure?", "exposure"),
    ("how exposed are we", "exposure"),
    ("current open positions", "exposure"),
    ("exposrue", "exposure"),
    ("are we over the risk limits?", "exposure"),
    # health
    ("is everything healthy?", "health"),
    ("system status", "health"),
    ("helth check", "health"),
    ("how are we doing", "health"),
    # what is broken
    ("what is broken?", "broken"),
    ("what's wrong", "broken"),
    ("whats brokn", "broken"),
    ("anything failing right now?", "broken"),
    ("what went wrong", "broken"),
    ("is something on fire", "broken"),
    # incidents
    ("show open incidents", "incidents"),
    ("any alerts firing?", "incidents"),
    ("open incidnets", "incidents"),
    ("list unacknowledged alerts", "incidents"),
    # failover
    ("why did we fail over?", "failover"),
    ("why did we failover", "failover"),
    ("falover reason", "failover"),
    ("which exchange are we trading on", "failover"),
    ("are we on the standby venue?", "failover"),
    # redis
    ("is Redis ok?", "redis"),
    ("redis status", "redis"),
    ("is reddis up", "redis"),
    # latency
    ("how is latency?", "latency"),
    ("is the api slow", "latency"),
    ("p99 latency", "latency"),
    ("latncy", "latency"),
    ("are we within the SLO", "latency"),
    ("response times look bad", "latency"),
    # backups
    ("when was the last backup?", "backup"),
    ("last backpu", "backup"),
    ("are we backed up", "backup"),
    ("backups ok?", "backup"),
    # flags
    ("which flags are on?", "flags"),
    ("feature flags", "flags"),
    ("flgas", "flags"),
    # runbook
    ("what does the runbook say about redis?", "runbook"),
    ("runbok for LLMRateLimited", "runbook"),
    ("what should I do about BackupStale", "runbook"),
    ("how do I handle an exchange outage", "runbook"),
    ("playbook for latency", "runbook"),
    # cores, audit, help
    ("which cores are running", "cores"),
    ("are the strategies on", "cores"),
    ("who changed what recently?", "audit"),
    ("show the audit log", "audit"),
    ("help", "help"),
]


@pytest.mark.parametrize(("question", "intent"), PHRASINGS)
def test_phrasing_matches_its_intent(question: str, intent: str) -> None:
    found = match_intent(question, Runbook().alert_names())
    assert found is not None, question
    assert found.intent == intent


def test_there_are_enough_phrasings_for_every_intent() -> None:
    assert len(PHRASINGS) >= 40
    assert {intent for _, intent in PHRASINGS} >= {
        "pnl", "exposure", "health", "broken", "incidents", "failover", "redis", "latency",
        "backup", "flags", "runbook",
    }  # fmt: skip


@pytest.mark.parametrize("question", ["", "hello there", "what's the weather in Lisbon", "42"])
def test_unrelated_questions_match_nothing(question: str) -> None:
    assert match_intent(question) is None


async def fire(plane: ControlPlane, name: str, **labels: str) -> int:
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert(name, **labels))))
    return result.incidents[0]


async def test_unmatched_question_lists_what_it_can_answer(plane: ControlPlane) -> None:
    answer = await plane.assistant.ask("tell me a joke about penguins", VIC)
    assert answer.source == "fallback" and answer.intent is None
    assert "# I could not match that question" in answer.text
    assert '- PnL per core and in total (e.g. "what\'s our PnL?")' in answer.text
    assert "- whether Redis is ok" in answer.text


async def test_open_incidents_and_what_is_broken_come_from_real_incidents(
    plane: ControlPlane,
) -> None:
    incident_id = await fire(plane, "RedisDown")

    incidents = await plane.assistant.ask("any alerts firing?", VIC)
    broken = await plane.assistant.ask("whats brokn", VIC)

    assert "# Open incidents: 1" in incidents.text
    assert f"- #{incident_id} RedisDown: critical, triggered, 1x since" in incidents.text
    assert incidents.facts[0].tool == "list_incidents"
    assert "# What looks broken" in broken.text
    assert f"- #{incident_id} RedisDown" in broken.text
    assert [f.tool for f in broken.facts] == ["health", "list_incidents", "venues"]


async def test_flags_answer_reflects_runtime_overrides(plane: ControlPlane) -> None:
    await plane.flags.set("AUTO_BACKUP_ENABLED", "off", OTTO)
    answer = await plane.assistant.ask("which flags are on?", VIC)
    assert "AUTO_BACKUP_ENABLED" not in answer.sections[1].items
    assert "BINANCE_LIVE_TRADING" in answer.sections[1].items
    assert "- AUTO_BACKUP_ENABLED = False (from override; default True)" in answer.text


async def test_failover_answer_says_why(plane: ControlPlane) -> None:
    before = await plane.assistant.ask("why did we fail over?", VIC)
    assert "Not failed over: trading on the primary binance (standby okx)." in before.text
    await plane.venues.failover(OTTO, to="okx", confirm=True, reason="binance returned 503s")
    after = await plane.assistant.ask("why did we fail over?", VIC)
    assert "We are trading on the standby okx, not the primary binance" in after.text
    assert "Why: binance returned 503s." in after.text


async def test_runbook_answer_quotes_the_alerts_section(plane: ControlPlane) -> None:
    answer = await plane.assistant.ask("what does the runbook say about RedisDown?", VIC)
    assert "# Runbook §2.2 Redis failure" in answer.text
    assert "Restart the Redis container or service." in answer.text
    by_topic = await plane.assistant.ask("runbook for exchnage outage", VIC)
    assert "# Runbook §2.1 Exchange outage" in by_topic.text


async def test_redis_latency_backup_and_pnl_answers(plane: ControlPlane) -> None:
    redis = await plane.assistant.ask("is redis ok", VIC)
    assert "# Redis is not in use\ndisabled: ENABLE_REDIS=false: embedded mode" in redis.text
    latency = await plane.assistant.ask("p99 latency", VIC)
    assert "No API requests have been timed since start." in latency.text
    backup = await plane.assistant.ask("last backup?", VIC)
    assert "Last successful backup: none at never." in backup.text
    await plane.backups.create(OTTO)
    backup = await plane.assistant.ask("last backup?", VIC)
    assert "Last successful backup: none" not in backup.text
    pnl = await plane.assistant.ask("pnl this week", VIC)
    assert "# PnL (7d: no history recorded yet)" in pnl.text


async def test_audit_answer_needs_operator(plane: ControlPlane) -> None:
    viewer = await plane.assistant.ask("show the audit log", VIC)
    assert viewer.tools_failed == [
        "audit_tail: the audit_tail tool needs the operator role; you have viewer"
    ]
    assert "# I could not look that up" in viewer.text
    operator = await plane.assistant.ask("show the audit log", OTTO)
    assert operator.tools_failed == []
    assert "# Recent audit entries" in operator.text


def test_every_alert_rule_has_the_runbook_section_its_annotation_names() -> None:
    text = RULES.read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    anchors = re.findall(r"runbook: RUNBOOK\.md#(\d)(\d?)-", text)
    assert len(alerts) == len(anchors) >= 5
    runbook = Runbook()
    for alert, (major, minor) in zip(alerts, anchors, strict=True):
        section = runbook.for_alert(alert)
        assert section is not None, alert
        assert section.ref == (f"{major}.{minor}" if minor else major), alert


@pytest.mark.parametrize(
    ("alert", "ref"),
    [
        ("ExchangeFailoverActive", "2.1"),
        ("RedisDown", "2.2"),
        ("LLMRateLimited", "2.3"),
        ("LatencySLOBreach", "2.4"),
        ("BackupStale", "3"),
        ("llm", "2.3"),
        ("venue:failover", "2.1"),
    ],
)
def test_runbook_sections_by_alert_and_engine_key(alert: str, ref: str) -> None:
    section = Runbook().for_alert(alert)
    assert section is not None and section.ref == ref


def test_runbook_search_by_keyword_tolerates_typos() -> None:
    runbook = Runbook()
    assert [s.ref for s in runbook.search("redsi")][:1] == ["2.2"]
    assert [s.ref for s in runbook.search("restore a backup")][:1] == ["3"]
    assert [s.ref for s in runbook.search("§2.4")] == ["2.4"]
    assert runbook.search("penguins") == []
