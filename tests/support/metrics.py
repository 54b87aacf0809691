"""Read ``/metrics`` the way Prometheus does: it answers from a snapshot at most
``SNAPSHOT_SECONDS`` old, so a test that scrapes right after an action polls until it shows."""

from __future__ import annotations

import asyncio
import time

import httpx

from core.platform.metrics import SNAPSHOT_SECONDS

# A change shows within one snapshot; the rest is room for a loaded test machine.
DEADLINE_SECONDS = SNAPSHOT_SECONDS + 5.0


async def scrape_showing(client: httpx.AsyncClient, *needles: str) -> str:
    """The first ``/metrics`` text containing every needle (polled up to the deadline); the last
    text scraped if some never shows, for the caller's assertion to name what is missing."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        text = (await client.get("/metrics")).text
        if all(needle in text for needle in needles) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.02)
