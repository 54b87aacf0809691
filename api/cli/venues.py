"""``lunia venues|failover|failback`` and ``lunia chaos exchange-failover`` (runbook §2.1).

These act on the RUNNING instance through its HTTP API (the engine's state lives in that
process): the deployment ``--url`` / ``LUNIA_URL`` names, else this host's own API; see
``api.cli.instance`` for the address and token. Assembled into ``lunia`` by ``api.cli``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from api.cli.base import JsonOption, fail, load_settings, local_state_refusal, with_plane
from api.cli.instance import TokenOption, UrlOption, remote
from core.control_plane import ControlPlane

chaos_app = typer.Typer(
    help="Chaos drills against a running instance (refused while INFRA_PROD_ENABLED is on).",
    no_args_is_help=True,
)

YesOption = Annotated[bool, typer.Option("--yes", help="confirm the action")]


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

    async def check(plane: ControlPlane) -> None:
        plane.flags.check_chaos_allowed()

    # Refused here, before the instance is contacted, if this host's state says production is
    # on; a host without the deployment's state leaves the same rule to the deployment's API.
    if url is None or local_state_refusal(load_settings()) is None:
        with_plane(check)
    status = remote(
        "POST", "/api/v1/chaos/exchange-failover", url=url, token=token, body={"confirm": yes}
    )
    _show(status, as_json)
    if not status["failed_over"]:
        raise fail("the drill ran but the engine did NOT fail over", 1)
    typer.echo("drill: failed over as expected; end it with `lunia failback`")
