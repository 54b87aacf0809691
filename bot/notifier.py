"""Turns incident events into Telegram messages, exactly once, in order, storms coalesced.

The incident event log in the store is the source of truth and the bus is only a doorbell: the
notifier reads events after its saved cursor and queues the resulting outbox messages *with* the
new cursor in one transaction (``ChatDeliveryState.enqueue``), so a crash or restart neither loses
nor repeats a message.

Which chat an incident goes to (``core.incidents.routing``) and when incidents come too fast for
one message each (``core.incidents.storm``) are core rules; this module renders what they decide.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bot.render import e, storm_digest
from core.control_plane import ControlPlane
from core.incidents.delivery import CHANNEL
from core.incidents.routing import ChatRouting
from core.incidents.storm import StormDetector, Verdict
from core.models import OutboxMessage
from core.models.incidents import EventKind, Incident, IncidentEvent
from core.platform.outbox import OutboxWorker
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

BATCH = 200  # events read per store call while catching up


class Notifier:
    """Consumes incident events and queues the messages they mean."""

    def __init__(
        self,
        plane: ControlPlane,
        outbox: OutboxWorker,
        *,
        storm_threshold: int = 5,
        storm_window: float = 10.0,
    ) -> None:
        self._plane = plane
        self._delivery = plane.telegram_delivery
        self._outbox = outbox
        self.routing = ChatRouting.from_settings(plane.settings)
        self._storms = StormDetector(storm_threshold, timedelta(seconds=storm_window))
        self._lock = asyncio.Lock()
        self._processed = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._subscribed = False
        self._running = False

    async def start(self) -> None:
        """Catch up with what happened while we were away, then follow the bus (again after a
        ``close``, when this replica leads again: the stored cursor says where to go on)."""
        self._processed = await self._delivery.cursor()
        if not self._subscribed:
            self._plane.bus.subscribe(self._delivery.cursor_name, self._doorbell)
            self._subscribed = True
        self._running = True
        await self.catch_up()

    async def close(self) -> None:
        """Flush a pending digest so nothing buffered is lost."""
        self._running = False
        await cancel_and_wait(self._flush_task)
        await self.flush_digest()

    async def _doorbell(self, _: IncidentEvent) -> None:
        if self._running:
            await self.catch_up()

    async def catch_up(self) -> None:
        """Handle every stored event after the cursor, in order."""
        async with self._lock:
            while True:
                events = await self._delivery.events_since(self._processed, BATCH)
                for event in events:
                    await self._handle(event)
                if len(events) < BATCH:
                    return

    async def _handle(self, event: IncidentEvent) -> None:
        self._processed = event.seq
        incident = event.incident
        chat = self.routing.chat_for(incident)
        messages: list[OutboxMessage] = []
        if chat is not None:
            if self._storms.observe(event, chat) is Verdict.STORM:
                self._schedule_flush()
            else:
                messages.append(_message(chat, {"op": "incident", "incident_id": incident.id}))
        escalation = self.routing.escalation
        if event.kind is EventKind.ESCALATED and escalation is not None:
            messages.append(_message(escalation, _escalation_notice(event)))
        # While a storm is held back its events are not yet delivered: the cursor waits for the
        # digest, so a crash before it replays them rather than losing them.
        cursor = None if self._storms.holding else event.seq
        if messages or cursor:
            await self._delivery.enqueue(messages, cursor)
        if messages:
            self._outbox.wake()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later(), name="digest")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._storms.window.total_seconds())
        await self.flush_digest()

    async def flush_digest(self) -> None:
        """Post one digest per chat for the incidents a storm held back."""
        async with self._lock:
            messages = [
                _message(int(storm.destination), {"op": "text", "text": storm_digest(storm)})
                for storm in self._storms.take_storms()
            ]
            if messages or self._processed:
                await self._delivery.enqueue(messages, self._processed)
            if messages:
                self._outbox.wake()


def _escalation_notice(event: IncidentEvent) -> dict[str, object]:
    incident: Incident = event.incident
    return {
        "op": "text",
        "text": f"⏫ <b>Not acknowledged</b> ({e(event.detail)}): "
        f"<b>#{incident.id}</b> {e(incident.title)} · {incident.severity.value}"
        f"\n{e(incident.summary[:300])}\nAct on it: /ack {incident.id}",
        "reply_to_incident": incident.id,
        "link_incident": incident.id,
    }


def _message(chat_id: int, payload: dict[str, object]) -> OutboxMessage:
    return OutboxMessage(channel=CHANNEL, key=str(chat_id), payload={**payload, "chat_id": chat_id})
