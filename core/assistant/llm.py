"""The one place the ``openai`` SDK is called: chat completions against any OpenAI-compatible
server, with the SDK's own retries off and its errors translated once into ``core.errors``.

Retrying is the assistant's business (its circuit breaker), so ``max_retries=0``: a 429 or a 5xx
comes back at once, marked retryable, and the question is answered from the rule-based fallback.

The SDK is imported on the first request, not at start: importing it costs about as much as the
rest of the start path together, and most questions are answered by the rules.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from core.config.settings import Settings
from core.errors import LlmError, LlmRateLimited, LlmRejected, LlmTimeout, LlmUnavailable

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

logger = logging.getLogger(__name__)

# Servers such as Ollama or vLLM ignore the key but the SDK insists on one.
_NO_KEY = "not-needed"


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; ``arguments`` is the model's JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """The model's reply: text and/or tool calls, and the tokens it cost."""

    content: str
    tool_calls: list[ToolCall]
    tokens: int
    finish_reason: str


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), if given."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def translate(exc: openai.OpenAIError) -> LlmError:
    """The project's error for an openai SDK error (retryable: 429, 5xx, timeouts, network)."""
    import openai

    if isinstance(exc, openai.RateLimitError):
        after = retry_after_seconds(exc.response.headers)
        shown = f"; retry after {after:g}s" if after is not None else ""
        return LlmRateLimited(
            f"the LLM server is rate limiting (HTTP 429{shown})", retry_after=after
        )
    if isinstance(exc, openai.APITimeoutError):
        return LlmTimeout("the LLM server did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return LlmUnavailable("the LLM server could not be reached")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500 or status == 408:
            return LlmUnavailable(f"the LLM server failed (HTTP {status})")
        return LlmRejected(f"the LLM server refused the request (HTTP {status})")
    return LlmRejected(f"unusable reply from the LLM server ({type(exc).__name__})")


class LlmClient:
    """An ``AsyncOpenAI`` client for chat completions with tool calling."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.openai_model
        self._settings = settings
        self._timeout = settings.llm_timeout_seconds
        self._sdk: openai.AsyncOpenAI | None = None

    def _client(self) -> openai.AsyncOpenAI:
        """The SDK client, built (and the SDK imported) on first use."""
        if self._sdk is None:
            import openai

            s = self._settings
            self._sdk = openai.AsyncOpenAI(
                api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else _NO_KEY,
                base_url=s.openai_base_url,
                max_retries=0,
                timeout=s.llm_timeout_seconds,
            )
        return self._sdk

    async def close(self) -> None:
        """Close the SDK's connection pool (if a request ever opened one)."""
        sdk, self._sdk = self._sdk, None
        if sdk is not None:
            await sdk.close()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int,
        tool_choice: str = "auto",
    ) -> Completion:
        """One chat completion; raises ``LlmError`` (retryable or not), never an SDK error."""
        import openai
        from openai.types.chat.chat_completion_message_function_tool_call import (
            ChatCompletionMessageFunctionToolCall,
        )

        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = cast("list[ChatCompletionToolUnionParam]", tools)
            extra["tool_choice"] = tool_choice
        try:
            response = await self._client().chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                max_tokens=max_tokens,
                temperature=0,
                timeout=self._timeout,
                **extra,
            )
        except openai.OpenAIError as exc:
            error = translate(exc)
            logger.warning("LLM request failed: %s", error.message)
            raise error from exc
        if not response.choices:
            raise LlmRejected("the LLM server answered without a choice")
        choice = response.choices[0]
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
            for c in choice.message.tool_calls or []
            if isinstance(c, ChatCompletionMessageFunctionToolCall)
        ]
        tokens = response.usage.total_tokens if response.usage else 0
        return Completion(
            content=choice.message.content or "",
            tool_calls=calls,
            tokens=tokens,
            finish_reason=str(choice.finish_reason or ""),
        )

    async def probe(self) -> None:
        """The smallest request that proves the server answers (raises ``LlmError`` if not)."""
        await self.complete([{"role": "user", "content": "ping"}], max_tokens=1)
