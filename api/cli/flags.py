"""``lunia flags list|set|unset``: feature flags, on this host or a deployment (runbook §5).

Assembled into ``lunia`` by ``api.cli``; a running server picks up a change within seconds. With
``--url`` / ``LUNIA_URL`` each command is the matching ``/api/v1/flags`` call (same output).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer

from api.cli.base import JsonOption, cli_actor
from api.cli.instance import TokenOption, UrlOption, on_deployment_or_here
from core.control_plane import ControlPlane
from core.flags import FlagState

flags_app = typer.Typer(help="Feature flags (runbook §5).", no_args_is_help=True)

ConfirmOption = Annotated[bool, typer.Option("--yes", help="confirm a dangerous change")]


def _path(name: str) -> str:
    return f"/api/v1/flags/{quote(name, safe='')}"


@flags_app.command("list")
def flags_list(
    as_json: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Show every flag, its value and where the value came from."""

    async def here(plane: ControlPlane) -> list[FlagState]:
        return plane.flags.states()

    states = on_deployment_or_here(
        url,
        token,
        remote=lambda d: [
            FlagState.model_validate(i) for i in d.call("GET", "/api/v1/flags")["items"]
        ],
        local=here,
    )
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
        return
    width = max(len(s.name) for s in states)
    for s in states:
        value = json.dumps(s.value)
        typer.echo(f"{s.name:<{width}}  {value:<7} {s.source.value:<8} {s.description}")


@flags_app.command("set")
def flags_set(
    name: str,
    value: str,
    yes: ConfirmOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Override a flag at runtime (persisted and audited)."""
    body = {"value": value, "confirm": yes}
    state = on_deployment_or_here(
        url,
        token,
        remote=lambda d: FlagState.model_validate(d.call("PUT", _path(name), body=body)),
        local=lambda plane: plane.flags.set(name, value, cli_actor(), confirm=yes),
    )
    typer.echo(
        f"{state.name} = {json.dumps(state.value)} ({state.source.value}); "
        f"takes effect {state.applies}"
    )


@flags_app.command("unset")
def flags_unset(
    name: str, yes: ConfirmOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Clear a runtime override; the flag returns to its env value or default."""
    body = {"confirm": yes}
    state = on_deployment_or_here(
        url,
        token,
        remote=lambda d: FlagState.model_validate(d.call("DELETE", _path(name), body=body)),
        local=lambda plane: plane.flags.unset(name, cli_actor(), confirm=yes),
    )
    typer.echo(f"{state.name} = {json.dumps(state.value)} ({state.source.value})")
