"""A control plane process: core, HTTP server and, when configured, the bot, in one event loop.

``lunia run`` is every role at once; ``lunia api|bot|worker`` run one role each
(core/platform/roles.py), all serving ``/healthz`` and ``/metrics``, only ``api`` (and ``run``)
the rest of the HTTP API. The process is ready (``/readyz``) once the control plane has started
and the API listens; the Telegram bot is loaded and started after that, in the background
(bot/launcher.py), because importing aiogram alone takes longer than everything else.

uvicorn's own signal capture re-raises SIGTERM after shutdown (exit 143); we install our own
handlers instead so a drained shutdown exits 0. The process runs on uvloop and parses HTTP with
httptools when they are installed (uvicorn's ``auto``), which is what keeps probes at the
framework's own speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp
from uvicorn.loops.auto import auto_loop_factory

from api.app import create_app
from bot.launcher import TelegramLauncher
from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.errors import ConfigError
from core.platform import heap
from core.platform.roles import ProcessRole

logger = logging.getLogger(__name__)


# uvicorn picks uvloop and httptools when installed, asyncio and h11 otherwise.
LOOP = "auto"
HTTP = "auto"


def server_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings every server of ours uses (benches serve their references with them)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=LOOP,
        http=HTTP,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn would believe X-Forwarded-* from 127.0.0.1; the app trusts TRUSTED_PROXIES only.
        proxy_headers=False,
    )


def run(settings: Settings, role: ProcessRole = ProcessRole.ALL) -> int:
    """Run ``role`` on uvicorn's event loop of choice (``serve`` owns the loop's whole life)."""
    loop_factory = auto_loop_factory(use_subprocess=False)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings, role))


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal capture (the runner owns SIGTERM/SIGINT), calling
    ``on_listening`` once it accepts connections."""

    def __init__(
        self, config: uvicorn.Config, on_listening: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:  # not when it could not bind
            self._on_listening()


def announce(plane: ControlPlane) -> None:
    """Tell the operator where things are, never what the secrets are."""
    s = plane.settings
    logger.info(
        "API listening on http://%s:%d (health: /healthz, metrics: /metrics, docs: /docs)",
        s.api_host,
        s.api_port,
    )
    for name, path in plane.secrets.generated.items():
        logger.info("secret %s is in %s", name, path)
    if s.telegram_bot_token is None:
        logger.info(
            "Telegram bot is off: set TELEGRAM_BOT_TOKEN (and TELEGRAM_OPS_CHAT_ID, "
            "TELEGRAM_ADMINS) to enable it; see README 'Enable the Telegram bot'"
        )


async def serve(settings: Settings, role: ProcessRole = ProcessRole.ALL) -> int:
    """Run ``role`` until SIGTERM/SIGINT, drain, and return the exit code."""
    plane = ControlPlane(settings, role=role)
    telegram = None
    webhook_here = role.serves_api and settings.telegram_mode == "webhook"
    if settings.telegram_bot_token is not None and (role.runs_bot or webhook_here):
        # Loaded in the background once the API serves: importing aiogram takes seconds.
        telegram = TelegramLauncher(plane, sends=role.runs_bot)
        if role.runs_bot:  # polls and sends only while this replica leads
            plane.duties.add("telegram", telegram.start, telegram.stop)
    await plane.start()
    try:
        config = server_config(
            create_app(plane, telegram=telegram), settings.api_host, settings.api_port
        )
        # The bot loads once the API serves (and /readyz can say so), not before.
        server = EmbeddedServer(config, on_listening=telegram.load if telegram else None)
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            logger.info("received %s: draining and shutting down", sig.name)
            server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        announce(plane)
        heap.settle()  # start-up's objects out of the collector's way from here on
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise ConfigError(
                f"API_PORT: cannot listen on {settings.api_host}:{settings.api_port} "
                "(in use or not permitted)"
            ) from exc
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if not server.started:
            raise ConfigError(
                f"API_PORT: cannot listen on {settings.api_host}:{settings.api_port} "
                "(in use or not permitted)"
            )
    finally:
        await plane.close()  # stops the duties, the bot among them, draining its outbox
        if telegram is not None:
            await telegram.close()
    logger.info("stopped cleanly")
    return 0
