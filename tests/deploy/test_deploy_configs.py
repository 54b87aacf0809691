"""The shipped Prometheus/Alertmanager configs pass the upstream checkers and behave at runtime.

Also covers tests/support/services.py: real redis-server, Prometheus and Alertmanager come up on
loopback, stop cleanly, and Redis survives a kill and restart on the same port.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from tests.support.services import (
    ServiceStartError,
    start_alertmanager,
    start_prometheus,
    start_redis,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
RULES = ROOT / "deploy/prometheus/rules/lunia.rules.yml"
# Unit tests evaluated every minute, and those judging ages in days evaluated hourly.
RULES_TESTS = [Path(__file__).with_name(n) for n in ("rules_test.yml", "rules_test_days.yml")]
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"

ALERTS = {
    "ExchangeFailoverActive": "warning",
    "RedisDown": "critical",
    "LLMRateLimited": "warning",
    "LatencySLOBreach": "critical",
    "ControlPlaneDown": "critical",
    "BackupStale": "warning",
    "BackupNeverSucceeded": "warning",
    "NoWorkerLeading": "critical",
    "TelegramBotDown": "warning",
    "VenueUnhealthy": "warning",
    "TelegramOutboxStuck": "critical",
    "AuditExportStale": "warning",
    "OrderErrorRate": "warning",
    "API5xxRate": "critical",
    "BusLag": "warning",
}

MINIMAL_ALERTMANAGER = """\
route:
  receiver: nowhere
receivers:
  - name: nowhere
"""


def run_tool(*argv: str) -> str:
    """Run a checker and return its stdout, failing the test with its output on non-zero."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while (result := probe()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def settled(
    states: Callable[[], dict[str, str] | None], expected: dict[str, str]
) -> dict[str, str] | None:
    """Alertmanager's alert states once they match ``expected`` (it marks an alert inhibited a
    moment after it arrives: seen "active" first on a loaded machine), else the last seen."""
    seen: list[dict[str, str] | None] = [None]

    def match() -> dict[str, str] | None:
        seen[0] = states()
        return seen[0] if seen[0] == expected else None

    with contextlib.suppress(AssertionError):
        wait_until(match)
    return seen[0]


# Static checks ------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool_with_its_rule_files(tmp_path: Path) -> None:
    # promtool stats the scrape token file; in the stack it is the Docker secret. Check the
    # shipped file with that one path pointed at a token of our own, everything else as shipped.
    token = tmp_path / "metrics_token"
    token.write_text("a-metrics-token-for-promtool")
    text = PROMETHEUS_CONFIG.read_text()
    assert "credentials_file: /run/secrets/metrics_token" in text
    shutil.copytree(PROMETHEUS_CONFIG.parent / "rules", tmp_path / "rules")
    config = tmp_path / PROMETHEUS_CONFIG.name
    config.write_text(text.replace("/run/secrets/metrics_token", str(token)))
    output = run_tool("promtool", "check", "config", str(config))
    # The rule_files glob resolves next to the config: an empty glob would pass silently.
    assert "1 rule files found" in output


def test_rule_file_passes_promtool_check_rules() -> None:
    output = run_tool("promtool", "check", "rules", str(RULES))
    assert f"{len(ALERTS)} rules found" in output


@pytest.mark.slow
def test_each_rule_fires_on_its_fault_and_stays_quiet_when_healthy() -> None:
    output = run_tool("promtool", "test", "rules", *map(str, RULES_TESTS))
    assert output.count("SUCCESS") == len(RULES_TESTS)


def test_alertmanager_config_passes_amtool() -> None:
    output = run_tool("amtool", "check-config", str(ALERTMANAGER_CONFIG))
    assert "2 inhibit rules" in output


def test_every_alert_routes_to_the_control_plane_webhook() -> None:
    for alertname, severity in ALERTS.items():
        output = run_tool(
            "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
            f"alertname={alertname}", f"severity={severity}",
        )  # fmt: skip
        assert output.strip() == "lunia-control-plane", (alertname, output)


# Shipped files at runtime ---------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_rules_load_into_prometheus_with_severity_and_runbook(tmp_path: Path) -> None:
    config = "global:\n  evaluation_interval: 1s\nrule_files:\n  - rules/*.yml\n"
    files = {"rules/lunia.rules.yml": RULES.read_text()}
    with start_prometheus(tmp_path, config, files=files) as prometheus, httpx.Client() as client:

        def loaded() -> list[dict[str, Any]] | None:
            groups = client.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            evaluated = rules and all(rule["health"] == "ok" for rule in rules)
            return rules if evaluated else None

        rules = wait_until(loaded)
    assert {rule["name"]: rule["labels"]["severity"] for rule in rules} == ALERTS
    for rule in rules:
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["name"]
        assert rule["annotations"]["runbook"].startswith("RUNBOOK.md#"), rule["name"]


def alertmanager_states(
    tmp_path: Path, labels: list[dict[str, str]], expected: dict[str, str]
) -> dict[str, str] | None:
    """Post alerts with these labels to a real Alertmanager on the shipped config (its secret
    path and receiver pointed at loopback, routes and inhibit rules as shipped) and return the
    alerts' states once settled (see ``settled``)."""
    token = tmp_path / "alert_webhook_token"
    token.write_text("test-token\n")
    config = (
        ALERTMANAGER_CONFIG.read_text()
        .replace("/run/secrets/alert_webhook_token", str(token))
        .replace("http://lunia-api:8000", "http://127.0.0.1:9")
    )
    now = datetime.now(UTC)
    window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}
    alerts = [{"labels": alert, **window} for alert in labels]
    with start_alertmanager(tmp_path, config) as alertmanager, httpx.Client() as client:
        client.post(f"{alertmanager.url}/api/v2/alerts", json=alerts).raise_for_status()

        def states() -> dict[str, str] | None:
            got = client.get(f"{alertmanager.url}/api/v2/alerts").json()
            found = {a["labels"]["alertname"]: a["status"]["state"] for a in got}
            return found if len(found) == len(alerts) else None

        return settled(states, expected)


@pytest.mark.slow
def test_control_plane_down_inhibits_the_other_alerts(tmp_path: Path) -> None:
    target = {"job": "lunia", "instance": "lunia-api:8000"}
    labels = [
        {"alertname": "ControlPlaneDown", "severity": "critical", **target},
        {"alertname": "RedisDown", "severity": "critical", **target},
        {"alertname": "BackupStale", "severity": "warning", "job": "other"},
    ]
    expected = {
        "ControlPlaneDown": "active",
        "RedisDown": "suppressed",
        # Inhibition is per job: another job's alerts still go out.
        "BackupStale": "active",
    }
    assert alertmanager_states(tmp_path, labels, expected) == expected


@pytest.mark.slow
def test_redis_down_inhibits_the_alerts_it_causes(tmp_path: Path) -> None:
    job = {"job": "lunia"}
    labels = [
        {"alertname": "RedisDown", "severity": "critical", **job},
        {"alertname": "NoWorkerLeading", "severity": "critical", **job},
        {"alertname": "TelegramBotDown", "severity": "warning", **job},
        {"alertname": "BusLag", "severity": "warning", "group": "g", **job},
        {"alertname": "OrderErrorRate", "severity": "warning", **job},
    ]
    expected = {
        "RedisDown": "active",
        "NoWorkerLeading": "suppressed",
        "TelegramBotDown": "suppressed",
        "BusLag": "suppressed",
        # Not a consequence of the outage: still sent.
        "OrderErrorRate": "active",
    }
    assert alertmanager_states(tmp_path, labels, expected) == expected


# Service helpers ----------------------------------------------------------------------------


def test_redis_starts_answers_and_stops_cleanly(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(server.url) as client:
        client.set("k", "v")
        assert client.get("k") == b"v"
    assert server.stop() == 0
    assert not server.running
    assert not server.ready()


def test_redis_can_be_killed_and_restarted_on_the_same_port(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    port = server.port
    try:
        with redis.Redis.from_url(server.url, socket_timeout=2) as client:
            client.set("k", "v")
            assert server.kill() == -9
            with pytest.raises(redis.ConnectionError):
                client.ping()
            server.start()
            assert server.port == port
            assert client.ping() is True
            # No RDB or AOF: a restarted Redis comes back empty, like a lost cache.
            assert client.get("k") is None
        assert server.stop() == 0
        server.start()
        assert server.ready()
    finally:
        server.stop()


@pytest.mark.slow
def test_alertmanager_starts_without_gossip_and_stops_cleanly(tmp_path: Path) -> None:
    alertmanager = start_alertmanager(tmp_path, MINIMAL_ALERTMANAGER)
    try:
        with httpx.Client() as client:
            status = client.get(f"{alertmanager.url}/api/v2/status").json()
        assert status["cluster"]["status"] == "disabled"
    finally:
        code = alertmanager.stop()
    assert code == 0
    assert not alertmanager.ready()


@pytest.mark.slow
def test_prometheus_starts_and_stops_cleanly(tmp_path: Path) -> None:
    prometheus = start_prometheus(tmp_path, "global:\n  scrape_interval: 1s\n")
    try:
        with httpx.Client() as client:
            build = client.get(f"{prometheus.url}/api/v1/status/buildinfo").json()
        assert build["status"] == "success"
    finally:
        code = prometheus.stop()
    assert code == 0
    assert not prometheus.ready()


def test_a_service_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match="(?s)exited with 2.*parsing YAML"):
        start_prometheus(tmp_path, "global: [not, a, mapping\n")
