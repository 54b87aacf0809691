"""``lunia run|api|bot|worker``: serve the control plane, whole or as one role of a split.

Assembled into ``lunia`` by ``api.cli``; the process itself is ``api.runner.serve``.
"""

from __future__ import annotations

import typer

from api.cli.base import fail, load_settings
from core.errors import ConfigError, LuniaError
from core.platform.roles import ProcessRole


def run() -> None:
    """Run everything in one process: engine, API, bot if configured, scheduler."""
    _serve(ProcessRole.ALL)


def api_role() -> None:
    """Serve the HTTP API only (any number of replicas; needs ENABLE_REDIS=true)."""
    _serve(ProcessRole.API)


def bot_role() -> None:
    """Run the Telegram bot only: one replica polls and sends, others stand by (Redis)."""
    _serve(ProcessRole.BOT)


def worker_role() -> None:
    """Run the engine only: trading loop, scheduler, outboxes; one active, others stand by."""
    _serve(ProcessRole.WORKER)


def _serve(role: ProcessRole) -> None:
    from api.runner import run

    settings = load_settings(quiet=False)
    try:
        code = run(settings, role)  # on uvloop when installed
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}", 2) from None
    except LuniaError as exc:
        raise fail(str(exc), 1) from None
    raise typer.Exit(code)
