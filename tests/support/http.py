"""Serve the project's real HTTP app on a loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from api.app import create_app
from api.runner import EmbeddedServer
from core.control_plane import ControlPlane
from tests.support.services import free_port


@asynccontextmanager
async def serve(plane: ControlPlane) -> AsyncIterator[str]:
    """Run uvicorn over ``create_app(plane)``; yields its base URL, stops it on exit."""
    port = free_port()
    config = uvicorn.Config(
        create_app(plane),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    else:
        server.should_exit = True
        await task
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
