"""Real senders' webhook bodies (``../shared/realdata``, written upstream, not by us) are accepted
and become the right incidents; the fields those senders leave out are derived as they would.

The bodies are read in place from the ``shared/`` folder beside the repository; they are never
copied in. The expected values per file below were read off each file by hand (SOURCES.md there
says where each comes from).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.incidents.receivers import PayloadError, parse_alertmanager, parse_falco
from core.models.alerts import AlertStatus, stable_hash
from tests.conftest import VIEWER_TOKEN, WEBHOOK_TOKEN, auth

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
SOURCES = ("alertmanager", "grafana", "falco")
HOOK = {**auth(WEBHOOK_TOKEN), "content-type": "application/json"}
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

# Per file: (title, severity, status) of each alert, in the body's order. Falco: the rule is the
# title, Critical → critical, Warning and Error → warning, Notice/Informational/Debug → info.
# Alertmanager and Grafana: the alertname, the `severity` label (warning when absent).
EXPECTED: dict[str, list[tuple[str, str, str]]] = {
    # no version, no groupKey, empty fingerprints
    "alertmanager/am-executor-example-no-version.json": [
        ("InstanceDown", "warning", "firing"),
        ("InstanceDown", "warning", "firing"),
    ],
    # one firing, one resolved (real endsAt), generatorURL ""
    "alertmanager/am-issue1051-mixed-firing-resolved-empty-generatorurl.json": [
        ("ServerStop", "warning", "firing"),
        ("ServerStop", "warning", "resolved"),
    ],
    "alertmanager/am-issue2447-am0.21-raw-firing-truncatedAlerts0.json": [
        ("DemoAlert", "critical", "firing"),
    ],
    "alertmanager/msteams-card-grafana-inspired-firing-3alerts.json": [
        ("JustATestAlert_1", "info", "firing"),
        ("JustATestAlert_1", "info", "firing"),
        ("JustATestAlert_1", "info", "firing"),
    ],
    # the alert has no status (endsAt is Go's zero time: still firing) and no generatorURL
    "alertmanager/msteams-prom-post-request-v4-no-alert-status.json": [
        ("high_memory_load", "warning", "firing"),
    ],
    # no externalURL
    "alertmanager/ntfy-testdata-firing-minimal.json": [("HighCPUUsage", "critical", "firing")],
    "alertmanager/zulip-fixture-firing-2alerts.json": [
        ("High CPU Temperature", "critical", "firing"),
        ("High CPU Temperature", "critical", "firing"),
    ],
    "alertmanager/zulip-fixture-firing-no-generatorurl.json": [
        ("High CPU Temperature", "critical", "firing"),
    ],
    # status "resolved" wins over the zero endsAt the fixture keeps
    "alertmanager/zulip-fixture-resolved-single.json": [
        ("High CPU Temperature", "critical", "resolved"),
    ],
    "grafana/grafana-alerting-webhook-test-default-payload.json": [
        ("alert1", "warning", "firing"),
    ],
    "grafana/grafana-docs-webhook-notifier-firing-2alerts.json": [
        ("High memory usage", "warning", "firing"),
        ("High CPU usage", "warning", "firing"),
    ],
    "grafana/ntfy-testdata-grafana-resolved.json": [
        ("Load avg 15m too high", "warning", "resolved"),
    ],
    "grafana/zulip-fixture-grafana11-values-imageurl.json": [
        ("Memory (copy)", "warning", "firing"),
    ],
    "grafana/zulip-fixture-grafana9-mixed-firing-resolved.json": [
        ("Test alert", "warning", "resolved"),
        ("Test alert", "warning", "resolved"),
        ("Second webhook test", "warning", "firing"),
    ],
    "grafana/zulip-fixture-grafana9-resolved.json": [("Test alert", "warning", "resolved")],
    "falco/falco-blog-eks-k8saudit-informational.json": [
        ("K8s Serviceaccount Created", "info", "firing"),
    ],
    "falco/falco-blog-kubeless-notice-null-fields.json": [
        ("Terminal shell in container", "info", "firing"),
    ],
    "falco/falco-blog-ovh-k8saudit-notice.json": [("Attach/Exec Pod", "info", "firing")],
    "falco/falco-blog-ovh-k8saudit-warning.json": [("Disallowed K8s User", "warning", "firing")],
    "falco/falco-docs-channels-critical-syscall.json": [
        ("Terminal shell in container", "critical", "firing"),
    ],
    "falco/falcosidekick-alertmanager-test-syscall-drop.json": [
        ("Falco internal: syscall event drop", "info", "firing"),
    ],
    "falco/falcosidekick-blog-knative-cloudevent-data-notice.json": [
        ("Terminal shell in container", "info", "firing"),
    ],
    # time "2021-04-13T20:58:00.746609046Z+2" is not RFC 3339: the receive time is used
    "falco/falcosidekick-blog-test-event-malformed-time.json": [
        ("Fake rule", "warning", "firing"),
    ],
    "falco/falcosidekick-client-test-input-debug.json": [("Test rule", "info", "firing")],
    "falco/falcosidekick-readme-test-event-error.json": [
        ("Write below binary dir", "warning", "firing"),
    ],
}

# Each body is one notification group, hence one incident. Where a body carries several alerts:
# (title, severity, status, firing members, resolved members) of that incident. Its face is the
# alert that opened it (the first of the body); it fires while any member fires.
GROUPS: dict[str, tuple[str, str, str, int, int]] = {
    "alertmanager/am-executor-example-no-version.json": ("InstanceDown", "warning", "firing", 2, 0),
    "alertmanager/am-issue1051-mixed-firing-resolved-empty-generatorurl.json": (
        "ServerStop",
        "warning",
        "firing",
        1,
        1,
    ),
    "alertmanager/msteams-card-grafana-inspired-firing-3alerts.json": (
        "JustATestAlert_1",
        "info",
        "firing",
        3,
        0,
    ),
    "alertmanager/zulip-fixture-firing-2alerts.json": (
        "High CPU Temperature",
        "critical",
        "firing",
        2,
        0,
    ),
    "grafana/grafana-docs-webhook-notifier-firing-2alerts.json": (
        "High memory usage",
        "warning",
        "firing",
        2,
        0,
    ),
    "grafana/zulip-fixture-grafana9-mixed-firing-resolved.json": (
        "Test alert",
        "warning",
        "firing",
        1,
        2,
    ),
}


def expected_incident(name: str) -> tuple[str, str, str, int, int]:
    """The one incident a body becomes: from ``GROUPS``, or its single alert."""
    if name in GROUPS:
        return GROUPS[name]
    [(title, severity, status)] = EXPECTED[name]
    return (title, severity, status, int(status == "firing"), int(status == "resolved"))


def realdata(name: str) -> bytes:
    """The bytes of one realdata file, failing (never skipping) when the folder is missing."""
    if not REALDATA.is_dir():
        pytest.fail(
            f"{REALDATA.resolve()} is missing: the upstream webhook bodies must be checked out as "
            "shared/realdata beside this repository (they are never copied into it)"
        )
    return (REALDATA / name).read_bytes()


def firing_twin(body: dict[str, Any]) -> dict[str, Any]:
    """The same group with every alert still firing (what the sender sent before it resolved)."""
    twin = copy.deepcopy(body)
    twin["status"] = "firing"
    for alert in twin["alerts"]:
        alert["status"] = "firing"
        alert["endsAt"] = GO_ZERO_TIME
    return twin


def test_every_realdata_body_has_an_expectation() -> None:
    realdata("SOURCES.md")
    present = sorted(
        f"{source}/{path.name}" for source in SOURCES for path in (REALDATA / source).glob("*.json")
    )
    assert present == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_realdata_body_is_accepted_and_becomes_the_right_incidents(
    client: httpx.AsyncClient, name: str
) -> None:
    raw = realdata(name)
    source = name.split("/")[0]
    expected = EXPECTED[name]
    url = f"/api/v1/alerts/{source}"
    if any(status == "resolved" for _, _, status in expected):
        # Resolving needs an open incident: deliver the group as it was while it fired first.
        opened = await client.post(url, json=firing_twin(json.loads(raw)), headers=HOOK)
        assert opened.status_code == 200, opened.text

    response = await client.post(url, content=raw, headers=HOOK)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] + answer["duplicates"] == len(expected)
    resolved = sum(status == "resolved" for _, _, status in expected)
    # After the twin, only the resolutions are new; its firing alerts are re-deliveries.
    assert answer["accepted"] == (resolved or len(expected))
    items = (await client.get("/api/v1/incidents", headers=auth(VIEWER_TOKEN))).json()["items"]
    got = [
        (
            i["title"],
            i["severity"],
            i["source"],
            "firing" if i["firing"] else "resolved",
            i["firing_members"],
            i["resolved_members"],
        )
        for i in items
    ]
    title, severity, status, firing, resolved_members = expected_incident(name)
    assert got == [(title, severity, source, status, firing, resolved_members)]
    for item in items:
        assert (item["state"] == "resolved") is (not item["firing"])


async def test_unreadable_falco_time_is_the_receive_time_and_the_raw_value_is_on_the_timeline(
    client: httpx.AsyncClient,
) -> None:
    raw = realdata("falco/falcosidekick-blog-test-event-malformed-time.json")
    before = datetime.now(UTC)
    response = await client.post("/api/v1/alerts/falco", content=raw, headers=HOOK)
    assert response.status_code == 200, response.text
    [incident_id] = response.json()["incidents"]

    detail = (
        await client.get(f"/api/v1/incidents/{incident_id}", headers=auth(VIEWER_TOKEN))
    ).json()

    [opened] = detail["timeline"]
    assert opened["kind"] == "opened"
    assert '"2021-04-13T20:58:00.746609046Z+2" is not an RFC 3339 timestamp' in opened["detail"]
    assert "the receive time" in opened["detail"]
    starts_at = datetime.fromisoformat(detail["alerts"][0]["alert"]["starts_at"])
    assert before <= starts_at <= datetime.now(UTC)


async def test_a_body_without_any_alert_is_refused(client: httpx.AsyncClient) -> None:
    body = json.loads(realdata("alertmanager/am-executor-example-no-version.json"))
    for empty in ({**body, "alerts": []}, {k: v for k, v in body.items() if k != "alerts"}):
        response = await client.post("/api/v1/alerts/alertmanager", json=empty, headers=HOOK)
        assert response.status_code == 422
        assert "alerts" in response.json()["error"]["message"]


# --- fields real senders leave out, derived the way they would -------------------------------


def am_body(name: str) -> dict[str, Any]:
    """One Alertmanager realdata body, decoded."""
    body: dict[str, Any] = json.loads(realdata(f"alertmanager/{name}"))
    return body


def test_missing_version_and_group_key_are_derived_as_alertmanager_forms_them() -> None:
    first, second = parse_alertmanager(am_body("am-executor-example-no-version.json"))
    assert first.group_key == second.group_key == '{}:{alertname="InstanceDown"}'
    # Empty fingerprints: each alert's own, from its sorted label set.
    assert first.fingerprint == stable_hash(
        "alertmanager",
        sorted(
            {
                "alertname": "InstanceDown",
                "instance": "localhost:1234",
                "job": "broken",
                "monitor": "codelab-monitor",
            }.items()
        ),
    )
    assert first.fingerprint != second.fingerprint
    assert first.generator_url is not None and first.generator_url.startswith("http://oldpad")


def test_missing_alert_status_is_derived_from_ends_at() -> None:
    body = am_body("msteams-prom-post-request-v4-no-alert-status.json")
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def status_for(ends_at: str | None) -> AlertStatus:
        changed = copy.deepcopy(body)
        if ends_at is None:
            del changed["alerts"][0]["endsAt"]
        else:
            changed["alerts"][0]["endsAt"] = ends_at
        [alert] = parse_alertmanager(changed, received_at=now)
        return alert.status

    assert status_for(GO_ZERO_TIME) is AlertStatus.FIRING
    assert status_for(None) is AlertStatus.FIRING
    assert status_for("2026-11-28T11:59:00Z") is AlertStatus.RESOLVED
    assert status_for("2026-11-28T12:05:00Z") is AlertStatus.FIRING
    [alert] = parse_alertmanager(body, received_at=now)
    assert alert.ends_at is None
    assert alert.generator_url is None


def test_missing_starts_at_is_the_receive_time_and_redelivery_still_dedups() -> None:
    body = am_body("ntfy-testdata-firing-minimal.json")
    del body["alerts"][0]["startsAt"]
    first_seen = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    [first] = parse_alertmanager(body, received_at=first_seen)
    [again] = parse_alertmanager(body, received_at=first_seen + timedelta(minutes=5))
    assert first.starts_at == first_seen
    assert first.dedup_key == again.dedup_key


def test_unknown_fields_of_newer_alertmanagers_are_ignored() -> None:
    body = am_body("am-issue2447-am0.21-raw-firing-truncatedAlerts0.json")
    newer = {
        **body,
        "notification_reason": "alert_group_changed",
        "routeLabels": {"team": "core"},
        "alerts": [{**body["alerts"][0], "extra": [1, {"x": None}]}],
    }
    assert parse_alertmanager(newer) == parse_alertmanager(body)


def test_a_wrong_version_is_refused_but_a_missing_receiver_is_not() -> None:
    body = am_body("zulip-fixture-firing-2alerts.json")
    with pytest.raises(PayloadError, match=r"^version: "):
        parse_alertmanager({**body, "version": "3"})
    # The receiver only names the sender's route: the same alerts without it.
    bare = parse_alertmanager({k: v for k, v in body.items() if k != "receiver"})
    assert bare == parse_alertmanager(body)
    assert [a.title for a in bare] == ["High CPU Temperature"] * 2


@pytest.mark.parametrize(
    "time",
    ["yesterday", "2026-11-28 09:00:00.123456789", "2021-04-13T20:58:00Z+2", 1618347519, None],
)
def test_unreadable_or_missing_falco_time_becomes_the_receive_time_with_a_note(
    time: object,
) -> None:
    body = json.loads(realdata("falco/falcosidekick-readme-test-event-error.json"))
    body["time"] = time
    received = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    [alert] = parse_falco(body, received_at=received)
    [again] = parse_falco(body, received_at=received + timedelta(seconds=30))
    assert alert.starts_at == received
    assert alert.dedup_key == again.dedup_key  # a sender's retry is still recognised
    [note] = alert.notes
    assert "receive time" in note
    if time is not None:
        assert json.dumps(time) in note
    readable = parse_falco(
        json.loads(realdata("falco/falcosidekick-readme-test-event-error.json"))
    )[0]
    assert readable.notes == []
    assert readable.starts_at == datetime(2019, 5, 17, 15, 31, 56, 746609, tzinfo=UTC)
