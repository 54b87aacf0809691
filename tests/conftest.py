"""Shared fixtures: factories that build settings, control planes and API clients, and clean up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.config.settings import Settings
from core.control_plane import ControlPlane
from tests.support.services import RedisServer, start_redis, stop_all

# Long enough for the INFRA_PROD_ENABLED start checks (24+ characters, core/config/hardening.py).
ADMIN_TOKEN = "admin-token-for-tests-4f9c2a71"
OPERATOR_TOKEN = "operator-token-for-tests-8b1d"
VIEWER_TOKEN = "viewer-token-for-tests-3e7a5c"
WEBHOOK_TOKEN = "webhook-token-for-tests-6d2f0b"
TOKENS = f"admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:{VIEWER_TOKEN}"


def auth(token: str) -> dict[str, str]:
    """Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers the suite uses (``--strict-markers`` refuses unknown ones)."""
    config.addinivalue_line(
        "markers",
        "slow: starts processes (lunia, Prometheus, Alertmanager, uvicorn), runs end to end or "
        'waits out real timeouts; `pytest -m "not slow"` is the fast lane',
    )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's .env or environment settings."""
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.lower().removesuffix("_file") in Settings.model_fields:  # and <NAME>_FILE
            monkeypatch.delenv(name)
        elif name.upper().endswith(("_API_KEY", "_SECRET", "_PASSWORD", "_API_URL")):
            monkeypatch.delenv(name)  # venue credentials: no test may reach a real exchange
    for name in ("LUNIA_URL", "LUNIA_TOKEN", "LUNIA_TOKEN_FILE", "LUNIA_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # no test reaches the developer's deployment
    # Tests run the CLI on fresh temp state dirs on purpose; the local-state guard that refuses
    # that outside tests has its own tests (tests/api/test_cli_remote.py), which unset this.
    monkeypatch.setenv("LUNIA_LOCAL", "1")
    yield


@pytest.fixture(autouse=True)
def _restored_logging() -> Iterator[None]:
    """In-process CLI runs point the root logger at their captured stderr: put it back after."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:  # basicConfig's; pytest's are subclasses
            root.removeHandler(handler)
    root.setLevel(level)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Build settings on a temp state dir; keyword arguments act as environment variables."""

    def make(**env: Any) -> Settings:
        env.setdefault("lunia_state_dir", tmp_path / "state")
        env.setdefault("api_tokens", TOKENS)
        env.setdefault("alert_webhook_token", WEBHOOK_TOKEN)
        env.setdefault("health_check_interval_seconds", 0.2)
        return Settings(_env_file=None, **env)  # type: ignore[call-arg]

    return make


PlaneFactory = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
async def make_plane(make_settings: SettingsFactory) -> AsyncIterator[PlaneFactory]:
    """Start control planes (closed at teardown); ``make_plane(settings=...)`` or env kwargs."""
    planes: list[ControlPlane] = []

    async def make(settings: Settings | None = None, **env: Any) -> ControlPlane:
        plane = ControlPlane(settings or make_settings(**env))
        await plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in reversed(planes):
        await plane.close()


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    """One started control plane on the embedded defaults."""
    return await make_plane()


@pytest.fixture
async def client(plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client speaking to the app in-process."""
    transport = httpx.ASGITransport(app=create_app(plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as c:
        yield c


RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[RedisFactory]:
    """Start redis-servers of the test's own (it may stop, kill or restart them); all are
    stopped at teardown. ``make_redis(durable=True)`` fsyncs an append-only file on every write."""
    started: list[RedisServer] = []

    def make(*, durable: bool = False, password: str | None = None) -> RedisServer:
        server = start_redis(tmp_path, durable=durable, password=password)
        started.append(server)
        return server

    yield make
    stop_all(started)


@pytest.fixture
def redis_server(make_redis: RedisFactory) -> RedisServer:
    """A redis-server of the test's own, without persistence."""
    return make_redis()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a whole test module: its tests keep apart by key prefix (or empty
    the database first) and never stop it."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
