"""The PagerDuty Events API v2 fake answers like PagerDuty, over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.pagerduty import PagerDutyFake

ROUTING_KEY = "R0ut1ngK3yR0ut1ngK3yR0ut1ngK3y00"


def trigger(**overrides: Any) -> dict[str, Any]:
    """A valid trigger event, with top-level fields replaced by ``overrides``."""
    event: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "RedisDown on lunia-api", "source": "lunia", "severity": "critical"},
    }
    return {**event, **overrides}


@pytest.fixture
async def pagerduty() -> AsyncIterator[PagerDutyFake]:
    async with PagerDutyFake() as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as http:
        yield http


async def test_trigger_is_accepted_recorded_and_given_a_dedup_key(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    assert pagerduty.url.endswith("/v2/enqueue")
    response = await client.post(pagerduty.url, json=trigger())
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Event processed"
    assert len(body["dedup_key"]) == 32
    assert pagerduty.events == [trigger()]
    assert pagerduty.incidents == {body["dedup_key"]: "triggered"}
    assert pagerduty.attempts == [202]


async def test_acknowledge_and_resolve_move_the_incident_of_their_dedup_key(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    states = []
    for action in ("trigger", "acknowledge", "trigger", "resolve", "acknowledge", "trigger"):
        event = trigger(event_action=action, dedup_key="incident-42")
        response = await client.post(pagerduty.url, json=event)
        assert response.status_code == 202
        assert response.json()["dedup_key"] == "incident-42"
        states.append(pagerduty.incidents["incident-42"])
    # A re-trigger keeps an acknowledged incident acknowledged; acknowledging a resolved one
    # does nothing; a trigger after resolve opens it again.
    assert states == [
        "triggered", "acknowledged", "acknowledged", "resolved", "resolved", "triggered",
    ]  # fmt: skip
    assert len(pagerduty.events) == 6


async def test_acknowledge_needs_no_payload(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    event = {"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": "k"}
    response = await client.post(pagerduty.url, json=event)
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (trigger(routing_key=""), "routing_key"),
        (trigger(routing_key=None), "routing_key"),
        (trigger(event_action="escalate"), "event_action"),
        (trigger(event_action="acknowledge"), "dedup_key"),
        (trigger(event_action="resolve"), "dedup_key"),
        (trigger(dedup_key=""), "dedup_key"),
        (trigger(dedup_key="k" * 256), "dedup_key"),
        (trigger(payload=None), "payload"),
        (trigger(payload={"source": "lunia", "severity": "info"}), "payload.summary"),
        (trigger(payload={"summary": "s", "severity": "info"}), "payload.source"),
        (trigger(payload={"summary": "s", "source": "lunia"}), "payload.severity"),
        (trigger(payload={"summary": "s", "source": "x", "severity": "page"}), "payload.severity"),
        ([trigger()], "JSON object"),
    ],
)
async def test_invalid_event_is_refused_like_pagerduty(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient, event: Any, error: str
) -> None:
    response = await client.post(pagerduty.url, json=event)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert any(error in message for message in body["errors"]), body["errors"]
    assert pagerduty.events == []
    assert pagerduty.attempts == [400]


async def test_malformed_json_is_an_invalid_event(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    response = await client.post(pagerduty.url, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["errors"] == ["Malformed JSON"]


async def test_fail_next_answers_the_scripted_errors_then_accepts(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    pagerduty.fail_next(2, 429)
    pagerduty.fail_next(1, 500)
    statuses = [(await client.post(pagerduty.url, json=trigger())).status_code for _ in range(4)]
    assert statuses == [429, 429, 500, 202]
    assert pagerduty.attempts == [429, 429, 500, 202]
    assert pagerduty.events == [trigger()]


async def test_throttled_request_gets_pagerdutys_throttle_body(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    pagerduty.fail_next(1, 429)
    response = await client.post(pagerduty.url, json=trigger())
    assert response.json()["status"] == "throttle event"


def test_fail_next_refuses_a_success_status() -> None:
    with pytest.raises(ValueError, match="error status"):
        PagerDutyFake().fail_next(1, 202)


async def test_wait_for_events_returns_once_enough_arrived(
    pagerduty: PagerDutyFake, client: httpx.AsyncClient
) -> None:
    await client.post(pagerduty.url, json=trigger(dedup_key="a"))
    events = await pagerduty.wait_for_events(1, timeout=1)
    assert [event["dedup_key"] for event in events] == ["a"]
    with pytest.raises(TimeoutError):
        await pagerduty.wait_for_events(2, timeout=0.1)


async def test_stopped_fake_refuses_connections(client: httpx.AsyncClient) -> None:
    fake = PagerDutyFake()
    await fake.start()
    url = fake.url
    await fake.stop()
    with pytest.raises(httpx.ConnectError):
        await client.post(url, json=trigger())
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
