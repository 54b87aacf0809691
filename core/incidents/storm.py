"""Alert storms: when incidents open faster than a destination can take one message each.

``StormDetector`` is fed the incident events one destination (a chat, a pager) receives, in order.
When more than ``threshold`` incidents open there within ``window``, a storm begins: it holds the
openings that made it (they may already have messages of their own) and every further opening
until ``window`` passes without one. A held incident gets no message of its own; the storm's
*board* names it instead, with its state. Time is the events' own timestamps, so replaying stored
events decides the same way. ``active`` tells anyone (paging, escalation) which storms are on.

``StormBoards`` keeps the storms in the store, so every replica sees them (a button press may
reach an API replica), keeps what each board message shows, and carries out the bulk actions on a
storm through ``IncidentService`` (the pressing user's role checked and audited per incident).
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from core.errors import Conflict, InvalidInput, NotFound
from core.models import Actor, utcnow
from core.models.incidents import EventKind, IncidentEvent
from core.store import Store

if TYPE_CHECKING:  # the service pages storms through core.incidents.pagerduty, which uses this
    from core.incidents.service import IncidentService

Destination = int | str

# How long after its last opening a storm's board stays its incidents' place in chat; later
# changes of such an incident (a reopening next day) get a message of their own again.
BOARD_HOLD = timedelta(hours=1)


class Verdict(enum.StrEnum):
    """How one event is to be delivered to one destination."""

    SINGLE = "single"  # its own message (or edit)
    STORM = "storm"  # part of a storm: shown on the storm's board


class Storm(BaseModel):
    """One storm at one destination: every incident it holds, in the order they opened."""

    id: str
    destination: Destination
    started: datetime
    last_opened: datetime
    incident_ids: list[int] = Field(default_factory=list)

    def ongoing(self, now: datetime, window: timedelta) -> bool:
        """True while openings still come within ``window`` of each other."""
        return self.last_opened >= now - window


def _storm_id(destination: Destination, started: datetime) -> str:
    """Short (fits signed button data), unique per destination and start."""
    where = hashlib.blake2s(str(destination).encode(), digest_size=3).hexdigest()
    return f"{where}{int(started.timestamp() * 1000):x}"


class StormDetector:
    """Decides per destination whether an event gets its own message or joins a storm."""

    def __init__(self, threshold: int = 5, window: timedelta = timedelta(seconds=10)) -> None:
        self.threshold = threshold
        self.window = window
        self._opened: dict[Destination, deque[tuple[datetime, int]]] = {}
        self._storms: dict[Destination, Storm] = {}
        self._held: dict[int, Storm] = {}

    def observe(self, event: IncidentEvent, destination: Destination) -> Verdict:
        """Record ``event`` for ``destination`` and say how it is to be delivered."""
        incident = event.incident
        if event.kind is EventKind.OPENED:
            recent = self._window(destination, event.ts, incident.id)
            if len(recent) > self.threshold:
                storm = self._join(destination, event.ts, [number for _, number in recent])
                self._held[incident.id] = storm
                return Verdict.STORM
        # A held incident has no message of its own to edit: its board shows its changes.
        held = self._held.get(incident.id)
        if held is not None and event.ts - held.last_opened < BOARD_HOLD:
            return Verdict.STORM
        return Verdict.SINGLE

    def storm_at(self, destination: Destination) -> Storm | None:
        """The destination's latest storm (ongoing or over), or None."""
        return self._storms.get(destination)

    def active(self, now: datetime) -> list[Storm]:
        """The storms still going on at ``now``: one per destination at most."""
        return [s for s in self._storms.values() if s.ongoing(now, self.window)]

    def _join(self, destination: Destination, at: datetime, recent: list[int]) -> Storm:
        storm = self._storms.get(destination)
        if storm is None or not storm.ongoing(at, self.window):
            # The openings that made the storm belong to it too: "acknowledge all" means all.
            storm = Storm(
                id=_storm_id(destination, at),
                destination=destination,
                started=at,
                last_opened=at,
                incident_ids=list(recent),
            )
            self._storms[destination] = storm
        else:
            storm.last_opened = at
            storm.incident_ids.append(recent[-1])
        return storm

    def _window(
        self, destination: Destination, at: datetime, incident_id: int
    ) -> deque[tuple[datetime, int]]:
        recent = self._opened.setdefault(destination, deque())
        while recent and recent[0][0] < at - self.window:
            recent.popleft()
        recent.append((at, incident_id))
        return recent


class BoardPart(BaseModel):
    """What one message of a storm board should show (written by whoever renders the board)."""

    text: str = ""
    buttons: bool = False  # the bulk buttons (first message only, while anything is open)


class ShownPart(BaseModel):
    """The chat message that shows one part of a board, and a digest of what it shows (written
    by whoever delivers it: a separate record, so neither writer overwrites the other)."""

    message_id: int
    shown_hash: str


class BulkOutcome(BaseModel):
    """What a bulk action on a storm did: incidents changed, and those left as they were."""

    storm_id: str
    changed: list[int]
    unchanged: dict[int, str]  # incident id → why (already acknowledged, resolved, ...)


def _storm_key(storm_id: str) -> str:
    return f"storm:{storm_id}"


def _latest_key(destination: Destination) -> str:
    return f"storm:latest:{destination}"


def _part_key(storm_id: str, part: int) -> str:
    return f"storm:{storm_id}:part:{part}"


class StormBoards:
    """The storms destinations show as boards, kept in the store, and the bulk actions."""

    def __init__(self, store: Store, incidents: IncidentService) -> None:
        self._store = store
        self._incidents = incidents

    async def save(self, storm: Storm) -> None:
        """Remember ``storm`` (its membership grows while it lasts) as its destination's latest."""
        await self._store.set_value(_storm_key(storm.id), storm.model_dump(mode="json"))
        await self._store.set_value(_latest_key(storm.destination), storm.id)

    async def get(self, storm_id: str) -> Storm:
        """The storm ``storm_id``."""
        raw = await self._store.get_value(_storm_key(storm_id))
        if not raw:
            raise NotFound(f"storm {storm_id} is not known (any more)")
        return Storm.model_validate(raw)

    async def latest(self, destination: Destination) -> Storm | None:
        """The latest storm at ``destination``, if any."""
        storm_id = await self._store.get_value(_latest_key(destination))
        return None if not storm_id else await self.get(str(storm_id))

    async def covers(self, destination: Destination, incident_id: int) -> bool:
        """True when the destination's latest board names this incident and is still its place
        in chat (``BOARD_HOLD``)."""
        storm = await self.latest(destination)
        if storm is None or utcnow() - storm.last_opened >= BOARD_HOLD:
            return False
        return incident_id in storm.incident_ids

    async def part(self, storm_id: str, part: int) -> BoardPart:
        """What message ``part`` of the storm's board should show (empty when never written)."""
        raw = await self._store.get_value(_part_key(storm_id, part))
        try:
            return BoardPart.model_validate(raw) if raw else BoardPart()
        except ValidationError:
            return BoardPart()

    async def set_part(self, storm_id: str, part: int, board_part: BoardPart) -> None:
        """Save what message ``part`` of the storm's board should show."""
        await self._store.set_value(_part_key(storm_id, part), board_part.model_dump(mode="json"))

    async def shown(self, storm_id: str, part: int) -> ShownPart | None:
        """The message showing ``part`` of the board, or None if it has not been posted."""
        raw = await self._store.get_value(_part_key(storm_id, part) + ":shown")
        try:
            return ShownPart.model_validate(raw) if raw else None
        except ValidationError:
            return None  # unreadable: post that part afresh

    async def set_shown(self, storm_id: str, part: int, shown: ShownPart) -> None:
        """Remember the message that now shows ``part`` of the board."""
        await self._store.set_value(_part_key(storm_id, part) + ":shown", shown.model_dump())

    async def acknowledge_all(self, storm_id: str, actor: Actor) -> BulkOutcome:
        """Acknowledge every incident of the storm as ``actor`` (each checked and audited)."""
        storm = await self.get(storm_id)
        outcome = BulkOutcome(storm_id=storm_id, changed=[], unchanged={})
        for number in storm.incident_ids:
            try:
                await self._incidents.acknowledge(number, actor)
            except (Conflict, NotFound) as exc:  # already acknowledged, resolved, gone
                outcome.unchanged[number] = exc.message
            else:
                outcome.changed.append(number)
        return outcome

    async def silence_all(
        self, storm_id: str, actor: Actor, duration: str | timedelta
    ) -> BulkOutcome:
        """Silence every open incident of the storm for ``duration`` as ``actor``."""
        storm = await self.get(storm_id)
        outcome = BulkOutcome(storm_id=storm_id, changed=[], unchanged={})
        for number in storm.incident_ids:
            try:
                await self._incidents.silence(number, actor, duration)
            except (Conflict, NotFound, InvalidInput) as exc:  # resolved, gone, no matcher
                outcome.unchanged[number] = exc.message
            else:
                outcome.changed.append(number)
        return outcome
