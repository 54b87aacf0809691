"""``lunia flags list|set|unset``: feature flags from the host (runbook §5).

Assembled into ``lunia`` by ``api.cli``; a running server picks up a change within seconds.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from api.cli.base import JsonOption, cli_actor, with_plane
from core.control_plane import ControlPlane

flags_app = typer.Typer(help="Feature flags (runbook §5).", no_args_is_help=True)

ConfirmOption = Annotated[bool, typer.Option("--yes", help="confirm a dangerous change")]


@flags_app.command("list")
def flags_list(as_json: JsonOption = False) -> None:
    """Show every flag, its value and where the value came from."""

    async def go(plane: ControlPlane) -> None:
        states = plane.flags.states()
        if as_json:
            typer.echo(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
            return
        width = max(len(s.name) for s in states)
        for s in states:
            value = json.dumps(s.value)
            typer.echo(f"{s.name:<{width}}  {value:<7} {s.source.value:<8} {s.description}")

    with_plane(go)


@flags_app.command("set")
def flags_set(name: str, value: str, yes: ConfirmOption = False) -> None:
    """Override a flag at runtime (persisted and audited)."""

    async def go(plane: ControlPlane) -> None:
        state = await plane.flags.set(name, value, cli_actor(), confirm=yes)
        typer.echo(
            f"{state.name} = {json.dumps(state.value)} ({state.source.value}); "
            f"takes effect {state.applies}"
        )

    with_plane(go)


@flags_app.command("unset")
def flags_unset(name: str, yes: ConfirmOption = False) -> None:
    """Clear a runtime override; the flag returns to its env value or default."""

    async def go(plane: ControlPlane) -> None:
        state = await plane.flags.unset(name, cli_actor(), confirm=yes)
        typer.echo(f"{state.name} = {json.dumps(state.value)} ({state.source.value})")

    with_plane(go)
