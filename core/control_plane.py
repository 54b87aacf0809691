"""The composition root: builds every core service from ``Settings`` and owns their lifecycle.

Adapters (API, bot, CLI, scheduler jobs) receive a started ``ControlPlane`` and call its services;
nothing in core reaches for a global.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import timedelta

from core import __version__, pagerduty, security_mail
from core.access import TokenAuthority
from core.access_review import AccessReviewService, render_markdown
from core.alertmanager import AlertmanagerClient
from core.alerts import Severity
from core.assistant import AssistantService
from core.assistant_tools import Redactor, Toolbox
from core.audit import AuditLog
from core.backups import (
    JOB_BACKUP,
    JOB_OVERDUE,
    JOB_VERIFY,
    JOBS_WITH_OWN_INCIDENTS,
    BackupService,
)
from core.bus import Bus, InProcessBus
from core.checklist import ChecklistItem, ChecklistService, Mark
from core.cores import default_cores
from core.exports import JOB_EXPORT, AuditExportService
from core.flags import FlagService, FlagState
from core.hardening import check_production
from core.health import ComponentHealth, HealthService, Status
from core.incident_model import Rules
from core.incidents import IncidentService
from core.jobs import JobService
from core.metrics import Metrics
from core.models import Actor, OutboxItem
from core.outbox import Delivery, OutboxWorker
from core.runbook import Runbook
from core.s3 import S3Client
from core.scheduler import Scheduler
from core.secrets import RuntimeSecrets, resolve_secrets
from core.self_healing import SelfHealingService
from core.settings import Settings
from core.signal_health import SignalHealthService
from core.slo import SloGuard
from core.status import StatusLine, StatusService
from core.store import Store
from core.store.sqlite import SqliteStore
from core.tokens import TokenService
from core.trading import TradingEngine
from core.venues.service import VenueService

logger = logging.getLogger(__name__)

# How quickly a flag flipped by the CLI (or another replica) reaches this process.
FLAG_RELOAD_SECONDS = 2.0


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class ControlPlane:
    """Every core service of one process, wired together."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.version = __version__
        self.metrics = Metrics()
        check_production(settings)  # INFRA_PROD_ENABLED: before any secret is generated
        self.secrets: RuntimeSecrets = resolve_secrets(settings)
        self.tokens = TokenAuthority(self.secrets.api_tokens)
        self.store: Store = store or SqliteStore(settings.db_path)
        self.audit = AuditLog(self.store)
        self.flags = FlagService(settings, self.store, self.metrics)
        self.bus: Bus = InProcessBus()
        self.scheduler = Scheduler(self.metrics)
        self.alertmanager = (
            AlertmanagerClient(settings.alertmanager_url) if settings.alertmanager_url else None
        )
        self.pagerduty: pagerduty.PagerDutySender | None = None
        self.pagerduty_outbox: OutboxWorker | None = None
        if settings.pagerduty_routing_key is not None:
            self.pagerduty = pagerduty.PagerDutySender(
                settings.pagerduty_events_url, settings.pagerduty_routing_key, self.metrics
            )
            self.pagerduty_outbox = OutboxWorker(
                self.store, pagerduty.CHANNEL, self.pagerduty.deliver, self.metrics
            )
        self.security_mail_outbox: OutboxWorker | None = None
        if settings.smtp_host:
            self.security_mail_outbox = OutboxWorker(
                self.store, security_mail.CHANNEL, self._send_security_mail, self.metrics
            )
        self.incidents = IncidentService(
            self.store,
            self.bus,
            self.metrics,
            Rules(
                reopen_window=timedelta(minutes=settings.incident_reopen_minutes),
                escalation=settings.escalation_policy,
            ),
            alertmanager=self.alertmanager,
            pagerduty_outbox=self.pagerduty_outbox,
            security_mail_outbox=self.security_mail_outbox,
        )
        self.scheduler.every(
            "escalation", settings.escalation_check_seconds, self.incidents.run_deadlines
        )
        if self.alertmanager is not None:
            self.scheduler.every(
                "alertmanager-silences",
                settings.silence_sync_seconds,
                self.incidents.sync_silences,
            )
        self.venues = VenueService(settings, self.flags, self.store, self.incidents, self.metrics)
        self.trading = TradingEngine(
            settings, self.store, self.venues, self.incidents, self.metrics, default_cores()
        )
        self.scheduler.every("venue-probe", settings.venue_probe_seconds, self.venues.probe)
        self.scheduler.every("pnl-snapshot", settings.pnl_snapshot_seconds, self.trading.record_pnl)
        self.scheduler.every(
            "order-sync", settings.venue_probe_seconds, self.trading.sync_open_orders
        )
        # Backups, verification and audit exports (runbook §3, §4).
        self.s3 = S3Client(settings)
        self.backups = BackupService(
            settings,
            self.store,
            self.audit,
            self.flags,
            self.incidents,
            self.metrics,
            s3=self.s3,
            before_restore=self._before_restore,
            after_restore=self._after_restore,
        )
        self.exports = AuditExportService(settings, self.audit, self.store, self.metrics, self.s3)
        self.jobs = JobService(self.scheduler, self.audit, self.metrics)
        self.scheduler.every(
            JOB_BACKUP, settings.backup_interval_minutes * 60, self.backups.scheduled_backup
        )
        self.scheduler.every(JOB_OVERDUE, 60, self.backups.check_overdue)
        self.scheduler.cron(
            JOB_VERIFY, self.backups.verify_latest, hour=settings.backup_verify_hour, minute=30
        )
        self.scheduler.cron(
            JOB_EXPORT, self.exports.scheduled_export, day_of_week="mon", hour=4, minute=0
        )
        self.scheduler.on_outcome_change(self._job_outcome)
        self.flags.subscribe(self._flag_changed)
        self.health = HealthService(self.metrics, interval=settings.health_check_interval_seconds)
        self.status = StatusService(self.health, self.incidents, self.flags)
        self.checklist = ChecklistService(self.health, self.incidents)
        self.status.register("engine", self._engine_status)
        self.checklist.register("engine", self._engine_checklist)
        self.health.register("store", self._check_store)
        self.health.register("redis", self._check_redis, critical=False)
        self.health.register("telegram", self._check_telegram, critical=False)
        self.health.register("backups", self.backups.health, critical=False)
        self.status.register("backups", self.backups.status_lines)
        self.checklist.register("backups", self.backups.checklist_items)
        # Temporary API tokens (issue #9): issued, listed, revoked; rotation on the checklist.
        self.temporary_tokens = TokenService(self.store, self.audit, self.metrics)
        self.checklist.register("tokens", self.temporary_tokens.checklist_items)
        self.access_review = AccessReviewService(
            settings,
            self.tokens,
            self.store,
            self.audit,
            self.flags,
            self.backups,
            self.incidents,
        )
        # The assistant (issue #7): read-only tools over the services above, LLM or rules.
        redactor = Redactor.for_process(settings, self.secrets)
        self.assistant = AssistantService(
            settings,
            Toolbox(
                metrics=self.metrics,
                health=self.health,
                incidents=self.incidents,
                flags=self.flags,
                audit=self.audit,
                runbook=Runbook(),
                redactor=redactor,
                venues=self.venues,
                trading=self.trading,
                backups=self.backups,
            ),
            self.flags,
            self.incidents,
            self.metrics,
            redactor,
        )
        if self.assistant.configured:
            self.scheduler.every("llm-probe", settings.llm_probe_seconds, self.assistant.probe)
        # Self-healing and the latency SLO (issue #9, runbook §2.4 and §5).
        self.self_healing = SelfHealingService(
            settings,
            self.flags,
            self.store,
            self.audit,
            self.incidents,
            self.metrics,
            venues=self.venues,
            trading=self.trading,
            assistant=self.assistant,
        )
        self.scheduler.every(
            "self-healing", settings.self_healing_interval_seconds, self.self_healing.run_once
        )
        self.slo = SloGuard(
            self.metrics.request_duration,
            self.incidents,
            self.trading.cores,
            objective_seconds=settings.slo_p99_seconds,
            window_seconds=settings.slo_window_seconds,
            on_p99=self.metrics.slo_p99.set,
        )
        self.scheduler.every("slo-check", settings.slo_check_seconds, self.slo.run)
        self.signal_health = SignalHealthService(
            settings, self.trading, self.venues, self.assistant, self.incidents
        )
        self._restore_set_read_only = False
        self.ready = False
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Open the store, load state and start background work, in dependency order."""
        try:
            await self.store.open()
            self._stack.push_async_callback(self.store.close)
            await self.flags.load()
            self.assistant.refresh_gauges()
            watcher = asyncio.create_task(self.flags.watch(FLAG_RELOAD_SECONDS), name="flags")
            self._stack.push_async_callback(_cancel, watcher)
            self.metrics.redis_status.state("disabled")
            await self.bus.start()
            self._stack.push_async_callback(self.bus.close)
            for client in (self.alertmanager, self.pagerduty):
                if client is not None:
                    self._stack.push_async_callback(client.close)
            if self.security_mail_outbox is not None:
                await self.security_mail_outbox.start()
                self._stack.push_async_callback(self.security_mail_outbox.close)
            if self.pagerduty_outbox is not None:
                await self.pagerduty_outbox.start()
                self.self_healing.watch_outbox(self.pagerduty_outbox)
                self._stack.push_async_callback(self.pagerduty_outbox.close)
            await self.venues.start()
            self._stack.push_async_callback(self.venues.close)
            await self.trading.start()
            self._stack.push_async_callback(self.trading.close)
            self._stack.push_async_callback(self.s3.close)
            await self.backups.start()
            await self.assistant.start()
            self._stack.push_async_callback(self.assistant.close)
            await self.scheduler.start()
            self._stack.push_async_callback(self.scheduler.close)
            await self.health.start()
            self._stack.push_async_callback(self.health.close)
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = True
        logger.info(
            "control plane %s started (state in %s)", self.version, self.settings.lunia_state_dir
        )

    async def close(self) -> None:
        """Stop everything started, in reverse order; safe to call twice."""
        self.ready = False
        await self._stack.aclose()

    async def _flag_changed(self, state: FlagState, actor: Actor) -> None:
        """Flags whose effect the control plane itself carries out."""
        if state.name == "LLM_RATE_LIMITED":
            self.assistant.refresh_gauges()  # 1 while the flag is on or the circuit is open

    async def _engine_status(self) -> list[StatusLine]:
        """PnL, exposure, active venue and engine state for ``/status``."""
        pnl = await self.trading.pnl("24h")
        exposure = self.trading.exposure()
        venues = self.venues.status()
        state = self.trading.state()
        lines = [
            StatusLine(label="PnL", value=f"{pnl.total:+,.2f} USDT"),
            StatusLine(
                label="exposure",
                value=f"{exposure.total:,.2f} / {exposure.limit:,.0f} USDT",
                ok=exposure.total <= exposure.limit,
            ),
            StatusLine(
                label="venue",
                value=venues.active + (" (failed over)" if venues.failed_over else ""),
                ok=not venues.failed_over,
            ),
        ]
        if state.halted or state.read_only:
            why = state.halt_reason if state.halted else state.read_only_reason
            lines.append(
                StatusLine(
                    label="trading",
                    ok=False,
                    value=f"{'HALTED' if state.halted else 'READ-ONLY'}: {why}",
                )
            )
        return lines

    async def _engine_checklist(self) -> list[ChecklistItem]:
        """Key metrics of runbook §1 (core_pnl, risk_exposure) and the venue in use."""
        return [
            ChecklistItem(
                name=f"key metrics: {line.label}",
                reason=line.value,
                mark=Mark.OK if line.ok else Mark.WARN,
            )
            for line in await self._engine_status()
        ]

    async def _send_security_mail(self, item: OutboxItem) -> Delivery:
        """Deliver a queued security email (built late: it needs the access review)."""

        async def report() -> str:
            return render_markdown(await self.access_review.review(Actor.system("security-mail")))

        mailer = security_mail.SecurityMailer(self.settings, self.incidents.get, report)
        return await mailer.deliver(item)

    async def _job_outcome(self, job: str, error: BaseException | None) -> None:
        """A failing scheduled job is an incident; its next success resolves it."""
        if job in JOBS_WITH_OWN_INCIDENTS:
            return  # the backup service raises (and clears) its own, more precise incidents
        key, title = f"job:{job}", f"Scheduled job {job} failing"
        if error is None:
            await self.incidents.clear_engine(key, title, "the job succeeded again")
        else:
            await self.incidents.raise_engine(
                key,
                title,
                Severity.WARNING,
                f"{type(error).__name__}: {error}",
                labels={"job": job},
            )

    async def _before_restore(self, actor: Actor) -> None:
        """Quiesce for a restore: hold scheduled jobs, refuse new orders while state is swapped."""
        self.scheduler.pause()
        self._restore_set_read_only = not self.trading.state().read_only
        if self._restore_set_read_only:
            await self.trading.enter_read_only("a backup is being restored", actor)

    async def _after_restore(self, actor: Actor) -> None:
        """Resume after a restore (restored or rolled back): orders, jobs, gauges."""
        if self._restore_set_read_only:
            self._restore_set_read_only = False
            await self.trading.leave_read_only(actor)
        counts = await self.store.count_open_incidents()
        for severity, count in counts.items():
            self.metrics.incidents_open.labels(severity.value).set(count)
        self.scheduler.resume()

    async def _check_store(self) -> ComponentHealth:
        await self.store.ping()
        return ComponentHealth(status=Status.OK, detail=f"sqlite {self.settings.db_path}")

    async def _check_redis(self) -> ComponentHealth:
        return ComponentHealth(status=Status.DISABLED, detail="ENABLE_REDIS=false: embedded mode")

    async def _check_telegram(self) -> ComponentHealth:
        if self.settings.telegram_bot_token is None:
            return ComponentHealth(
                status=Status.DISABLED, detail="no TELEGRAM_BOT_TOKEN: the bot is off"
            )
        return ComponentHealth(status=Status.DEGRADED, detail="bot not started in this process")
