"""``lunia checklist`` and ``lunia report``: the daily checklist and the access review (§1, §4).

Assembled into ``lunia`` by ``api.cli``; each is one core call through ``with_plane``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.base import cli_actor, with_plane
from core.control_plane import ControlPlane
from core.ops.access_review import render_markdown
from core.platform.files import write_atomically


def checklist() -> None:
    """Run the daily checklist (runbook §1): one line per check; exit 1 on any ❌."""
    result = with_plane(lambda plane: plane.checklist.run())
    for item in result.items:
        typer.echo(f"{item.mark.symbol} {item.name}: {item.reason}")
    if result.worst.value == "fail":
        raise typer.Exit(1)


def report(
    out: Annotated[
        Path, typer.Option("--out", help="where to write the Markdown report", dir_okay=False)
    ] = Path("docs/RELEASE_REPORT.md"),
) -> None:
    """Write the access review (roles, last actions, flags, backups, incidents) as Markdown."""

    async def go(plane: ControlPlane) -> str:
        return render_markdown(await plane.access_review.review(cli_actor()))

    text = with_plane(go)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, text.encode())
    typer.echo(f"access review written to {out}")
