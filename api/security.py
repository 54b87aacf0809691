"""HTTP hardening middlewares: security headers on every response, per-token rate limits.

Both are on in every mode (they are harmless in development). The rate limit keys on the bearer
token's sha256 (the client address when there is none) and counts a sliding minute in the store
(core's ``RateLimiter``), shared by every replica; alert webhooks are exempt, because an alert
storm must be stored, not refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import timedelta

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import StoreError
from core.security.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
WINDOW = timedelta(minutes=1)
EXEMPT_PREFIXES = ("/api/v1/alerts/",)

_COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
)
# JSON and text may load nothing; HTML (the /docs pages) keeps its scripts but cannot be framed.
_CSP_STRICT = b"default-src 'none'; frame-ancestors 'none'"
_CSP_HTML = b"frame-ancestors 'none'"
_STRICT_HEADERS = (*_COMMON_HEADERS, (b"content-security-policy", _CSP_STRICT))
_HTML_HEADERS = (*_COMMON_HEADERS, (b"content-security-policy", _CSP_HTML))
_ADDED_NAMES = frozenset(name for name, _ in _STRICT_HEADERS)


class SecurityHeaders:
    """Adds nosniff, DENY framing, no-referrer, HSTS and a CSP to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                html = any(
                    name.lower() == b"content-type" and value.startswith(b"text/html")
                    for name, value in headers
                )
                added = _HTML_HEADERS if html else _STRICT_HEADERS
                if present.isdisjoint(_ADDED_NAMES):  # as almost always: all of them at once
                    headers.extend(added)
                else:
                    headers.extend(h for h in added if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


class RateLimit:
    """Answers 429 with ``Retry-After`` once a token exceeds its requests per minute on /api/v1.

    The count lives in core's ``RateLimiter`` (the store), so every API replica counts into the
    same window. When the store cannot count (Redis down) requests pass: the limit protects the
    control plane, and refusing everything during an outage would not.
    """

    def __init__(self, app: ASGIApp, per_minute: int, limiter: RateLimiter) -> None:
        self.app = app
        self.per_minute = per_minute
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            self.per_minute <= 0
            or scope["type"] != "http"
            or not path.startswith(API_PREFIX)
            or path.startswith(EXEMPT_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        key = _caller_key(scope)
        try:
            hit = await self.limiter.hit(key, limit=self.per_minute, window=WINDOW)
        except StoreError as exc:
            logger.warning("rate limit not counted (%s); request let through", exc)
            await self.app(scope, receive, send)
            return
        if hit.allowed:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(hit.retry_after))
        logger.warning("rate limit hit on %s for caller %s", path, key[:16])
        await _too_many(send, self.per_minute, retry_after)


def _caller_key(scope: Scope) -> str:
    """sha256 of the bearer token, or the client address for requests without one."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return "token:" + hashlib.sha256(value[7:].strip()).hexdigest()
    client = scope.get("client")
    return f"client:{client[0] if client else 'unknown'}"


async def _too_many(send: Send, limit: int, retry_after: int) -> None:
    message = f"rate limit of {limit} requests per minute exceeded; retry in {retry_after} s"
    body = json.dumps({"error": {"code": "rate_limited", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
