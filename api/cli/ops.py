"""``lunia checklist`` and ``lunia report``: the daily checklist and the access review (§1, §4).

Assembled into ``lunia`` by ``api.cli``; each is one core call through ``with_plane``, or with
``--url`` / ``LUNIA_URL`` one call to the deployment's API (the report is written here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.base import cli_actor
from api.cli.instance import TokenOption, UrlOption, on_deployment_or_here
from core.models.ops import Checklist
from core.ops.access_review import AccessReview, render_markdown
from core.platform.files import write_atomically


def checklist(url: UrlOption = None, token: TokenOption = None) -> None:
    """Run the daily checklist (runbook §1): one line per check; exit 1 on any ❌."""
    result = on_deployment_or_here(
        url,
        token,
        remote=lambda d: Checklist.model_validate(d.call("GET", "/api/v1/checklist")),
        local=lambda plane: plane.checklist.run(),
    )
    for item in result.items:
        typer.echo(f"{item.mark.symbol} {item.name}: {item.reason}")
    if result.worst.value == "fail":
        raise typer.Exit(1)


def report(
    out: Annotated[
        Path, typer.Option("--out", help="where to write the Markdown report", dir_okay=False)
    ] = Path("docs/RELEASE_REPORT.md"),
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Write the access review (roles, last actions, flags, backups, incidents) as Markdown."""
    review = on_deployment_or_here(
        url,
        token,
        remote=lambda d: AccessReview.model_validate(d.call("GET", "/api/v1/access-review")),
        local=lambda plane: plane.access_review.review(cli_actor()),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, render_markdown(review).encode())
    typer.echo(f"access review written to {out}")
