"""``lunia venues|failover|failback`` and ``lunia chaos exchange-failover`` (runbook §2.1).

These act on the RUNNING instance through its HTTP API (the engine's state lives in that
process), with a token from ``--token``, ``LUNIA_API_TOKEN``, an admin entry of ``API_TOKENS``
or the admin token generated into the state dir. Registered on the ``lunia`` app by ``api.cli``.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import httpx
import typer

from api.cli import fail, load_settings
from core.config.settings import Settings
from core.models import Role
from core.security.secrets import ADMIN_TOKEN_FILE

chaos_app = typer.Typer(
    help="Chaos drills against a running instance (refused while INFRA_PROD_ENABLED is on).",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None, typer.Option("--url", help="base URL of the running instance (default from API_*)")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", help="API token (default: LUNIA_API_TOKEN, then admin)")
]
YesOption = Annotated[bool, typer.Option("--yes", help="confirm the action")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _base_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host  # noqa: S104
    return f"http://{host}:{settings.api_port}"


def _token(settings: Settings, token: str | None) -> str:
    if token:
        return token
    if os.environ.get("LUNIA_API_TOKEN"):
        return os.environ["LUNIA_API_TOKEN"]
    for configured in settings.configured_api_tokens():
        if configured.role is Role.ADMIN:
            return configured.token
    path = settings.lunia_state_dir / "secrets" / ADMIN_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip()
    raise fail("no API token: pass --token or set LUNIA_API_TOKEN", 2)


def remote(
    method: str, path: str, *, url: str | None, token: str | None, body: Any = None
) -> dict[str, Any]:
    """Call the running instance; exit 1 (or 2 for a missing confirmation) on an error."""
    settings = load_settings()
    base = _base_url(settings, url)
    try:
        response = httpx.request(
            method,
            base + path,
            json=body,
            headers={"Authorization": f"Bearer {_token(settings, token)}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise fail(f"no running instance answers at {base}: {type(exc).__name__}", 1) from None
    try:
        payload: dict[str, Any] = response.json()
    except ValueError:
        payload = {}
    if response.is_success:
        return payload
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    message = error.get("message") or f"HTTP {response.status_code}"
    if error.get("code") == "confirmation_required":
        raise fail(f"{message} (add --yes)", 2)
    raise fail(message, 1)


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    state = "FAILED OVER" if status["failed_over"] else "on primary"
    typer.echo(
        f"active {status['active']} ({state}); primary {status['primary']}, "
        f"standby {status['standby']}"
    )
    for v in status["items"]:
        health = {True: "healthy", False: "failing", None: "not probed"}[v["healthy"]]
        extra = f" - {v['last_error']}" if v["last_error"] else ""
        typer.echo(
            f"  {v['name']:<10} {v['role']:<8} {v['mode']:<8} {health}"
            f" ({v['consecutive_failures']} failures){extra}"
        )


def venues(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Show where the running instance trades and each venue's health."""
    _show(remote("GET", "/api/v1/venues", url=url, token=token), as_json)


def failover(
    to: Annotated[str | None, typer.Option("--to", help="venue (default: the standby)")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    yes: YesOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fail the running instance over to the standby venue (shows the pre-check without --yes)."""
    body = {"to": to, "confirm": yes, "reason": reason}
    _show(remote("POST", "/api/v1/failover", url=url, token=token, body=body), as_json)


def failback(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Return the running instance to the primary venue (after its pre-check)."""
    _show(remote("POST", "/api/v1/failback", url=url, token=token), as_json)


@chaos_app.command("exchange-failover")
def chaos_exchange_failover(
    yes: YesOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Inject a primary-venue outage into the running instance; automatic failover must act."""
    settings = load_settings()
    if settings.infra_prod_enabled:
        raise fail("chaos drills are refused while INFRA_PROD_ENABLED is on", 1)
    status = remote(
        "POST", "/api/v1/chaos/exchange-failover", url=url, token=token, body={"confirm": yes}
    )
    _show(status, as_json)
    if not status["failed_over"]:
        raise fail("the drill ran but the engine did NOT fail over", 1)
    typer.echo("drill: failed over as expected; end it with `lunia failback`")
