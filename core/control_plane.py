"""The composition root: builds every core service from ``Settings`` and owns their lifecycle.

Adapters (API, bot, CLI, scheduler jobs) receive a started ``ControlPlane`` and call its services;
nothing in core reaches for a global.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta

from core import __version__
from core.assistant.runbook import Runbook
from core.assistant.service import AssistantService
from core.assistant.tools import Redactor, Toolbox
from core.backups import (
    JOB_BACKUP,
    JOB_OVERDUE,
    JOB_VERIFY,
    JOBS_WITH_OWN_INCIDENTS,
    BackupService,
    ManifestSigner,
)
from core.config.hardening import check_production
from core.config.settings import Settings
from core.errors import ConfigError
from core.flags import FlagService
from core.incidents import email as security_mail
from core.incidents import pagerduty
from core.incidents.alertmanager import AlertmanagerClient
from core.incidents.delivery import ChatDeliveryState
from core.incidents.service import IncidentService
from core.incidents.storm import StormBoards
from core.models import Actor, OutboxItem
from core.models.incidents import Rules
from core.ops.access_review import AccessReviewService, render_markdown
from core.ops.checklist import ChecklistService
from core.ops.cluster import ClusterService
from core.ops.jobs import JobService
from core.ops.quiesce import RestoreQuiesce
from core.ops.redis_outage import RedisWatch
from core.ops.self_healing import SelfHealingService
from core.ops.signal_health import SignalHealthService
from core.ops.slo import SloGuard
from core.ops.status import StatusService
from core.ops.store_health import StoreHealth
from core.platform.bus import Bus, InProcessBus
from core.platform.bus_redis import RedisStreamsBus, consumer_name
from core.platform.health import HealthService
from core.platform.lease import Lease
from core.platform.metrics import Metrics
from core.platform.outbox import Delivery, OutboxRetention, OutboxWorker
from core.platform.roles import Duties, ProcessRole, Stop, mark_served, store_kind
from core.platform.s3 import S3Client
from core.platform.scheduler import Scheduler
from core.platform.spool import LocalSpool
from core.platform.tasks import cancel_and_wait
from core.security.access import Authenticator, TokenAuthority
from core.security.audit import ANCHOR_FILE, AuditAnchor, AuditLog
from core.security.confirmations import ConfirmationService
from core.security.exports import JOB_EXPORT, AuditExportService
from core.security.ratelimit import RateLimiter
from core.security.refusals import RefusalRecorder
from core.security.secrets import RuntimeSecrets, resolve_secrets
from core.security.tokens import TokenService
from core.store import Store
from core.store.redis import RedisStore
from core.store.sqlite import SqliteStore
from core.trading.engine import TradingEngine
from core.trading.strategies import default_cores
from core.trading.venues.service import VenueService

logger = logging.getLogger(__name__)

REDIS_PREFIX = "lunia"  # every Redis key of the control plane starts with this
JOB_CHECKLIST = "daily-checklist"
STANDBY = "standby"  # the scheduler hold while another replica leads

# How quickly a flag flipped by the CLI (or another replica) reaches this process.
FLAG_RELOAD_SECONDS = 2.0


def open_store(settings: Settings) -> Store:
    """SQLite in the state dir (the embedded default), or Redis shared by replicas."""
    if settings.enable_redis:
        return RedisStore(settings.redis_dsn, prefix=REDIS_PREFIX)
    return SqliteStore(settings.db_path)


class ControlPlane:
    """Every core service of one process, wired together."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, role: ProcessRole = ProcessRole.ALL
    ) -> None:
        self.settings = settings
        self.version = __version__
        self.role = role
        if role.needs_redis and not settings.enable_redis:
            raise ConfigError(
                f"ENABLE_REDIS: `lunia {role.value}` shares state with the other roles through "
                "Redis; set ENABLE_REDIS=true and REDIS_URL, or run everything with `lunia run`"
            )
        self.metrics = Metrics()
        check_production(settings)  # INFRA_PROD_ENABLED: before any secret is generated
        self.secrets: RuntimeSecrets = resolve_secrets(settings)
        self.tokens = TokenAuthority(self.secrets.api_tokens)
        self.store: Store = store or open_store(settings)
        # The chain's head is anchored outside the store too (runbook §4): a rolled-back tail shows.
        self.audit = AuditLog(
            self.store, self.metrics, AuditAnchor(settings.lunia_state_dir / ANCHOR_FILE)
        )
        # Security state every replica shares through the store: refusal throttle, rate limits,
        # pending confirmations.
        self.refusals = RefusalRecorder(self.audit, self.metrics)
        self.rate_limiter = RateLimiter(self.store)
        self.confirmations = ConfirmationService(self.store)
        self.flags = FlagService(settings, self.store, self.metrics)
        self.bus: Bus = (
            RedisStreamsBus(settings.redis_dsn, prefix=REDIS_PREFIX)
            if settings.enable_redis
            else InProcessBus()
        )
        # Leader-only work (trading loop, scheduler, engine outboxes; the bot adds its own):
        # started with the process, or when this replica wins its Redis lease.
        self.duties = Duties()
        self.lease: Lease | None = None
        # Names this process in its heartbeat and as the holder of its lease.
        self.instance = consumer_name()
        self._leading: asyncio.Task[None] | None = None
        self._closing = False
        self.scheduler = Scheduler(self.metrics)
        self._alertmanager = (
            AlertmanagerClient(settings.alertmanager_url) if settings.alertmanager_url else None
        )
        self._pagerduty: pagerduty.PagerDutySender | None = None
        self._pagerduty_outbox: OutboxWorker | None = None
        if settings.pagerduty_routing_key is not None:
            self._pagerduty = pagerduty.PagerDutySender(
                settings.pagerduty_events_url, settings.pagerduty_routing_key, self.metrics
            )
            self._pagerduty_outbox = OutboxWorker(
                self.store, pagerduty.CHANNEL, self._pagerduty.deliver, self.metrics
            )
        self.security_mail_outbox: OutboxWorker | None = None
        if settings.smtp_host:
            self.security_mail_outbox = OutboxWorker(
                self.store, security_mail.CHANNEL, self._send_security_mail, self.metrics
            )
        # With Redis, writes that must not be lost are spooled locally while it is unreachable.
        self._spool = (
            LocalSpool(settings.lunia_state_dir / "spool.db") if settings.enable_redis else None
        )
        self.incidents = IncidentService(
            self.store,
            self.bus,
            self.metrics,
            Rules(
                reopen_window=timedelta(minutes=settings.incident_reopen_minutes),
                group_by=tuple(settings.alert_group_by),
                escalation=settings.escalation_policy,
            ),
            alertmanager=self._alertmanager,
            pagerduty_outbox=self._pagerduty_outbox,
            security_mail_outbox=self.security_mail_outbox,
            spool=self._spool,
        )
        self.scheduler.every(
            "escalation", settings.escalation_check_seconds, self.incidents.run_deadlines
        )
        # Alert storms as boards in chat, seen by every replica (bulk buttons may reach any).
        self.storm_boards = StormBoards(self.store, self.incidents)
        # The chat channel's own durable state (shown messages, cursor, outbox): the bot's only
        # way to the store.
        self.telegram_delivery = ChatDeliveryState(self.store, self.metrics)
        if self._alertmanager is not None:
            self.scheduler.every(
                "alertmanager-silences",
                settings.silence_sync_seconds,
                self.incidents.sync_silences,
            )
        self.venues = VenueService(settings, self.flags, self.store, self.incidents, self.metrics)
        self.trading = TradingEngine(
            settings, self.store, self.venues, self.incidents, self.metrics, default_cores()
        )
        self.redis_watch = (
            RedisWatch(
                self.store,
                self.incidents,
                self.trading,
                self.metrics,
                self._spool,
                interval=settings.redis_check_seconds,
            )
            if self._spool is not None
            else None
        )
        self.scheduler.every("venue-probe", settings.venue_probe_seconds, self.venues.probe)
        self.scheduler.every("pnl-snapshot", settings.pnl_snapshot_seconds, self.trading.record_pnl)
        self.scheduler.every(
            "order-sync", settings.venue_probe_seconds, self.trading.sync_open_orders
        )
        # Backups, verification and audit exports (runbook §3, §4).
        self._s3 = S3Client(settings)
        quiesce = RestoreQuiesce(self.scheduler, self.trading, self.incidents, self.venues)
        self.backups = BackupService(
            settings,
            self.store,
            self.audit,
            self.flags,
            self.incidents,
            self.metrics,
            signer=ManifestSigner(
                self.secrets.backup_signing_key, self.secrets.backup_signing_keys_old
            ),
            s3=self._s3,
            before_restore=quiesce.before,
            after_restore=quiesce.after,
        )
        self.exports = AuditExportService(settings, self.audit, self.store, self.metrics, self._s3)
        self.jobs = JobService(
            self.scheduler,
            self.audit,
            self.metrics,
            self.incidents,
            own_incidents=JOBS_WITH_OWN_INCIDENTS,  # the backup service raises its own
        )
        self.scheduler.every(
            JOB_BACKUP, settings.backup_interval_minutes * 60, self.backups.scheduled_backup
        )
        self.scheduler.every(JOB_OVERDUE, 60, self.backups.check_overdue)
        # Delivered outbox messages (already without payload) go after OUTBOX_RETENTION.
        self.outbox_retention = OutboxRetention(self.store, settings.outbox_retention_period)
        self.scheduler.every("outbox-prune", 3600, self.outbox_retention.prune)
        self.scheduler.cron(
            JOB_VERIFY, self.backups.verify_latest, hour=settings.backup_verify_hour, minute=30
        )
        self.scheduler.cron(
            JOB_EXPORT, self.exports.scheduled_export, day_of_week="mon", hour=4, minute=0
        )
        self.jobs.watch_outcomes()
        self.health = HealthService(self.metrics, interval=settings.health_check_interval_seconds)
        # The whole deployment from every process's heartbeat (issue 19): the bot and worker
        # components, the processes line, and what only the leading worker observes.
        self.cluster = ClusterService(
            settings,
            self.store,
            self.metrics,
            role=role,
            instance=self.instance,
            version=self.version,
            leads=self._leads,
            venues=self.venues,
            trading=self.trading,
        )
        self.status = StatusService(self.health, self.incidents, self.flags)
        self.checklist = ChecklistService(self.health, self.incidents)
        self.status.register("engine", self.trading.status_lines)
        self.checklist.register("engine", self.trading.checklist_items)
        self._store_health = StoreHealth(
            settings,
            self.store,
            self.incidents,
            self.metrics,
            self.bus,
            self.redis_watch,
            bot_elsewhere=self.cluster.bot_health if self.cluster.shared else None,
        )
        self._store_health.register(self.health)
        if self.cluster.shared:
            self.health.register("worker", self.cluster.worker_health, critical=False)
            self.status.register("deployment", self.cluster.status_lines)
        self.health.register("backups", self.backups.health, critical=False)
        self.health.register("audit_export", self.exports.health, critical=False)
        self.status.register("backups", self.backups.status_lines)
        self.checklist.register("backups", self.backups.checklist_items)
        # Temporary API tokens (issue #9): issued, listed, revoked; rotation on the checklist.
        self.temporary_tokens = TokenService(self.store, self.audit, self.metrics)
        self.authenticator = Authenticator(self.tokens, self.temporary_tokens, self.refusals)
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
            trading=self.trading,
            venues=self.venues,
            backups=self.backups,
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
            settings, self.trading, self.venues, self.assistant, self.incidents, self.cluster.cores
        )
        if self.cluster.shared or role.runs_engine:
            self.checklist.register("signals", self.signal_health.checklist_items)
        # The daily checklist (runbook §1) is a job like the others: it runs where the scheduler
        # leads (the worker) and reaches the ops chat through the shared outbox, sent by the bot.
        if settings.telegram_bot_token is not None and settings.telegram_ops_chat_id is not None:
            hour, minute = settings.checklist_time_utc.split(":")
            self.scheduler.cron(
                JOB_CHECKLIST, self.post_checklist, hour=int(hour), minute=int(minute)
            )
        if role.runs_engine:
            self._register_engine_duties()
        else:
            self.backups.schedules = False
        self.ready = False
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Open the store, load state and start background work, in dependency order; then
        take up the leader duties (at once, or when this replica wins its Redis lease)."""
        try:
            await self.store.open()
            self._stack.push_async_callback(self.store.close)
            await self.flags.load()
            self.assistant.refresh_gauges()
            watcher = asyncio.create_task(self.flags.watch(FLAG_RELOAD_SECONDS), name="flags")
            self._stack.push_async_callback(cancel_and_wait, watcher)
            self._stack.push_async_callback(self.audit.anchor_quietly)  # the last head, at close
            anchor = asyncio.create_task(self.audit.keep_anchored(), name="audit-anchor")
            self._stack.push_async_callback(cancel_and_wait, anchor)
            if self.redis_watch is not None:
                await self.redis_watch.check()  # down already? then start read-only
                for task in (
                    asyncio.create_task(self.redis_watch.run(), name="redis-watch"),
                    asyncio.create_task(
                        self.trading.follow_shared_state(FLAG_RELOAD_SECONDS), name="shared-state"
                    ),
                ):
                    self._stack.push_async_callback(cancel_and_wait, task)
            else:
                self.metrics.redis_status.state("disabled")
            await self.bus.start()
            self._stack.push_async_callback(self.bus.close)
            for client in (self._alertmanager, self._pagerduty):
                if client is not None:
                    self._stack.push_async_callback(client.close)
            await self.venues.start()
            self._stack.push_async_callback(self.venues.close)
            await self.trading.reload()  # halt and core switches, also where no loop runs
            self._stack.push_async_callback(self._s3.close)
            await self.backups.start()
            await self.assistant.start()
            self._stack.push_async_callback(self.assistant.close)
            self.scheduler.pause(STANDBY)  # jobs fire only while this process leads
            await self.scheduler.start()
            self._stack.push_async_callback(self.scheduler.close)
            await self.cluster.start()
            self._stack.push_async_callback(self.cluster.close)
            await self.health.start()
            self._stack.push_async_callback(self.health.close)
            await self._take_up_duties()
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = True
        mark_served(
            self.settings.lunia_state_dir, self.role, store_kind(self.settings.enable_redis)
        )
        logger.info(
            "control plane %s started as %s (state in %s)",
            self.version,
            self.role.value,
            "redis" if self.settings.enable_redis else self.settings.lunia_state_dir,
        )

    async def close(self) -> None:
        """Stop everything started, in reverse order; safe to call twice."""
        self.ready = False
        await self._stack.aclose()

    # -- leader duties ------------------------------------------------------------------------

    def _register_engine_duties(self) -> None:
        async def start_scheduler() -> None:
            self.scheduler.resume(STANDBY)

        async def stop_scheduler(_: bool) -> None:
            self.scheduler.pause(STANDBY)

        async def stop_trading(_: bool) -> None:
            await self.trading.close()

        self.duties.add("trading", self.trading.start, stop_trading)
        self.duties.add("scheduler", start_scheduler, stop_scheduler)
        for outbox in (self._pagerduty_outbox, self.security_mail_outbox):
            if outbox is not None:
                self.duties.add(f"outbox:{outbox.channel}", *self._outbox_duty(outbox))

    def _outbox_duty(self, outbox: OutboxWorker) -> tuple[Callable[[], Awaitable[None]], Stop]:
        async def start() -> None:
            await outbox.start()
            self.self_healing.watch_outbox(outbox)

        async def stop(drain: bool) -> None:
            self.self_healing.forget_outbox(outbox)
            await outbox.close(drain_timeout=5 if drain else 0)

        return start, stop

    def _leads(self) -> bool:
        """Whether this process does its role's leader duties now (what its heartbeat says)."""
        if self.lease is not None:
            return self.lease.is_leader
        return self.duties.active

    async def post_checklist(self) -> None:
        """The scheduled daily checklist, queued for the ops chat (the bot delivers it)."""
        chat = self.settings.telegram_ops_chat_id
        if chat is not None:
            await self.checklist.post(self.telegram_delivery, chat)

    @property
    def standing_by(self) -> bool:
        """True while another replica holds this role's lease (this one waits to take over)."""
        return self.lease is not None and not self.lease.is_leader

    async def _take_up_duties(self) -> None:
        if not self.duties.names:
            return
        self._stack.push_async_callback(self._lay_down_duties)
        lease_name = self.role.lease_name
        if not self.settings.enable_redis or lease_name is None:
            await self.duties.start()
            return
        self.lease = Lease(
            self.settings.redis_dsn,
            lease_name,
            holder=self.instance,
            ttl=self.settings.lease_ttl_seconds,
            prefix=REDIS_PREFIX,
            on_acquired=self._lead,
            on_lost=self._stand_by,
        )
        self.trading.set_fence(self.lease.check)
        self._store_health.follow_lease(self.lease)
        await self.lease.start()
        logger.info("waiting for the %s lease (held by one replica at a time)", lease_name)

    async def _lead(self, term: int) -> None:
        """Won the lease: start the duties in the background (the lease task must stay free)."""
        if self._closing:  # won again while shutting down: the lease is released right after
            return
        logger.warning("this replica leads (%s lease, term %d)", self.role.lease_name, term)
        self._leading = asyncio.create_task(self.duties.start(), name="duties")

    async def _stand_by(self) -> None:
        """Lost the lease: stop acting at once; the new leader delivers what is queued."""
        if self._closing:  # shutting down: the duties were drained, the lease is being released
            return
        logger.warning("lost the %s lease: standing by", self.role.lease_name)
        if self._leading is not None:  # let a start in progress finish, so all of it is stopped
            await asyncio.gather(self._leading, return_exceptions=True)
        await self.duties.stop(drain=False)

    async def _lay_down_duties(self) -> None:
        """Shut down: finish and drain the duties while still leader, then hand the lease over."""
        self._closing = True
        if self._leading is not None:
            await asyncio.gather(self._leading, return_exceptions=True)
        await self.duties.stop(drain=True)
        if self.lease is not None:
            await self.lease.close()

    async def _send_security_mail(self, item: OutboxItem) -> Delivery:
        """Deliver a queued security email (built late: it needs the access review)."""

        async def report() -> str:
            return render_markdown(await self.access_review.review(Actor.system("security-mail")))

        mailer = security_mail.SecurityMailer(self.settings, self.incidents.get, report)
        return await mailer.deliver(item)
