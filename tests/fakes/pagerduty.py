"""A loopback fake of the PagerDuty Events API v2 (``POST /v2/enqueue``).

It owns an aiohttp app on a free 127.0.0.1 port that validates events the way PagerDuty does,
answers with PagerDuty's bodies (202 accepted, 400 invalid event), records accepted events and
the incident state they imply per ``dedup_key``, and can be told to fail the next requests with
429 or 5xx to exercise retries.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from typing import Any, Final

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

ENQUEUE_PATH: Final = "/v2/enqueue"
ACTIONS: Final = ("trigger", "acknowledge", "resolve")
SEVERITIES: Final = ("critical", "error", "warning", "info")
MAX_DEDUP_KEY: Final = 255

ACCEPTED_MESSAGE: Final = "Event processed"
INVALID_BODY: Final = {"status": "invalid event", "message": "Event object is invalid"}
FAILURE_BODIES: Final[dict[int, dict[str, str]]] = {
    429: {"status": "throttle event", "message": "Requests for this service are arriving too "
          "quickly. Please retry later."},
}  # fmt: skip
DEFAULT_FAILURE_BODY: Final = {"status": "error", "message": "Internal server error"}

# dedup_key -> incident state, following PagerDuty: a trigger opens (or re-opens after resolve),
# acknowledge and resolve only move an open incident.
_TRANSITIONS: Final[dict[tuple[str | None, str], str]] = {
    (None, "trigger"): "triggered",
    ("resolved", "trigger"): "triggered",
    ("triggered", "trigger"): "triggered",
    ("acknowledged", "trigger"): "acknowledged",
    ("triggered", "acknowledge"): "acknowledged",
    ("acknowledged", "acknowledge"): "acknowledged",
    ("triggered", "resolve"): "resolved",
    ("acknowledged", "resolve"): "resolved",
}


def _blank(value: object) -> bool:
    """Whether a required string field is missing, not a string, or empty."""
    return not isinstance(value, str) or not value.strip()


def _payload_errors(payload: object) -> list[str]:
    """PagerDuty's complaints about a trigger's ``payload``."""
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors = [
        f"'payload.{field}' is missing or blank"
        for field in ("summary", "source")
        if _blank(payload.get(field))
    ]
    if payload.get("severity") not in SEVERITIES:
        errors.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
    return errors


def validate_event(body: object) -> list[str]:
    """The errors PagerDuty would report for this event body; empty when it is valid."""
    if not isinstance(body, dict):
        return ["Event must be a JSON object"]
    errors: list[str] = []
    if _blank(body.get("routing_key")):
        errors.append("'routing_key' is missing or blank")
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append(f"'event_action' must be one of {', '.join(ACTIONS)}")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (_blank(dedup_key) or len(dedup_key) > MAX_DEDUP_KEY):
        errors.append(f"'dedup_key' must be a non-blank string of at most {MAX_DEDUP_KEY} chars")
    elif dedup_key is None and action in ("acknowledge", "resolve"):
        errors.append(f"'dedup_key' is required for {action} events")
    if action == "trigger":
        errors.extend(_payload_errors(body.get("payload")))
    return errors


class PagerDutyFake(LoopbackServer):
    """The Events API v2 on loopback: ``url`` is the full enqueue URL once started."""

    name = "PagerDuty"

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Prepare the fake; call ``start()`` (or use ``async with``) to serve."""
        super().__init__(host)
        self.events: list[dict[str, Any]] = []
        self.incidents: dict[str, str] = {}
        self.attempts: list[int] = []
        self._failures: deque[int] = deque()

    @property
    def url(self) -> str:
        """The full ``POST`` URL, e.g. ``http://127.0.0.1:PORT/v2/enqueue``."""
        return f"{self.origin}{ENQUEUE_PATH}"

    def build_app(self) -> web.Application:
        """The enqueue endpoint."""
        app = web.Application()
        app.router.add_post(ENQUEUE_PATH, self._enqueue)
        return app

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` requests (after any already queued failures) with ``status``."""
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("fail_next needs n >= 0 and an HTTP error status")
        self._failures.extend([status] * n)

    async def wait_for_events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events were accepted, and return them all."""
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                await asyncio.sleep(0.01)
        return list(self.events)

    async def _enqueue(self, request: web.Request) -> web.Response:
        """Handle one event: scripted failure, 400 invalid event, or 202 accepted."""
        if self._failures:
            status = self._failures.popleft()
            self.attempts.append(status)
            body = FAILURE_BODIES.get(status, DEFAULT_FAILURE_BODY)
            return web.json_response(body, status=status)
        try:
            event: object = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            errors = ["Malformed JSON"]
        else:
            errors = validate_event(event)
        if errors or not isinstance(event, dict):
            self.attempts.append(400)
            return web.json_response({**INVALID_BODY, "errors": errors}, status=400)
        dedup_key = event.get("dedup_key") or uuid.uuid4().hex
        self._record(event, dedup_key)
        self.attempts.append(202)
        return web.json_response(
            {"status": "success", "message": ACCEPTED_MESSAGE, "dedup_key": dedup_key},
            status=202,
        )

    def _record(self, event: dict[str, Any], dedup_key: str) -> None:
        """Keep the event and move its incident as PagerDuty would."""
        self.events.append(event)
        state = _TRANSITIONS.get((self.incidents.get(dedup_key), event["event_action"]))
        if state is not None:
            self.incidents[dedup_key] = state
