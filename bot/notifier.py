"""Turns incident events into Telegram messages, exactly once, in order, storms coalesced.

The incident event log in the store is the source of truth and the bus is only a doorbell: the
notifier reads events after its saved cursor and writes the resulting outbox messages *with* the
new cursor in one transaction, so a crash or restart neither loses nor repeats a message.

Alert storms: when more than ``storm_threshold`` incidents open in one chat within
``storm_window`` seconds, the rest of the burst becomes one digest message instead of a flood.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime, timedelta

from bot.render import e
from bot.sender import CHANNEL
from core.control_plane import ControlPlane
from core.models import OutboxMessage
from core.models.incidents import EventKind, Incident, IncidentEvent
from core.platform.outbox import OutboxWorker
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

CURSOR = "telegram-notifier"
_DIGEST_SHOWN = 25


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
        s = plane.settings
        self._plane = plane
        self._outbox = outbox
        self.ops_chat = s.telegram_ops_chat_id
        self.security_chat = s.telegram_security_chat_id or s.telegram_ops_chat_id
        self.escalation_chat = s.telegram_escalation_chat_id or s.telegram_ops_chat_id
        self._threshold = storm_threshold
        self._window = timedelta(seconds=storm_window)
        self._lock = asyncio.Lock()
        self._opened: dict[int, deque[datetime]] = {}
        self._digest: dict[int, list[Incident]] = {}
        self._digested: set[int] = set()
        self._processed = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._subscribed = False
        self._running = False

    async def start(self) -> None:
        """Catch up with what happened while we were away, then follow the bus (again after a
        ``close``, when this replica leads again: the stored cursor says where to go on)."""
        self._processed = await self._plane.store.get_cursor(CURSOR)
        if not self._subscribed:
            self._plane.bus.subscribe(CURSOR, self._doorbell)
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

    def chat_for(self, incident: Incident) -> int | None:
        """Where an incident's message lives."""
        return self.security_chat if incident.security else self.ops_chat

    async def catch_up(self) -> None:
        """Handle every stored event after the cursor, in order."""
        async with self._lock:
            while True:
                events = await self._plane.store.incident_events(
                    after_seq=self._processed, limit=200
                )
                for event in events:
                    await self._handle(event)
                if len(events) < 200:
                    return

    async def _handle(self, event: IncidentEvent) -> None:
        self._processed = event.seq
        incident = event.incident
        chat = self.chat_for(incident)
        messages: list[OutboxMessage] = []
        if chat is not None:
            if event.kind is EventKind.OPENED and self._storming(chat, event.ts):
                self._digest.setdefault(chat, []).append(incident)
                self._digested.add(incident.id)
                self._schedule_flush()
            elif incident.id not in self._digested:
                messages.append(_message(chat, {"op": "incident", "incident_id": incident.id}))
        if event.kind is EventKind.ESCALATED and self.escalation_chat is not None:
            messages.append(
                _message(
                    self.escalation_chat,
                    {
                        "op": "text",
                        "text": f"⏫ <b>Not acknowledged</b> ({e(event.detail)}): "
                        f"<b>#{incident.id}</b> {e(incident.title)} · {incident.severity.value}"
                        f"\n{e(incident.summary[:300])}\nAct on it: /ack {incident.id}",
                        "reply_to_incident": incident.id,
                        "link_incident": incident.id,
                    },
                )
            )
        holding = any(self._digest.values())
        cursor = None if holding else (CURSOR, event.seq)
        if messages or cursor:
            await self._plane.store.outbox_add(messages, cursor=cursor)
        if messages:
            self._outbox.wake()

    def _storming(self, chat: int, at: datetime) -> bool:
        recent = self._opened.setdefault(chat, deque())
        while recent and recent[0] < at - self._window:
            recent.popleft()
        recent.append(at)
        return len(recent) > self._threshold

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later(), name="digest")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._window.total_seconds())
        await self.flush_digest()

    async def flush_digest(self) -> None:
        """Post one digest per chat for the incidents a storm held back."""
        async with self._lock:
            messages = []
            for chat, incidents in self._digest.items():
                if not incidents:
                    continue
                lines = [
                    f"🌪 <b>Alert storm</b>: {len(incidents)} more incidents opened in "
                    f"{int(self._window.total_seconds())}s"
                ]
                lines += [
                    f"• <b>#{i.id}</b> {e(i.title)} · {i.severity.value}"
                    for i in incidents[:_DIGEST_SHOWN]
                ]
                if len(incidents) > _DIGEST_SHOWN:
                    lines.append(f"… and {len(incidents) - _DIGEST_SHOWN} more")
                lines.append("See them all with /incidents; act with /ack ID")
                messages.append(_message(chat, {"op": "text", "text": "\n".join(lines)}))
            self._digest = {}
            if messages or self._processed:
                await self._plane.store.outbox_add(messages, cursor=(CURSOR, self._processed))
            if messages:
                self._outbox.wake()


def _message(chat_id: int, payload: dict[str, object]) -> OutboxMessage:
    return OutboxMessage(channel=CHANNEL, key=str(chat_id), payload={**payload, "chat_id": chat_id})
