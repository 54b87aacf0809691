"""The operations runbook as data: sections keyed by the alerts that point to them, and a search.

The text is the user's runbook (``operations-runbook.md``) made true for this control plane, and
ships inside the package so the assistant can quote it without reading the filesystem. Each alert
of ``deploy/prometheus/rules/lunia.rules.yml`` (and each incident the engine raises itself) maps to
the section its ``runbook`` annotation names.
"""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel


class RunbookSection(BaseModel):
    """One section of the runbook: its number, title, symptoms and ordered actions."""

    ref: str
    title: str
    symptoms: list[str]
    actions: list[str]
    alerts: list[str]
    keywords: list[str]

    def text(self) -> str:
        """The section as plain text (the assistant's small markup: ``#`` headings, ``-`` items)."""
        lines = [f"# Runbook §{self.ref} {self.title}"]
        if self.symptoms:
            lines.append("Symptoms:")
            lines.extend(f"- {s}" for s in self.symptoms)
        lines.append("Actions:")
        lines.extend(f"- {n}. {a}" for n, a in enumerate(self.actions, start=1))
        return "\n".join(lines)


SECTIONS: tuple[RunbookSection, ...] = (
    RunbookSection(
        ref="1",
        title="Daily checklist",
        symptoms=[],
        actions=[
            "Check health: /status in Telegram, or GET /healthz and the core_pnl / risk_exposure "
            "metrics.",
            "Review open incidents (/incidents) and acknowledge them.",
            "Confirm the latest backup exists and is verified (/backups or `lunia backup list`).",
            "Rotate temporary credentials if any were issued.",
        ],
        alerts=[],
        keywords=["daily", "checklist", "morning", "routine", "check"],
    ),
    RunbookSection(
        ref="2.1",
        title="Exchange outage",
        symptoms=[
            "Elevated order error rates; exchange_failover metric > 0.",
            "ExchangeFailoverActive alert, or the engine's own failover incident.",
        ],
        actions=[
            'Fail over to the standby venue: POST /api/v1/failover {"to": "okx", '
            '"confirm": true} (or the Telegram failover button). The engine does this by itself '
            "after repeated failures of the primary.",
            "Make sure EXCHANGE_FAILOVER points to the standby venue (e.g. okx).",
            "Monitor core_pnl and orders_total; once the primary answers again, fail back "
            "(POST /api/v1/failback).",
        ],
        alerts=["ExchangeFailoverActive", "VenueUnhealthy", "OrderErrorRate"],
        keywords=["exchange", "venue", "failover", "outage", "binance", "okx", "standby", "orders"],
    ),
    RunbookSection(
        ref="2.2",
        title="Redis failure",
        symptoms=["redis_status metric != ok; bus latency spikes.", "RedisDown alert."],
        actions=[
            "The engine enters read-only mode by itself (no new orders; alerts and "
            "acknowledgements are spooled locally). To stay off Redis, set ENABLE_REDIS=false and "
            "restart.",
            "Restart the Redis container or service.",
            "Once stable, set ENABLE_REDIS=true again and redeploy; spooled writes are replayed.",
            "Redis lost for good: restore the newest backup into the embedded store "
            "(`lunia backup restore ID --yes` with ENABLE_REDIS=false, then `lunia run`), and "
            "back into Redis the same way once it is stable.",
        ],
        alerts=["RedisDown", "BusLag"],
        keywords=["redis", "store", "bus", "cache", "read-only", "readonly", "streams"],
    ),
    RunbookSection(
        ref="2.3",
        title="LLM rate-limit / outage",
        symptoms=[
            "Assistant answers say they came from the rule-based fallback.",
            "LLMRateLimited alert (llm_rate_limited = 1), or the engine's LLMRateLimited incident.",
        ],
        actions=[
            "Nothing is needed for answers: the rule-based assistant takes over by itself while "
            "the circuit is open, and a probe closes it (and resolves the incident) once the "
            "provider answers again.",
            "If the provider stays down or keeps rate limiting, set the LLM_RATE_LIMITED flag to "
            "true (Telegram /flag, PUT /api/v1/flags/LLM_RATE_LIMITED, or `lunia flags set`): no "
            "request goes to the LLM until it is unset.",
            "Watch llm_requests_total{outcome} and llm_circuit_state; unset LLM_RATE_LIMITED "
            "when the provider has recovered.",
        ],
        alerts=["LLMRateLimited"],
        keywords=["llm", "openai", "assistant", "rate", "limit", "429", "fallback", "model", "ai"],
    ),
    RunbookSection(
        ref="2.4",
        title="Elevated latency / SLO breach",
        symptoms=[
            "P99 of request_duration_seconds above 200 ms for 5 minutes (LatencySLOBreach).",
        ],
        actions=[
            "Scale API replicas or increase resources.",
            "Disable non-essential cores: POST /api/v1/cores/{name}/toggle.",
            "Review Falco alerts for noisy neighbours.",
        ],
        alerts=["LatencySLOBreach", "API5xxRate"],
        keywords=["latency", "slow", "slo", "p99", "response", "timeout", "performance"],
    ),
    RunbookSection(
        ref="2.5",
        title="Worker or bot down",
        symptoms=[
            "NoWorkerLeading or TelegramBotDown alert; /healthz component worker or telegram "
            "degraded on every replica (no live process leads the role).",
        ],
        actions=[
            "See who is alive and who leads: the processes line of /status.",
            "Restart the missing role (`make up` starts whatever is down); a standby takes "
            "over within LEASE_TTL_SECONDS x 4/3.",
            "Without a worker nothing trades and no scheduled job runs; without a bot, "
            "messages wait in the outbox and are sent once a bot leads again.",
        ],
        alerts=["NoWorkerLeading", "TelegramBotDown"],
        keywords=["worker", "bot", "leader", "lease", "heartbeat", "process", "replica"],
    ),
    RunbookSection(
        ref="3",
        title="Backups & restore",
        symptoms=["BackupStale or BackupNeverSucceeded alert; the backups health component."],
        actions=[
            "Take a backup now: `lunia backup create` or POST /api/v1/backups.",
            "Check why the scheduled one failed: AUTO_BACKUP_ENABLED, disk space, the backup "
            "job's incident.",
            "Verify backups with `lunia backup verify`; restore with `lunia backup restore ID` "
            "(takes a safety backup first), then compare PnL history.",
        ],
        alerts=["BackupStale", "BackupNeverSucceeded"],
        keywords=["backup", "backups", "restore", "snapshot", "stale", "verify"],
    ),
    RunbookSection(
        ref="4",
        title="Audit & compliance",
        symptoms=["AuditExportStale: the last audit export is over 8 days old."],
        actions=[
            "Weekly: export the audit log (`lunia audit export --dest s3://bucket/prefix`).",
            "Check the chain with `lunia audit verify`.",
            "Quarterly: run the access review (`lunia report`).",
        ],
        alerts=["AuditExportStale"],
        keywords=["audit", "compliance", "export", "access", "review", "log"],
    ),
    RunbookSection(
        ref="5",
        title="Feature flags",
        symptoms=[],
        actions=[
            "List flags with /flags or GET /api/v1/flags; each says whether an override, the "
            "environment or the default set it.",
            "Flip one at runtime (operator; dangerous values need admin and confirmation); no "
            "redeploy needed.",
        ],
        alerts=[],
        keywords=["flag", "flags", "feature", "toggle", "setting", "switch"],
    ),
    RunbookSection(
        ref="7",
        title="Escalation",
        symptoms=[
            "ControlPlaneDown: Prometheus cannot scrape the control plane.",
            "TelegramOutboxStuck: messages wait over 5 minutes for Telegram; reach the on-call "
            "another way.",
        ],
        actions=[
            "Unacknowledged incidents escalate to the escalation chat and PagerDuty by themselves.",
            "Security incidents: notify security@lunia.example with artifacts and the release "
            "report.",
            "Catastrophic failure: switch to sandbox (SANDBOX_ENABLED=true, admin) and follow the "
            "failover steps.",
        ],
        alerts=["ControlPlaneDown", "TelegramOutboxStuck"],
        keywords=["escalation", "pagerduty", "security", "sandbox", "catastrophic", "page"],
    ),
)

# Incidents the engine raises itself, by fingerprint prefix, and the section they belong to.
_ENGINE_KEYS = {"venue": "2.1", "redis": "2.2", "llm": "2.3", "backup": "3", "job:backup": "3"}
_WORD = re.compile(r"[a-z0-9]+")


class Runbook:
    """Looks sections up by number, by alert name, or by keyword."""

    def __init__(self, sections: tuple[RunbookSection, ...] = SECTIONS) -> None:
        self.sections = sections
        self._by_ref = {s.ref: s for s in sections}
        self._by_alert = {a.lower(): s for s in sections for a in s.alerts}

    def section(self, ref: str) -> RunbookSection | None:
        """The section numbered ``ref`` (``2.3`` or ``§2.3``)."""
        return self._by_ref.get(ref.strip().lstrip("§"))

    def alert_names(self) -> list[str]:
        """Every alert name the runbook has a section for."""
        return sorted({a for s in self.sections for a in s.alerts})

    def for_alert(self, name: str) -> RunbookSection | None:
        """The section an alert (or an engine incident key such as ``llm``) points to."""
        key = name.strip().lower()
        found = self._by_alert.get(key)
        if found is not None:
            return found
        for prefix, ref in _ENGINE_KEYS.items():
            if key == prefix or key.startswith(f"{prefix}:"):
                return self._by_ref[ref]
        return None

    def search(self, text: str, *, limit: int = 2) -> list[RunbookSection]:
        """Sections best matching ``text``: an alert name or section number first, then keywords
        (typos tolerated)."""
        exact = self.section(text) or self.for_alert(text)
        if exact is not None:
            return [exact]
        words = _WORD.findall(text.lower())
        for word in words:
            named = self._by_alert.get(word)
            if named is not None:
                return [named]
        scored: list[tuple[float, int, RunbookSection]] = []
        for index, section in enumerate(self.sections):
            vocabulary = set(section.keywords) | set(_WORD.findall(section.title.lower()))
            score = 0.0
            for word in words:
                if word in vocabulary:
                    score += 1.0
                elif len(word) >= 4 and difflib.get_close_matches(word, vocabulary, 1, 0.8):
                    score += 0.8
            if score > 0:
                scored.append((score, -index, section))
        scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [section for _, _, section in scored[:limit]]
