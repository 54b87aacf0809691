"""``lunia token issue|list|revoke``: temporary API tokens (admin).

Assembled into ``lunia`` by ``api.cli``; a running server sees changes within seconds. With
``--url`` / ``LUNIA_URL`` each command is the matching ``/api/v1/tokens`` call (same output).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer

from api.cli.base import JsonOption, cli_actor
from api.cli.instance import Deployment, TokenOption, UrlOption, on_deployment_or_here
from api.schemas import IssuedTokenOut, TokenOut
from core.control_plane import ControlPlane
from core.models import Role

token_app = typer.Typer(
    help="Temporary API tokens: issue, list, revoke (runbook §4).", no_args_is_help=True
)


@token_app.command("issue")
def token_issue(
    name: Annotated[str, typer.Option("--name", help="who or what the token is for")],
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")] = Role.VIEWER,
    ttl: Annotated[str, typer.Option("--ttl", help="lifetime: 30m, 8h, 7d (at most 90d)")] = "8h",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Issue a token; its value is printed this once (on stdout, alone, for scripts)."""
    body = {"name": name, "role": role.value, "ttl": ttl}

    async def here(plane: ControlPlane) -> IssuedTokenOut:
        made = await plane.temporary_tokens.issue(cli_actor(), name=name, role=role, ttl=ttl)
        return IssuedTokenOut.issued(made)

    issued = on_deployment_or_here(
        url,
        token,
        remote=lambda d: IssuedTokenOut.model_validate(d.call("POST", "/api/v1/tokens", body=body)),
        local=here,
    )
    typer.echo(
        f"issued token {issued.id} ({issued.name}, {issued.role.value}) expiring "
        f"{issued.expires_at:%Y-%m-%dT%H:%M:%SZ}; store it now, it is not shown again:",
        err=True,
    )
    typer.echo(issued.token)


@token_app.command("list")
def token_list(
    as_json: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Every temporary token: id, name, role, state, expiry, issuer (never values)."""

    def there(d: Deployment) -> list[TokenOut]:
        return [TokenOut.model_validate(i) for i in d.call("GET", "/api/v1/tokens")["items"]]

    async def here(plane: ControlPlane) -> list[TokenOut]:
        return [TokenOut.of(t) for t in await plane.temporary_tokens.list(cli_actor())]

    found = on_deployment_or_here(url, token, remote=there, local=here)
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in found], indent=2))
        return
    if not found:
        typer.echo("no temporary tokens")
    for t in found:
        typer.echo(
            f"{t.id}  {t.name:<20} {t.role.value:<8} {t.state:<7} "
            f"expires {t.expires_at:%Y-%m-%dT%H:%M:%SZ}  issued by {t.issued_by}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the id from `lunia token list`")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Revoke a token; it stops working at once (within seconds on a running server)."""
    path = f"/api/v1/tokens/{quote(token_id, safe='')}"

    async def here(plane: ControlPlane) -> TokenOut:
        return TokenOut.of(await plane.temporary_tokens.revoke(cli_actor(), token_id))

    revoked = on_deployment_or_here(
        url, token, remote=lambda d: TokenOut.model_validate(d.call("DELETE", path)), local=here
    )
    typer.echo(f"revoked token {revoked.id} ({revoked.name})")
