"""Request rate limits kept in the store: a sliding window per caller that every replica
counts into, so N API replicas together allow the limit once, not N times."""

from __future__ import annotations

from datetime import timedelta

from core.models import utcnow
from core.store import RateLimitHit, Store


class RateLimiter:
    """Counts hits per key in the shared store and says when a caller must wait."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def hit(self, key: str, *, limit: int, window: timedelta) -> RateLimitHit:
        """Count one request of ``key``; refused (with ``retry_after``) past ``limit`` per
        ``window``."""
        return await self._store.hit_rate_limit(
            f"rate:{key}", limit=limit, window=window, now=utcnow()
        )
