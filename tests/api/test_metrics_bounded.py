"""``/metrics`` stays small whatever anonymous clients send: junk methods and paths, and refusals
of requests without accepted credentials, collapse into one label value each; a scrape shows every
change within one snapshot and costs one render per snapshot, whatever the scrape rate."""

from __future__ import annotations

import asyncio
import math
import random
import re
import string
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.control_plane import ControlPlane
from core.platform.metrics import SNAPSHOT_SECONDS, UNMATCHED_ROUTE, Metrics, method_label
from tests.conftest import VIEWER_TOKEN, WEBHOOK_TOKEN, PlaneFactory, auth
from tests.support.metrics import scrape_showing

STANDARD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Real routes, hit with methods they do not take or with junk below them.
REAL = ["/healthz", "/readyz", "/metrics", "/api/v1/flags", "/api/v1/incidents", "/api/v1/audit"]


def junk_word(rng: random.Random, letters: str, size: int) -> str:
    return "".join(rng.choice(letters) for _ in range(size))


def junk_request(rng: random.Random) -> tuple[str, str]:
    """A random method (standard or invented) and a random path (unknown or near a real one)."""
    if rng.random() < 0.5:
        method = rng.choice(STANDARD)
    else:
        method = "X" + junk_word(rng, string.ascii_uppercase, 7)
    word = junk_word(rng, string.ascii_lowercase + string.digits, 10)
    path = rng.choice(
        [f"/{word}", f"/api/v1/{word}", f"/api/v1/flags/{word}/{word}", f"/{word}/healthz"]
    )
    if rng.random() < 0.2:  # a real path with a method it does not take (405)
        path, method = rng.choice(REAL), rng.choice(["PUT", "DELETE", "PATCH", "XJUNK" + word])
    return method, path


@pytest.mark.slow
async def test_ten_thousand_junk_requests_keep_metrics_under_400_lines(
    client: httpx.AsyncClient,
) -> None:
    rng = random.Random(18)
    sent: list[tuple[str, str]] = []
    for _ in range(10_000):
        method, path = junk_request(rng)
        sent.append((method, path))
        response = await client.request(method, path)
        assert response.status_code < 500
    text = (await client.get("/metrics")).text
    lines = text.count("\n")
    assert lines < 400, f"/metrics has {lines} lines after junk traffic"
    assert 'method="any",route="unmatched",status="404"' in text
    assert 'method="any",route="unmatched",status="405"' in text
    assert 'method="any",route="unmatched",status="429"' in text  # refused before routing
    invented = {method for method, _ in sent if method not in STANDARD}
    assert not [m for m in invented if f'"{m}"' in text]
    assert "/api/v1/flags/{name}" not in text  # junk under a template matched no route
    assert 'route="/healthz",status="405"' not in text


async def test_a_405_does_not_label_the_route_it_missed(client: httpx.AsyncClient) -> None:
    assert (await client.request("BREW", "/healthz")).status_code == 405
    assert (await client.delete("/readyz")).status_code == 405
    await client.get("/api/v1/flags/SANDBOX_ENABLED", headers=auth(VIEWER_TOKEN))
    text = (await client.get("/metrics")).text
    assert 'method="any",route="unmatched",status="405"} 2.0' in text
    assert 'route="/readyz"' not in text and "BREW" not in text
    assert 'method="GET",route="/api/v1/flags/{name}",status="200"} 1.0' in text


def test_methods_outside_the_standard_set_are_one_label_value() -> None:
    assert method_label("PROPFIND") == method_label("BREW") == method_label("get") == "other"
    assert [method_label(m) for m in STANDARD] == STANDARD


async def test_concurrent_scrapes_each_see_changes_made_before_them(
    plane: ControlPlane, client: httpx.AsyncClient
) -> None:
    async def change_then_scrape(index: int) -> str:
        plane.metrics.self_healing_actions.labels(f"drill-{index}").inc()
        needle = f'self_healing_actions_total{{action="drill-{index}"}} 1.0'
        return await scrape_showing(client, needle)

    texts = await asyncio.gather(*(change_then_scrape(i) for i in range(20)))
    for index, text in enumerate(texts):
        assert f'self_healing_actions_total{{action="drill-{index}"}} 1.0' in text


async def test_scrapes_inside_one_snapshot_share_its_render(plane: ControlPlane) -> None:
    metrics = plane.metrics
    started = time.monotonic()
    first = metrics.exposition()
    metrics.self_healing_actions.labels("between-scrapes").inc()
    second = metrics.exposition()
    if time.monotonic() - started < SNAPSHOT_SECONDS:  # a loaded machine may take longer
        assert second is first  # no render: the same bytes object
    await asyncio.sleep(SNAPSHOT_SECONDS)
    assert b'self_healing_actions_total{action="between-scrapes"} 1.0' in metrics.exposition()


def prometheus_client_text(metrics: Metrics) -> str:
    """prometheus_client's own exposition of the registry, less the ``*_created`` gauges."""
    lines = generate_latest(metrics.registry).decode().splitlines(keepends=True)
    return "".join(line for line in lines if "_created" not in line)


def test_render_is_prometheus_client_text_without_created_series() -> None:
    metrics = Metrics()
    assert metrics.render().decode() == prometheus_client_text(metrics)  # empty families
    metrics.request_duration.labels("/api/v1/flags/{name}", "GET", "200").observe(0.003)
    metrics.request_duration.labels("/api/v1/flags/{name}", "GET", "200").observe(7.0)
    metrics.request_duration.labels(UNMATCHED_ROUTE, "any", "404").observe(0.2)
    metrics.redis_latency.observe(0.0007)
    metrics.self_healing_actions.labels('quote " back\\slash \n newline').inc(3)
    metrics.core_pnl.labels("momentum").set(-12.5)
    metrics.core_pnl.labels("buyer").set(1234567.0)  # Go switches to an exponent: 1.234567e+06
    metrics.bus_lag.labels("slow").set(math.nan)
    metrics.risk_exposure.set(math.inf)
    metrics.redis_status.state("down")
    metrics.flag_info.labels("SANDBOX_ENABLED", "true", "default").set(1)
    assert metrics.render().decode() == prometheus_client_text(metrics)
    # Again after changes: reused lines of unchanged series, new lines of changed and removed ones.
    metrics.request_duration.labels(UNMATCHED_ROUTE, "any", "404").observe(0.01)
    metrics.core_pnl.labels("momentum").set(3.0)
    metrics.flag_info.remove("SANDBOX_ENABLED", "true", "default")
    metrics.flag_info.labels("SANDBOX_ENABLED", "false", "override").set(1)
    metrics.redis_status.state("ok")
    text = metrics.render().decode()
    assert text == prometheus_client_text(metrics)
    assert "_created" not in text and 'value="true"' not in text


# (method, path template) of every operation, from the app's own OpenAPI schema.
Operation = tuple[str, str]
OpenApi = tuple[ControlPlane, list[Operation], httpx.AsyncClient]


@pytest.fixture
async def open_api(make_plane: PlaneFactory) -> AsyncIterator[OpenApi]:
    """The app without rate limits (so every anonymous request reaches its route), its routes."""
    plane = await make_plane(api_rate_limit_per_minute=0)
    app = create_app(plane)
    paths: dict[str, dict[str, object]] = app.openapi()["paths"]
    routes = [(method.upper(), path) for path, ops in paths.items() for method in ops]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
        yield plane, routes, client


async def oversized() -> AsyncIterator[bytes]:
    """A 1.2 MB JSON body, streamed: no content-length for the limit to refuse it early."""
    yield b"[" + b"1," * 600_000


def anonymous_requests(method: str, template: str) -> list[tuple[str, dict[str, object]]]:
    """What a client without a valid token can send to an operation: no token, a wrong one, a
    malformed JSON body, and a body over the size limit (sent without a declared length)."""
    path = re.sub(r"\{[^}]+\}", "anything", template)
    wrong = {"Authorization": "Bearer not-a-token"}
    json_header = {**wrong, "content-type": "application/json"}
    out: list[tuple[str, dict[str, object]]] = [(path, {}), (path, {"headers": wrong})]
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        out.append((path, {"headers": json_header, "content": b"{"}))
        out.append((path, {"headers": json_header, "content": oversized()}))
    return out


def duration_series(text: str) -> Counter[tuple[str, str, str]]:
    """Observations per (route, method, status) of ``request_duration_seconds``."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "request_duration_seconds_count":
                labels = sample.labels
                counts[(labels["route"], labels["method"], labels["status"])] += int(sample.value)
    return counts


@pytest.mark.slow
async def test_anonymous_refusals_on_every_route_share_one_series_per_status(
    open_api: OpenApi,
) -> None:
    plane, routes, client = open_api
    assert len(routes) > 40  # the whole API, not a handful
    refused: Counter[str] = Counter()
    for method, template in routes:
        for path, options in anonymous_requests(method, template):
            status = (await client.request(method, path, **options)).status_code  # type: ignore[arg-type]
            assert status < 500, (method, path, status)
            if 400 <= status < 500:
                refused[str(status)] += 1
    assert refused["401"] > 40 and refused["413"] and refused["422"]  # the refusals happened
    counts = duration_series(plane.metrics.render().decode())
    for (route_label, method, status), count in counts.items():
        if 400 <= int(status) < 500:  # every refusal: one series per status, whatever route
            assert (route_label, method) == (UNMATCHED_ROUTE, "any"), (route_label, status)
            assert count == refused[status]
    assert plane.metrics.render().count(b"\n") < 400


async def test_a_refusal_after_accepted_credentials_keeps_its_route(
    open_api: OpenApi,
) -> None:
    plane, _, client = open_api
    viewer = auth(VIEWER_TOKEN)
    flag = "/api/v1/flags/SANDBOX_ENABLED"
    assert (await client.put(flag, json={"value": False}, headers=viewer)).status_code == 403
    assert (await client.get("/api/v1/flags/NO_SUCH_FLAG", headers=viewer)).status_code == 404
    bad_body = await client.post(
        "/api/v1/alerts/alertmanager", content=b"{", headers=auth(WEBHOOK_TOKEN)
    )
    assert bad_body.status_code == 400
    assert (await client.put(flag, json={"value": False})).status_code == 401
    counts = duration_series(plane.metrics.render().decode())
    assert counts[("/api/v1/flags/{name}", "PUT", "403")] == 1
    assert counts[("/api/v1/flags/{name}", "GET", "404")] == 1
    assert counts[("/api/v1/alerts/alertmanager", "POST", "400")] == 1
    assert counts[(UNMATCHED_ROUTE, "any", "401")] == 1
