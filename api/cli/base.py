"""What every ``lunia`` command shares: the typer app, settings, a local control plane, exits.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or configuration.
Command modules import this one and nothing else of the package; ``api.cli`` assembles them.

The local-state guard: a command acts on this host's state only where a control plane has served
from it (``lunia run`` or a role left its served marker there, with the same kind of store), or
when ``LUNIA_LOCAL=1`` says so on purpose. Anywhere else the deployment's state is elsewhere, and
acting on a fresh local store would silently do nothing useful (issue 19): the command refuses,
naming LUNIA_URL / LUNIA_TOKEN and ``docker compose exec worker lunia ...``.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
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
from core.platform.roles import SERVED_MARKER, ProcessRole, read_served, store_kind

T = TypeVar("T")

app = typer.Typer(
    help="Lunia Core control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]

LOCAL_ENV = "LUNIA_LOCAL"
COMPOSE_EXEC = "docker compose -f docker-compose.prod.yml exec worker lunia ..."


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


def local_state_refusal(settings: Settings) -> str | None:
    """Why this host's local state must not be acted on, or None if it may (module docstring)."""
    if os.environ.get(LOCAL_ENV) == "1":
        return None
    where = settings.lunia_state_dir.absolute()
    served = read_served(where)
    reach = (
        "reach the deployment with LUNIA_URL=https://... and LUNIA_TOKEN_FILE=PATH (or "
        f"LUNIA_TOKEN), or run the command inside it: `{COMPOSE_EXEC}`; to act on this "
        f"host's state on purpose, set {LOCAL_ENV}=1"
    )
    if served is None:
        return (
            f"refusing to act on {where}: no control plane has served from it (no "
            f"{SERVED_MARKER}), so the deployment's state is elsewhere; {reach}"
        )
    wanted = store_kind(settings.enable_redis)
    if served.store != wanted:
        return (
            f"refusing to act on the {wanted} store: the control plane that served from "
            f"{where} used {served.store} (as {served.role}, {served.at}); {reach}"
        )
    return None


def with_plane(fn: Callable[[ControlPlane], Awaitable[T]]) -> T:
    """Start a control plane on the local state, run ``fn``, close it, map errors to exits;
    refused (exit 2) where that state is not a deployment's (``local_state_refusal``)."""
    settings = load_settings()
    refusal = local_state_refusal(settings)
    if refusal is not None:
        raise fail(refusal, 2)

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
