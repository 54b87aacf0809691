"""``lunia smoke``: drive a running instance end to end and exit 1 on any failure.

Probes (/healthz, /readyz, /metrics), the status summary, a test alert through the real webhook
to an incident and back to resolved, and the Telegram bot's health when it is enabled.

Against a deployment (``--url`` / ``LUNIA_URL``) it sends the deployment's tokens: the API token
from ``--token`` / ``LUNIA_TOKEN`` / ``LUNIA_TOKEN_FILE`` and the alert webhook token from
``--webhook-token-file`` / ``LUNIA_ALERT_WEBHOOK_TOKEN_FILE`` (or ``ALERT_WEBHOOK_TOKEN[_FILE]``),
never tokens this host generated, unless it serves an instance of its own (its state dir
passes the local-state guard of ``api.cli.base``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer

from api.cli.base import fail, load_settings, local_state_refusal
from api.cli.instance import TokenOption, UrlOption, api_token, base_url
from core.config.settings import Settings
from core.security.secrets import WEBHOOK_TOKEN_FILE


class SmokeFailure(Exception):
    """One smoke check did not hold."""


def expect(condition: bool, message: str) -> None:
    """Fail the current check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SmokeFailure(message)


WebhookTokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--webhook-token-file",
        envvar="LUNIA_ALERT_WEBHOOK_TOKEN_FILE",
        dir_okay=False,
        show_default=False,
        help="the deployment's alert webhook token (e.g. secrets/alert_webhook_token)",
    ),
]


MetricsTokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--metrics-token-file",
        envvar="LUNIA_METRICS_TOKEN_FILE",
        dir_okay=False,
        show_default=False,
        help="the deployment's metrics token (e.g. secrets/metrics_token), which /metrics asks for",
    ),
]


def _read_token_file(file: Path, option: str) -> str:
    """A token kept in a file (a Docker secret): its content, or a one-line error naming it."""
    try:
        value = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise fail(f"{option}: cannot read {file}: {exc.strerror}", 2) from None
    if value:
        return value
    raise fail(f"{option}: {file} is empty", 2)


def _metrics_token(settings: Settings, file: Path | None) -> str | None:
    """The bearer token for /metrics: the file given, else the configured one, else none."""
    if file is not None:
        return _read_token_file(file, "--metrics-token-file")
    if settings.metrics_token is not None:
        return settings.metrics_token.get_secret_value()
    return None


def _webhook_token(settings: Settings, file: Path | None, *, local: bool) -> str:
    """The webhook token: the file given, the configured one, or (only for this host's own
    instance) the one generated into the state dir."""
    if file is not None:
        return _read_token_file(file, "--webhook-token-file")
    if settings.alert_webhook_token is not None:
        return settings.alert_webhook_token.get_secret_value()
    path = settings.lunia_state_dir / "secrets" / WEBHOOK_TOKEN_FILE
    if local and path.is_file() and local_state_refusal(settings) is None:
        return path.read_text().strip()
    raise fail(
        "no alert webhook token: set LUNIA_ALERT_WEBHOOK_TOKEN_FILE=PATH (the deployment's "
        "secrets/alert_webhook_token) or ALERT_WEBHOOK_TOKEN",
        2,
    )


def _test_alert(fingerprint: str, status: str) -> dict[str, object]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="LuniaSmokeTest"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "smoke",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://smoke",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "LuniaSmokeTest", "severity": "info", "smoke": fingerprint},
                "annotations": {"summary": "lunia smoke test alert"},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-01T00:01:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
    }


def smoke(
    url: UrlOption = None,
    token: TokenOption = None,
    webhook_token_file: WebhookTokenFileOption = None,
    metrics_token_file: MetricsTokenFileOption = None,
) -> None:
    """Drive the running instance end to end; exit 1 if any check fails."""
    settings = load_settings()
    base = base_url(settings, url)
    # This host's own tokens are right for its own instance: no --url, or a host that serves
    # (its state dir passes the local-state guard). A bare host never sends them anywhere.
    local = url is None or local_state_refusal(settings) is None
    api = {"Authorization": f"Bearer {api_token(settings, token, local=local)}"}
    hook = {"Authorization": f"Bearer {_webhook_token(settings, webhook_token_file, local=local)}"}
    metrics_token = _metrics_token(settings, metrics_token_file)
    scrape = {"Authorization": f"Bearer {metrics_token}"} if metrics_token else {}
    failures = 0

    def check(name: str, probe: Callable[[httpx.Client], str]) -> None:
        nonlocal failures
        try:
            with httpx.Client(base_url=base, timeout=10) as client:
                detail = probe(client)
        except (SmokeFailure, httpx.HTTPError, KeyError, ValueError) as exc:
            failures += 1
            typer.echo(f"❌ {name}: {exc or type(exc).__name__}")
        else:
            typer.echo(f"✅ {name}: {detail}")

    def healthz(c: httpx.Client) -> str:
        body = c.get("/healthz").json()
        expect(body["status"] in ("ok", "degraded"), f"status {body['status']}")
        return str(body["status"])

    def probes(c: httpx.Client) -> str:
        expect(c.get("/readyz").status_code == 200, "/readyz not ready")
        response = c.get("/metrics", headers=scrape)
        expect(
            response.status_code != 401,
            "/metrics asks for a token: set LUNIA_METRICS_TOKEN_FILE (the deployment's "
            "secrets/metrics_token) or METRICS_TOKEN",
        )
        metrics = response.text
        for name in ("request_duration_seconds_bucket", "redis_status", "exchange_failover"):
            expect(name in metrics, f"/metrics lacks {name}")
        return "/readyz 200, /metrics complete"

    def status(c: httpx.Client) -> str:
        response = c.get("/api/v1/status", headers=api)
        expect(response.status_code == 200, f"HTTP {response.status_code}")
        return f"health {response.json()['health']}"

    def alert_round_trip(c: httpx.Client) -> str:
        fingerprint = f"smoke-{int(time.time() * 1000)}"
        fired = c.post(
            "/api/v1/alerts/alertmanager", json=_test_alert(fingerprint, "firing"), headers=hook
        )
        expect(fired.status_code == 200, f"webhook answered {fired.status_code}")
        [incident_id] = fired.json()["incidents"]
        found = c.get(f"/api/v1/incidents/{incident_id}", headers=api).json()
        expect(found["incident"]["state"] == "triggered", "incident not triggered")
        c.post(
            "/api/v1/alerts/alertmanager", json=_test_alert(fingerprint, "resolved"), headers=hook
        )
        after = c.get(f"/api/v1/incidents/{incident_id}", headers=api).json()
        expect(after["incident"]["state"] == "resolved", "incident not resolved by the alert")
        return f"incident #{incident_id} opened and resolved"

    def telegram(c: httpx.Client) -> str:
        component = c.get("/healthz").json()["components"]["telegram"]
        if component["status"] == "disabled":
            return "bot off (no TELEGRAM_BOT_TOKEN)"
        expect(component["status"] == "ok", f"{component['status']}: {component['detail']}")
        return str(component["detail"])

    check("healthz", healthz)
    check("probes and metrics", probes)
    check("status API", status)
    check("test alert end to end", alert_round_trip)
    check("telegram bot", telegram)
    if failures:
        raise fail(f"smoke FAILED: {failures} check(s) failed against {base}", 1)
    typer.echo(f"smoke OK against {base}")
