"""The FastAPI application factory, request metrics and body limits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.deps import AUTHENTICATED
from api.errors import install_error_handlers
from api.routes import (
    alerts,
    assistant,
    audit,
    backups,
    cores,
    flags,
    health,
    incidents,
    jobs,
    signal_health,
    tokens,
    trading,
    venues,
)
from api.routes import status as status_routes
from api.routes import telegram as telegram_routes
from api.security import RateLimit, SecurityHeaders
from core import __version__
from core.control_plane import ControlPlane
from core.platform.metrics import ANY_METHOD, UNMATCHED_ROUTE, Metrics, method_label

MAX_BODY_BYTES = 1024 * 1024


class Observer(Protocol):
    """One series of a histogram (what ``Histogram.labels`` returns)."""

    def observe(self, amount: float) -> None: ...


class RequestMetrics:
    """Times every HTTP request into ``request_duration_seconds`` by route template, with
    labels bounded whatever clients send (core/platform/metrics.py): unknown paths and methods,
    and 4xx answers to requests without accepted credentials, share the ``unmatched`` route."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The histogram's child per label values, bounded as the labels are: labels() checks
        # and locks on every call, a dict lookup does not (probes come thousands a second).
        self._series: dict[tuple[str, str, str], Observer] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method: str = scope["method"]
            route = route_label(scope.get("route"), method)
            # Anyone can provoke a 4xx on any route (a wrong token, a malformed body): only a
            # request whose credentials were accepted keeps its route in a refusal's labels.
            if 400 <= status < 500 and not (scope.get("state") or {}).get(AUTHENTICATED):
                route = UNMATCHED_ROUTE
            method = ANY_METHOD if route == UNMATCHED_ROUTE else method_label(method)
            labels = (route, method, str(status))
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = self.metrics.request_duration.labels(*labels)
            series.observe(time.perf_counter() - started)


def route_label(route: object, method: str) -> str:
    """The route template that answered, or ``unmatched`` when none did: a path no route has
    (404) or a method the path's route does not take (405), so junk cannot add series."""
    template = getattr(route, "path", None)
    methods: set[str] | None = getattr(route, "methods", None)
    if not template or (methods is not None and method not in methods):
        return UNMATCHED_ROUTE
    return str(template)


class BodyLimit:
    """Refuses request bodies over a size with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = (
        b'{"error":{"code":"payload_too_large","message":"request body over '
        + str(limit).encode()
        + b' bytes"}}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    plane: ControlPlane,
    *,
    own_lifecycle: bool = False,
    telegram: telegram_routes.WebhookUpdates | None = None,
) -> FastAPI:
    """Build the HTTP app over a control plane (started by the caller unless ``own_lifecycle``);
    ``telegram`` receives webhook updates when TELEGRAM_MODE=webhook. Processes of the ``bot``
    and ``worker`` roles serve only the probes and ``/metrics``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_lifecycle:
            await plane.start()
        try:
            yield
        finally:
            if own_lifecycle:
                await plane.close()

    settings = plane.settings
    # The schema and its pages map the whole API for anyone: off in production unless asked for.
    docs = settings.api_docs_enabled
    if docs is None:
        docs = not settings.infra_prod_enabled
    app = FastAPI(
        title="Lunia Core control plane",
        version=__version__,
        description="Chat-ops control plane API: probes, metrics, flags, incidents, venues.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.plane = plane
    app.state.telegram = telegram
    install_error_handlers(app)
    routers = (
        health.router,
        flags.router,
        audit.router,
        alerts.router,
        incidents.router,
        jobs.router,
        backups.router,
        telegram_routes.router,
        status_routes.router,
        venues.router,
        cores.router,
        trading.router,
        assistant.router,
        tokens.router,
        signal_health.router,
    )
    for router in routers if plane.role.serves_api else (health.router,):
        app.include_router(router)
    app.add_middleware(BodyLimit)
    app.add_middleware(
        RateLimit, per_minute=settings.api_rate_limit_per_minute, limiter=plane.rate_limiter
    )
    app.add_middleware(RequestMetrics, metrics=plane.metrics)
    app.add_middleware(SecurityHeaders)  # outermost: 413 and 429 answers carry them too
    if settings.trusted_proxies:
        # Before anything reads the scheme or the client: only TRUSTED_PROXIES may say the
        # request came over TLS (the Secure cookie) or from whom (audit, rate limits).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
