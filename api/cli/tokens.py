"""``lunia token issue|list|revoke``: temporary API tokens from the host (admin).

Assembled into ``lunia`` by ``api.cli``; a running server sees changes within seconds.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from api.cli.base import JsonOption, cli_actor, with_plane
from core.control_plane import ControlPlane
from core.models import Role
from core.security.tokens import IssuedToken, TemporaryToken

token_app = typer.Typer(
    help="Temporary API tokens: issue, list, revoke (runbook §4).", no_args_is_help=True
)


@token_app.command("issue")
def token_issue(
    name: Annotated[str, typer.Option("--name", help="who or what the token is for")],
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")] = Role.VIEWER,
    ttl: Annotated[str, typer.Option("--ttl", help="lifetime: 30m, 8h, 7d (at most 90d)")] = "8h",
) -> None:
    """Issue a token; its value is printed this once (on stdout, alone, for scripts)."""

    async def go(plane: ControlPlane) -> IssuedToken:
        return await plane.temporary_tokens.issue(cli_actor(), name=name, role=role, ttl=ttl)

    issued = with_plane(go)
    token = issued.token
    typer.echo(
        f"issued token {token.id} ({token.name}, {token.role.value}) expiring "
        f"{token.expires_at:%Y-%m-%dT%H:%M:%SZ}; store it now, it is not shown again:",
        err=True,
    )
    typer.echo(issued.value.get_secret_value())


@token_app.command("list")
def token_list(as_json: JsonOption = False) -> None:
    """Every temporary token: id, name, role, state, expiry, issuer (never values)."""

    async def go(plane: ControlPlane) -> list[TemporaryToken]:
        return await plane.temporary_tokens.list(cli_actor())

    found = with_plane(go)
    if as_json:
        rows = [t.model_dump(mode="json") | {"state": t.state()} for t in found]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not found:
        typer.echo("no temporary tokens")
    for t in found:
        typer.echo(
            f"{t.id}  {t.name:<20} {t.role.value:<8} {t.state():<7} "
            f"expires {t.expires_at:%Y-%m-%dT%H:%M:%SZ}  issued by {t.issued_by}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the id from `lunia token list`")],
) -> None:
    """Revoke a token; it stops working at once (within seconds on a running server)."""

    async def go(plane: ControlPlane) -> TemporaryToken:
        return await plane.temporary_tokens.revoke(cli_actor(), token_id)

    token = with_plane(go)
    typer.echo(f"revoked token {token.id} ({token.name})")
