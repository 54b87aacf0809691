"""The rule-based assistant: deterministic intent matching and templated answers.

It answers the questions on-call actually asks (PnL, exposure, health, what is broken, open
incidents, why did we fail over, is Redis ok, latency, last backup, which flags are on, what the
runbook says) from the same read-only tools as the LLM, so both give the same facts. Matching is
by keywords with weights, after normalising common phrasings ("fail over" → failover, "P&L" →
pnl) and tolerating typos with ``difflib`` closeness on each word. It is used when no LLM is
configured, while ``LLM_RATE_LIMITED`` is on, and while the LLM circuit is open.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.assistant.tools import Toolbox
from core.models import Actor
from core.models.assistant import ActionKind, AnswerSection, ProposedAction, ToolResult
from core.models.trading import PnlWindow, TradingMode


@dataclass(frozen=True)
class Intent:
    """A kind of question: its keywords (word → weight) and what it answers, for the help list."""

    name: str
    description: str
    example: str
    keywords: dict[str, float]


INTENTS: tuple[Intent, ...] = (
    Intent("runbook", "what the runbook says about an alert or topic",
           "what does the runbook say about RedisDown?",
           {"runbook": 3, "playbook": 3, "procedure": 2, "howto": 3, "steps": 1.5,
            "instructions": 2, "guide": 1.5}),
    Intent("pnl", "PnL per core and in total", "what's our PnL?",
           {"pnl": 3, "profit": 2.5, "profits": 2.5, "loss": 2, "losses": 2, "earn": 2,
            "earned": 2, "earning": 2, "earnings": 2, "money": 2, "made": 1, "make": 1,
            "profitable": 2.5, "returns": 1.5, "gains": 2, "performance": 1}),
    Intent("exposure", "open exposure against the risk limits", "what's our exposure?",
           {"exposure": 3, "exposed": 3, "position": 2.5, "positions": 2.5, "risk": 2,
            "holding": 2, "holdings": 2, "leverage": 1.5, "inventory": 1.5, "limits": 1.5}),
    Intent("broken", "what is broken right now (health, incidents, venues)", "what is broken?",
           {"broken": 3, "wrong": 3, "failing": 2.5, "down": 1.5, "problem": 2.5,
            "problems": 2.5, "issue": 2, "issues": 2, "errors": 1.5, "fire": 1.5,
            "outage": 2, "trouble": 2}),
    Intent("incidents", "open incidents", "show open incidents",
           {"incident": 3, "incidents": 3, "alert": 2.5, "alerts": 2.5, "firing": 2,
            "paged": 2, "pages": 2, "unacknowledged": 2.5, "acknowledged": 1.5, "open": 0.5,
            "triggered": 2}),
    Intent("failover", "which venue we trade on and why we failed over", "why did we fail over?",
           {"failover": 3, "failback": 2.5, "venue": 2, "venues": 2, "exchange": 2,
            "exchanges": 2, "standby": 2, "primary": 1.5, "okx": 1.5, "binance": 1.5,
            "switched": 1.5, "trading": 0.5}),
    Intent("redis", "whether Redis is ok", "is Redis ok?",
           {"redis": 3, "cache": 1.5, "bus": 1.5, "store": 1, "streams": 1.5, "database": 1}),
    Intent("latency", "API latency against the 200 ms P99 SLO", "how is latency?",
           {"latency": 3, "slow": 2.5, "slo": 2.5, "p99": 3, "p95": 2.5, "fast": 1.5,
            "lag": 2, "laggy": 2, "sluggish": 2, "responsetime": 3, "duration": 1.5}),
    Intent("backup", "the last backup and the backup schedule", "when was the last backup?",
           {"backup": 3, "backups": 3, "snapshot": 2, "snapshots": 2, "restore": 1.5,
            "backed": 2.5}),
    Intent("flags", "which feature flags are on", "which flags are on?",
           {"flag": 3, "flags": 3, "feature": 2, "features": 2, "toggles": 2, "switches": 1.5,
            "settings": 1}),
    Intent("cores", "trading cores: on, running, PnL", "which cores are running?",
           {"core": 3, "cores": 3, "strategy": 2.5, "strategies": 2.5, "algo": 2, "algos": 2,
            "bots": 1.5}),
    Intent("audit", "who did what recently (audit log, operator)", "who changed what recently?",
           {"audit": 3, "changed": 2, "changes": 2, "who": 1, "history": 1.5, "log": 1}),
    Intent("health", "overall health of every component", "is everything healthy?",
           {"health": 3, "healthy": 3, "status": 2, "ok": 0.5, "up": 1, "alive": 2,
            "running": 0.5, "doing": 1.5, "everything": 1, "fine": 1, "working": 1.5}),
    Intent("help", "what I can answer", "help",
           {"help": 3, "commands": 2, "can": 0.3, "capabilities": 3}),
)  # fmt: skip

# Multi-word phrasings rewritten to one keyword before matching.
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bp\s*(?:&|and|n|/)\s*l\b", "pnl"),
    (r"\bprofit\s+and\s+loss\b", "pnl"),
    (r"\bfail(?:ed|ing|s)?\s+(?:over|ovr)\b", "failover"),
    (r"\bfailed?overs?\b", "failover"),
    (r"\bfail(?:ed|ing)?\s+back\b", "failback"),
    (r"\bresponse\s+times?\b", "responsetime"),
    (r"\bhow\s+(?:do|should|can)\s+(?:i|we)\b", "howto"),
    (r"\bwhat\s+(?:should|do)\s+(?:i|we)\s+do\b", "howto"),
    (r"\bwhat(?:\s+i)?s\s+(?:wrong|broken|failing|down)\b", "broken"),
    (r"\bwent\s+wrong\b", "wrong"),
    (r"\bon\s+fire\b", "fire"),
    (r"\bback(?:ed)?\s+up\b", "backup"),
)
_STOPWORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "do", "does", "did", "we", "our",
    "us", "i", "me", "my", "you", "your", "it", "its", "of", "on", "in", "to", "for", "at", "by",
    "with", "about", "what", "whats", "which", "who", "why", "how", "when", "where", "there",
    "any", "anything", "show", "tell", "give", "list", "please", "now", "currently", "current",
    "right", "today", "this", "that", "and", "or",
})  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+")
_THRESHOLD = 1.5


@dataclass(frozen=True)
class IntentMatch:
    """The intent a question matched, its score, and the words left over (e.g. a topic)."""

    intent: str
    score: float
    topic: str


def normalise(question: str) -> list[str]:
    """Lowercase words of ``question`` after phrase rewriting, without stop words."""
    text = question.lower().replace("’", "'").replace("'", "")
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, f" {replacement} ", text)
    return [w for w in _WORD.findall(text) if w not in _STOPWORDS]


def _vocabulary() -> dict[str, list[tuple[str, float]]]:
    vocabulary: dict[str, list[tuple[str, float]]] = {}
    for intent in INTENTS:
        for word, weight in intent.keywords.items():
            vocabulary.setdefault(word, []).append((intent.name, weight))
    return vocabulary


_VOCABULARY = _vocabulary()


def _closest(word: str) -> str | None:
    """The keyword ``word`` is, or is a typo of (short words must match exactly)."""
    if word in _VOCABULARY:
        return word
    if len(word) < 4 or word.isdigit():
        return None
    cutoff = 0.75 if len(word) <= 5 else 0.8
    found = difflib.get_close_matches(word, _VOCABULARY, n=1, cutoff=cutoff)
    return found[0] if found else None


def match_intent(question: str, alert_names: list[str] | None = None) -> IntentMatch | None:
    """The best intent for ``question``, or None when nothing scores high enough."""
    words = normalise(question)
    alerts = {a.lower() for a in alert_names or []}
    scores: dict[str, float] = {}
    leftover: list[str] = []
    seen: set[str] = set()
    for word in words:
        if word in alerts:
            scores["runbook"] = scores.get("runbook", 0.0) + 1.5
            leftover.append(word)
            continue
        keyword = _closest(word)
        if keyword is None:
            leftover.append(word)
            continue
        if keyword in seen:
            continue
        seen.add(keyword)
        for intent, weight in _VOCABULARY[keyword]:
            scores[intent] = scores.get(intent, 0.0) + weight
        if not any(intent == "runbook" for intent, _ in _VOCABULARY[keyword]):
            leftover.append(word)
    if not scores:
        return None
    order = {intent.name: index for index, intent in enumerate(INTENTS)}
    best = max(scores, key=lambda name: (scores[name], -order[name]))
    if scores[best] < _THRESHOLD:
        return None
    return IntentMatch(intent=best, score=scores[best], topic=" ".join(leftover))


@dataclass
class RuleReply:
    """What the rule-based assistant found: sections to show, and the facts behind them."""

    intent: str | None
    sections: list[AnswerSection]
    facts: list[ToolResult] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    proposals: list[ProposedAction] = field(default_factory=list)


def _ts(value: Any) -> str:
    if not isinstance(value, str):
        return "never"
    try:
        when = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _money(value: Any) -> str:
    return f"{float(value):+,.2f} USDT"


class RuleAssistant:
    """Answers matched questions from the toolbox with templates."""

    def __init__(self, toolbox: Toolbox) -> None:
        self._toolbox = toolbox

    def capabilities(self) -> list[str]:
        """One line per intent: what it answers and an example question."""
        return [f'{i.description} (e.g. "{i.example}")' for i in INTENTS if i.name != "help"]

    async def answer(self, question: str, actor: Actor) -> RuleReply:
        """Match ``question`` to an intent and answer it from the tools."""
        found = match_intent(question, self._toolbox.runbook.alert_names())
        if found is None:
            return RuleReply(
                intent=None,
                sections=[
                    AnswerSection(
                        title="I could not match that question",
                        lines=["I can answer questions about:"],
                        items=self.capabilities(),
                    )
                ],
            )
        run = _Run(self._toolbox, actor, found.intent)
        handler = getattr(self, f"_{found.intent}")
        await handler(run, found)
        return run.reply()

    # -- intents -------------------------------------------------------------------------------

    async def _help(self, run: _Run, found: IntentMatch) -> None:
        run.section("What I can answer", items=self.capabilities())

    async def _pnl(self, run: _Run, found: IntentMatch) -> None:
        weekly = re.search(r"\b(7d|week|weekly|7 days)\b", found.topic)
        window = PnlWindow.WEEK if weekly else PnlWindow.DAY
        data = await run.tool("pnl", window=window.value)
        if data is None:
            return
        changes = data.get("core_changes", {})
        # The change over the window when the history covers it; else since when it does.
        title = f"PnL ({window})" if data.get("full_window") else f"PnL ({data.get('label')})"
        run.section(
            title,
            [f"Change: {_money(data['change'])}", f"Total now: {_money(data['total'])}"],
            [
                f"{c['core']}: {_money(changes.get(c['core'], 0.0))} "
                f"(total {_money(c['total'])}: realized {_money(c['realized'])}, "
                f"unrealized {_money(c['unrealized'])})"
                for c in data.get("cores", [])
            ],
        )

    async def _exposure(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("exposure")
        if data is None:
            return
        report, engine = data["exposure"], data["engine"]
        share = report["total"] / report["limit"] * 100 if report["limit"] else 0.0
        lines = [f"Total exposure: {report['total']:,.2f} USDT of {report['limit']:,.2f} USDT "
                 f"limit ({share:.1f}%)."]  # fmt: skip
        mode = TradingMode(engine.get("mode", TradingMode.TRADING))
        if mode is TradingMode.HALTED:
            lines.append(f"The engine is HALTED: {engine.get('halt_reason') or 'no reason given'}.")
        elif mode is TradingMode.READ_ONLY:
            lines.append(f"The engine is READ-ONLY: {engine.get('read_only_reason')}.")
        items = [
            f"{s['symbol']}: {s['quantity']:.8g} @ {s['price'] or 0:,.2f} = "
            f"{s['exposure']:,.2f} USDT (limit {s['limit']:,.2f})"
            for s in report.get("symbols", [])
        ]
        run.section("Exposure", lines, items or ["no open positions"])

    async def _health(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("health")
        if data is None:
            return
        components = data.get("components", {})
        run.section(
            f"Health: {data['status']}",
            items=[f"{n}: {c['status']} ({c.get('detail', '')})" for n, c in components.items()],
        )

    async def _broken(self, run: _Run, found: IntentMatch) -> None:
        problems: list[str] = []
        health = await run.tool("health")
        if health is not None:
            problems.extend(
                f"{n} is {c['status']}: {c.get('detail', '')}"
                for n, c in health.get("components", {}).items()
                if c["status"] in ("down", "degraded")
            )
        incidents = await run.tool("list_incidents", state="open", limit=10)
        if incidents is not None:
            problems.extend(_incident_line(i) for i in incidents["items"])
        venues = await run.tool("venues") if self._toolbox.get("venues") else None
        if venues is not None and venues.get("failed_over"):
            problems.append(
                f"failed over: trading on {venues['active']} instead of {venues['primary']} "
                f"({venues.get('reason') or 'no reason recorded'})"
            )
        if problems:
            run.section("What looks broken", items=problems)
        else:
            run.section("Nothing looks broken", ["Health is ok and no incident is open."])

    async def _incidents(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("list_incidents", state="open", limit=10)
        if data is None:
            return
        items = [_incident_line(i) for i in data["items"]]
        title = f"Open incidents: {len(items)}" + (" (newest 10)" if len(items) == 10 else "")
        run.section(title, items=items or ["none; all clear"])

    async def _failover(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("venues")
        if data is None:
            return
        if data.get("failed_over"):
            lines = [
                f"We are trading on the standby {data['active']}, not the primary "
                f"{data['primary']}, since {_ts(data.get('since'))}.",
                f"Why: {data.get('reason') or 'no reason was recorded'}.",
            ]
        else:
            lines = [f"Not failed over: trading on the primary {data['active']} "
                     f"(standby {data['standby']})."]  # fmt: skip
        items = [
            f"{v['name']} ({v['role']}, {v['mode']}): "
            + ("healthy" if v.get("healthy") else "unhealthy" if v.get("healthy") is False
               else "not probed yet")
            + (f", {v['consecutive_failures']} failures in a row" if v.get("consecutive_failures")
               else "")
            + (f", last error: {v['last_error']}" if v.get("last_error") else "")
            for v in data.get("items", [])
        ]  # fmt: skip
        run.section("Venues", lines, items)

    async def _redis(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("health")
        if data is None:
            return
        redis = data.get("components", {}).get("redis")
        if redis is None:
            run.section("Redis", ["This process has no Redis health check."])
            return
        verdict = {"ok": "Redis is ok", "disabled": "Redis is not in use", "down": "Redis is DOWN"}
        run.section(
            verdict.get(redis["status"], f"Redis is {redis['status']}"),
            [f"{redis['status']}: {redis.get('detail', '')}"],
        )

    async def _latency(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("metrics_snapshot")
        if data is None:
            return
        latency = data["request_latency"]
        if not latency["requests"]:
            run.section("API latency", ["No API requests have been timed since start."])
            return
        p99 = latency["p99_ms"]
        within = p99 is not None and p99 <= latency["slo_p99_ms"]
        run.section(
            "API latency",
            [
                f"p50 <= {latency['p50_ms']} ms, p99 <= {p99} ms over {latency['requests']} "
                "requests since start.",
                "Within the 200 ms P99 SLO."
                if within
                else "ABOVE the 200 ms P99 SLO (runbook §2.4).",
            ],
        )

    async def _backup(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("backups")
        if data is None:
            return
        status = data["status"]
        lines = [
            f"Last successful backup: {status.get('last_success_id') or 'none'} at "
            f"{_ts(status.get('last_success_at'))}.",
            f"Scheduled backups: {'on' if status['auto_enabled'] else 'OFF'}, every "
            f"{status['interval_seconds'] / 60:g} min"
            + ("; OVERDUE." if status["overdue"] else "."),
        ]
        if status.get("last_error"):
            lines.append(f"Last error: {status['last_error']}")
        items = [f"{b['id']}: {b['status']}, {_ts(b['created_at'])}" for b in data["newest"]]
        run.section("Backups", lines, items)

    async def _flags(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("flags")
        if data is None:
            return
        items = data["items"]
        on = [f["name"] for f in items if f["value"] is True]
        changed = [
            f"{f['name']} = {f['value']} (from {f['source']}; default {f['default']})"
            for f in items
            if f["value"] != f["default"]
        ]
        run.section("Flags on", items=on or ["none"])
        if changed:
            run.section("Not at their default", items=changed)

    async def _cores(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("cores")
        if data is None:
            return
        run.section(
            "Cores",
            items=[
                f"{c['name']}: {'on' if c['enabled'] else 'OFF'}, "
                f"{'running' if c['running'] else 'not running'}, PnL {_money(c['pnl'])}"
                + (f", {c['crashes']} crashes (last: {c['last_error']})" if c["crashes"] else "")
                for c in data["items"]
            ],
        )

    async def _audit(self, run: _Run, found: IntentMatch) -> None:
        data = await run.tool("audit_tail", limit=10)
        if data is None:
            return
        run.section(
            "Recent audit entries",
            items=[
                f"{_ts(e['ts'])} {e['actor']}: {e['action']} {e['target']} ({e['outcome']})"
                for e in data["items"]
            ]
            or ["none"],
        )

    async def _runbook(self, run: _Run, found: IntentMatch) -> None:
        topic = found.topic.strip()
        if not topic:
            run.section(
                "Runbook sections",
                ['Ask about an alert name or a topic, e.g. "runbook RedisDown".'],
                [f"§{s.ref} {s.title}" for s in self._toolbox.runbook.sections],
            )
            return
        data = await run.tool("runbook", topic=topic)
        if data is None:
            return
        for section in data["sections"]:
            run.section(
                f"Runbook §{section['ref']} {section['title']}",
                [f"Symptoms: {s}" for s in section["symptoms"]],
                [f"{n}. {a}" for n, a in enumerate(section["actions"], start=1)],
            )

    # -- diagnosis -----------------------------------------------------------------------------

    def diagnose(self, facts: list[ToolResult], failed: list[str]) -> RuleReply:
        """Likely causes and next steps for an incident from facts already gathered."""
        by_tool = {f.tool: f.data for f in facts if f.ok}
        incident = by_tool["get_incident"]["incident"]
        reply = RuleReply(intent="diagnose", sections=[], facts=facts, failed=failed)
        reply.sections.append(
            AnswerSection(
                title=f"Incident #{incident['id']} {incident['title']}",
                lines=[
                    f"{incident['severity']}, {incident['state']}, seen {incident['count']}x "
                    f"since {_ts(incident['first_seen'])}, last {_ts(incident['last_seen'])}.",
                    *([incident["summary"]] if incident.get("summary") else []),
                ],
            )
        )
        reply.sections.append(
            AnswerSection(
                title="What the tools show", items=[f"{f.tool}: {f.summary}" for f in facts]
            )
        )
        causes = _likely_causes(incident, by_tool)
        reply.sections.append(AnswerSection(title="Likely causes", items=causes))
        runbook = by_tool.get("runbook")
        if runbook:
            section = runbook["sections"][0]
            reply.sections.append(
                AnswerSection(
                    title=f"Next steps (runbook §{section['ref']} {section['title']})",
                    items=[f"{n}. {a}" for n, a in enumerate(section["actions"], start=1)],
                )
            )
        else:
            reply.sections.append(
                AnswerSection(
                    title="Next steps",
                    items=["No runbook section matches this alert; follow its description."],
                )
            )
        reply.proposals = _proposals(incident, by_tool)
        return reply


def _incident_line(item: dict[str, Any]) -> str:
    return (
        f"#{item['id']} {item['title']}: {item['severity']}, {item['state']}, "
        f"{item['count']}x since {_ts(item['first_seen'])}"
        + (f"; {item['summary']}" if item.get("summary") else "")
    )


def _topic(incident: dict[str, Any]) -> str:
    return str(incident.get("labels", {}).get("alertname") or incident["title"])


def _venue_causes(venues: dict[str, Any]) -> list[str]:
    causes = [
        f"{v['name']} ({v['role']}): "
        + ("banned us (418/DDoS protection); " if v.get("banned") else "")
        + ("in maintenance; " if v.get("maintenance") else "")
        + f"last error: {v.get('last_error') or 'none'}"
        for v in venues.get("items", [])
        if v.get("last_error") or v.get("banned") or v.get("maintenance")
    ]
    if venues.get("failed_over"):
        causes.append(f"failed over because: {venues.get('reason') or 'no reason recorded'}")
    return causes


def _backup_causes(backups: dict[str, Any]) -> list[str]:
    status = backups["status"]
    causes = []
    if status.get("last_error"):
        causes.append(f"the last backup failed: {status['last_error']}")
    if not status.get("auto_enabled"):
        causes.append("scheduled backups are off (AUTO_BACKUP_ENABLED=false)")
    return causes


def _metric_causes(metrics: dict[str, Any]) -> list[str]:
    causes = []
    latency = metrics["request_latency"]
    if latency.get("p99_ms") is not None and latency["p99_ms"] > latency["slo_p99_ms"]:
        causes.append(f"API p99 latency is {latency['p99_ms']} ms, above the 200 ms SLO")
    causes.extend(
        f"the LLM circuit is {sample['labels']['llm_circuit_state']}: the provider rate limited "
        "or failed"
        for sample in metrics["metrics"].get("llm_circuit_state", [])
        if sample["value"] == 1 and sample["labels"].get("llm_circuit_state") != "closed"
    )
    return causes


def _likely_causes(incident: dict[str, Any], by_tool: dict[str, Any]) -> list[str]:
    causes: list[str] = []
    if by_tool.get("venues"):
        causes.extend(_venue_causes(by_tool["venues"]))
    if by_tool.get("health"):
        causes.extend(
            f"{name} is {c['status']}: {c.get('detail', '')}"
            for name, c in by_tool["health"].get("components", {}).items()
            if c["status"] in ("down", "degraded")
        )
    if by_tool.get("backups"):
        causes.extend(_backup_causes(by_tool["backups"]))
    if by_tool.get("metrics_snapshot"):
        causes.extend(_metric_causes(by_tool["metrics_snapshot"]))
    said = incident.get("description") or incident.get("summary")
    if said:
        causes.append(f"the alert says: {said}")
    return causes or ["nothing in the tools' results points to a cause; see the timeline"]


def _proposals(incident: dict[str, Any], by_tool: dict[str, Any]) -> list[ProposedAction]:
    proposals: list[ProposedAction] = []
    if incident["state"] == "triggered":
        proposals.append(
            ProposedAction(
                kind=ActionKind.ACKNOWLEDGE_INCIDENT,
                target=str(incident["id"]),
                reason="nobody has acknowledged it yet; acknowledging stops escalation",
            )
        )
    venues = by_tool.get("venues")
    if venues:
        primary = next((v for v in venues["items"] if v["name"] == venues["primary"]), None)
        standby = next((v for v in venues["items"] if v["name"] == venues["standby"]), None)
        if venues["failed_over"] and primary and primary.get("healthy"):
            proposals.append(
                ProposedAction(
                    kind=ActionKind.FAILOVER,
                    target=venues["primary"],
                    reason=f"the primary {venues['primary']} answers probes again: fail back",
                    confirm=True,
                )
            )
        elif (
            not venues["failed_over"]
            and primary
            and primary.get("healthy") is False
            and (standby is None or standby.get("healthy") is not False)
        ):
            proposals.append(
                ProposedAction(
                    kind=ActionKind.FAILOVER,
                    target=venues["standby"],
                    reason=f"the primary {venues['primary']} is failing (runbook §2.1)",
                    confirm=True,
                )
            )
    backups = by_tool.get("backups")
    if backups and (backups["status"]["overdue"] or backups["status"].get("last_error")):
        proposals.append(
            ProposedAction(kind=ActionKind.BACKUP, reason="the last backup is stale or failed")
        )
    cores = by_tool.get("cores")
    if cores and _topic(incident).lower() == "latencyslobreach":
        proposals.extend(
            ProposedAction(
                kind=ActionKind.TOGGLE_CORE,
                target=c["name"],
                args={"enabled": False},
                reason="runbook §2.4: disable non-essential cores to shed load",
            )
            for c in cores["items"]
            if c["enabled"] and not c["essential"]
        )
    return proposals


class _Run:
    """One rule-based answer in the making: calls tools, collects facts and sections."""

    def __init__(self, toolbox: Toolbox, actor: Actor, intent: str) -> None:
        self._toolbox = toolbox
        self._actor = actor
        self._intent = intent
        self.sections: list[AnswerSection] = []
        self.facts: list[ToolResult] = []
        self.failed: list[str] = []

    async def tool(self, name: str, **args: Any) -> Any:
        """The tool's data, or None (and the failure noted) when it failed."""
        result = await self._toolbox.call(name, args, self._actor)
        if result.ok:
            self.facts.append(result)
            return result.data
        self.failed.append(f"{name}: {result.error}")
        return None

    def section(
        self, title: str, lines: list[str] | None = None, items: list[str] | None = None
    ) -> None:
        """Add a titled block to the answer."""
        self.sections.append(AnswerSection(title=title, lines=lines or [], items=items or []))

    def reply(self) -> RuleReply:
        """The finished reply."""
        if not self.sections and self.failed:
            self.sections.append(
                AnswerSection(title="I could not look that up", items=list(self.failed))
            )
        return RuleReply(
            intent=self._intent, sections=self.sections, facts=self.facts, failed=self.failed
        )
