"""The one scheduler service: every periodic job (escalation, silences, probes, backups, the
daily checklist) runs here, with no overlapping runs, misfire grace, and each run's outcome in
metrics. Jobs are plain async callables registered by the services that own them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import BaseModel

from core.errors import NotFound
from core.models import utcnow
from core.platform.metrics import Metrics

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[Any]]
OutcomeHook = Callable[[str, BaseException | None], Awaitable[None]]


class JobInfo(BaseModel):
    """A scheduled job as ``/jobs`` and the API show it."""

    name: str
    schedule: str
    next_run: datetime | None
    last_run: datetime | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    last_duration_seconds: float | None = None
    runs: int = 0
    failures: int = 0


class Scheduler:
    """Periodic jobs on the event loop (APScheduler), observable and failure-aware."""

    def __init__(self, metrics: Metrics, *, misfire_grace_seconds: int = 30) -> None:
        self._metrics = metrics
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._jobs: dict[str, Job] = {}
        self._info: dict[str, JobInfo] = {}
        self._grace = misfire_grace_seconds
        self._hooks: list[OutcomeHook] = []
        self._holds: set[str] = set()

    def on_outcome_change(self, hook: OutcomeHook) -> None:
        """Call ``hook(job, error)`` on each failure, and ``hook(job, None)`` on the first
        success after one (to raise, then resolve, an incident)."""
        self._hooks.append(hook)

    def every(self, name: str, seconds: float, job: Job) -> None:
        """Run ``job`` every ``seconds``."""
        self._add(
            name, job, IntervalTrigger(seconds=seconds, timezone="UTC"), f"every {seconds:g}s"
        )

    def cron(self, name: str, job: Job, **fields: Any) -> None:
        """Run ``job`` on a cron schedule (UTC), e.g. ``hour=8, minute=0``."""
        described = " ".join(f"{k}={v}" for k, v in fields.items())
        self._add(name, job, CronTrigger(timezone="UTC", **fields), f"cron {described}")

    def _add(self, name: str, job: Job, trigger: Any, schedule: str) -> None:
        if name in self._jobs:
            raise ValueError(f"job {name!r} already scheduled")
        self._jobs[name] = job
        self._info[name] = JobInfo(name=name, schedule=schedule, next_run=None)
        self._scheduler.add_job(
            self._run,
            trigger,
            args=[name],
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=self._grace,
        )

    async def start(self) -> None:
        """Start firing jobs (must run inside the event loop), unless something holds them."""
        self._scheduler.start(paused=bool(self._holds))

    async def close(self) -> None:
        """Stop firing jobs; a run in progress is cancelled with the loop's other tasks."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def pause(self, reason: str = "restore") -> None:
        """Hold every job for ``reason`` (a restore swapping the state under them, or standing
        by for another replica); runs in progress go on. Holds for different reasons stack."""
        self._holds.add(reason)
        if self._scheduler.running:
            self._scheduler.pause()

    def resume(self, reason: str = "restore") -> None:
        """Lift the hold for ``reason``; jobs fire again once no hold is left."""
        self._holds.discard(reason)
        if self._scheduler.running and not self._holds:
            self._scheduler.resume()

    @property
    def held(self) -> bool:
        """True while some hold keeps jobs from firing."""
        return bool(self._holds)

    async def run_now(self, name: str) -> JobInfo:
        """Run a job immediately (outside its schedule) and report the outcome."""
        if name not in self._jobs:
            raise NotFound(f"no job {name!r}; jobs are: {', '.join(sorted(self._jobs))}")
        await self._run(name)
        return self.job(name)

    async def _run(self, name: str) -> None:
        info = self._info[name]
        failed_before = info.last_outcome == "error"
        started = time.perf_counter()
        info.last_run = utcnow()
        info.runs += 1
        try:
            await self._jobs[name]()
        except Exception as exc:
            info.failures += 1
            info.last_outcome, info.last_error = "error", f"{type(exc).__name__}: {exc}"
            self._metrics.job_runs.labels(name, "error").inc()
            logger.exception("scheduled job %s failed", name)
            await self._tell(name, exc)
        else:
            info.last_outcome, info.last_error = "ok", None
            self._metrics.job_runs.labels(name, "ok").inc()
            self._metrics.job_last_success.labels(name).set(time.time())
            if failed_before:
                await self._tell(name, None)
        finally:
            info.last_duration_seconds = round(time.perf_counter() - started, 4)
            self._metrics.job_duration.labels(name).observe(info.last_duration_seconds)

    async def _tell(self, name: str, error: BaseException | None) -> None:
        for hook in self._hooks:
            try:
                await hook(name, error)
            except Exception:
                logger.exception("outcome hook for job %s failed", name)

    def job(self, name: str) -> JobInfo:
        """One job's schedule and last outcome."""
        info = self._info[name]
        scheduled = self._scheduler.get_job(name)
        next_run = getattr(scheduled, "next_run_time", None) if scheduled else None
        return info.model_copy(update={"next_run": next_run})

    def jobs(self) -> list[JobInfo]:
        """Every job with its last and next run."""
        return [self.job(n) for n in sorted(self._jobs)]
