"""What every HTTP fake shares: an aiohttp server on a free loopback port, started and stopped
(or used with ``async with``), so a fake only describes its routes and its protocol."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Serve ``build_app()`` on a free port of ``host`` between ``start()`` and ``stop()``."""

    name = "fake"
    shutdown_timeout = 0.5  # seconds open requests get at stop (aiohttp's default is 60)
    handler_cancellation = False  # cancel a handler whose client went away

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Prepare the fake; ``start()`` (or ``async with``) serves it."""
        self.host = host
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int | None:
        """The port while serving, else None."""
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` while serving."""
        if self._port is None:
            raise RuntimeError(f"{self.name} fake is not started")
        return f"http://{self.host}:{self._port}"

    def build_app(self) -> web.Application:
        """The application to serve: the fake's routes and middlewares."""
        raise NotImplementedError

    async def start(self) -> None:
        """Serve on a free port of ``host``."""
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            shutdown_timeout=self.shutdown_timeout,
            handler_cancellation=self.handler_cancellation,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving and close open connections."""
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        """Start and return the fake."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the fake."""
        await self.stop()
