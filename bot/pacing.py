"""Telegram's sending limits as a non-blocking schedule: how long until a chat may be sent to.

Telegram allows about 1 message/s per chat, 20/min per group and 30/s overall. The outbox must
not block one chat's queue behind another's pause, so instead of sleeping (what aiolimiter's
``acquire`` does) the pacer answers "wait N seconds" and the outbox reschedules that message.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class Pacer:
    """Sliding-window limits per chat, per group and overall."""

    def __init__(
        self,
        *,
        per_chat_interval: float = 1.0,
        group_per_minute: int = 20,
        global_per_second: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = per_chat_interval
        self._group_limit = group_per_minute
        self._global_limit = global_per_second
        self._clock = clock
        self._last: dict[int, float] = {}
        self._group: dict[int, deque[float]] = {}
        self._global: deque[float] = deque()

    def wait(self, chat_id: int) -> float:
        """Seconds until ``chat_id`` may receive the next message (0 when now)."""
        now = self._clock()
        waits = [0.0]
        if chat_id in self._last:
            waits.append(self._last[chat_id] + self._interval - now)
        if chat_id < 0:  # groups and supergroups
            window = self._trim(self._group.get(chat_id), now, 60.0)
            if window is not None and len(window) >= self._group_limit:
                waits.append(window[0] + 60.0 - now)
        self._trim(self._global, now, 1.0)
        if len(self._global) >= self._global_limit:
            waits.append(self._global[0] + 1.0 - now)
        return max(waits)

    def sent(self, chat_id: int) -> None:
        """Record a message just sent to ``chat_id``."""
        now = self._clock()
        self._last[chat_id] = now
        if chat_id < 0:
            self._group.setdefault(chat_id, deque()).append(now)
        self._global.append(now)

    @staticmethod
    def _trim(window: deque[float] | None, now: float, span: float) -> deque[float] | None:
        while window and window[0] <= now - span:
            window.popleft()
        return window
