"""Reaching a deployment over its HTTP API: where it listens and which token to send.

Two kinds of command use this module. Commands that only make sense against a running process
(venues, failover, chaos, smoke) always go through its API: ``--url`` / ``LUNIA_URL``, else the
configured local API address. Every other command is *remote* exactly when ``--url`` or
``LUNIA_URL`` is given: it then calls the deployment's API instead of opening a local state.

The token comes from ``--token`` / ``LUNIA_TOKEN``, then the file ``LUNIA_TOKEN_FILE`` (the way to
keep it out of ``ps`` and shell history), then ``LUNIA_API_TOKEN`` (older name). Only for the
local instance (no URL given) does the CLI fall back to the host's own tokens (an admin entry of
``API_TOKENS``, or the admin token generated into the state dir): a deployment's token is never
guessed from this host. The token is sent as a bearer header and never printed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import typer

from api.cli.base import fail, load_settings, local_state_refusal, setup_logging, with_plane
from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.models import Role
from core.security.secrets import ADMIN_TOKEN_FILE

T = TypeVar("T")

URL_ENV = "LUNIA_URL"
# Names of environment variables, not secrets.
TOKEN_ENV = "LUNIA_TOKEN"  # noqa: S105
TOKEN_FILE_ENV = "LUNIA_TOKEN_FILE"  # noqa: S105
LEGACY_TOKEN_ENV = "LUNIA_API_TOKEN"  # noqa: S105
PLAIN_HTTP_ENV = "LUNIA_ALLOW_PLAIN_HTTP"
TIMEOUT_SECONDS = 120.0  # a backup or a restore of a large state takes a while

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=URL_ENV,
        show_default=False,
        help="the deployment's API, e.g. https://ops.example.com: act on it over HTTP(S)",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_default=False,
        help=f"API token for --url (visible in `ps`: prefer {TOKEN_FILE_ENV}=PATH)",
    ),
]


class Deployment:
    """A running control plane reached over its HTTP API with a bearer token."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self._headers = {"Authorization": f"Bearer {token}"}

    def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One API call; exit with a one-line reason on any error (the token is never shown)."""
        try:
            response = httpx.request(
                method,
                self.base + path,
                json=body,
                params=params,
                headers=self._headers,
                timeout=TIMEOUT_SECONDS,
            )
        except httpx.TimeoutException:
            raise fail(f"the deployment at {self.base} did not answer in time", 1) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise fail(f"cannot reach the deployment at {self.base}: {reason}", 1) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            if payload is None:
                raise fail(f"{self.base}{path} did not answer JSON: is it a Lunia API?", 1)
            return payload
        raise self._refusal(response, payload)

    def _refusal(self, response: httpx.Response, payload: Any) -> typer.Exit:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        status = response.status_code
        message = str(error.get("message") or f"HTTP {status}")
        if status == 401:
            return fail(
                f"the deployment at {self.base} refused the token (401: {message}); "
                f"check {TOKEN_ENV} / {TOKEN_FILE_ENV}",
                2,
            )
        if status == 403:
            return fail(f"the token may not do this (403): {message}", 1)
        if error.get("code") == "confirmation_required":
            return fail(f"{message} (add --yes)", 2)
        if status in (404, 422):
            return fail(message, 2)
        if status == 429:
            after = response.headers.get("Retry-After", "a few")
            return fail(f"rate limited by the deployment (429): retry in {after} s", 1)
        if status >= 500:
            return fail(f"the deployment at {self.base} failed (HTTP {status}): {message}", 1)
        return fail(message, 1)


def _checked_url(url: str) -> str:
    """The URL without a trailing slash, refused unless http(s); plain http only to loopback
    (a bearer token must not cross a network in clear) unless LUNIA_ALLOW_PLAIN_HTTP=1."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"--url / {URL_ENV} must be http(s)://HOST[:PORT], not {url!r}", 2)
    clear = parts.scheme == "http" and not _loopback(parts.hostname)
    if clear and os.environ.get(PLAIN_HTTP_ENV) != "1":
        raise fail(
            f"refusing to send the API token in clear to {parts.hostname}: use https:// "
            f"(or {PLAIN_HTTP_ENV}=1 on a trusted private network)",
            2,
        )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _explicit_token(token: str | None) -> str | None:
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise fail(f"{TOKEN_FILE_ENV}: cannot read {path}: {exc.strerror}", 2) from None
        if not value:
            raise fail(f"{TOKEN_FILE_ENV}: {path} is empty", 2)
        return value
    return os.environ.get(LEGACY_TOKEN_ENV) or None


def deployment(url: str | None, token: str | None) -> Deployment | None:
    """The deployment ``--url`` / LUNIA_URL names, or None: act on this host's local state."""
    if not url:
        return None
    setup_logging("WARNING")  # remote: no local settings are read, nothing local is created
    base = _checked_url(url)
    explicit = _explicit_token(token)
    if explicit is None:
        raise fail(
            f"no API token for {base}: set {TOKEN_FILE_ENV}=PATH (or {TOKEN_ENV}) to a token "
            "of the deployment",
            2,
        )
    return Deployment(base, explicit)


def on_deployment_or_here(
    url: str | None,
    token: str | None,
    *,
    remote: Callable[[Deployment], T],
    local: Callable[[ControlPlane], Awaitable[T]],
) -> T:
    """Run a runbook command where the state is: ``remote`` against the deployment ``--url`` /
    LUNIA_URL names, else ``local`` on this host's state (``with_plane``, guarded)."""
    target = deployment(url, token)
    return remote(target) if target is not None else with_plane(local)


def base_url(settings: Settings, url: str | None) -> str:
    """``--url`` as given, else the configured API address (a wildcard bind means loopback)."""
    if url:
        return _checked_url(url)
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host  # noqa: S104
    return f"http://{host}:{settings.api_port}"


def api_token(settings: Settings, token: str | None, *, local: bool = True) -> str:
    """The token to send, in the documented order of sources; exit 2 if there is none.
    ``local``: the instance is this host's own, so its configured admin token may be used, and
    the generated one too where a control plane served from the state dir (a stale generated
    token on a host that never served is not the deployment's)."""
    explicit = _explicit_token(token)
    if explicit is not None:
        return explicit
    if local:
        for configured in settings.configured_api_tokens():
            if configured.role is Role.ADMIN:
                return configured.token
        path = settings.lunia_state_dir / "secrets" / ADMIN_TOKEN_FILE
        if path.is_file() and local_state_refusal(settings) is None:
            return path.read_text().strip()
    raise fail(f"no API token: set {TOKEN_FILE_ENV}=PATH or {TOKEN_ENV} (or pass --token)", 2)


def instance(url: str | None, token: str | None) -> Deployment:
    """The running instance: the deployment ``--url`` names, else this host's own API."""
    found = deployment(url, token)
    if found is not None:
        return found
    settings = load_settings()
    return Deployment(base_url(settings, None), api_token(settings, token))


def remote(
    method: str, path: str, *, url: str | None, token: str | None, body: Any = None
) -> dict[str, Any]:
    """Call the running instance; exit 1 (or 2 for a missing confirmation) on an error."""
    payload: dict[str, Any] = instance(url, token).call(method, path, body=body)
    return payload
