"""Prometheus metrics of the control plane, on a registry owned by one ``Metrics`` object.

Names the runbook uses are exact (``core_pnl``, ``risk_exposure``, ``exchange_failover``,
``orders_total``, ``redis_status``, ``request_duration_seconds``). No module-level metric objects:
each ``ControlPlane`` gets its own registry, so tests and multiple instances never collide.

Label values are bounded: anything a client chooses (an HTTP method, a path, a bot command) is
mapped onto a fixed set before it becomes a label, so ``/metrics`` stays small whatever the
traffic. A scrape costs little event-loop time: it is answered from a snapshot of the exposition
at most ``SNAPSHOT_SECONDS`` old, and a render formats only the series that changed since the last
one (``Metrics.exposition``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST as _CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = _CONTENT_TYPE

# The methods of RFC 9110 an API client sends; any other method becomes one label value.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
# Requests no route answered (404 of any path, 405 of any method, refused before routing) and
# anonymous requests a route refused (401 without a valid token, 4xx before credentials were
# accepted) share one route value and one method value: one series per status, whatever was sent.
UNMATCHED_ROUTE = "unmatched"
ANY_METHOD = "any"


def method_label(method: str) -> str:
    """The ``method`` label of an HTTP request: the method itself if standard, else ``other``."""
    return method if method in STANDARD_METHODS else OTHER_METHOD


# Request latency buckets for this API (probes take about a millisecond, API calls tens of them),
# with a bound at the runbook's 200 ms SLO so the share of requests over it is exact. Each bucket
# is one more line per route, method and status in every scrape.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
# Scheduled jobs run from milliseconds (probes) to minutes (backups); a dozen jobs share these.
JOB_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0)
# How old the exposition a scrape is answered with may be. Prometheus scrapes every few seconds,
# so it always sees a fresh render; a flood of scrapes costs one render per this many seconds.
SNAPSHOT_SECONDS = 0.25


class Metrics:
    """Every metric the control plane exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_status = Enum(
            "redis_status",
            "State of the shared Redis store and bus.",
            states=["ok", "down", "disabled"],
            registry=r,
        )
        self.exchange_failover = Gauge(
            "exchange_failover", "1 while trading on the standby venue.", registry=r
        )
        self.core_pnl = Gauge(
            "core_pnl", "Realized plus unrealized PnL per core (USDT).", ["core"], registry=r
        )
        self.risk_exposure = Gauge("risk_exposure", "Total open exposure (USDT).", registry=r)
        self.core_ticks = Counter(
            "core_ticks",
            "Completed decision ticks per core (its signal loop).",
            ["core"],
            registry=r,
        )
        self.orders = Counter(
            "orders", "Orders by venue, side and status.", ["venue", "side", "status"], registry=r
        )
        self.llm_rate_limited = Gauge(
            "llm_rate_limited",
            "1 while the assistant answers from the rule-based fallback.",
            registry=r,
        )
        # The assistant (core/assistant/service.py): one count per question answered.
        self.llm_requests = Counter(
            "llm_requests",
            "Assistant questions by outcome (ok, fallback, rate_limited, error).",
            ["outcome"],
            registry=r,
        )
        self.llm_tool_calls = Counter(
            "llm_tool_calls",
            "Assistant tool calls by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "llm_answer_duration_seconds",
            "Time to answer an assistant question, by source (llm, fallback).",
            ["source"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
            registry=r,
        )
        self.llm_circuit = Enum(
            "llm_circuit_state",
            "State of the LLM circuit breaker.",
            states=["closed", "open", "half_open"],
            registry=r,
        )
        self.flag_info = Gauge(
            "feature_flag_info",
            "Effective value and source of each feature flag (always 1).",
            ["flag", "value", "source"],
            registry=r,
        )
        self.flag_enabled = Gauge(
            "feature_flag_enabled", "1 when a boolean feature flag is on.", ["flag"], registry=r
        )
        self.flag_changes = Counter(
            "feature_flag_changes",
            "Flag overrides set or cleared.",
            ["flag", "action"],
            registry=r,
        )
        self.component_up = Gauge(
            "component_healthy",
            "1 when a health component is ok (or disabled).",
            ["component"],
            registry=r,
        )
        self.audit_entries = Counter(
            "audit_entries", "Audit entries written by action outcome.", ["outcome"], registry=r
        )
        self.auth_denied = Counter(
            "unauthorized_attempts",
            "Requests refused for missing or insufficient rights.",
            ["adapter", "reason"],
            registry=r,
        )

        self.job_runs = Counter(
            "scheduler_job_runs", "Scheduled job runs by outcome.", ["job", "outcome"], registry=r
        )
        self.job_duration = Histogram(
            "scheduler_job_duration_seconds",
            "Scheduled job run time.",
            ["job"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_last_success = Gauge(
            "scheduler_job_last_success_timestamp_seconds",
            "When each job last succeeded.",
            ["job"],
            registry=r,
        )

        # Alerts and incidents
        self.alerts_received = Counter(
            "alerts_received",
            "Alerts received by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.incidents_open = Gauge(
            "incidents_open", "Open incidents by severity.", ["severity"], registry=r
        )
        self.time_to_ack = Histogram(
            "incident_time_to_acknowledge_seconds",
            "From first alert to acknowledgement.",
            ["severity"],
            buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400),
            registry=r,
        )
        self.escalations = Counter(
            "incident_escalations",
            "Escalations sent by target.",
            ["severity", "target"],
            registry=r,
        )
        self.outbox_sends = Counter(
            "outbox_sends",
            "Outbox deliveries by channel and outcome.",
            ["channel", "outcome"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "outbox_depth", "Messages waiting per outbox channel.", ["channel"], registry=r
        )
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest waiting message per channel.",
            ["channel"],
            registry=r,
        )
        self.telegram_sends = Counter(
            "telegram_sends",
            "Telegram Bot API calls by method and outcome.",
            ["method", "outcome"],
            registry=r,
        )
        self.telegram_commands = Counter(
            "telegram_commands",
            "Bot commands and button presses by name and outcome.",
            ["command", "outcome"],
            registry=r,
        )
        self.pagerduty_sends = Counter(
            "pagerduty_sends",
            "PagerDuty Events API calls by outcome.",
            ["action", "outcome"],
            registry=r,
        )

        # Backups (issue-owned by the backup service; exported from the start so the
        # BackupStale rule has series to read: interval 0 means scheduled backups are off).
        self.backup_last_success = Gauge(
            "backup_last_success_timestamp_seconds", "When the last backup succeeded.", registry=r
        )
        self.backup_interval = Gauge(
            "backup_schedule_interval_seconds",
            "Seconds between scheduled backups (0: off).",
            registry=r,
        )
        self.backup_size = Gauge(
            "backup_last_size_bytes", "Size of the last successful backup.", registry=r
        )
        self.backup_duration = Histogram(
            "backup_duration_seconds",
            "Time taken by backup operations (create, verify, restore).",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.backup_operations = Counter(
            "backup_operations",
            "Backup operations by kind and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.backup_last_verified = Gauge(
            "backup_last_verified_timestamp_seconds",
            "When a backup last passed verification (trial restore).",
            registry=r,
        )
        self.audit_export_last_success = Gauge(
            "audit_export_last_success_timestamp_seconds",
            "When the audit log was last exported.",
            registry=r,
        )

        # Self-healing (core/ops/self_healing.py) and the latency SLO guard (core/ops/slo.py).
        self.self_healing_actions = Counter(
            "self_healing_actions",
            "Remedies the self-healing loop carried out, by action.",
            ["action"],
            registry=r,
        )
        self.slo_p99 = Gauge(
            "slo_request_p99_seconds",
            "P99 of request_duration_seconds over the SLO window (NaN: no traffic).",
            registry=r,
        )

        # Redis itself (ENABLE_REDIS=true): round trip of the health ping, failures, leases.
        self.redis_latency = Histogram(
            "redis_ping_seconds",
            "Round trip of the Redis health ping.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.redis_errors = Counter("redis_errors", "Redis health pings that failed.", registry=r)
        self.lease_leader = Gauge(
            "lease_leader", "1 while this process holds the named lease.", ["lease"], registry=r
        )
        self.lease_term = Gauge(
            "lease_term",
            "Fencing term of the named lease this process last held.",
            ["lease"],
            registry=r,
        )
        # The deployment as this replica reads it from every process's heartbeat
        # (core/ops/cluster.py): the same figures on every replica, so any one scraped will do.
        # The label is ``process_role``: Prometheus's scrape config already labels each target
        # with the ``role`` of the process scraped.
        self.cluster_processes = Gauge(
            "cluster_processes",
            "Live processes of the deployment by role (from their heartbeats).",
            ["process_role"],
            registry=r,
        )
        self.cluster_leaders = Gauge(
            "cluster_leaders",
            "Live processes of a role that lead it (1 expected for bot and worker; 0: none).",
            ["process_role"],
            registry=r,
        )
        self.venue_healthy = Gauge(
            "venue_healthy",
            "1 while the venue's last probe (by the leading worker) succeeded, 0 when it failed.",
            ["venue"],
            registry=r,
        )
        self.spool_depth = Gauge(
            "spool_depth",
            "Writes kept locally while Redis is unreachable, waiting to be replayed.",
            ["kind"],
            registry=r,
        )

        # The event bus on Redis Streams (core/platform/bus_redis.py), per consumer group.
        self.bus_lag = Gauge(
            "bus_lag",
            "Stream entries a consumer group has not read yet (NaN: Redis cannot tell).",
            ["group"],
            registry=r,
        )
        self.bus_pending = Gauge(
            "bus_pending",
            "Entries a consumer group has read but not acknowledged.",
            ["group"],
            registry=r,
        )

        families = [m for m in vars(self).values() if isinstance(m, MetricWrapperBase)]
        self._renderer = _ExpositionRenderer(families)
        self._render_lock = threading.Lock()
        self._snapshot: tuple[float, bytes] | None = None

    def render(self) -> bytes:
        """The exposition text for ``/metrics`` as of now (it also becomes the snapshot)."""
        with self._render_lock:  # the renderer's caches are not for two threads at once
            text = self._renderer.render()
            self._snapshot = (time.monotonic(), text)
        return text

    def exposition(self) -> bytes:
        """The exposition text, rendered at most ``SNAPSHOT_SECONDS`` ago.

        Renders on the calling thread when the snapshot is older: a render takes well under a
        millisecond, and a worker thread would hold the GIL the event loop needs just the same.
        """
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - snapshot[0] < SNAPSHOT_SECONDS:
            return snapshot[1]
        return self.render()


class _ExpositionRenderer:
    """Prometheus text (format 0.0.4) of a fixed list of metrics, formatting only what changed.

    Equal to prometheus_client's ``generate_latest`` without the ``*_created`` gauges (creation
    times no rule or panel reads: one more series per counter and histogram child). Counters,
    gauges and histograms are read straight from their children's values, because ``collect()``
    builds a labels dict per sample and formats every bucket bound again on each scrape (most of
    a 12 ms render); each child's lines are kept with the values they show and reused while those
    are unchanged. Other kinds (enums) go through ``collect()``.
    """

    def __init__(self, families: list[MetricWrapperBase]) -> None:
        self._families = [(f, _header(next(iter(f.describe())))) for f in families]
        self._series: dict[tuple[str, tuple[str, ...]], _Series] = {}

    def render(self) -> bytes:
        """The exposition of every family, now."""
        out: list[str] = []
        seen: dict[tuple[str, tuple[str, ...]], _Series] = {}
        for family, header in self._families:
            out.append(header)
            if type(family) not in _READ:
                _collected(family, out)
                continue
            for labelvalues, child in _children(family):
                values = _READ[type(family)](child)
                key = (family._name, tuple(labelvalues))
                series = self._series.get(key) or _Series(family, key[1], child)
                if series.values != values:
                    series.format(values)
                seen[key] = series
                out.append(series.text)
        self._series = seen  # series removed since the last render drop out
        return "".join(out).encode()


def _children(family: MetricWrapperBase) -> list[tuple[Sequence[str], MetricWrapperBase]]:
    """(label values, child) of each series of ``family``; an unlabelled metric is its own."""
    if not family._labelnames:
        return [((), family)]
    with family._lock:
        return list(cast("dict[Sequence[str], MetricWrapperBase]", family._metrics).items())


def _histogram_values(child: Any) -> tuple[float, ...]:
    return (*[bucket.get() for bucket in child._buckets], child._sum.get())


def _value(child: Any) -> tuple[float, ...]:
    return (child._value.get(),)


# The values of one child, by metric type (histograms: each bucket's own count, then the sum).
_READ: dict[type, Callable[[Any], tuple[float, ...]]] = {
    Counter: _value,
    Gauge: _value,
    Histogram: _histogram_values,
}


class _Series:
    """One child's lines: their prefixes (name and labels), and the text for ``values``."""

    def __init__(self, family: MetricWrapperBase, labelvalues: tuple[str, ...], child: Any):
        pairs = list(zip(family._labelnames, labelvalues, strict=True))
        name, labels = family._name, _labels(pairs)
        self.histogram = isinstance(family, Histogram)
        if self.histogram:
            bounds: list[float] = child._upper_bounds
            self.prefixes = [
                f"{name}_bucket{_labels([*pairs, ('le', _number(b))])} " for b in bounds
            ]
            self.prefixes.append(f"{name}_count{labels} ")
            if bounds[0] >= 0:  # as prometheus_client: no sum when a bound is negative
                self.prefixes.append(f"{name}_sum{labels} ")
        else:
            suffix = "_total" if isinstance(family, Counter) else ""
            self.prefixes = [f"{name}{suffix}{labels} "]
        self.values: tuple[float, ...] = ()
        self.text = ""

    def format(self, values: tuple[float, ...]) -> None:
        """Format ``values``: a gauge's or counter's one value, or a histogram's bucket counts
        (made cumulative, their total the count) and sum."""
        shown = list(values)
        if self.histogram:
            shown = list(itertools.accumulate(values[:-1]))
            shown += [shown[-1], values[-1]]
        self.text = "".join(
            f"{p}{_number(v)}\n" for p, v in zip(self.prefixes, shown, strict=False)
        )
        self.values = values


def _collected(family: MetricWrapperBase, out: list[str]) -> None:
    """The samples of ``family`` through its public ``collect()``."""
    for metric in family.collect():
        created = metric.name + "_created"
        out.extend(
            f"{s.name}{_labels(s.labels.items())} {_number(s.value)}\n"
            for s in metric.samples
            if s.name != created
        )


# A sample value as Go writes it (what Prometheus parses: +Inf, NaN, 1.5e+06).
_number: Callable[[float], str] = floatToGoString

# How the text format names each family type (counters gain _total, enums are gauges).
_TYPES = {"stateset": "gauge", "info": "gauge", "unknown": "untyped", "gaugehistogram": "histogram"}
_SUFFIXES = {"counter": "_total", "info": "_info"}


def _header(metric: Metric) -> str:
    name = metric.name + _SUFFIXES.get(metric.type, "")
    help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {_TYPES.get(metric.type, metric.type)}\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="x",b="y"}`` sorted by label name, values escaped; empty without labels."""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(pairs))
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
