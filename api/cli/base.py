"""What every ``lunia`` command shares: the typer app, settings, a local control plane, exits.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or configuration.
Command modules import this one and nothing else of the package; ``api.cli`` assembles them.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
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

T = TypeVar("T")

app = typer.Typer(
    help="Lunia Core control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


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
