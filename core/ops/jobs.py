"""Scheduled jobs as people see and trigger them (``/jobs``, ``GET|POST /api/v1/jobs``), and
the rule that a failing job is an incident until it succeeds again."""

from __future__ import annotations

from collections.abc import Collection

from core.incidents.service import IncidentService
from core.models import Actor, AuditRecord, Role
from core.models.alerts import Severity
from core.platform.metrics import Metrics
from core.platform.scheduler import JobInfo, Scheduler
from core.security.access import Guard
from core.security.audit import AuditLog


class JobService:
    """Lists the scheduler's jobs, runs one out of schedule (admin, audited), and raises an
    incident for a failing job (except ``own_incidents``: jobs that raise more precise ones)."""

    def __init__(
        self,
        scheduler: Scheduler,
        audit: AuditLog,
        metrics: Metrics,
        incidents: IncidentService,
        *,
        own_incidents: Collection[str] = (),
    ) -> None:
        self._scheduler = scheduler
        self._audit = audit
        self._metrics = metrics
        self._incidents = incidents
        self._own_incidents = frozenset(own_incidents)
        self._guard = Guard(audit, metrics)

    def watch_outcomes(self) -> None:
        """Follow the scheduler's job outcomes (see ``outcome_changed``)."""
        self._scheduler.on_outcome_change(self.outcome_changed)

    async def outcome_changed(self, job: str, error: BaseException | None) -> None:
        """A failing scheduled job is an incident; its next success resolves it."""
        if job in self._own_incidents:
            return
        key, title = f"job:{job}", f"Scheduled job {job} failing"
        if error is None:
            await self._incidents.clear_engine(key, title, "the job succeeded again")
        else:
            await self._incidents.raise_engine(
                key,
                title,
                Severity.WARNING,
                f"{type(error).__name__}: {error}",
                labels={"job": job},
            )

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
