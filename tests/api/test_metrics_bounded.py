"""``/metrics`` stays small whatever anonymous clients send: junk methods and paths collapse into
one label value each, and a scrape sees every change made before it."""

from __future__ import annotations

import asyncio
import random
import string

import httpx
import pytest

from core.control_plane import ControlPlane
from core.platform.metrics import method_label
from tests.conftest import VIEWER_TOKEN, auth

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
        return (await client.get("/metrics")).text

    texts = await asyncio.gather(*(change_then_scrape(i) for i in range(20)))
    for index, text in enumerate(texts):
        assert f'self_healing_actions_total{{action="drill-{index}"}} 1.0' in text
