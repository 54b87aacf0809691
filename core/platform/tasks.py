"""Stopping background tasks so that a stop always ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

RECANCEL_SECONDS = 1.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again while one runs on.

    One ``cancel()`` is not always enough on Python 3.11: a cancellation that lands while a
    timeout inside a client library (redis-py) expires can come out as a timeout error, which a
    loop that rides out store outages then swallows before going back to sleep. A ``gather()``
    after a single ``cancel()`` waited forever on such a task (seen in CI).
    """
    started = [task for task in tasks if task is not None]
    pending = {task for task in started if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        if pending:
            names = ", ".join(sorted(task.get_name() for task in pending))
            logger.warning("still running after a cancellation, cancelling again: %s", names)
    for task in started:  # retrieved, so nothing is reported as "never retrieved"
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
