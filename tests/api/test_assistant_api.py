"""The assistant over HTTP: ask (viewer), diagnose an incident, and the assistant's status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from tests.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, PlaneFactory, auth
from tests.fakes.openai import FakeOpenAI
from tests.support.payloads import am_alert, am_payload


@pytest.fixture
async def llm_client(
    make_plane: PlaneFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeOpenAI]]:
    """An API client over a plane whose assistant talks to a fake OpenAI server."""
    async with FakeOpenAI() as fake:
        plane = await make_plane(
            openai_api_key=fake.api_key, openai_base_url=fake.base_url, llm_timeout_seconds=5
        )
        transport = httpx.ASGITransport(app=create_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as c:
            yield c, fake


async def test_ask_answers_from_the_fallback_without_an_llm(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/assistant/ask", json={"question": "is redis ok?"}, headers=auth(VIEWER_TOKEN)
    )
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "fallback"
    assert body["fallback_reason"] == "not_configured"
    assert body["intent"] == "redis"
    assert body["answer"].startswith("# Rule-based fallback\n")
    assert "<" not in body["answer"]
    assert body["facts"][0]["tool"] == "health"


@pytest.mark.slow
async def test_ask_answers_from_the_llm_with_tool_facts(
    llm_client: tuple[httpx.AsyncClient, FakeOpenAI],
) -> None:
    client, fake = llm_client
    fake.call_tools(("pnl", {"window": "24h"}))
    fake.reply("PnL is flat at 0 USDT.")

    response = await client.post(
        "/api/v1/assistant/ask", json={"question": "what's our PnL?"}, headers=auth(VIEWER_TOKEN)
    )

    body = response.json()
    assert response.status_code == 200, body
    assert body["source"] == "llm"
    assert body["inference"] == "PnL is flat at 0 USDT."
    assert body["facts"][0]["tool"] == "pnl"
    assert body["facts"][0]["data"]["total"] == 0
    assert body["steps"] == 2


async def test_ask_refuses_bad_input_and_missing_tokens(client: httpx.AsyncClient) -> None:
    missing = await client.post("/api/v1/assistant/ask", json={"question": "pnl"})
    assert missing.status_code == 401
    empty = await client.post(
        "/api/v1/assistant/ask", json={"question": ""}, headers=auth(VIEWER_TOKEN)
    )
    assert empty.status_code == 422
    blank = await client.post(
        "/api/v1/assistant/ask", json={"question": "   "}, headers=auth(VIEWER_TOKEN)
    )
    assert blank.status_code == 422
    assert "ask a question" in blank.json()["error"]["message"]


async def test_diagnose_an_incident_over_http(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    result = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("RedisDown"))))
    [incident_id] = result.incidents

    response = await client.post(
        f"/api/v1/incidents/{incident_id}/diagnose", headers=auth(OPERATOR_TOKEN)
    )
    missing = await client.post("/api/v1/incidents/999/diagnose", headers=auth(VIEWER_TOKEN))

    body = response.json()
    assert response.status_code == 200, body
    assert body["intent"] == "diagnose"
    assert "# Next steps (runbook §2.2 Redis failure)" in body["answer"]
    assert body["proposals"][0] == {
        "kind": "ack_incident",
        "target": str(incident_id),
        "args": {},
        "reason": "nobody has acknowledged it yet; acknowledging stops escalation",
        "role": "operator",
        "confirm": False,
        "from_alert_content": True,  # a diagnosis reads the incident's alert text
        "loosens_safety": False,
    }
    assert body["tools_failed"] == []  # an operator may read the audit tail
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_assistant_status_says_who_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/assistant", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200
    assert response.json()["answering_with"] == "fallback"
    assert response.json()["configured"] is False


async def test_execute_carries_out_a_proposal_with_role_and_confirmation(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    body = {
        "proposal": {
            "kind": "toggle_core",
            "target": "mean_reversion",
            "args": {"enabled": False},
            "reason": "it keeps crashing",
        }
    }

    viewer = await client.post("/api/v1/assistant/execute", json=body, headers=auth(VIEWER_TOKEN))
    assert viewer.status_code == 403, viewer.text
    assert "needs the operator role" in viewer.json()["error"]["message"]

    unconfirmed = await client.post(
        "/api/v1/assistant/execute", json=body, headers=auth(OPERATOR_TOKEN)
    )
    assert unconfirmed.status_code == 409, unconfirmed.text
    assert "essential" in unconfirmed.json()["error"]["message"]
    assert plane.trading.core("mean_reversion").enabled

    done = await client.post(
        "/api/v1/assistant/execute", json={**body, "confirm": True}, headers=auth(OPERATOR_TOKEN)
    )
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["kind"] == "toggle_core" and result["summary"] == "Core mean_reversion is now off"
    assert result["core"]["enabled"] is False
    assert not plane.trading.core("mean_reversion").enabled
    actions = [(e.action, e.outcome) for e in await plane.audit.tail(10)]
    assert ("core.toggle", "denied") in actions and ("core.toggle", "ok") in actions


async def test_execute_refuses_an_unknown_kind(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/assistant/execute",
        json={"proposal": {"kind": "drop_database", "reason": "x"}, "confirm": True},
        headers=auth(OPERATOR_TOKEN),
    )
    assert response.status_code == 422
