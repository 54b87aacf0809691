"""Schemathesis over the real app's ``/openapi.json`` with each role's token (issue 17, point 10):
no 5xx, and every response that the schema documents matches its schema.

Cases are generated from the schema by Hypothesis (``LUNIA_SCHEMATHESIS_EXAMPLES`` per operation,
3 by default so the suite stays quick; ``make verify`` asks for more) and sent in-process to an
app over a started control plane on a temp state dir, on the test's own event loop. The
bearer token schemathesis makes up is replaced by a real one, so the operations are exercised
past authentication.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.app import create_app
from tests.conftest import ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, WEBHOOK_TOKEN, PlaneFactory

pytestmark = pytest.mark.slow  # every operation, three roles

EXAMPLES = int(os.environ.get("LUNIA_SCHEMATHESIS_EXAMPLES", "3"))
# Each role's token, and the alert webhooks' own token (the only one they accept).
ROLES = {
    "viewer": VIEWER_TOKEN,
    "operator": OPERATOR_TOKEN,
    "admin": ADMIN_TOKEN,
    "alert webhook": WEBHOOK_TOKEN,
}


def generate(operation: Any, count: int) -> list[Case]:
    """Up to ``count`` cases for one operation, drawn from its schema."""
    cases: list[Case] = []
    strategy = operation.as_strategy()

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        cases.append(data.draw(strategy))

    draw()
    return cases


async def send(client: httpx.AsyncClient, case: Case, token: str) -> httpx.Response:
    """The case as an HTTP request to the in-process app, with ``token`` as the bearer."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    # The schema's bearer scheme makes schemathesis send a made-up token: ours replaces it.
    headers = {
        str(k): str(v)
        for k, v in (kwargs.get("headers") or {}).items()
        if str(k).lower() != "authorization"
    }
    headers["authorization"] = f"Bearer {token}"
    cookies = kwargs.get("cookies") or {}
    if cookies:  # httpx takes per-request cookies only as a header
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    data, content = kwargs.get("data"), kwargs.get("content")
    if isinstance(data, str | bytes):  # raw bodies are ``content`` to httpx
        data, content = None, data
    return await client.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=headers,
        json=kwargs.get("json"),
        data=data,
        content=content,
        files=kwargs.get("files"),
    )


async def test_every_operation_answers_without_5xx_and_as_documented(
    make_plane: PlaneFactory,
) -> None:
    # Rate limits off: a few hundred requests a minute per token is the point here.
    plane = await make_plane(
        api_rate_limit_per_minute=0, core_tick_seconds=3600, venue_probe_seconds=3600
    )
    app = create_app(plane)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
        loaded = await client.get("/openapi.json")
        assert loaded.status_code == 200
        schema = schemathesis.openapi.from_dict(loaded.json())
        failures: list[str] = []
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for case in generate(operation, EXAMPLES):
                for role, token in ROLES.items():
                    response = await send(client, case, token)
                    try:
                        case.validate_response(
                            response, checks=[not_a_server_error, response_schema_conformance]
                        )
                    except Exception as exc:  # noqa: BLE001 - collected, reported together
                        failures.append(
                            f"{operation.method.upper()} {operation.path} as {role}: "
                            f"{response.status_code} {str(exc)[:400]}"
                        )
    assert operations > 30
    assert not failures, "\n\n".join(failures[:20])
