"""``lunia backup create|list|verify|sign|restore`` (runbook §3).

Assembled into ``lunia`` by ``api.cli``; every command is one core call through ``with_plane``,
or with ``--url`` / ``LUNIA_URL`` the matching ``/api/v1/backups`` call to the deployment, so exit
codes, one-line errors and output are the CLI's usual ones either way.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer

from api.cli.base import JsonOption, cli_actor, fail
from api.cli.instance import Deployment, TokenOption, UrlOption, on_deployment_or_here
from core.backups import BackupInfo, BackupManifest, BackupReason, RestoreReport, Verification
from core.control_plane import ControlPlane

backup_app = typer.Typer(
    help="Backups, verification and restore (runbook §3).", no_args_is_help=True
)


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 48 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes // 1440}d"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _path(backup_id: str) -> str:
    return f"/api/v1/backups/{quote(backup_id, safe='')}"


@backup_app.command("create")
def backup_create(
    reason: Annotated[
        str, typer.Option("--reason", help="manual or emergency (shown in the catalogue)")
    ] = "manual",
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Take a backup of all state now."""
    if reason not in (BackupReason.MANUAL.value, BackupReason.EMERGENCY.value):
        raise fail(f"--reason must be manual or emergency, not {reason!r}", 2)

    def there(d: Deployment) -> tuple[BackupInfo, str]:
        answer = d.call("POST", "/api/v1/backups", body={"reason": reason})
        return BackupInfo.model_validate(answer), f"on the deployment at {d.base}"

    async def here(plane: ControlPlane) -> tuple[BackupInfo, str]:
        info = await plane.backups.create(cli_actor(), reason=BackupReason(reason))
        return info, f"in {plane.backups.root / info.id}"

    info, where = on_deployment_or_here(url, token, remote=there, local=here)
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(info.counts.items()))
    typer.echo(f"backup {info.id} taken: {_size(info.size_bytes)} ({counts})")
    typer.echo(f"  {where}" + (f", copied to {info.offsite}" if info.offsite else ""))
    if info.problem:
        typer.echo(f"  warning: {info.problem}", err=True)


@backup_app.command("list")
def backup_list(
    remote: Annotated[bool, typer.Option("--remote", help="include off-site-only backups")] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show every backup, newest first, with age, size and verification status."""

    def there(d: Deployment) -> list[BackupInfo]:
        answer = d.call("GET", "/api/v1/backups", params={"remote": remote})
        return [BackupInfo.model_validate(item) for item in answer["items"]]

    backups = on_deployment_or_here(
        url, token, remote=there, local=lambda plane: plane.backups.list(remote=remote)
    )
    if as_json:
        typer.echo(json.dumps([b.model_dump(mode="json") for b in backups], indent=2))
        return
    if not backups:
        typer.echo("no backups yet: `lunia backup create` takes one")
        return
    typer.echo(f"{'ID':<20} {'AGE':>7} {'REASON':<10} {'SIZE':>10} {'STATUS':<11} OFF-SITE")
    for b in backups:
        reason = b.reason.value if b.reason else "?"
        where = b.offsite or "-"
        if not b.local:
            where += " (only off-site)"
        line = f"{b.id:<20} {_age(b.age_seconds):>7} {reason:<10} {_size(b.size_bytes):>10} "
        typer.echo(f"{line}{b.status:<11} {where}" + (f"  {b.problem}" if b.problem else ""))


@backup_app.command("verify")
def backup_verify(
    backup_id: str, as_json: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Check checksums, then trial-restore into a scratch store; exit 1 naming any problem."""
    result = on_deployment_or_here(
        url,
        token,
        remote=lambda d: Verification.model_validate(d.call("POST", f"{_path(backup_id)}/verify")),
        local=lambda plane: plane.backups.verify(backup_id, cli_actor()),
    )
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    if not result.ok:
        raise fail(f"backup {backup_id} FAILED verification: {'; '.join(result.problems)}", 1)
    if not as_json:
        typer.echo(
            f"backup {backup_id} OK: checksums match; trial restore passed the integrity check, "
            f"{len(result.counts)} tables match the manifest, "
            f"{result.audit_entries_checked} audit entries chain ({result.duration_seconds:.2f}s)"
        )


@backup_app.command("sign")
def backup_sign(
    backup_id: str, as_json: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Sign an unsigned backup whose origin you trust with BACKUP_SIGNING_KEY (admin; audited),
    after checking its files against its manifest."""
    manifest = on_deployment_or_here(
        url,
        token,
        remote=lambda d: BackupManifest.model_validate(d.call("POST", f"{_path(backup_id)}/sign")),
        local=lambda plane: plane.backups.sign(backup_id, cli_actor()),
    )
    if as_json:
        typer.echo(manifest.model_dump_json(indent=2))
        return
    typer.echo(
        f"backup {backup_id} signed with key {manifest.key_id}: checksums of its "
        f"{len(manifest.files)} files match its manifest"
    )


@backup_app.command("restore")
def backup_restore(
    backup_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: replaces all current state")] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Replace all state with a backup (a safety backup is taken first; rolled back on failure)."""

    def there(d: Deployment) -> RestoreReport:
        answer = d.call("POST", f"{_path(backup_id)}/restore", body={"confirm": yes})
        return RestoreReport.model_validate(answer)

    report = on_deployment_or_here(
        url,
        token,
        remote=there,
        local=lambda plane: plane.backups.restore(backup_id, cli_actor(), confirm=yes),
    )
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(
        f"restored backup {report.backup_id} (taken {report.backup_created_at.isoformat()}) "
        f"in {report.duration_seconds:.2f}s; safety backup of the previous state: "
        f"{report.safety_backup_id}"
    )
    if report.backup_store != report.into_store:
        typer.echo(
            f"  moved from the {report.backup_store} store into the {report.into_store} store "
            "(from the backup's portable copy)"
        )
    for table in sorted(set(report.counts_before) | set(report.counts_after)):
        before, after = report.counts_before.get(table, 0), report.counts_after.get(table, 0)
        if before != after:
            typer.echo(f"  {table}: {before} -> {after}")
    for flag in report.flags_changed:
        typer.echo(f"  flag {flag.name}: {json.dumps(flag.before)} -> {json.dumps(flag.after)}")
    for kept in report.kept:  # stricter before the restore than in the backup: not loosened
        typer.echo(f"  kept {kept.item}: {kept.why}")
    if report.audit_fork_seq is not None:
        typer.echo(f"  audit fork entry: seq {report.audit_fork_seq}")
