"""Waiting for something that happens in the background, without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(
    check: Callable[[], Any], timeout: float = 15.0, what: str = "", every: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that;
    fail naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'}: not met within {timeout} s")
        await asyncio.sleep(every)
