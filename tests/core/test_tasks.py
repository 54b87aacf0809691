"""Stopping background tasks: a stop ends even when a task swallows its cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from core.platform.tasks import cancel_and_wait


@pytest.mark.slow
async def test_a_task_that_swallows_one_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed = 0

    async def rides_out_errors() -> None:  # what a client library plus a retry loop can do
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(rides_out_errors(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="core.platform.tasks"):
        async with asyncio.timeout(5):
            await cancel_and_wait(task)
    assert task.cancelled() and swallowed == 1
    assert "cancelling again: stubborn" in caplog.text


async def test_finished_failed_and_missing_tasks_are_fine() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(failed, done, None)  # the error is retrieved, not re-raised
    assert failed.done() and done.done()
