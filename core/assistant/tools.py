"""The assistant's read-only tools over the core services, and the checking of proposals.

Both assistants (LLM and rule-based) read the platform only through ``Toolbox.call``: one place
checks the caller's role (the audit tail needs operator, as ``GET /api/v1/audit`` does), bounds
each call in time, counts it, and scrubs secrets out of what it returns. No tool changes anything;
``propose_action`` only validates and records a ``ProposedAction`` for a person to confirm.

A service this process does not run (say, no trading engine) simply has no tools: adding one is
one ``Tool`` entry in ``Toolbox._register``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from core.assistant.runbook import Runbook
from core.backups import BackupService
from core.config.settings import Settings
from core.errors import InvalidInput, NotFound, OperationError, PermissionDenied
from core.flags import FlagService
from core.incidents.service import IncidentService
from core.models import Actor, Role
from core.models.assistant import ActionKind, ProposedAction, ToolResult
from core.models.incidents import IncidentState
from core.models.trading import PnlWindow, TradingMode
from core.models.venues import VenueMode
from core.platform.health import HealthService, Status
from core.platform.metrics import Metrics
from core.security.access import require
from core.security.audit import READ_ROLE as AUDIT_READ_ROLE
from core.security.audit import AuditLog
from core.security.secrets import RuntimeSecrets
from core.trading.engine import TradingEngine
from core.trading.venues.service import VenueService

logger = logging.getLogger(__name__)

PROPOSE = "propose_action"
TOOL_TIMEOUT_SECONDS = 5.0
# Metric families the metrics snapshot shows (request latency is summarised separately).
_SNAPSHOT_METRICS = (
    "core_pnl",
    "risk_exposure",
    "exchange_failover",
    "redis_status",
    "llm_rate_limited",
    "llm_circuit_state",
    "incidents_open",
    "component_healthy",
    "outbox_depth",
    "backup_last_success_timestamp_seconds",
    "backup_schedule_interval_seconds",
)
_LATENCY_SKIP = ("/metrics", "/healthz")
_SECRET_SETTINGS = (
    "openai_api_key",
    "telegram_bot_token",
    "telegram_webhook_secret",
    "pagerduty_routing_key",
    "s3_access_key_id",
    "s3_secret_access_key",
    "redis_password",
)

Handler = Callable[[dict[str, Any]], Awaitable[tuple[Any, str]]]


@dataclass(frozen=True)
class Tool:
    """One tool: its name, what it is for, its JSON-schema parameters and the role it needs."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Handler
    role: Role = Role.VIEWER
    # Its results carry alert text (titles, labels, annotations), which whoever can fire an
    # alert writes: proposals made after reading it are marked ``from_alert_content``.
    alert_text: bool = False


def _schema(
    properties: dict[str, Any] | None = None, required: Iterable[str] = ()
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties or {},
        "required": list(required),
        "additionalProperties": False,
    }


def _int(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{name} must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not {value!r}") from None
    return max(low, min(high, number))


def _usdt(value: float) -> str:
    return f"{value:+,.2f} USDT"


class Redactor:
    """Replaces known secret values with ``[redacted]`` in anything shown or sent out."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would redact ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    @classmethod
    def for_process(cls, settings: Settings, secrets: RuntimeSecrets) -> Redactor:
        """A redactor for every secret this process holds (settings and generated ones)."""
        values = [t.token for t in secrets.api_tokens]
        values += [secrets.alert_webhook_token.get_secret_value()]
        values += [secrets.callback_signing_key.get_secret_value()]
        values += [secrets.backup_signing_key.get_secret_value()]
        values += [k.get_secret_value() for k in secrets.backup_signing_keys_old]
        for name in _SECRET_SETTINGS:
            value = getattr(settings, name, None)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
        redis_url = settings.redis_dsn
        if "@" in redis_url:  # only a URL with credentials is secret
            values.append(redis_url)
        return cls(values)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        for secret in self._secrets:
            value = value.replace(secret, "[redacted]")
        return value

    def data(self, value: Any) -> Any:
        """A JSON-able value with every secret replaced inside its strings."""
        if not self._secrets:
            return value
        return json.loads(self.text(json.dumps(value, default=str)))


class Toolbox:
    """The read-only tools, built over whichever services this process runs."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        health: HealthService,
        incidents: IncidentService,
        flags: FlagService,
        audit: AuditLog,
        runbook: Runbook,
        redactor: Redactor,
        venues: VenueService | None = None,
        trading: TradingEngine | None = None,
        backups: BackupService | None = None,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._incidents = incidents
        self._flags = flags
        self._audit = audit
        self.runbook = runbook
        self._redactor = redactor
        self._venues = venues
        self._trading = trading
        self._backups = backups
        self._tools: dict[str, Tool] = {}
        self._register()

    def _add(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def _register(self) -> None:
        self._add(
            Tool(
                "health",
                "Component health (store, redis, telegram, backups, ...).",
                _schema(),
                self._health_tool,
            )
        )
        self._add(
            Tool(
                "metrics_snapshot",
                "Key Prometheus metrics now, and API request latency percentiles since start.",
                _schema(),
                self._metrics_tool,
            )
        )
        self._add(
            Tool(
                "list_incidents",
                "Incidents newest first; open ones by default.",
                _schema(
                    {
                        "state": {
                            "type": "string",
                            "enum": ["open", "all", *[s.value for s in IncidentState]],
                        },
                        "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                    }
                ),
                self._list_incidents,
                alert_text=True,
            )
        )
        self._add(
            Tool(
                "get_incident",
                "One incident with its labels, alerts and timeline.",
                _schema({"id": {"type": "integer"}}, ["id"]),
                self._get_incident,
                alert_text=True,
            )
        )
        self._add(
            Tool(
                "flags",
                "Every feature flag: value, default and source.",
                _schema(),
                self._flags_tool,
            )
        )
        self._add(
            Tool(
                "audit_tail",
                "The newest audit log entries (who did what).",
                _schema({"limit": {"type": "integer", "minimum": 1, "maximum": 20}}),
                self._audit_tool,
                AUDIT_READ_ROLE,  # the audit log's own rule (core.security.audit)
                alert_text=True,  # entries name incidents by their titles
            )
        )
        self._add(
            Tool(
                "runbook",
                "The runbook section for an alert name (e.g. RedisDown) or a topic keyword.",
                _schema({"topic": {"type": "string"}}, ["topic"]),
                self._runbook_tool,
            )
        )
        if self._venues is not None:
            self._add(
                Tool(
                    "venues",
                    "Primary, standby and active venue, failover state and each venue's health.",
                    _schema(),
                    self._venues_tool,
                )
            )
        if self._trading is not None:
            self._add(
                Tool(
                    "cores",
                    "Trading cores: enabled, running, PnL, crashes.",
                    _schema(),
                    self._cores_tool,
                )
            )
            self._add(
                Tool(
                    "pnl",
                    "PnL per core and in total (USDT) over a window.",
                    _schema({"window": {"type": "string", "enum": [w.value for w in PnlWindow]}}),
                    self._pnl_tool,
                )
            )
            self._add(
                Tool(
                    "exposure",
                    "Open exposure per symbol and in total against the risk "
                    "limits, and whether the engine is halted or read-only.",
                    _schema(),
                    self._exposure_tool,
                )
            )
        if self._backups is not None:
            self._add(
                Tool(
                    "backups",
                    "Backup schedule, last success and the newest backups.",
                    _schema(),
                    self._backups_tool,
                )
            )
        self._add(Tool(PROPOSE, "Propose an action for a person to confirm (it is NOT carried "
                       "out): ack_incident (target: incident id), toggle_core (target: core, "
                       "args.enabled), failover (target: venue id), backup.", _schema({
                           "kind": {"type": "string", "enum": [k.value for k in ActionKind]},
                           "target": {"type": "string"},
                           "args": {"type": "object"},
                           "reason": {"type": "string"},
                       }, ["kind", "reason"]), self._propose_tool))  # fmt: skip

    # -- the registry ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the tools this process offers."""
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        """One tool by name."""
        return self._tools.get(name)

    def openai_specs(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI chat-completions ``tools`` format."""
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in self._tools.values()
        ]

    async def call(self, name: str, args: dict[str, Any], actor: Actor) -> ToolResult:
        """Run one tool for ``actor``; failures come back as a result, never as an exception."""
        tool = self._tools.get(name)
        if tool is None:
            self._metrics.llm_tool_calls.labels("unknown", "error").inc()
            known = ", ".join(self._tools)
            return ToolResult(
                tool=name, args=args, ok=False, error=f"unavailable: no such tool (tools: {known})"
            )
        try:
            require(actor, tool.role, f"the {name} tool")
            async with asyncio.timeout(TOOL_TIMEOUT_SECONDS):
                data, summary = await tool.run(args)
        except PermissionDenied as exc:
            self._metrics.auth_denied.labels(actor.kind.value, "role").inc()
            error = exc.message
        except OperationError as exc:
            error = exc.message
        except TimeoutError:
            error = f"timed out after {TOOL_TIMEOUT_SECONDS:g}s"
        except Exception as exc:
            logger.exception("assistant tool %s failed", name)
            error = f"failed: {type(exc).__name__}"
        else:
            self._metrics.llm_tool_calls.labels(name, "ok").inc()
            return ToolResult(
                tool=name,
                args=args,
                ok=True,
                summary=self._redactor.text(summary),
                data=self._redactor.data(data),
            )
        self._metrics.llm_tool_calls.labels(name, "error").inc()
        return ToolResult(tool=name, args=args, ok=False, error=self._redactor.text(error))

    # -- tools -------------------------------------------------------------------------------

    async def _health_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        report = self._health.snapshot()
        bad = [
            f"{n} {c.status.value} ({c.detail})"
            for n, c in report.components.items()
            if c.status in (Status.DOWN, Status.DEGRADED)
        ]
        summary = f"overall {report.status.value}" + (f"; {'; '.join(bad)}" if bad else "")
        return report.model_dump(mode="json"), summary

    async def _metrics_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        values: dict[str, list[dict[str, Any]]] = {}
        for family in self._metrics.registry.collect():
            if family.name in _SNAPSHOT_METRICS:
                values[family.name] = [
                    {"labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                    if not s.name.endswith("_created")
                ]
        latency = self.latency()
        data = {"metrics": values, "request_latency": latency}
        summary = (
            f"API p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms over "
            f"{latency['requests']} requests since start"
            if latency["requests"]
            else "no API requests timed yet"
        )
        return data, summary

    def latency(self) -> dict[str, Any]:
        """API latency percentiles since start, from the request histogram's buckets."""
        buckets: dict[float, float] = {}
        count = 0.0
        for family in self._metrics.registry.collect():
            if family.name != "request_duration_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("route") in _LATENCY_SKIP:
                    continue
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
        ordered = sorted(buckets.items())

        def quantile(q: float) -> float | None:
            if not count:
                return None
            for bound, cumulative in ordered:
                if cumulative >= q * count:
                    return None if math.isinf(bound) else round(bound * 1000, 1)
            return None

        return {
            "requests": int(count),
            "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99),
            "slo_p99_ms": 200,
            "note": "upper bucket bounds; over the process lifetime",
        }

    async def _list_incidents(self, args: dict[str, Any]) -> tuple[Any, str]:
        state_arg = str(args.get("state", "open")).strip().lower()
        limit = _int(args, "limit", 10, 1, 20)
        if state_arg in ("open", ""):
            found = await self._incidents.list(open_only=True, limit=limit)
        elif state_arg == "all":
            found = await self._incidents.list(limit=limit)
        else:
            try:
                state = IncidentState(state_arg)
            except ValueError:
                raise InvalidInput("state must be open, all or an incident state") from None
            found = await self._incidents.list(state=state, limit=limit)
        items = [
            {
                "id": i.id,
                "title": i.title,
                "severity": i.severity.value,
                "state": i.state.value,
                "source": i.source.value,
                "count": i.count,
                "first_seen": i.first_seen.isoformat(),
                "last_seen": i.last_seen.isoformat(),
                "summary": i.summary,
                "labels": i.labels,
            }
            for i in found
        ]
        shown = "; ".join(f"#{i['id']} {i['title']} ({i['severity']}, {i['state']})" for i in items)
        return {"state": state_arg or "open", "items": items}, (
            f"{len(items)} {state_arg or 'open'} incident(s)" + (f": {shown}" if shown else "")
        )

    async def _get_incident(self, args: dict[str, Any]) -> tuple[Any, str]:
        if "id" not in args:
            raise InvalidInput("id is required")
        incident_id = _int(args, "id", 0, 0, 2**62)
        detail = await self._incidents.detail(incident_id)
        incident = detail.incident
        timeline = [
            {
                "ts": e.ts.isoformat(),
                "kind": e.kind.value,
                "actor": e.actor.describe(),
                "detail": e.detail,
            }
            for e in detail.timeline[-20:]
        ]
        data = {
            "incident": incident.model_dump(
                mode="json",
                include={
                    "id",
                    "title",
                    "severity",
                    "state",
                    "source",
                    "summary",
                    "description",
                    "labels",
                    "annotations",
                    "count",
                    "first_seen",
                    "last_seen",
                    "fingerprint",
                    "acknowledged_at",
                    "resolved_at",
                    "silenced_until",
                    "escalation_level",
                },
            ),  # fmt: skip
            "timeline": timeline,
        }
        summary = (
            f"#{incident.id} {incident.title}: {incident.severity.value}, {incident.state.value}, "
            f"seen {incident.count}x since {incident.first_seen.isoformat()}"
            + (f"; {incident.summary}" if incident.summary else "")
        )
        return data, summary

    async def _flags_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        states = self._flags.states()
        items = [
            {"name": s.name, "value": s.value, "default": s.default, "source": s.source.value}
            for s in states
        ]
        on = [s.name for s in states if s.value is True]
        changed = [f"{s.name}={s.value}" for s in states if s.value != s.default]
        summary = f"on: {', '.join(on) or 'none'}" + (
            f"; not default: {', '.join(changed)}" if changed else ""
        )
        return {"items": items}, summary

    async def _audit_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        entries = await self._audit.tail(_int(args, "limit", 10, 1, 20))
        items = [
            {
                "seq": e.seq,
                "ts": e.ts.isoformat(),
                "actor": e.actor.describe(),
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
                "detail": e.detail,
            }
            for e in entries
        ]
        return {"items": items}, f"{len(items)} newest audit entries"

    async def _runbook_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        topic = str(args.get("topic", "")).strip()
        if not topic:
            raise InvalidInput("topic is required (an alert name or a keyword)")
        found = self.runbook.search(topic)
        if not found:
            refs = ", ".join(f"§{s.ref} {s.title}" for s in self.runbook.sections)
            raise NotFound(f"no runbook section about {topic!r}; sections: {refs}")
        data = {"sections": [s.model_dump() for s in found], "text": [s.text() for s in found]}
        return data, "; ".join(f"§{s.ref} {s.title}" for s in found)

    async def _venues_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        assert self._venues is not None  # noqa: S101 - registered only with a venue service
        status = self._venues.status()
        summary = f"trading on {status.active}" + (
            f" (FAILED OVER from {status.primary} since "
            f"{status.since.isoformat() if status.since else '?'}: {status.reason or 'no reason'})"
            if status.failed_over
            else f" (the primary; standby {status.standby})"
        )
        return status.model_dump(mode="json"), summary

    async def _cores_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        assert self._trading is not None  # noqa: S101 - registered only with an engine
        cores = self._trading.cores()
        shown = ", ".join(
            f"{c.name} {'on' if c.enabled else 'off'}"
            + ("" if c.running or not c.enabled else " (not running)")
            for c in cores
        )
        return {"items": [c.model_dump(mode="json") for c in cores]}, f"{len(cores)} cores: {shown}"

    async def _pnl_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        assert self._trading is not None  # noqa: S101 - registered only with an engine
        report = await self._trading.pnl(str(args.get("window", PnlWindow.DAY)))
        data = report.model_dump(mode="json", exclude={"points"})
        data["history_points"] = len(report.points)
        per_core = ", ".join(f"{c} {_usdt(v)}" for c, v in report.core_changes.items())
        return data, (
            f"PnL {report.label}: {_usdt(report.change)} ({per_core}); "
            f"total now {_usdt(report.total)}"
        )

    async def _exposure_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        assert self._trading is not None  # noqa: S101 - registered only with an engine
        report = self._trading.exposure()
        state = self._trading.state()
        data = {
            "exposure": report.model_dump(mode="json"),
            "engine": state.model_dump(mode="json"),
        }
        trading = state.mode is TradingMode.TRADING
        return data, (
            f"exposure {report.total:,.2f} of {report.limit:,.2f} USDT limit over "
            f"{len(report.symbols)} symbol(s)"
            + ("" if trading else f"; engine {state.mode.upper()}")
        )

    async def _backups_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        assert self._backups is not None  # noqa: S101 - registered only with a backup service
        status = self._backups.status()
        newest = (await self._backups.list())[:5]
        data = {
            "status": status.model_dump(mode="json"),
            "newest": [
                b.model_dump(mode="json", include={"id", "created_at", "age_seconds", "status",
                                                   "size_bytes", "reason", "problem"})
                for b in newest
            ],
        }  # fmt: skip
        last = status.last_success_at.isoformat() if status.last_success_at else "never"
        summary = f"last successful backup {last}" + (" (OVERDUE)" if status.overdue else "")
        if status.last_error:
            summary += f"; last error: {status.last_error}"
        return data, summary

    async def _propose_tool(self, args: dict[str, Any]) -> tuple[Any, str]:
        proposal = await self.check_proposal(args)
        return (
            {"recorded": True, "proposal": proposal.model_dump(mode="json")},
            f"proposed: {proposal.describe()} (a person must confirm it; nothing was done)",
        )

    # -- proposals ---------------------------------------------------------------------------

    def read_alert_text(self, results: Iterable[ToolResult]) -> bool:
        """Whether any of these tool results carried alert text."""
        return any(
            r.ok and (tool := self._tools.get(r.tool)) is not None and tool.alert_text
            for r in results
        )

    def mark_proposals(
        self, proposals: list[ProposedAction], results: Iterable[ToolResult]
    ) -> list[ProposedAction]:
        """The proposals of one answer, marked with whether the answer read alert text (any of
        ``results``) and whether each loosens safety."""
        from_alert = self.read_alert_text(results)
        return [
            p.model_copy(
                update={"from_alert_content": from_alert, "loosens_safety": self._loosens(p)}
            )
            for p in proposals
        ]

    def _loosens(self, proposal: ProposedAction) -> bool:
        """Switching a core on (or a toggle of unknown direction), failing back to the primary,
        or moving onto a venue that trades real funds."""
        if proposal.kind is ActionKind.TOGGLE_CORE:
            return proposal.args.get("enabled") is not False
        if proposal.kind is not ActionKind.FAILOVER:
            return False
        if self._venues is None:
            return True
        status = self._venues.status()
        target = proposal.target.lower() or status.standby
        live = {v.name for v in status.items if v.mode is VenueMode.LIVE}
        return target == status.primary or target in live

    async def check_proposal(self, args: dict[str, Any]) -> ProposedAction:
        """Validate a proposal's kind and target against the live state; ``InvalidInput`` if
        it names nothing that exists."""
        try:
            kind = ActionKind(str(args.get("kind", "")).strip().lower())
        except ValueError:
            kinds = ", ".join(k.value for k in ActionKind)
            raise InvalidInput(f"kind must be one of {kinds}") from None
        target = str(args.get("target", "") or "").strip()
        raw_args = args.get("args") or {}
        extra = {
            str(k): v
            for k, v in (raw_args.items() if isinstance(raw_args, dict) else [])
            if isinstance(v, str | int | float | bool)
        }
        reason = str(args.get("reason", "")).strip()[:500] or "proposed by the assistant"
        confirm = False
        if kind is ActionKind.ACKNOWLEDGE_INCIDENT:
            incident = await self._incidents.get(
                _int({"id": target.lstrip("#")}, "id", 0, 0, 2**62)
            )
            if incident.state is not IncidentState.TRIGGERED:
                raise InvalidInput(
                    f"incident #{incident.id} is {incident.state.value}, not triggered"
                )
            target = str(incident.id)
        elif kind is ActionKind.TOGGLE_CORE:
            if self._trading is None:
                raise InvalidInput("no trading engine in this process")
            core = self._trading.core(target)
            enabled = extra.get("enabled")
            if not isinstance(enabled, bool):
                enabled = not core.enabled
            extra = {"enabled": enabled}
            confirm = core.essential and core.enabled and not enabled
        elif kind is ActionKind.FAILOVER:
            if self._venues is None:
                raise InvalidInput("no venue service in this process")
            status = self._venues.status()
            target = target.lower() or status.standby
            if target not in (status.primary, status.standby):
                raise InvalidInput(f"failover target must be {status.primary} or {status.standby}")
            if target == status.active:
                raise InvalidInput(f"already trading on {target}")
            confirm = True
        else:
            target = ""
        return ProposedAction(
            kind=kind, target=target, args=extra, reason=reason, role=Role.OPERATOR, confirm=confirm
        )
