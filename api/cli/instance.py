"""Reaching the RUNNING instance over its HTTP API: where it listens and which token to send.

Commands that act on the engine's live state (venues, failover, chaos, smoke) go through the
running process, with a token from ``--token``, ``LUNIA_API_TOKEN``, an admin entry of
``API_TOKENS`` or the admin token generated into the state dir.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer

from api.cli.base import fail, load_settings
from core.config.settings import Settings
from core.models import Role
from core.security.secrets import ADMIN_TOKEN_FILE

UrlOption = Annotated[
    str | None, typer.Option("--url", help="base URL of the running instance (default from API_*)")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", help="API token (default: LUNIA_API_TOKEN, then admin)")
]


def base_url(settings: Settings, url: str | None) -> str:
    """``--url`` as given, else the configured API address (a wildcard bind means loopback)."""
    if url:
        return url.rstrip("/")
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host  # noqa: S104
    return f"http://{host}:{settings.api_port}"


def api_token(settings: Settings, token: str | None) -> str:
    """The token to send, in the documented order of sources; exit 2 if there is none."""
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
    base = base_url(settings, url)
    try:
        response = httpx.request(
            method,
            base + path,
            json=body,
            headers={"Authorization": f"Bearer {api_token(settings, token)}"},
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
