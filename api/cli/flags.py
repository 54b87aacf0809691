"""``lunia flags list|set|unset``: feature flags, on this host or a deployment (runbook §5).

Assembled into ``lunia`` by ``api.cli``; a running server picks up a change within seconds. With
``--url`` / ``LUNIA_URL`` each command is the matching ``/api/v1/flags`` call (same output).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer

from api.cli.base import JsonOption, cli_actor, with_plane
from api.cli.instance import TokenOption, UrlOption, deployment
from core.control_plane import ControlPlane
from core.flags import FlagState

flags_app = typer.Typer(help="Feature flags (runbook §5).", no_args_is_help=True)

ConfirmOption = Annotated[bool, typer.Option("--yes", help="confirm a dangerous change")]


@flags_app.command("list")
def flags_list(
    as_json: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Show every flag, its value and where the value came from."""
    target = deployment(url, token)
    if target is not None:
        items = target.call("GET", "/api/v1/flags")["items"]
        states = [FlagState.model_validate(item) for item in items]
    else:

        async def go(plane: ControlPlane) -> list[FlagState]:
            return plane.flags.states()

        states = with_plane(go)
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
    target = deployment(url, token)
    if target is not None:
        body = {"value": value, "confirm": yes}
        state = FlagState.model_validate(target.call("PUT", _path(name), body=body))
    else:

        async def go(plane: ControlPlane) -> FlagState:
            return await plane.flags.set(name, value, cli_actor(), confirm=yes)

        state = with_plane(go)
    typer.echo(
        f"{state.name} = {json.dumps(state.value)} ({state.source.value}); "
        f"takes effect {state.applies}"
    )


@flags_app.command("unset")
def flags_unset(
    name: str, yes: ConfirmOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Clear a runtime override; the flag returns to its env value or default."""
    target = deployment(url, token)
    if target is not None:
        state = FlagState.model_validate(target.call("DELETE", _path(name), body={"confirm": yes}))
    else:

        async def go(plane: ControlPlane) -> FlagState:
            return await plane.flags.unset(name, cli_actor(), confirm=yes)

        state = with_plane(go)
    typer.echo(f"{state.name} = {json.dumps(state.value)} ({state.source.value})")


def _path(name: str) -> str:
    return f"/api/v1/flags/{quote(name, safe='')}"
