"""``lunia audit verify|export``: the hash-chained audit log (runbook §4).

Assembled into ``lunia`` by ``api.cli``; ``verify --file`` checks exports offline, no state needed.
With ``--url`` / ``LUNIA_URL`` verify and export run on the deployment, through its API.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from api.cli.base import cli_actor, fail
from api.cli.instance import Deployment, TokenOption, UrlOption, on_deployment_or_here
from core.errors import InvalidInput
from core.security.audit import VerifyReport
from core.security.exports import ExportResult, parse_destination, verify_exports

audit_app = typer.Typer(help="The hash-chained audit log (runbook §4).", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        list[Path] | None,
        typer.Option(
            "--file",
            help="verify an exported JSONL offline (repeat, oldest first, to check they join)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Check the hash chain and the anchored head (state dir); exit 1 naming the first bad entry
    or the removed tail. Restores the chain went through are named (fork entries)."""
    if file:
        report = verify_exports(file)
    else:
        report = on_deployment_or_here(
            url,
            token,
            remote=lambda d: VerifyReport.model_validate(d.call("GET", "/api/v1/audit/verify")),
            local=lambda plane: plane.audit.verify(),
        )
    for fork in report.forks:
        typer.echo(f"fork (a restore rolled the chain back): {fork}")
    if not report.ok:
        raise fail(
            f"audit log FAILED verification after {report.checked} good entries: {report.problem}",
            1,
        )
    typer.echo(f"audit log OK: {report.checked} entries, chain intact")


@audit_app.command("export")
def audit_export(
    dest: Annotated[
        str | None,
        typer.Option(
            "--dest",
            help="directory, file://PATH or s3://bucket/prefix (default AUDIT_EXPORT_DEST; "
            "with --url: s3:// or the server's AUDIT_EXPORT_DEST)",
        ),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="first instant included (UTC)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="first instant excluded (UTC)")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Export the audit log (a time range of it) as JSONL plus a manifest with its sha256."""
    if dest is not None:
        try:
            parse_destination(dest)
        except InvalidInput as exc:
            raise fail(exc.message, 2) from None

    def there(d: Deployment) -> ExportResult:
        if dest is not None and not dest.strip().startswith("s3://"):
            raise fail(
                f"--dest {dest!r} is a path: a deployment exports to s3://bucket/prefix or to its "
                "own AUDIT_EXPORT_DEST (omit --dest)",
                2,
            )
        body = {
            "dest": dest.strip() if dest else None,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        return ExportResult.model_validate(d.call("POST", "/api/v1/audit/export", body=body))

    result = on_deployment_or_here(
        url,
        token,
        remote=there,
        local=lambda plane: plane.exports.export(cli_actor(), dest, since=since, until=until),
    )
    manifest = result.manifest
    typer.echo(f"exported {manifest.count} entries to {result.files[0]} (sha256 {manifest.sha256})")
