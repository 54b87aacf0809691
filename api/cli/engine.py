"""``lunia status|halt|resume``: the running engine's summary and its kill switch (§2).

Like ``venues``, these act on the RUNNING instance through its HTTP API (its health, halt and
open orders live in that process): the deployment ``--url`` / ``LUNIA_URL`` names, else this
host's own API. Assembled into ``lunia`` by ``api.cli``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from api.cli.base import JsonOption
from api.cli.instance import TokenOption, UrlOption, instance
from core.models.alerts import Severity
from core.ops.status import StatusSummary
from core.trading.engine import EngineState, HaltReport

YesOption = Annotated[bool, typer.Option("--yes", help="confirm the action")]
_HEALTH = {"ok": "✅", "degraded": "⚠️", "down": "❌"}


def status(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """One screen, as the bot's /status: health, open incidents, engine figures, changed flags."""
    answer = instance(url, token).call("GET", "/api/v1/status")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    s = StatusSummary.model_validate(answer)
    typer.echo(
        f"{_HEALTH.get(s.health.value, '?')} Lunia status: {s.health.value} "
        f"({s.generated_at:%Y-%m-%dT%H:%M:%SZ})"
    )
    for name, detail in s.unhealthy.items():
        typer.echo(f"⚠️ {name}: {detail}")
    counts = ", ".join(f"{n} {sev.value}" for sev, n in s.open_incidents.items() if n)
    unacknowledged = f"; {s.unacknowledged} not acknowledged" if s.unacknowledged else ""
    icon = "🚨" if s.open_incidents.get(Severity.CRITICAL, 0) else "📋"
    typer.echo(f"{icon} incidents: {counts or 'none open'}{unacknowledged}")
    for line in s.lines:
        typer.echo(f"{'•' if line.ok else '⚠️'} {line.label}: {line.value}")
    if s.flags_changed:
        typer.echo("✳️ flags: " + ", ".join(f"{f.name}={f.value}" for f in s.flags_changed))


def _engine(state: EngineState) -> str:
    if state.halted:
        return f"HALTED by {state.halted_by} ({state.halt_reason or 'no reason given'})"
    return f"{state.mode.value} on {state.active_venue}"


def halt(
    reason: Annotated[str, typer.Option("--reason", help="why (audited)")] = "",
    yes: YesOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Kill switch (operator, confirmed): stop every core and cancel every open order."""
    body = {"confirm": yes, "reason": reason}
    report = HaltReport.model_validate(instance(url, token).call("POST", "/api/v1/halt", body=body))
    typer.echo(f"engine {_engine(report.state)}; {len(report.canceled)} open orders canceled")
    for problem in report.failed:
        typer.echo(f"  not canceled: {problem}", err=True)
    if report.failed:
        raise typer.Exit(1)


def resume(yes: YesOption = False, url: UrlOption = None, token: TokenOption = None) -> None:
    """Undo a halt (admin, confirmed)."""
    answer = instance(url, token).call("POST", "/api/v1/resume", body={"confirm": yes})
    typer.echo(f"engine {_engine(EngineState.model_validate(answer))}")
