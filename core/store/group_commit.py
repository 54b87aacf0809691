"""Group commit: concurrent writes of one kind share one transaction.

A webhook's alerts must be durable before its 2xx, and a durable commit (an fsync, a MULTI/EXEC
round trip) costs about the same for one alert as for a thousand. So concurrent requests queue
their jobs here; while one transaction runs, the jobs that arrive meanwhile wait for the next,
which takes them all at once. Each caller gets its own job's result (or error) only after the
transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

# Commits a batch in one transaction; per job its result, or the error that failed it alone.
BatchCommit = Callable[[Sequence[J]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[J, R]):
    """Queue jobs and commit them in batches through ``commit`` (one transaction per batch)."""

    def __init__(self, commit: BatchCommit[J, R], *, max_jobs: int = 64) -> None:
        self._commit = commit
        self._max_jobs = max_jobs
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, job: J) -> R:
        """Run ``job`` in the next batch; returns once that batch has committed."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_jobs]
                del self._queue[: self._max_jobs]
                await self._run(batch)
        finally:
            self._drainer = None

    async def _run(self, batch: list[tuple[J, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._commit([job for job, _ in batch])
        except BaseException as exc:  # the whole batch failed: so did each of its jobs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller gave up waiting; the job is committed all the same
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
