"""Hostile and mangled webhook bodies: never a 5xx, never an accepted alert that is not stored.

Deep nesting is refused naming the limit, the size cap holds, and alerts carrying markup, RTL
marks, huge annotations, many labels or a long alertname are stored (cut, and said so), never
refused. Property tests mutate valid bodies at random against the real app on a temp SQLite state.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from core.control_plane import ControlPlane
from core.incidents.receivers import (
    ANNOTATION_MAX_CHARS,
    MAX_JSON_DEPTH,
    TITLE_MAX_CHARS,
    parse_alertmanager,
    parse_falco,
    parse_grafana,
)
from core.models.alerts import Alert, AlertStatus
from tests.conftest import VIEWER_TOKEN, WEBHOOK_TOKEN, SettingsFactory, auth
from tests.support.payloads import am_alert, am_payload, falco_event, grafana_payload

HOOK = {**auth(WEBHOOK_TOKEN), "content-type": "application/json"}
SOURCES = ("alertmanager", "grafana", "falco")
PARSERS: dict[str, Callable[[Any], list[Alert]]] = {
    "alertmanager": parse_alertmanager,
    "grafana": parse_grafana,
    "falco": parse_falco,
}


def nested(depth: int, inner: str = "1") -> bytes:
    """``depth`` arrays inside each other."""
    return ("[" * depth + inner + "]" * depth).encode()


async def incident_detail(client: httpx.AsyncClient, incident_id: int) -> dict[str, Any]:
    """The incident with its alerts and timeline, as the API shows it."""
    response = await client.get(f"/api/v1/incidents/{incident_id}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200
    detail: dict[str, Any] = response.json()
    return detail


# --- nesting and size --------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
async def test_json_nested_100000_deep_is_refused_naming_the_limit(
    client: httpx.AsyncClient, plane: ControlPlane, source: str
) -> None:
    for raw in (nested(100_000), b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        response = await client.post(f"/api/v1/alerts/{source}", content=raw, headers=HOOK)
        assert response.status_code == 422, response.text
        assert (
            response.json()["error"]["message"]
            == f"body: JSON nesting deeper than {MAX_JSON_DEPTH} levels"
        )
    assert await plane.incidents.list() == []


async def test_nesting_limit_is_exact_and_ignores_brackets_inside_strings(
    client: httpx.AsyncClient,
) -> None:
    # The event object is level 1 and output_fields level 2; the rest is one field's value.
    def event_with(value_depth: int) -> bytes:
        body = falco_event()
        text = json.dumps(body)
        value = nested(value_depth - 2).decode()
        return text.replace('"evt.time": 1764320400', f'"evt.time": {value}').encode()

    deepest = await client.post("/api/v1/alerts/falco", content=event_with(64), headers=HOOK)
    assert deepest.status_code == 200, deepest.text
    too_deep = await client.post("/api/v1/alerts/falco", content=event_with(65), headers=HOOK)
    assert too_deep.status_code == 422
    assert "deeper than 64 levels" in too_deep.json()["error"]["message"]

    brackets = '[[[{{{"\\"' * 2000
    body = am_payload(am_alert("Brackets", detail=brackets, fingerprint="fp-brackets"))
    accepted = await client.post("/api/v1/alerts/alertmanager", json=body, headers=HOOK)
    assert accepted.status_code == 200, accepted.text
    [incident_id] = accepted.json()["incidents"]
    labels = (await incident_detail(client, incident_id))["incident"]["labels"]
    assert labels["detail"] == brackets[:1023] + "…"


async def test_size_cap_is_kept_for_deep_and_flat_bodies(client: httpx.AsyncClient) -> None:
    for raw in (nested(600_000), b'{"alerts": "' + b"x" * (1024 * 1024) + b'"}'):
        response = await client.post("/api/v1/alerts/alertmanager", content=raw, headers=HOOK)
        assert response.status_code == 413


async def test_unparseable_numbers_and_half_surrogates_never_answer_5xx(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps(falco_event()).replace("1764320400", "9" * 5000).encode()
    huge_int = await client.post("/api/v1/alerts/falco", content=body, headers=HOOK)
    assert huge_int.status_code == 400
    assert "not valid JSON" in huge_int.json()["error"]["message"]

    # Valid JSON, not valid Unicode: stored with U+FFFD in place of the half pair.
    half = json.dumps(am_payload(am_alert("Half", host="a\ud800b"))).encode()
    stored = await client.post("/api/v1/alerts/alertmanager", content=half, headers=HOOK)
    assert stored.status_code == 200, stored.text
    [incident_id] = stored.json()["incidents"]
    labels = (await incident_detail(client, incident_id))["incident"]["labels"]
    assert labels["host"] == "a\ufffdb"


# --- hostile but real-looking alerts are stored, bounded ------------------------------------------


async def test_markup_rtl_huge_annotations_many_labels_and_long_names_are_stored(
    client: httpx.AsyncClient,
) -> None:
    alertname = "A" * 399 + "Z"
    markup = {
        "html": "<b>bold</b> & <i>x</i>",
        "entity": "&amp; &lt;tag&gt; &#128512;",
        "code": "</code><pre>",
        "rtl": "\u202eevil\u202c \u200ftext\u200f",
    }
    many = {f"label_{i:03d}": f"value {i}" for i in range(120 - len(markup) - 4)}
    alert = am_alert(alertname, fingerprint="fp-hostile", **markup, **many)
    alert["annotations"]["description"] = "d" * 9000
    alert["annotations"]["runbook"] = "<a href='javascript:alert(1)'>run</a>"
    assert len(alert["labels"]) == 120

    response = await client.post(
        "/api/v1/alerts/alertmanager", json=am_payload(alert), headers=HOOK
    )

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    [incident_id] = response.json()["incidents"]
    detail = await incident_detail(client, incident_id)
    incident = detail["incident"]
    assert incident["labels"] == alert["labels"]  # 120 labels, markup and marks as sent
    assert incident["title"] == "A" * (TITLE_MAX_CHARS - 1) + "…"
    description = incident["annotations"]["description"]
    assert description == "d" * (ANNOTATION_MAX_CHARS - 1) + "…"
    assert incident["description"] == description
    assert incident["annotations"]["runbook"] == alert["annotations"]["runbook"]
    [stored] = detail["alerts"]
    assert stored["alert"]["labels"]["alertname"] == alertname
    [opened] = detail["timeline"]
    assert "title cut to 300 characters" in opened["detail"]
    assert "annotations 'description' cut to 4,096 characters" in opened["detail"]
    assert "was 9,000" in opened["detail"]


# --- property tests: mangled bodies ---------------------------------------------------------------

_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "firing",
            "resolved",
            "4",
            "1",
            "Critical",
            "0001-01-01T00:00:00Z",
            "2026-11-28T09:00:00Z",
            "2999-01-01T00:00:00+14:00",
            "<b>x</b>&amp;</code>",
            "\u202eRTL\u200f",
            "\ud800",
            "\x00",
        ]
    ),
    st.integers(min_value=1000, max_value=20_000).map(lambda n: "\u05d0" * n),
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities too: Python's json reads them
    _TEXT,
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path inside a decoded JSON value."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


@st.composite
def _mangled(draw: st.DrawFn, seed: dict[str, Any]) -> bytes:
    """A valid body with 1-4 fields dropped, nulled, retyped or added, as JSON bytes."""
    body = copy.deepcopy(seed)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(body))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["drop", "null", "replace", "add", "text"]))
        if action == "text":  # most fields are text: hostile text of the right type
            parent[path[-1]] = draw(_TEXT)
        elif action == "drop":
            del parent[path[-1]]
        elif action == "null":
            parent[path[-1]] = None
        elif action == "replace":
            parent[path[-1]] = draw(_VALUES)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(_VALUES)
    return json.dumps(body).encode()


_SEEDS = {
    "alertmanager": am_payload(
        am_alert("RedisDown"), am_alert("OrderLatency", status="resolved", severity="warning")
    ),
    "grafana": grafana_payload(),
    "falco": falco_event(),
}


@pytest.fixture
def webhook_app(make_settings: SettingsFactory) -> Iterator[tuple[TestClient, ControlPlane]]:
    """The real app on a temp SQLite state, served by a TestClient that runs its lifespan."""
    plane = ControlPlane(make_settings())
    with TestClient(create_app(plane, own_lifecycle=True)) as client:
        yield client, plane


def _stored(plane: ControlPlane) -> dict[str, int | None]:
    """Every stored alert's dedup key and incident, read from the store's own database."""
    path = plane.settings.db_path
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT dedup, incident_id FROM alerts").fetchall())


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_mangled_bodies_never_answer_5xx_and_accepted_alerts_are_stored(
    webhook_app: tuple[TestClient, ControlPlane], source: str
) -> None:
    client, plane = webhook_app

    @settings(
        max_examples=70,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(raw=_mangled(_SEEDS[source]))
    def check(raw: bytes) -> None:
        response = client.post(f"/api/v1/alerts/{source}", content=raw, headers=HOOK)
        assert response.status_code < 500, response.text
        if response.status_code >= 300:
            assert response.status_code in (400, 413, 422), response.text
            return
        alerts = PARSERS[source](json.loads(raw))
        answer = response.json()
        assert answer["accepted"] + answer["duplicates"] == len(alerts)
        stored = _stored(plane)
        for alert in alerts:
            key = f"{alert.source.value}:{alert.dedup_key}"  # the store's delivery key
            assert key in stored
            if alert.status is AlertStatus.FIRING:
                assert stored[key] is not None  # it opened or updated an incident

    check()
