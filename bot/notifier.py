"""Turns incident events into Telegram messages, exactly once, in order, storms as boards.

The incident event log in the store is the source of truth and the bus is only a doorbell: the
notifier reads events after its saved cursor and queues the resulting outbox messages *with* the
new cursor in one transaction (``ChatDeliveryState.enqueue``), so a crash or restart neither loses
nor repeats a message.

Which chat an incident goes to (``core.incidents.routing``) and when incidents come too fast for
one message each (``core.incidents.storm``) are core rules; this module renders what they decide.
A storm's incidents are named on its *board*: messages edited in place, re-rendered at most every
``board_interval`` seconds and only where their text changed, through the same paced outbox.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bot.render import e, storm_board
from core.control_plane import ControlPlane
from core.incidents.delivery import CHANNEL
from core.incidents.routing import ChatRouting
from core.incidents.storm import BoardPart, Storm, StormDetector, Verdict
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
        board_delay: float = 0.5,
        board_interval: float = 3.0,
    ) -> None:
        self._plane = plane
        self._delivery = plane.telegram_delivery
        self._boards_store = plane.storm_boards
        self._outbox = outbox
        self.routing = ChatRouting.from_settings(plane.settings)
        self._storms = StormDetector(storm_threshold, timedelta(seconds=storm_window))
        # First board soon after a storm begins (it gathers the burst), then at most one render
        # per interval: each board message is edited at most that often.
        self._board_delay = board_delay
        self._board_interval = board_interval
        self._boards: dict[str, Storm] = {}  # storm id → storm, for the boards kept up to date
        self._on_board: dict[int, str] = {}  # incident id → its board's storm id
        self._seen: dict[int, Incident] = {}  # latest state of every incident on a board
        self._rendered: dict[tuple[str, int], BoardPart] = {}  # what was last saved per part
        self._dirty: set[str] = set()
        self._escalated: set[str] = set()  # storms whose escalation was announced
        self._lock = asyncio.Lock()
        self._processed = 0
        self._board_task: asyncio.Task[None] | None = None
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
        """Bring the boards up to date so nothing seen is left unshown."""
        self._running = False
        await cancel_and_wait(self._board_task)
        await self.flush_boards()

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
            verdict = self._storms.observe(event, chat)
            if verdict is Verdict.STORM and event.kind is EventKind.OPENED:
                await self._board_grew(chat)
            elif verdict is Verdict.SINGLE:
                messages.append(_message(chat, {"op": "incident", "incident_id": incident.id}))
            if incident.id in self._on_board:
                self._seen[incident.id] = incident
                self._dirty.add(self._on_board[incident.id])
                self._schedule_boards()
        escalation = self.routing.escalation
        if event.kind is EventKind.ESCALATED and escalation is not None:
            notice = self._escalation(event)
            if notice is not None:
                messages.append(_message(escalation, notice))
        # The board's membership is saved before the cursor moves: a crash replays nothing twice
        # and loses nothing (the board is rendered again from the saved storm).
        await self._delivery.enqueue(messages, event.seq)
        if messages:
            self._outbox.wake()

    def _escalation(self, event: IncidentEvent) -> dict[str, object] | None:
        """The escalation notice; a storm escalates once, not once per incident."""
        storm_id = self._on_board.get(event.incident.id)
        if storm_id is None:
            return _escalation_notice(event)
        if storm_id in self._escalated:
            return None
        self._escalated.add(storm_id)
        storm = self._boards[storm_id]
        return {
            "op": "text",
            "text": f"⏫ <b>Not acknowledged</b> ({e(event.detail)}): an alert storm of "
            f"{len(storm.incident_ids)} incidents, e.g. <b>#{event.incident.id}</b> "
            f"{e(event.incident.title)}\nIts board lists them all; one incident: "
            f"/incident {event.incident.id}",
        }

    async def _board_grew(self, chat: int) -> None:
        storm = self._storms.storm_at(chat)
        assert storm is not None  # noqa: S101 - observe just said STORM
        await self._boards_store.save(storm)
        self._boards[storm.id] = storm
        for number in storm.incident_ids:
            if number not in self._seen:
                # The openings that made the storm were seen before it began.
                self._seen[number] = await self._plane.incidents.get(number)
            self._on_board[number] = storm.id

    def _schedule_boards(self) -> None:
        if self._running and (self._board_task is None or self._board_task.done()):
            self._board_task = asyncio.create_task(self._board_loop(), name="storm-boards")

    async def _board_loop(self) -> None:
        await asyncio.sleep(self._board_delay)
        while self._dirty:
            await self.flush_boards()
            await asyncio.sleep(self._board_interval)

    async def flush_boards(self) -> None:
        """Render the boards that changed and queue the messages whose text changed."""
        async with self._lock:
            dirty, self._dirty = self._dirty, set()
            for storm_id in sorted(dirty):
                await self._render(self._boards[storm_id])

    async def _render(self, storm: Storm) -> None:
        incidents = [self._seen[number] for number in storm.incident_ids]
        anything_open = any(i.is_open for i in incidents)
        chat = int(storm.destination)
        messages = []
        for part, text in enumerate(storm_board(storm, incidents)):
            wanted = BoardPart(text=text, buttons=part == 0 and anything_open)
            if self._rendered.get((storm.id, part)) == wanted:
                continue
            await self._boards_store.set_part(storm.id, part, wanted)
            self._rendered[(storm.id, part)] = wanted
            messages.append(_message(chat, {"op": "board", "storm": storm.id, "part": part}))
        if messages:
            await self._delivery.enqueue(messages)
            self._outbox.wake()
        if not anything_open:  # all resolved: the board is final
            self._boards.pop(storm.id, None)
            for number in storm.incident_ids:
                self._on_board.pop(number, None)
                self._seen.pop(number, None)


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
