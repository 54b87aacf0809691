"""``POST /telegram/webhook``: Telegram's updates in webhook mode (TELEGRAM_MODE=webhook)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Header, HTTPException, Request

from api.deps import caller_of
from api.schemas import ErrorBody, WebhookAck
from core.errors import Unauthenticated

router = APIRouter(tags=["telegram"])


class WebhookUpdates(Protocol):
    """Where webhook updates go: the bot, or its launcher while the bot loads (bot/)."""

    async def feed_webhook(self, update: dict[str, Any]) -> None:
        """Handle one update; ``Unavailable`` (a 503, which Telegram retries) if not yet able."""


@router.post(
    "/telegram/webhook",
    response_model=WebhookAck,
    responses={
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        400: {"model": ErrorBody},
        503: {"model": ErrorBody, "description": "the bot is still starting (Telegram retries)"},
    },
)
async def telegram_webhook(
    request: Request,
    secret: Annotated[str | None, Header(alias="X-Telegram-Bot-Api-Secret-Token")] = None,
) -> WebhookAck:
    """Accept one update from Telegram after checking its secret header in constant time."""
    bot: WebhookUpdates | None = getattr(request.app.state, "telegram", None)
    settings = request.app.state.plane.settings
    if bot is None or settings.telegram_mode != "webhook" or not settings.telegram_webhook_secret:
        raise HTTPException(404, "webhook mode is not enabled (TELEGRAM_MODE=webhook)")
    try:
        await request.app.state.plane.authenticator.check_secret(
            secret,
            settings.telegram_webhook_secret.get_secret_value(),
            channel="telegram",
            reason="webhook_secret",
            caller=caller_of(request),
            message="wrong or missing X-Telegram-Bot-Api-Secret-Token",
        )
    except Unauthenticated as exc:
        raise HTTPException(401, exc.message) from None
    try:
        update: Any = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(update, dict) or "update_id" not in update:
        raise HTTPException(400, "body is not a Telegram Update (no update_id)")
    await bot.feed_webhook(update)
    return WebhookAck(ok=True)
