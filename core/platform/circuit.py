"""The LLM circuit breaker: after a retryable failure, stop calling for a backoff period.

``closed`` lets every call through. A failure opens it for ``Retry-After`` seconds when the
server said so, otherwise for ``base * 2**(trips-1)``, capped at ``maximum``. Once the period has
passed, ``allow()`` lets exactly one call through as the probe (``half_open``); its success closes
the circuit, its failure opens it again for longer.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

Clock = Callable[[], float]


class CircuitState(enum.StrEnum):
    """Whether calls may go to the LLM."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts retryable failures and decides when the next call may be tried."""

    def __init__(self, base: float, maximum: float, *, clock: Clock = time.monotonic) -> None:
        self._base = base
        self._maximum = max(maximum, base)
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.trips = 0
        self.open_until = 0.0
        self.last_error: str | None = None

    def remaining(self) -> float:
        """Seconds until a probe may be tried (0 when closed or due)."""
        if self.state is CircuitState.CLOSED:
            return 0.0
        return max(self.open_until - self._clock(), 0.0)

    def allow(self) -> bool:
        """True when a call may go out now; an open circuit past its backoff lets one probe."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and self._clock() >= self.open_until:
            self.state = CircuitState.HALF_OPEN
            return True
        return False

    def success(self) -> bool:
        """A call succeeded; True when this closed an open circuit."""
        was_open = self.state is not CircuitState.CLOSED
        self.state = CircuitState.CLOSED
        self.trips = 0
        self.last_error = None
        return was_open

    def failure(self, error: str, retry_after: float | None = None) -> float:
        """A retryable failure: open (again) and return the backoff in seconds."""
        self.trips += 1
        if retry_after is not None:
            backoff = min(retry_after, self._maximum)
        else:
            backoff = min(self._base * 2 ** (self.trips - 1), self._maximum)
        self.state = CircuitState.OPEN
        self.open_until = self._clock() + backoff
        self.last_error = error
        return backoff

    def abandon(self) -> None:
        """A probe ended without a verdict (cancelled): the next call may probe again."""
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN
            self.open_until = self._clock()
