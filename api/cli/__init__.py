"""The ``lunia`` command: run the control plane and operate it from a terminal.

This module only assembles: ``base`` holds the typer app and what every command shares
(settings, a local control plane, one-line errors and exit codes), ``instance`` how to reach a
running instance, and each other module one command group. They import ``base`` (and
``instance``), never each other, and never this module (an import contract in .importlinter).

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or configuration.
"""

from __future__ import annotations

from api.cli import audit, backups, engine, flags, ops, serve, smoke, tokens, venues
from api.cli.base import app

__all__ = ["app", "main"]

# Registration order is the order `lunia --help` lists them in.
app.add_typer(flags.flags_app, name="flags")
app.add_typer(audit.audit_app, name="audit")
app.command()(serve.run)
app.command("api")(serve.api_role)
app.command("bot")(serve.bot_role)
app.command("worker")(serve.worker_role)
app.command()(ops.checklist)
app.command()(engine.status)
app.add_typer(backups.backup_app, name="backup")
app.command()(ops.report)
app.add_typer(venues.chaos_app, name="chaos")
app.command()(venues.venues)
app.command()(venues.failover)
app.command()(venues.failback)
app.command()(engine.halt)
app.command()(engine.resume)
app.add_typer(tokens.token_app, name="token")
app.command()(smoke.smoke)


def main() -> None:
    """Console-script entry point."""
    app()
