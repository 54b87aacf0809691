"""The whole alert path with real Prometheus and Alertmanager and the project's own rule files:
a runbook condition on the running app → rule fires → Alertmanager webhook → incident → resolved.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from core.control_plane import ControlPlane
from core.models.incidents import Incident, IncidentState
from tests.conftest import OPERATOR_TOKEN, WEBHOOK_TOKEN, PlaneFactory, auth
from tests.support.http import serve
from tests.support.services import start_alertmanager, start_prometheus

pytestmark = pytest.mark.slow  # real Prometheus and Alertmanager

ROOT = Path(__file__).resolve().parents[2]
RULES = (ROOT / "deploy/prometheus/rules/lunia.rules.yml").read_text()
SHIPPED_ALERTMANAGER = (ROOT / "deploy/alertmanager/alertmanager.yml").read_text()


def alertmanager_config(app_url: str, token_file: Path) -> str:
    """The shipped routing, pointed at this app, with test-short grouping intervals."""
    text = SHIPPED_ALERTMANAGER.replace("http://lunia-api:8000", app_url)
    text = text.replace("/run/secrets/alert_webhook_token", str(token_file))
    return re.sub(r"(group_wait|group_interval): \S+", r"\1: 1s", text)


def prometheus_config(app_url: str, alertmanager_url: str) -> str:
    app_host = app_url.removeprefix("http://")
    am_host = alertmanager_url.removeprefix("http://")
    return f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules/lunia.rules.yml]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{am_host}"]
scrape_configs:
  - job_name: lunia
    static_configs:
      - targets: ["{app_host}"]
"""


async def wait_for_incident(
    plane: ControlPlane, title: str, state: IncidentState, timeout: float = 45
) -> Incident:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for incident in await plane.incidents.list(limit=100):
            if incident.title == title and incident.state is state:
                return incident
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {state.value} incident {title} within {timeout}s")


async def test_rule_fires_into_an_incident_and_clears_it(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    plane = await make_plane()
    token_file = tmp_path / "webhook-token"
    token_file.write_text(WEBHOOK_TOKEN)
    async with serve(plane) as app_url:
        am = await asyncio.to_thread(
            start_alertmanager, tmp_path, alertmanager_config(app_url, token_file)
        )
        prometheus = await asyncio.to_thread(
            start_prometheus,
            tmp_path,
            prometheus_config(app_url, am.url),
            {"rules/lunia.rules.yml": RULES},
        )
        try:
            async with httpx.AsyncClient(base_url=app_url, headers=auth(OPERATOR_TOKEN)) as api:
                # Runbook §2.3: the LLM is rate limited (forced here by its flag).
                flipped = await api.put("/api/v1/flags/LLM_RATE_LIMITED", json={"value": True})
                assert flipped.status_code == 200
                fired = await wait_for_incident(plane, "LLMRateLimited", IncidentState.TRIGGERED)
                assert fired.source.value == "alertmanager"
                assert fired.severity.value == "warning"
                assert fired.labels["job"] == "lunia"
                assert "runbook" in fired.annotations

                await api.delete("/api/v1/flags/LLM_RATE_LIMITED")
                cleared = await wait_for_incident(plane, "LLMRateLimited", IncidentState.RESOLVED)
                assert cleared.id == fired.id
        finally:
            await asyncio.to_thread(prometheus.stop)
            await asyncio.to_thread(am.stop)
