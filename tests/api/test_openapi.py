"""One schema per shape: every JSON route documents its answer, and the documented shape is
the one sent. API models exist only where the wire differs from a core model."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import api.routes
import api.schemas
from core.backups import BackupInfo
from core.flags import FlagState
from core.incidents.service import IncidentDetail, IngestResult
from core.models.incidents import Incident
from core.trading.engine import EngineState, HaltReport
from core.trading.venues.service import VenuesStatus
from tests.conftest import ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, WEBHOOK_TOKEN, auth
from tests.support.payloads import am_alert, am_payload

# Answers that are not JSON: Prometheus text and the server-rendered page.
NOT_JSON = {"/metrics", "/signal-health"}


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    """The app's OpenAPI document."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def component(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The named component a ``$ref`` points at."""
    name = schema["$ref"].removeprefix("#/components/schemas/")
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def success_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The JSON schema of an operation's 2xx answer."""
    responses = spec["paths"][path][method]["responses"]
    (code,) = [c for c in responses if c.startswith("2")]
    schema: dict[str, Any] = responses[code]["content"]["application/json"]["schema"]
    return schema


def api_models() -> list[type[BaseModel]]:
    """Every pydantic model the API package itself defines (schemas and route modules)."""
    modules = [api.schemas] + [
        importlib.import_module(f"api.routes.{m.name}")
        for m in pkgutil.iter_modules(api.routes.__path__)
    ]
    return [
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == module.__name__
    ]


async def test_every_json_route_declares_a_named_response_schema(
    client: httpx.AsyncClient,
) -> None:
    spec = await openapi(client)
    checked = []
    for path, operations in spec["paths"].items():
        if path in NOT_JSON:
            continue
        for method in operations:
            schema = success_schema(spec, path, method)
            assert "$ref" in schema, (
                f"{method.upper()} {path} answers an undeclared shape: {schema}"
            )
            assert component(spec, schema).get("properties"), f"{method.upper()} {path}: {{}}"
            checked.append(f"{method.upper()} {path}")
    assert {"GET /healthz", "GET /api/v1/flags", "POST /telegram/webhook"} <= set(checked)
    assert sum(c.split()[1].startswith("/api/v1/") for c in checked) >= 40


def test_no_api_model_is_an_empty_copy_of_a_core_model() -> None:
    models = api_models()
    assert api.schemas.AuditEntryOut in models  # the walk sees the API's own views
    for cls in models:
        for base in cls.__bases__:
            if issubclass(base, BaseModel) and base.__module__.startswith("core."):
                added = set(cls.model_fields) - set(base.model_fields)
                assert added, f"{cls.__name__} only renames {base.__module__}.{base.__name__}"


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("get", "/api/v1/flags/{name}", FlagState),
        ("post", "/api/v1/incidents/{incident_id}/ack", Incident),
        ("get", "/api/v1/incidents/{incident_id}", IncidentDetail),
        ("post", "/api/v1/alerts/alertmanager", IngestResult),
        ("post", "/api/v1/backups", BackupInfo),
        ("get", "/api/v1/venues", VenuesStatus),
        ("get", "/api/v1/engine", EngineState),
        ("post", "/api/v1/halt", HaltReport),
    ],
)
@pytest.mark.slow
async def test_core_models_are_the_response_schemas_where_the_wire_is_the_same(
    client: httpx.AsyncClient, method: str, path: str, model: type[BaseModel]
) -> None:
    spec = await openapi(client)
    ref = success_schema(spec, path, method)["$ref"]
    assert ref == f"#/components/schemas/{model.__name__}"


def test_routes_build_no_copies_of_core_models() -> None:
    # ``XOut(**x.model_dump())`` re-declares a core model by hand; use the model or a view.
    copy = re.compile(r"\w\(\s*\*\*[^\n]*?\.model_dump\(")
    sources = [Path(api.schemas.__file__), *Path(api.routes.__path__[0]).glob("*.py")]
    found = [f"{p.name}: {m.group()}" for p in sources for m in copy.finditer(p.read_text())]
    assert not found


def assert_body_matches(spec: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    """Each object in ``body`` has exactly the documented properties, recursively."""
    if "$ref" in schema:
        schema = component(spec, schema)
    if "anyOf" in schema:
        if body is None:
            return
        (schema,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
        assert_body_matches(spec, schema, body)
    elif "properties" in schema:
        assert isinstance(body, dict)
        assert set(body) == set(schema["properties"]), schema.get("title")
        for name, value in body.items():
            assert_body_matches(spec, schema["properties"][name], value)
    elif schema.get("type") == "array":
        assert isinstance(body, list)
        for item in body:
            assert_body_matches(spec, schema["items"], item)


@pytest.mark.parametrize(
    ("method", "path", "template", "token"),
    [
        ("get", "/healthz", "/healthz", None),
        ("get", "/api/v1/flags", "/api/v1/flags", VIEWER_TOKEN),
        ("get", "/api/v1/audit", "/api/v1/audit", ADMIN_TOKEN),
        ("get", "/api/v1/incidents", "/api/v1/incidents", VIEWER_TOKEN),
        ("get", "/api/v1/incidents/1", "/api/v1/incidents/{incident_id}", VIEWER_TOKEN),
        ("get", "/api/v1/tokens", "/api/v1/tokens", ADMIN_TOKEN),
        ("post", "/api/v1/assistant/ask", "/api/v1/assistant/ask", VIEWER_TOKEN),
        ("get", "/api/v1/cores", "/api/v1/cores", VIEWER_TOKEN),
        ("get", "/api/v1/venues", "/api/v1/venues", VIEWER_TOKEN),
        ("get", "/api/v1/engine", "/api/v1/engine", VIEWER_TOKEN),
        ("get", "/api/v1/jobs", "/api/v1/jobs", VIEWER_TOKEN),
    ],
)
@pytest.mark.slow
async def test_answers_have_exactly_the_documented_fields(
    client: httpx.AsyncClient, method: str, path: str, template: str, token: str | None
) -> None:
    # Something in each list: an incident with an alert, an issued token, audit entries.
    delivered = await client.post(
        "/api/v1/alerts/alertmanager",
        json=am_payload(am_alert("RedisDown", severity="critical")),
        headers=auth(WEBHOOK_TOKEN),
    )
    assert delivered.status_code == 200
    acked = await client.post("/api/v1/incidents/1/ack", headers=auth(OPERATOR_TOKEN))
    assert acked.status_code == 200
    issued = await client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=auth(ADMIN_TOKEN)
    )
    assert issued.status_code == 201
    spec = await openapi(client)
    assert_body_matches(spec, success_schema(spec, "/api/v1/tokens", "post"), issued.json())

    headers = auth(token) if token else {}
    if method == "post":
        response = await client.post(path, json={"question": "is redis ok?"}, headers=headers)
    else:
        response = await client.get(path, headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body, "an empty answer proves nothing"
    assert_body_matches(spec, success_schema(spec, template, method), body)


async def test_views_hide_and_rename_what_the_core_model_holds(client: httpx.AsyncClient) -> None:
    await client.put(
        "/api/v1/flags/AUTO_BACKUP_ENABLED", json={"value": False}, headers=auth(ADMIN_TOKEN)
    )
    entry = (await client.get("/api/v1/audit?limit=1", headers=auth(ADMIN_TOKEN))).json()
    (newest,) = entry["items"]
    assert "prev_hash" not in newest
    assert newest["actor"] == {"kind": "api", "id": "admin-1", "name": "admin-1", "role": "admin"}

    answer = (
        await client.post(
            "/api/v1/assistant/ask", json={"question": "is redis ok?"}, headers=auth(VIEWER_TOKEN)
        )
    ).json()
    assert "text" not in answer
    assert "question" not in answer
    assert answer["answer"].startswith("# Rule-based fallback")
