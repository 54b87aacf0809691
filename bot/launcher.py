"""Brings the Telegram bot up in the background, so the process is ready before aiogram is.

Importing aiogram costs seconds of CPU (pydantic builds its hundreds of Bot API models): more
than the rest of the start path together. So a process with the bot on serves, and answers
``/readyz``, first; then ``TelegramLauncher.load`` imports the bot in a worker thread (the event
loop keeps answering meanwhile: the import only shares the GIL with it), builds it on the loop,
and the bot starts there as soon as this process leads (its ``telegram`` duty).

Nothing is lost while it loads: incidents are stored and the notifier catches up from its saved
cursor when the bot starts (bot/notifier.py), queued messages wait in the store's outbox, and a
webhook update waits a little for the bot, or is refused with a 503 that Telegram retries.

This module must not import aiogram (nor ``bot.app``) at import time: that is the point of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from core.control_plane import ControlPlane
from core.errors import Unavailable
from core.platform import heap
from core.platform.health import ComponentHealth, Status
from core.platform.tasks import cancel_and_wait

if TYPE_CHECKING:
    from bot.app import TelegramBot

logger = logging.getLogger(__name__)

# How long a webhook update arriving before the bot is built waits for it before a 503.
WEBHOOK_WAIT_SECONDS = 10.0
LOADING = "starting: loading the Telegram client"
_BOT_MODULE = "bot.app"


def _import_bot() -> type[TelegramBot]:
    from bot.app import TelegramBot

    return TelegramBot


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the bot is imported, then freeze what exists.

    The import allocates a few hundred thousand objects that live as long as the process
    (pydantic schemas and validators) and almost no garbage (about a thousand objects). Left
    running, the collector traversed them again and again: a quarter of the import's CPU time,
    in pauses of up to 0.2 s that stall the event loop serving the API. Frozen afterwards, they
    are out of every later collection's way too. The price: reference cycles dropped during
    those seconds (the import's, and the few requests served meanwhile) are frozen with the
    rest and never collected: a one-off, and small (the import's own is a thousand objects).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        heap.settle()  # what the import built joins what start-up built, out of the way
        if was_enabled:
            gc.enable()


async def health_until_started(
    plane: ControlPlane, *, sends: bool, starting: str
) -> ComponentHealth:
    """The ``telegram`` component of a process whose bot is not running (yet): where another
    process polls and sends (a webhook-only API replica, a standby), what that one reports;
    otherwise degraded, saying what this one is doing (``starting``)."""
    if not sends or plane.standing_by:
        # The bot that polls and sends runs in another process: report it from its heartbeat
        # (ok while one leads and says it is up, degraded with the reason otherwise).
        here = "webhook updates only" if not sends else "standby"
        cluster = plane.cluster
        if not cluster.shared:
            return ComponentHealth(status=Status.OK, detail=f"{here}; another sends")
        found = await cluster.bot_health()
        return found.model_copy(update={"detail": f"{here} here; {found.detail}"})
    return ComponentHealth(status=Status.DEGRADED, detail=starting)


class TelegramLauncher:
    """The bot of this process: loaded in the background, started while this process leads.

    ``start``/``stop`` are the ``telegram`` duty: ``start`` returns at once (the duties, hence
    readiness, never wait for aiogram) and the bot starts once loaded; ``stop`` cuts a start in
    progress short and stops what it had started."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        sends: bool = True,
        webhook_wait: float = WEBHOOK_WAIT_SECONDS,
    ) -> None:
        """``sends=False``: an API replica that only handles webhook updates; ``webhook_wait``:
        how long an update arriving before the bot is built waits for it."""
        self._plane = plane
        self._sends = sends
        self._webhook_wait = webhook_wait
        self.bot: TelegramBot | None = None
        self._loaded = asyncio.Event()
        self._loading: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._bot_started = False  # bot.start() was entered: stop() must stop what it began
        self._failure: str | None = None
        plane.health.register("telegram", self._check, critical=False)
        if sends:
            plane.cluster.publish("telegram", self._published)

    def load(self) -> None:
        """Begin importing and building the bot (once); returns at once."""
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name="telegram-load")

    async def _load(self) -> None:
        began = time.perf_counter()
        try:
            if _BOT_MODULE in sys.modules:  # imported already (in-process tests): no cost
                bot_class = _import_bot()
            else:
                with _collector_paused():
                    bot_class = await asyncio.to_thread(_import_bot)
            self.bot = bot_class(self._plane, sends=self._sends)
            # The bot registered its own check; this one wraps it, to report a failed start.
            self._plane.health.register("telegram", self._check, critical=False)
        except Exception as exc:
            self._failure = f"{type(exc).__name__}: {exc}"
            logger.exception("the Telegram bot could not be loaded; the rest keeps running")
        else:
            logger.info("Telegram client loaded in %.1f s", time.perf_counter() - began)
        finally:
            self._loaded.set()

    async def start(self) -> None:
        """Start the bot as soon as it is loaded (in the background)."""
        if self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="telegram-start")

    async def _start(self) -> None:
        await self._loaded.wait()
        if self.bot is None:
            return  # failed to load: logged, and the health check says so
        self._bot_started = True
        self._failure = None
        try:
            await self.bot.start()
        except Exception as exc:
            self._failure = f"{type(exc).__name__}: {exc}"
            logger.exception("the Telegram bot failed to start")
        # Show the outcome now rather than at the next scheduled round of checks.
        await self._plane.health.refresh()

    async def stop(self, drain: bool) -> None:
        """Stop the bot (``drain``: finish its handlers and flush the outbox first), or the start
        still in progress and whatever it had started."""
        starting, self._starting = self._starting, None
        await cancel_and_wait(starting)
        if self._bot_started and self.bot is not None:
            self._bot_started = False
            await self.bot.stop(drain)

    async def close(self) -> None:
        """After ``stop``: stop loading and close the bot's HTTP session. An import already
        running in its thread finishes there (Python cannot interrupt it) and is discarded."""
        await cancel_and_wait(self._loading)
        if self.bot is not None:
            await self.bot.bot.session.close()

    async def feed_webhook(self, update: dict[str, Any]) -> None:
        """Hand one webhook update to the bot, waiting a little for it while it loads; refuse
        with ``Unavailable`` (a 503, which Telegram retries) if it is not there by then."""
        if self.bot is None:
            try:
                async with asyncio.timeout(self._webhook_wait):
                    await self._loaded.wait()
            except TimeoutError:
                pass
        if self.bot is None:
            raise Unavailable("the Telegram bot is still starting; Telegram retries the update")
        await self.bot.feed_webhook(update)

    async def _check(self) -> ComponentHealth:
        if self._failure is not None:
            return ComponentHealth(
                status=Status.DOWN, detail=f"the bot failed to start: {self._failure}"
            )
        if self.bot is not None:
            return await self.bot.check()
        return await health_until_started(self._plane, sends=self._sends, starting=LOADING)

    def _published(self) -> dict[str, Any]:
        """This process's own ``telegram`` component, for the replicas that do not run the bot
        (published in its heartbeat while it leads): they report a bot still starting, or one
        that cannot reach Telegram, as it is."""
        component = self._plane.health.snapshot().components.get("telegram")
        if component is None:
            return {}
        return {"status": component.status.value, "detail": component.detail}
