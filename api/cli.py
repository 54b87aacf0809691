"""The ``lunia`` command: run the control plane and operate it from a terminal.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.errors import (
    ConfigError,
    ConfirmationRequired,
    InvalidInput,
    LuniaError,
    NotFound,
    OperationError,
)
from core.models import Actor, ActorKind, Role
from core.platform.roles import ProcessRole
from core.security.exports import parse_destination, verify_exports

T = TypeVar("T")

app = typer.Typer(
    help="Lunia Core control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
flags_app = typer.Typer(help="Feature flags (runbook §5).", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log (runbook §4).", no_args_is_help=True)
app.add_typer(flags_app, name="flags")
app.add_typer(audit_app, name="audit")


def setup_logging(level: str) -> None:
    """Log to stderr, one line per event."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("aiogram.event", "httpx", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line reason and return the exit to raise."""
    typer.echo(f"lunia: {message}", err=True)
    return typer.Exit(code)


def load_settings(*, quiet: bool = True) -> Settings:
    """Settings, or exit 2 with the one-line reason; one-shot commands log warnings only."""
    try:
        settings = Settings.load()
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}", 2) from None
    level = settings.log_level
    if quiet and level in ("INFO",):
        level = "WARNING"
    setup_logging(level)
    return settings


def cli_actor() -> Actor:
    """Whoever runs the CLI on the host: local state access is admin access."""
    user = getpass.getuser()
    return Actor(kind=ActorKind.CLI, id=user, name=user, role=Role.ADMIN)


def with_plane(fn: Callable[[ControlPlane], Awaitable[T]]) -> T:
    """Start a control plane on the local state, run ``fn``, close it, map errors to exits."""
    settings = load_settings()

    async def go() -> T:
        plane = ControlPlane(settings, role=ProcessRole.TOOL)  # no trading loop, no jobs
        await plane.start()
        try:
            return await fn(plane)
        finally:
            await plane.close()

    try:
        return asyncio.run(go())
    except (InvalidInput, NotFound) as exc:
        raise fail(exc.message, 2) from None
    except ConfirmationRequired as exc:
        raise fail(f"{exc.message} (add --yes)", 2) from None
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}", 2) from None
    except OperationError as exc:
        raise fail(exc.message, 1) from None
    except LuniaError as exc:
        raise fail(str(exc), 1) from None


@app.command()
def run() -> None:
    """Run everything in one process: engine, API, bot if configured, scheduler."""
    _serve(ProcessRole.ALL)


@app.command("api")
def api_role() -> None:
    """Serve the HTTP API only (any number of replicas; needs ENABLE_REDIS=true)."""
    _serve(ProcessRole.API)


@app.command("bot")
def bot_role() -> None:
    """Run the Telegram bot only: one replica polls and sends, others stand by (Redis)."""
    _serve(ProcessRole.BOT)


@app.command("worker")
def worker_role() -> None:
    """Run the engine only: trading loop, scheduler, outboxes; one active, others stand by."""
    _serve(ProcessRole.WORKER)


def _serve(role: ProcessRole) -> None:
    from api.runner import serve

    settings = load_settings(quiet=False)
    try:
        code = asyncio.run(serve(settings, role))
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}", 2) from None
    except LuniaError as exc:
        raise fail(str(exc), 1) from None
    raise typer.Exit(code)


@flags_app.command("list")
def flags_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
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
def flags_set(
    name: str,
    value: str,
    yes: Annotated[bool, typer.Option("--yes", help="confirm a dangerous change")] = False,
) -> None:
    """Override a flag at runtime (persisted and audited)."""

    async def go(plane: ControlPlane) -> None:
        state = await plane.flags.set(name, value, cli_actor(), confirm=yes)
        typer.echo(
            f"{state.name} = {json.dumps(state.value)} ({state.source.value}); "
            f"takes effect {state.applies}"
        )

    with_plane(go)


@flags_app.command("unset")
def flags_unset(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="confirm a dangerous change")] = False,
) -> None:
    """Clear a runtime override; the flag returns to its env value or default."""

    async def go(plane: ControlPlane) -> None:
        state = await plane.flags.unset(name, cli_actor(), confirm=yes)
        typer.echo(f"{state.name} = {json.dumps(state.value)} ({state.source.value})")

    with_plane(go)


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
) -> None:
    """Check the hash chain; exit 1 naming the first bad entry."""
    report = verify_exports(file) if file else with_plane(lambda plane: plane.audit.verify())
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
            help="directory, file://PATH or s3://bucket/prefix (default AUDIT_EXPORT_DEST)",
        ),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="first instant included (UTC)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="first instant excluded (UTC)")
    ] = None,
) -> None:
    """Export the audit log (a time range of it) as JSONL plus a manifest with its sha256."""
    if dest is not None:
        try:
            parse_destination(dest)
        except InvalidInput as exc:
            raise fail(exc.message, 2) from None

    result = with_plane(
        lambda plane: plane.exports.export(cli_actor(), dest, since=since, until=until)
    )
    manifest = result.manifest
    typer.echo(f"exported {manifest.count} entries to {result.files[0]} (sha256 {manifest.sha256})")


@app.command()
def checklist() -> None:
    """Run the daily checklist (runbook §1): one line per check; exit 1 on any ❌."""
    result = with_plane(lambda plane: plane.checklist.run())
    for item in result.items:
        typer.echo(f"{item.mark.symbol} {item.name}: {item.reason}")
    if result.worst.value == "fail":
        raise typer.Exit(1)


from api.cli_backups import backup_app, report  # noqa: E402 - they use the helpers above

app.add_typer(backup_app, name="backup")
app.command()(report)

from api.cli_venues import chaos_app, failback, failover, venues  # noqa: E402 - as above

app.add_typer(chaos_app, name="chaos")
app.command()(venues)
app.command()(failover)
app.command()(failback)

from api.cli_tokens import token_app  # noqa: E402 - as above

app.add_typer(token_app, name="token")


from api.cli_smoke import smoke  # noqa: E402 - it uses the helpers above

app.command()(smoke)


def main() -> None:
    """Console-script entry point."""
    app()
