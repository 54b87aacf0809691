"""The assistant's LLM path against a loopback OpenAI-compatible server (the real ``openai`` SDK):
tool calling over real core data, typed proposals, the circuit breaker and its incident, and the
LLM_RATE_LIMITED flag."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from core.control_plane import ControlPlane
from core.errors import ConfirmationRequired, InvalidInput, PermissionDenied
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, ActorKind, Role
from core.models.alerts import AlertSource
from core.models.assistant import ActionKind, ProposedAction
from core.models.incidents import Incident, IncidentState
from tests.conftest import PlaneFactory
from tests.fakes.openai import FakeOpenAI
from tests.support.payloads import am_alert, am_payload

VIC = Actor(kind=ActorKind.TELEGRAM, id="3", name="vic", role=Role.VIEWER)
OTTO = Actor(kind=ActorKind.TELEGRAM, id="2", name="otto", role=Role.OPERATOR)
TELEGRAM_TOKEN = "123456:telegram-bot-token-that-must-not-leak"

LlmPlane = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started fake OpenAI-compatible server."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def llm_plane(make_plane: PlaneFactory, fake_openai: FakeOpenAI) -> LlmPlane:
    """Control planes whose assistant talks to the fake, with test-sized backoffs."""

    async def make(**env: Any) -> ControlPlane:
        env.setdefault("openai_api_key", fake_openai.api_key)
        env.setdefault("openai_base_url", fake_openai.base_url)
        # Generous: a cold CI machine compiles the SDK on first use. Timeout tests set their own.
        env.setdefault("llm_timeout_seconds", 5)
        env.setdefault("llm_backoff_seconds", 0.2)
        env.setdefault("llm_backoff_max_seconds", 5)
        return await make_plane(**env)

    return make


async def fire(plane: ControlPlane, *alerts: dict[str, Any]) -> list[int]:
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(*alerts)))
    return result.incidents


def metric(plane: ControlPlane, name: str, **labels: str) -> float:
    value = plane.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def tool_messages(request: dict[str, Any]) -> dict[str, Any]:
    """The tool results sent back to the model in one request, by tool name."""
    found = {}
    for message in request["messages"]:
        if message["role"] == "tool":
            content = json.loads(message["content"])
            found[content["tool"]] = content
    return found


async def llm_incident(plane: ControlPlane) -> Incident | None:
    for incident in await plane.incidents.list(limit=50):
        if incident.source is AlertSource.ENGINE and incident.fingerprint == "llm":
            return incident
    return None


async def test_two_tool_calls_answer_from_real_incidents_and_flags(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    [incident_id] = await fire(plane, am_alert("RedisDown"))
    await plane.flags.set("AUTO_BACKUP_ENABLED", False, OTTO)
    fake_openai.call_tools(("list_incidents", {"state": "open"}), ("flags", {}))
    fake_openai.reply("Redis is down and scheduled backups are off.")

    answer = await plane.assistant.ask("what is broken and which flags are off?", VIC)

    assert answer.source == "llm"
    assert answer.fallback_reason is None
    assert answer.inference == "Redis is down and scheduled backups are off."
    assert [f.tool for f in answer.facts] == ["list_incidents", "flags"]
    incidents = answer.facts[0].data["items"]
    assert [(i["id"], i["title"]) for i in incidents] == [(incident_id, "RedisDown")]
    flags = {f["name"]: f for f in answer.facts[1].data["items"]}
    assert flags["AUTO_BACKUP_ENABLED"]["value"] is False
    assert flags["AUTO_BACKUP_ENABLED"]["source"] == "override"
    # The model saw the same facts, answering the very tool calls it made.
    assert len(fake_openai.requests) == 2
    first, second = fake_openai.requests
    assert first["model"] == "gpt-4o-mini"
    assert {t["function"]["name"] for t in first["tools"]} >= {
        "health", "metrics_snapshot", "list_incidents", "get_incident", "flags", "venues",
        "cores", "pnl", "exposure", "backups", "audit_tail", "runbook", "propose_action",
    }  # fmt: skip
    sent = tool_messages(second)
    assert sent["list_incidents"]["data"]["items"][0]["title"] == "RedisDown"
    assert "AUTO_BACKUP_ENABLED" in sent["flags"]["summary"]
    assert "# What the tools showed" in answer.text
    assert "- list_incidents: 1 open incident(s): #" in answer.text
    assert metric(plane, "llm_requests_total", outcome="ok") == 1
    assert metric(plane, "llm_tool_calls_total", tool="flags", outcome="ok") == 1
    assert metric(plane, "llm_answer_duration_seconds_count", source="llm") == 1


async def test_proposed_action_comes_back_typed_and_is_not_carried_out(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    [incident_id] = await fire(plane, am_alert("LatencySLOBreach"))
    fake_openai.call_tools(
        ("get_incident", {"id": incident_id}),
        ("propose_action", {"kind": "ack_incident", "target": str(incident_id),
                            "reason": "on-call should take it"}),
        ("propose_action", {"kind": "toggle_core", "target": "momentum",
                            "args": {"enabled": False}, "reason": "shed load (§2.4)"}),
    )  # fmt: skip
    fake_openai.reply("Latency is high; acknowledge and shed load.")

    answer = await plane.assistant.ask("what should we do about the latency alert?", OTTO)

    assert answer.proposals == [
        ProposedAction(
            kind=ActionKind.ACKNOWLEDGE_INCIDENT,
            target=str(incident_id),
            reason="on-call should take it",
            role=Role.OPERATOR,
            from_alert_content=True,  # it read the incident first
        ),
        ProposedAction(
            kind=ActionKind.TOGGLE_CORE,
            target="momentum",
            args={"enabled": False},
            reason="shed load (§2.4)",
            role=Role.OPERATOR,
            confirm=plane.trading.core("momentum").essential,
            from_alert_content=True,
        ),
    ]
    assert [f.tool for f in answer.facts] == ["get_incident"]
    # Proposing changed nothing: the incident is untouched and the core still on.
    assert (await plane.incidents.get(incident_id)).state is IncidentState.TRIGGERED
    assert plane.trading.core("momentum").enabled is True
    assert "# Proposed actions (need your confirmation)" in answer.text
    assert f"- Acknowledge incident #{incident_id}: on-call should take it" in answer.text


async def test_proposal_naming_nothing_real_is_refused_to_the_model(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    fake_openai.call_tools(
        ("propose_action", {"kind": "toggle_core", "target": "no-such-core", "reason": "x"}),
        ("propose_action", {"kind": "drop_database", "reason": "x"}),
    )
    fake_openai.reply("I could not propose that.")

    answer = await plane.assistant.ask("turn off the bad core", OTTO)

    assert answer.proposals == []
    sent = tool_messages(fake_openai.requests[1])
    assert sent["propose_action"]["ok"] is False
    assert len(answer.tools_failed) == 2
    assert "no core 'no-such-core'" in answer.tools_failed[0]
    assert "kind must be one of" in answer.tools_failed[1]


async def test_rate_limit_opens_circuit_falls_back_in_the_same_question_and_probe_closes_it(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane(llm_backoff_seconds=30)
    fake_openai.fail(429, retry_after="0.3")

    started = time.perf_counter()
    answer = await plane.assistant.ask("what's our PnL?", VIC)

    assert time.perf_counter() - started < 2
    assert answer.source == "fallback"
    assert answer.fallback_reason == "rate_limited"
    assert answer.intent == "pnl"
    assert answer.text.startswith("# Rule-based fallback\nAnswered without the LLM: the LLM server")
    # Nothing recorded yet: said so, not a "since start" figure passed off as 24h.
    assert "# PnL (24h: no history recorded yet)" in answer.text
    assert len(fake_openai.requests) == 1  # the SDK's own retries are off
    incident = await llm_incident(plane)
    assert incident is not None
    assert incident.title == "LLMRateLimited"
    assert incident.state is IncidentState.TRIGGERED
    assert metric(plane, "llm_rate_limited") == 1
    assert metric(plane, "llm_requests_total", outcome="rate_limited") == 1
    assert metric(plane, "llm_circuit_state", llm_circuit_state="open") == 1
    # Retry-After (0.3 s) wins over the 30 s default backoff.
    assert 0 < plane.assistant.status().open_for_seconds <= 0.3

    # While open, questions are answered without touching the server.
    answer = await plane.assistant.ask("is redis ok", VIC)
    assert answer.fallback_reason == "circuit_open"
    assert len(fake_openai.requests) == 1
    assert await plane.assistant.probe() is None  # backoff not over: nothing sent
    assert len(fake_openai.requests) == 1

    await asyncio.sleep(0.35)
    assert await plane.assistant.probe() is True
    assert fake_openai.requests[-1]["max_tokens"] == 1
    assert metric(plane, "llm_rate_limited") == 0
    assert metric(plane, "llm_circuit_state", llm_circuit_state="closed") == 1
    resolved = await plane.incidents.get(incident.id)
    assert resolved.state is IncidentState.RESOLVED
    fake_openai.reply("PnL is flat.")
    assert (await plane.assistant.ask("what's our PnL?", VIC)).source == "llm"


async def test_next_question_after_backoff_is_the_probe(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    fake_openai.fail(500)
    answer = await plane.assistant.ask("which flags are on?", VIC)
    assert answer.fallback_reason == "llm_unavailable"
    assert answer.intent == "flags"
    assert metric(plane, "llm_requests_total", outcome="error") == 1
    incident = await llm_incident(plane)
    assert incident is not None and incident.is_open

    await asyncio.sleep(0.25)  # the 0.2 s default backoff (no Retry-After on a 500)
    fake_openai.reply("Four flags are on.")
    answer = await plane.assistant.ask("which flags are on?", VIC)

    assert answer.source == "llm"
    assert (await plane.incidents.get(incident.id)).state is IncidentState.RESOLVED
    assert plane.assistant.status().circuit == "closed"


async def test_failed_probe_reopens_for_longer(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    fake_openai.fail(503)
    await plane.assistant.ask("health?", VIC)
    first = plane.assistant.status().open_for_seconds
    assert 0 < first <= 0.2
    await asyncio.sleep(0.25)
    fake_openai.fail(503)

    assert await plane.assistant.probe() is False

    status = plane.assistant.status()
    assert status.circuit == "open"
    assert 0.2 < status.open_for_seconds <= 0.4  # doubled
    assert metric(plane, "llm_rate_limited") == 1
    incident = await llm_incident(plane)
    assert incident is not None and incident.count == 2  # the same incident, seen again


async def test_timeout_falls_back_within_the_timeout(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane(llm_timeout_seconds=0.3)
    fake_openai.stall(3)

    started = time.perf_counter()
    answer = await plane.assistant.ask("when was the last backup?", VIC)

    assert time.perf_counter() - started < 1.5
    assert answer.source == "fallback"
    assert answer.fallback_reason == "llm_unavailable"
    assert answer.intent == "backup"
    assert plane.assistant.status().last_error == "the LLM server did not answer in time"
    assert await llm_incident(plane) is not None


async def test_llm_rate_limited_flag_sends_nothing_to_the_server(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    await plane.flags.set("LLM_RATE_LIMITED", True, OTTO)
    assert metric(plane, "llm_rate_limited") == 1

    answer = await plane.assistant.ask("any open incidents?", VIC)
    diagnosis = await plane.assistant.diagnose((await fire(plane, am_alert("RedisDown")))[0], VIC)

    assert fake_openai.requests == []
    assert await plane.assistant.probe() is None
    assert fake_openai.requests == []
    assert answer.source == diagnosis.source == "fallback"
    assert answer.fallback_reason == "flag"
    assert "Answered without the LLM: LLM_RATE_LIMITED is on." in answer.text
    assert metric(plane, "llm_requests_total", outcome="fallback") == 2
    await plane.flags.unset("LLM_RATE_LIMITED", OTTO)
    assert metric(plane, "llm_rate_limited") == 0


async def test_without_an_llm_configured_the_rules_answer(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    answer = await plane.assistant.ask("whats our exposure", VIC)
    assert answer.source == "fallback"
    assert answer.fallback_reason == "not_configured"
    assert answer.intent == "exposure"
    assert "Total exposure: 0.00 USDT of 15,000.00 USDT limit" in answer.text
    assert "llm-probe" not in {j.name for j in plane.scheduler.jobs()}


async def test_audit_tool_needs_operator(llm_plane: LlmPlane, fake_openai: FakeOpenAI) -> None:
    plane = await llm_plane()
    await plane.flags.set("SELF_HEALING_ENABLED", False, OTTO)
    for _ in range(2):
        fake_openai.call_tools(("audit_tail", {"limit": 5}))
        fake_openai.reply("done")

    viewer = await plane.assistant.ask("who changed what?", VIC)
    operator = await plane.assistant.ask("who changed what?", OTTO)

    assert viewer.tools_failed == ["audit_tail: the audit_tail tool needs the operator role; "
                                   "you have viewer"]  # fmt: skip
    assert tool_messages(fake_openai.requests[1])["audit_tail"]["ok"] is False
    assert operator.tools_failed == []
    entries = operator.facts[0].data["items"]
    assert entries[0]["action"] == "flag.set" and entries[0]["target"] == "SELF_HEALING_ENABLED"


async def test_secrets_are_scrubbed_from_what_the_llm_sees(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane(telegram_bot_token=TELEGRAM_TOKEN)
    await fire(plane, am_alert("ConfigLeak", note=f"bot token {TELEGRAM_TOKEN} in logs"))
    fake_openai.call_tools(("list_incidents", {}))
    fake_openai.reply(f"The token is {TELEGRAM_TOKEN}")

    answer = await plane.assistant.ask("show incidents", OTTO)

    bodies = json.dumps(fake_openai.requests)
    assert TELEGRAM_TOKEN not in bodies
    assert "[redacted]" in bodies
    assert plane.settings.openai_api_key is not None
    assert plane.settings.openai_api_key.get_secret_value() not in bodies
    assert TELEGRAM_TOKEN not in answer.model_dump_json()


async def test_step_budget_forces_a_final_answer_then_falls_back(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane(llm_max_steps=2)
    fake_openai.call_tools(("health", {}))
    fake_openai.call_tools(("health", {}))  # ignores tool_choice=none on the last step

    answer = await plane.assistant.ask("is everything healthy?", VIC)

    assert [r.get("tool_choice") for r in fake_openai.requests] == ["auto", "none"]
    assert answer.source == "fallback"
    assert answer.fallback_reason == "llm_error"
    assert answer.intent == "health"
    assert plane.assistant.status().circuit == "closed"  # the server answered: not an outage
    assert await llm_incident(plane) is None


async def test_token_budget_caps_each_request(llm_plane: LlmPlane, fake_openai: FakeOpenAI) -> None:
    plane = await llm_plane(llm_max_tokens=600)
    fake_openai.call_tools(("flags", {}))

    answer = await plane.assistant.ask("flags?", VIC)

    assert fake_openai.requests[0]["max_tokens"] == 600
    assert len(fake_openai.requests) == 1  # the first reply used the budget up
    assert answer.fallback_reason == "llm_error"
    assert answer.intent == "flags"


async def test_each_request_gets_what_is_left_of_the_token_budget(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane(llm_max_tokens=1500)
    fake_openai.call_tools(("health", {}))
    fake_openai.reply("All healthy.")

    answer = await plane.assistant.ask("health?", VIC)

    first, second = fake_openai.requests
    used = [r["usage"]["total_tokens"] for r in fake_openai.responses]
    assert first["max_tokens"] == 1024
    assert second["max_tokens"] == min(1024, 1500 - used[0]) < 1024
    assert answer.source == "llm"
    assert answer.tokens == sum(used)
    assert answer.steps == 2


async def test_diagnose_sends_gathered_facts_and_runbook_to_the_model(
    llm_plane: LlmPlane, fake_openai: FakeOpenAI
) -> None:
    plane = await llm_plane()
    [incident_id] = await fire(plane, am_alert("BackupStale", severity="warning"))
    fake_openai.call_tools(
        ("propose_action", {"kind": "backup", "reason": "the last backup is stale"})
    )
    fake_openai.reply("The scheduled backup has not run; take one now.")

    answer = await plane.assistant.diagnose(incident_id, OTTO)

    first = fake_openai.requests[0]["messages"]
    gathered = next(m["content"] for m in first if "Facts gathered" in str(m["content"]))
    assert "BackupStale" in gathered and "Backups & restore" in gathered
    assert first[-1]["content"] == f"Diagnose incident #{incident_id} BackupStale"
    assert answer.source == "llm"
    assert [f.tool for f in answer.facts] == [
        "get_incident", "runbook", "health", "metrics_snapshot", "audit_tail", "backups"
    ]  # fmt: skip
    assert answer.proposals[0].kind is ActionKind.BACKUP
    assert answer.inference == "The scheduled backup has not run; take one now."


async def test_rule_based_diagnosis_gives_causes_runbook_steps_and_proposals(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    [incident_id] = await fire(
        plane, am_alert("ExchangeFailoverActive", severity="warning", description="primary down")
    )

    answer = await plane.assistant.diagnose(incident_id, VIC)

    assert answer.source == "fallback" and answer.intent == "diagnose"
    assert f"# Incident #{incident_id} ExchangeFailoverActive" in answer.text
    assert "# Likely causes\n" in answer.text and "- the alert says: primary down" in answer.text
    assert "# Next steps (runbook §2.1 Exchange outage)" in answer.text
    assert "venues" in [f.tool for f in answer.facts]
    assert answer.tools_failed == [
        "audit_tail: the audit_tail tool needs the operator role; you have viewer"
    ]
    assert answer.proposals == [
        ProposedAction(
            kind=ActionKind.ACKNOWLEDGE_INCIDENT,
            target=str(incident_id),
            reason="nobody has acknowledged it yet; acknowledging stops escalation",
            from_alert_content=True,  # a diagnosis reads the incident
        )
    ]


# -- carrying out a proposal (AssistantService.execute) ---------------------------------------


def proposal(kind: ActionKind, target: str = "", **args: bool) -> ProposedAction:
    return ProposedAction(kind=kind, target=target, args=args, reason="proposed in a test")


async def test_execute_switches_an_essential_core_off_only_when_confirmed(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    off = proposal(ActionKind.TOGGLE_CORE, "mean_reversion", enabled=False)

    with pytest.raises(ConfirmationRequired, match="core mean_reversion is essential"):
        await plane.assistant.execute(off, OTTO)
    assert plane.trading.core("mean_reversion").enabled

    result = await plane.assistant.execute(off, OTTO, confirm=True)

    assert result.kind is ActionKind.TOGGLE_CORE
    assert result.core is not None and not result.core.enabled
    assert result.summary == "Core mean_reversion is now off"
    assert not plane.trading.core("mean_reversion").enabled
    [entry] = [e for e in await plane.audit.tail(10) if e.action == "core.toggle"]
    assert entry.actor.name == "otto" and entry.after == {"enabled": False}


async def test_execute_refuses_a_viewer_through_the_operation_and_audits_it(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    [incident_id] = await fire(plane, am_alert("RedisDown"))

    with pytest.raises(PermissionDenied, match="needs the operator role"):
        await plane.assistant.execute(
            proposal(ActionKind.ACKNOWLEDGE_INCIDENT, str(incident_id)), VIC, confirm=True
        )

    assert (await plane.incidents.get(incident_id)).state is IncidentState.TRIGGERED
    denied = [e for e in await plane.audit.tail(10) if e.outcome == "denied"]
    assert denied and denied[0].action == "incident.acknowledge"
    assert denied[0].actor.name == "vic"


async def test_execute_acknowledges_an_incident_and_takes_a_backup(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    [incident_id] = await fire(plane, am_alert("RedisDown"))

    acked = await plane.assistant.execute(
        proposal(ActionKind.ACKNOWLEDGE_INCIDENT, str(incident_id)), OTTO
    )
    backup = await plane.assistant.execute(proposal(ActionKind.BACKUP), OTTO)

    assert acked.incident is not None and acked.incident.acknowledged_by is not None
    assert acked.summary == f"Acknowledged #{incident_id} RedisDown"
    incident = await plane.incidents.get(incident_id)
    assert incident.state is IncidentState.ACKNOWLEDGED
    assert backup.backup is not None
    assert backup.backup.id in [b.id for b in await plane.backups.list()]


async def test_execute_fails_over_after_the_pre_check_only_when_confirmed(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    failover = proposal(ActionKind.FAILOVER, "okx")

    with pytest.raises(ConfirmationRequired, match="failover from binance to okx"):
        await plane.assistant.execute(failover, OTTO)
    assert not plane.venues.failed_over

    result = await plane.assistant.execute(failover, OTTO, confirm=True)

    assert result.venues is not None and result.venues.active == "okx"
    assert plane.venues.status().reason == "proposed by the assistant"


async def test_execute_refuses_a_malformed_proposal(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    with pytest.raises(InvalidInput, match="an incident id is a number"):
        await plane.assistant.execute(proposal(ActionKind.ACKNOWLEDGE_INCIDENT, "drop"), OTTO)
    with pytest.raises(InvalidInput, match="name the core"):
        await plane.assistant.execute(proposal(ActionKind.TOGGLE_CORE, " "), OTTO)
