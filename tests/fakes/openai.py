"""A loopback fake of an OpenAI-compatible server: ``POST /v1/chat/completions``.

It owns an aiohttp app on a free 127.0.0.1 port, answers with the real response shapes
(``chat.completion`` objects with ``tool_calls``, ``usage``; OpenAI's error bodies for 401, 400,
429 with ``Retry-After`` and 5xx), and is scripted per test: a queue of steps (a reply, tool
calls, an error, or a delay before a step, for timeouts). It checks what OpenAI checks that
matters here (bearer key, model, messages, every ``tool`` message answering a ``tool_call_id``
of the preceding assistant message) and records every request body, its headers and each
completion it answered.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

COMPLETIONS_PATH: Final = "/v1/chat/completions"
DEFAULT_API_KEY: Final = "sk-fake-openai-key-for-tests"


@dataclass
class Step:
    """One scripted answer: a reply or tool calls (status 200), or an error status."""

    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0


def _error_body(status: int) -> dict[str, Any]:
    kinds = {
        400: ("Invalid request.", "invalid_request_error", None),
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    }
    message, kind, code = kinds.get(
        status, ("The server had an error while processing your request.", "server_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


class FakeOpenAI(LoopbackServer):
    """Chat completions on loopback: ``base_url`` (``.../v1``) once started."""

    name = "OpenAI"
    shutdown_timeout = 0.1

    def __init__(self, api_key: str = DEFAULT_API_KEY, host: str = "127.0.0.1") -> None:
        """Prepare the fake; ``start()`` (or ``async with``) serves it."""
        super().__init__(host)
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.responses: list[dict[str, Any]] = []
        self.default = Step(content="ok")
        self._script: deque[Step] = deque()

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.origin}/v1"

    def build_app(self) -> web.Application:
        """The completions endpoint."""
        app = web.Application()
        app.router.add_post(COMPLETIONS_PATH, self._completions)
        return app

    # -- scripting -------------------------------------------------------------------------

    def reply(self, content: str) -> None:
        """Queue a final text answer."""
        self._script.append(Step(content=content))

    def call_tools(self, *calls: tuple[str, dict[str, Any]], content: str | None = None) -> None:
        """Queue one assistant turn asking for these function calls ``(name, arguments)``."""
        self._script.append(Step(content=content, tool_calls=list(calls)))

    def fail(self, status: int, *, retry_after: str | None = None) -> None:
        """Queue an error answer (429 with an optional ``Retry-After``, 500, 503, 401, ...)."""
        self._script.append(Step(status=status, retry_after=retry_after))

    def stall(self, seconds: float, then: Step | None = None) -> None:
        """Queue a step answered only after ``seconds`` (a client timeout, if it is shorter)."""
        step = then or Step(content="late")
        step.delay = seconds
        self._script.append(step)

    @property
    def pending(self) -> int:
        """Scripted steps not yet used."""
        return len(self._script)

    # -- the endpoint ----------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.Response:
        """Validate and answer one chat-completions request from the script."""
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        self.requests.append(
            body if isinstance(body, dict) else {"_raw": raw.decode(errors="replace")}
        )
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(_error_body(401), status=401)
        problem = self._invalid(body)
        if problem:
            error = _error_body(400)
            error["error"]["message"] = problem
            return web.json_response(error, status=400)
        step = self._script.popleft() if self._script else self.default
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.status != 200:
            headers = {"retry-after": step.retry_after} if step.retry_after is not None else {}
            return web.json_response(_error_body(step.status), status=step.status, headers=headers)
        completion = self._completion(body, step)
        self.responses.append(completion)
        return web.json_response(completion)

    @staticmethod
    def _invalid(body: Any) -> str | None:
        """OpenAI's complaint about the request, or None when it is acceptable."""
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array"
        open_calls: set[str] = set()
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("system", "user", "assistant", "tool", "developer"):
                return f"Invalid value for 'messages[{index}].role'"
            if role == "assistant":
                open_calls = {c["id"] for c in message.get("tool_calls") or []}
            elif role == "tool" and message.get("tool_call_id") not in open_calls:
                return (
                    f"Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceding message with 'tool_calls' (messages[{index}])"
                )
        return None

    def _completion(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        """A ``chat.completion`` object for ``step``."""
        message: dict[str, Any] = {"role": "assistant", "content": step.content, "refusal": None}
        finish = "stop"
        if step.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                for name, args in step.tool_calls
            ]
            finish = "tool_calls"
        prompt = _tokens([body["messages"], body.get("tools")])  # tool definitions count too
        completion = _tokens(message)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
