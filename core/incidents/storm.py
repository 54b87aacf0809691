"""Alert storms: when incidents open faster than people can read them, summarise the rest.

``StormDetector`` is fed the incident events one destination (a chat, a pager) receives, in order.
When more than ``threshold`` incidents open there within ``window``, each further one is *held*:
it joins that destination's pending storm instead of getting a message of its own, and so do the
later changes of a held incident (its state is on the incident list, not in a flood of edits).
The adapter takes the pending storms once the window has passed and posts one digest each.
Time is the events' own timestamps, so replaying stored events decides the same way.
"""

from __future__ import annotations

import enum
from collections import deque
from datetime import datetime, timedelta

from pydantic import BaseModel

from core.models.incidents import EventKind, Incident, IncidentEvent

Destination = int | str


class Verdict(enum.StrEnum):
    """How one event is to be delivered to one destination."""

    SINGLE = "single"  # its own message (or edit)
    STORM = "storm"  # part of a storm: covered by the destination's digest


class Storm(BaseModel):
    """The incidents a storm held back at one destination."""

    destination: Destination
    incidents: list[Incident]
    window_seconds: float


class StormDetector:
    """Decides per destination whether an event gets its own message or joins a storm."""

    def __init__(self, threshold: int = 5, window: timedelta = timedelta(seconds=10)) -> None:
        self.threshold = threshold
        self.window = window
        self._opened: dict[Destination, deque[datetime]] = {}
        self._pending: dict[Destination, list[Incident]] = {}
        self._held: set[int] = set()

    def observe(self, event: IncidentEvent, destination: Destination) -> Verdict:
        """Record ``event`` for ``destination`` and say how it is to be delivered."""
        incident = event.incident
        if event.kind is EventKind.OPENED and self._storming(destination, event.ts):
            self._pending.setdefault(destination, []).append(incident)
            self._held.add(incident.id)
            return Verdict.STORM
        # Once summarised in a digest, an incident stays off the chat: no message to edit.
        return Verdict.STORM if incident.id in self._held else Verdict.SINGLE

    @property
    def holding(self) -> bool:
        """True while some storm waits to be taken (its events are not yet delivered)."""
        return any(self._pending.values())

    def take_storms(self) -> list[Storm]:
        """The pending storms, one per destination, now handed over for delivery."""
        storms = [
            Storm(
                destination=destination,
                incidents=incidents,
                window_seconds=self.window.total_seconds(),
            )
            for destination, incidents in self._pending.items()
            if incidents
        ]
        self._pending = {}
        return storms

    def _storming(self, destination: Destination, at: datetime) -> bool:
        recent = self._opened.setdefault(destination, deque())
        while recent and recent[0] < at - self.window:
            recent.popleft()
        recent.append(at)
        return len(recent) > self.threshold
