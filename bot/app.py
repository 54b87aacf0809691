"""The Telegram bot's lifecycle: session, dispatcher, delivery, polling or webhook, health.

``TelegramBot(plane)`` is started by ``lunia run`` (and ``lunia bot``) when TELEGRAM_BOT_TOKEN
is set, in the background once the process serves (bot/launcher.py: importing this module,
hence aiogram, takes seconds). Polling errors (409 conflict, network, 5xx) never end the
process: aiogram retries them with backoff and the bot's ``/healthz`` component reports them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramConflictError, TelegramNetworkError
from aiogram.filters import ExceptionTypeFilter
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import BotCommand, ErrorEvent, Update

from bot.callbacks import Confirmations, Signer
from bot.handlers import all_commands, build_routers
from bot.launcher import health_until_started
from bot.middlewares import AccessMiddleware, ChatScopeMiddleware
from bot.notifier import Notifier
from bot.render import e
from bot.sender import TelegramSender
from bot.ui import BotHealth, Ui
from core.control_plane import ControlPlane
from core.errors import OperationError
from core.platform.health import ComponentHealth, Status
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# How long a stopping poller may take to finish its current getUpdates before it is cancelled.
POLLING_STOP_SECONDS = 10.0


class _WatchRequests(BaseRequestMiddleware):
    """Notes polling conflicts and recoveries for the bot's health component."""

    def __init__(self, health: BotHealth) -> None:
        self._health = health

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            response = await make_request(bot, method)
        except TelegramConflictError as exc:
            self._health.conflict = exc.message
            raise
        except (TelegramNetworkError, TelegramAPIError) as exc:
            if isinstance(method, GetUpdates):
                self._health.error = f"{type(exc).__name__}: {exc.message}"
            raise
        if isinstance(method, GetUpdates):
            self._health.conflict = None
            self._health.error = None
        return response


class TelegramBot:
    """Everything Telegram: polling or webhook, handlers, notifier, outbox (the daily checklist
    is queued there by the scheduler's job, ``ControlPlane.post_checklist``)."""

    def __init__(self, plane: ControlPlane, *, sends: bool = True) -> None:
        """``sends=False``: an API replica that only handles webhook updates (its replies are
        queued in the shared outbox, which the ``bot`` process delivers)."""
        s = plane.settings
        assert s.telegram_bot_token is not None  # noqa: S101 - only built when configured
        self.plane = plane
        self.sends = sends
        self.health = BotHealth()
        session = AiohttpSession(api=TelegramAPIServer.from_base(s.telegram_api_base))
        session.middleware(_WatchRequests(self.health))
        self.bot = Bot(s.telegram_bot_token.get_secret_value(), session=session)
        self.signer = Signer(plane.secrets.callback_signing_key.get_secret_value().encode())
        diagnose = hasattr(plane, "assistant")
        self.sender = TelegramSender(
            self.bot, plane, self.signer, plane.metrics, diagnose_button=diagnose
        )
        self.outbox = plane.telegram_delivery.outbox_worker(self.sender.deliver)
        self.ui = Ui(
            plane.telegram_delivery,
            self.outbox,
            self.signer,
            Confirmations(plane.confirmations),
            self.health,
            diagnose=diagnose,
        )
        self.notifier = Notifier(plane, self.outbox)
        self.dispatcher = Dispatcher(plane=plane, ui=self.ui)
        # Where first (configured chats, no forwarded messages), then who (known users). Edited
        # messages have no handler, so an edit never re-runs a command.
        scope, access = ChatScopeMiddleware(plane), AccessMiddleware(plane, self.ui)
        for observer in (self.dispatcher.message, self.dispatcher.callback_query):
            observer.outer_middleware(scope)
            observer.outer_middleware(access)
        self.dispatcher.errors.register(self._operation_error, ExceptionTypeFilter(OperationError))
        self.dispatcher.errors.register(self._unexpected_error, ExceptionTypeFilter(Exception))
        self.dispatcher.include_routers(*build_routers())
        self._polling: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped_by_outage = False
        if sends and plane.redis_watch is not None:
            plane.redis_watch.on_notice(self._outage_notice)
        plane.health.register("telegram", self.check, critical=False)

    async def start(self) -> None:
        """Deliver queued messages, catch up on events, then start receiving updates."""
        self._stopped_by_outage = False
        await self.outbox.start()
        self.plane.self_healing.watch_outbox(self.outbox)
        await self.notifier.start()
        try:
            me = await self.bot.get_me()
            await self.bot.set_my_commands(
                [BotCommand(command=c, description=d[:256]) for c, d in all_commands()]
            )
            await self._reconcile_webhook()
        except TelegramAPIError as exc:
            # The bot stays up: the outbox retries, and polling retries getUpdates by itself.
            self.health.error = f"startup: {type(exc).__name__}: {exc.message}"
            logger.error("Telegram startup call failed (%s); will keep retrying", exc.message)
        else:
            logger.info(
                "Telegram bot @%s ready (%s mode)", me.username, self.plane.settings.telegram_mode
            )
        if self.plane.settings.telegram_mode == "polling":
            self._polling = asyncio.create_task(self._poll(), name="telegram-polling")
        self.health.started = True

    async def _reconcile_webhook(self) -> None:
        s = self.plane.settings
        if s.telegram_mode == "webhook":
            assert s.telegram_webhook_url and s.telegram_webhook_secret  # noqa: S101
            await self.bot.set_webhook(
                s.telegram_webhook_url,
                secret_token=s.telegram_webhook_secret.get_secret_value(),
                allowed_updates=self.dispatcher.resolve_used_update_types(),
                drop_pending_updates=False,
            )
        else:
            await self.bot.delete_webhook(drop_pending_updates=False)

    async def _poll(self) -> None:
        await self.dispatcher.start_polling(
            self.bot, handle_signals=False, close_bot_session=False, polling_timeout=25
        )

    async def feed_webhook(self, update: dict[str, Any]) -> None:
        """Handle one webhook update in the background (the HTTP answer does not wait)."""
        parsed = Update.model_validate(update, context={"bot": self.bot})
        task = asyncio.create_task(self.dispatcher.feed_update(self.bot, parsed))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self, drain: bool = True) -> None:
        """Stop receiving and sending (``start`` may run again: this replica may lead again).
        ``drain`` finishes running handlers and flushes the outbox; without it (another replica
        took over and now sends) sending stops at once."""
        polling, self._polling = self._polling, None
        if polling is not None:
            await self.dispatcher.stop_polling()
            _, late = await asyncio.wait([polling], timeout=POLLING_STOP_SECONDS)
            if late:
                logger.warning("polling did not stop in %.0f s: cancelled", POLLING_STOP_SECONDS)
            await cancel_and_wait(polling)
        if self._background and drain:
            await asyncio.wait(self._background, timeout=10)
        await self.notifier.close()
        self.plane.self_healing.forget_outbox(self.outbox)
        await self.outbox.close(drain_timeout=10 if drain else 0)
        watch = self.plane.redis_watch
        self._stopped_by_outage = self.health.started and watch is not None and watch.down
        self.health.started = False

    async def _outage_notice(self, text: str) -> None:
        """Redis (hence the outbox) is down or just back: tell the ops chat directly. Sent by the
        process that was delivering when Redis went away, so the chat hears it once."""
        chat = self.plane.settings.telegram_ops_chat_id
        if chat is None or not (self.health.started or self._stopped_by_outage):
            return
        await self.bot.send_message(chat, text, parse_mode="HTML")

    async def close(self) -> None:
        """Stop receiving, finish running handlers, flush the outbox, close the session."""
        await self.stop(drain=True)
        await self.bot.session.close()

    async def _operation_error(self, event: ErrorEvent) -> None:
        """One place where refusals and failures become a reply to the person."""
        exc = event.exception
        assert isinstance(exc, OperationError)  # noqa: S101 - filtered on this type
        update = event.update
        # Refusals were already counted and audited in core (core.security.access.Guard).
        if update.callback_query is not None:
            await update.callback_query.answer(f"⛔️ {exc.message}"[:200], show_alert=True)
        elif update.message is not None:
            await self.ui.reply(update.message.chat.id, f"⛔️ {e(exc.message)}")

    async def _unexpected_error(self, event: ErrorEvent) -> None:
        """A bug must not leave on-call in silence: log it, say so, keep going."""
        logger.error(
            "handler failed on update %s", event.update.update_id, exc_info=event.exception
        )
        update, text = event.update, "⚠️ Internal error; it has been logged. Try again."
        if update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
        elif update.message is not None:
            await self.ui.reply(update.message.chat.id, text)

    async def check(self) -> ComponentHealth:
        """The ``telegram`` health component: polling, sending and the outbox, or, while not
        running here, what this process is waiting for or which process runs the bot."""
        h = self.health
        if not h.started:
            return await health_until_started(
                self.plane, sends=self.sends, starting="starting: connecting to Telegram"
            )
        sent = self.sender.last_success
        detail = (
            f"last update {_age(h.last_update)} ago, last send {_age(sent)} ago, "
            f"outbox {(await self.plane.telegram_delivery.outbox_stats()).depth} queued"
        )
        if h.conflict:
            return ComponentHealth(
                status=Status.DEGRADED, detail=f"another poller holds getUpdates: {h.conflict}"
            )
        if h.error:
            return ComponentHealth(status=Status.DEGRADED, detail=f"{h.error}; {detail}")
        if self.sender.failed_chats:
            chats = ", ".join(str(c) for c in sorted(self.sender.failed_chats))
            return ComponentHealth(status=Status.DEGRADED, detail=f"chats refusing us: {chats}")
        return ComponentHealth(status=Status.OK, detail=detail)


def _age(moment: float | None) -> str:
    return "never" if moment is None else f"{int(time.time() - moment)}s"
