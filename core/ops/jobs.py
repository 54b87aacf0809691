"""Scheduled jobs as people see and trigger them (``/jobs``, ``GET|POST /api/v1/jobs``)."""

from __future__ import annotations

from core.models import Actor, AuditRecord, Role
from core.platform.metrics import Metrics
from core.platform.scheduler import JobInfo, Scheduler
from core.security.access import Guard
from core.security.audit import AuditLog


class JobService:
    """Lists the scheduler's jobs and runs one out of schedule (admin, audited)."""

    def __init__(self, scheduler: Scheduler, audit: AuditLog, metrics: Metrics) -> None:
        self._scheduler = scheduler
        self._audit = audit
        self._metrics = metrics
        self._guard = Guard(audit, metrics)

    def list(self) -> list[JobInfo]:
        """Every job with its schedule, last outcome and next run."""
        return self._scheduler.jobs()

    async def run(self, name: str, actor: Actor) -> JobInfo:
        """Run a job now and report how it went (admin)."""
        await self._guard.require(
            actor, Role.ADMIN, f"running job {name}", action="job.run", target=name
        )
        info = await self._scheduler.run_now(name)
        outcome = "ok" if info.last_outcome == "ok" else "failed"
        await self._record(actor, name, outcome, info.last_error or "")
        return info

    async def _record(self, actor: Actor, name: str, outcome: str, detail: str) -> None:
        await self._audit.record(
            AuditRecord(actor=actor, action="job.run", target=name, outcome=outcome, detail=detail)
        )
        self._metrics.audit_entries.labels(outcome).inc()
