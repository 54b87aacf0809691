"""Rendering for Telegram: HTML with every dynamic value escaped, units and UTC times, and
splitting of long text on line boundaries without breaking tags."""

from __future__ import annotations

import re
from datetime import datetime
from html import escape

from core.flags import FlagState
from core.incidents.storm import Storm
from core.models import AuditEntry, utcnow
from core.models.alerts import Severity
from core.models.incidents import Incident, IncidentState
from core.models.ops import Checklist
from core.platform.health import HealthReport, Status
from core.security.audit import VerifyReport

LIMIT = 4096
_SEVERITY = {Severity.CRITICAL: "🔴", Severity.WARNING: "🟠", Severity.INFO: "🔵"}
_STATE = {
    IncidentState.TRIGGERED: "🚨 TRIGGERED",
    IncidentState.ACKNOWLEDGED: "👀 ACKNOWLEDGED",
    IncidentState.SILENCED: "🔕 SILENCED",
    IncidentState.RESOLVED: "✅ RESOLVED",
}
_DIGEST_SHOWN = 25  # incidents named one by one in a storm digest; the rest are counted
_HEALTH = {Status.OK: "✅", Status.DEGRADED: "⚠️", Status.DOWN: "❌", Status.DISABLED: "⏸"}


def e(value: object) -> str:
    """Escape any dynamic value for Telegram HTML."""
    return escape(str(value), quote=False)


def when(moment: datetime | None) -> str:
    """UTC ISO time, to the second."""
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """Compact age: 45s, 12m, 3h, 2d."""
    if moment is None:
        return "—"
    seconds = max(0, int(((now or utcnow()) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def incident_line(incident: Incident) -> str:
    """One line for lists: ``🔴 #12 RedisDown · triggered · 3× · 5m``."""
    return (
        f"{_SEVERITY[incident.severity]} <b>#{incident.id}</b> {e(incident.title)} · "
        f"{incident.state.value} · {incident.count}× · {ago(incident.last_seen)}"
    )


def incident_message(incident: Incident) -> str:
    """The incident's one message, edited in place as it changes."""
    lines = [
        f"{_SEVERITY[incident.severity]} <b>{e(incident.title)}</b> "
        f"<i>#{incident.id}</i>{'  🛡 security' if incident.security else ''}",
        f"<b>{_STATE[incident.state]}</b> · {incident.severity.value} · {e(incident.source.value)}",
    ]
    if incident.summary and incident.summary != incident.title:
        lines.append(e(incident.summary[:600]))
    if incident.description:
        lines.append(f"<i>{e(incident.description[:600])}</i>")
    shown = {k: v for k, v in incident.labels.items() if k not in ("alertname", "severity")}
    if shown:
        labels = ", ".join(f"{e(k)}=<code>{e(v)}</code>" for k, v in sorted(shown.items())[:12])
        lines.append(f"🏷 {labels}")
    lines.append(
        f"🔁 {incident.count}× · first {when(incident.first_seen)} · last "
        f"{when(incident.last_seen)}"
    )
    if incident.acknowledged_by is not None:
        lines.append(
            f"👀 acknowledged by {e(incident.acknowledged_by.name)} at "
            f"{when(incident.acknowledged_at)}"
        )
    if incident.state is IncidentState.SILENCED:
        by = incident.silenced_by.name if incident.silenced_by else "?"
        lines.append(f"🔕 silenced by {e(by)} until {when(incident.silenced_until)}")
    if incident.escalation_level:
        lines.append(f"⏫ escalated {incident.escalation_level}×")
    if incident.state is IncidentState.RESOLVED:
        by = incident.resolved_by.name if incident.resolved_by else "its source"
        lines.append(f"✅ resolved by {e(by)} at {when(incident.resolved_at)}")
    links = []
    if incident.generator_url:
        links.append(f'<a href="{escape(incident.generator_url, quote=True)}">source</a>')
    runbook = incident.annotations.get("runbook") or incident.annotations.get("runbook_url")
    if runbook and runbook.startswith(("http://", "https://")):
        links.append(f'<a href="{escape(runbook, quote=True)}">runbook</a>')
    elif runbook:
        links.append(f"runbook: {e(runbook)}")
    if links:
        lines.append("🔗 " + " · ".join(links))
    return "\n".join(lines)


def storm_digest(storm: Storm) -> str:
    """One message naming the incidents an alert storm held back."""
    incidents = storm.incidents
    lines = [
        f"🌪 <b>Alert storm</b>: {len(incidents)} more incidents opened in "
        f"{int(storm.window_seconds)}s"
    ]
    lines += [
        f"• <b>#{i.id}</b> {e(i.title)} · {i.severity.value}" for i in incidents[:_DIGEST_SHOWN]
    ]
    if len(incidents) > _DIGEST_SHOWN:
        lines.append(f"… and {len(incidents) - _DIGEST_SHOWN} more")
    lines.append("See them all with /incidents; act with /ack ID")
    return "\n".join(lines)


def health_text(report: HealthReport) -> str:
    """``/health``: every component with its status and detail."""
    lines = [f"{_HEALTH[report.status]} <b>Service {report.status.value}</b>"]
    for name, component in sorted(report.components.items()):
        lines.append(f"{_HEALTH[component.status]} {e(name)}: {e(component.detail)}")
    return "\n".join(lines)


def flags_text(states: list[FlagState]) -> str:
    """``/flags``: value and source of every flag."""
    lines = ["<b>Feature flags</b>"]
    for s in states:
        value = ("on" if s.value else "off") if isinstance(s.value, bool) else str(s.value)
        marker = "" if s.value == s.default else " ✳️"
        lines.append(f"<code>{e(s.name)}</code> = <b>{e(value)}</b> ({s.source.value}){marker}")
    lines.append("✳️ differs from default · change with /flag NAME VALUE")
    return "\n".join(lines)


def audit_text(entries: list[AuditEntry], verify: VerifyReport | None = None) -> str:
    """``/audit``: the newest entries."""
    lines = ["<b>Audit log</b> (newest first)"]
    for entry in entries:
        mark = "" if entry.outcome == "ok" else f" [{e(entry.outcome)}]"
        lines.append(
            f"<code>{entry.seq}</code> {when(entry.ts)} {e(entry.actor.name)} "
            f"{e(entry.action)} {e(entry.target)}{mark}"
        )
    if verify is not None:
        lines.append("🔗 chain intact" if verify.ok else f"⛔️ chain BROKEN: {e(verify.problem)}")
    return "\n".join(lines)


def checklist_text(checklist: Checklist) -> str:
    """The daily checklist, one line per check."""
    lines = [f"{checklist.worst.symbol} <b>Daily checklist</b> · {when(checklist.generated_at)}"]
    for item in checklist.items:
        lines.append(f"{item.mark.symbol} {e(item.name)}: {e(item.reason)}")
    return "\n".join(lines)


_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)([^>]*)>")


def _open_after(line: str, stack: list[tuple[str, str]]) -> list[tuple[str, str]]:
    stack = list(stack)
    for closing, name, attrs in _TAG.findall(line):
        if closing:
            for i in range(len(stack) - 1, -1, -1):
                if stack[i][0] == name:
                    del stack[i]
                    break
        else:
            stack.append((name, attrs))
    return stack


def _plain_chunks(line: str, size: int) -> list[str]:
    """Cut an over-long line without splitting an entity or a tag."""
    parts, current = [], ""
    for token in re.findall(r"<[^>]*>|&[#a-zA-Z0-9]+;|[^<&]", line):
        if len(current) + len(token) > size and current:
            parts.append(current)
            current = ""
        current += token
    if current:
        parts.append(current)
    return parts


def split_html(text: str, limit: int = LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` characters, on line boundaries; tags
    open at a cut are closed at the end of one part and reopened at the start of the next."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current: list[str] = []
    length = 0
    stack: list[tuple[str, str]] = []  # open at the start of the current part
    reserve = 200  # room for the closing and reopening tags

    def flush() -> None:
        nonlocal current, length, stack
        body = "\n".join(current)
        still_open = _open_after(body, stack)
        prefix = "".join(f"<{n}{a}>" for n, a in stack)
        suffix = "".join(f"</{n}>" for n, _ in reversed(still_open))
        parts.append(prefix + body + suffix)
        stack, current, length = still_open, [], 0

    for line in text.split("\n"):
        pieces = [line] if len(line) <= limit - reserve else _plain_chunks(line, limit - reserve)
        for piece in pieces:
            if current and length + len(piece) + 1 > limit - reserve:
                flush()
            current.append(piece)
            length += len(piece) + 1
    if current:
        flush()
    return parts


def strip_html(text: str) -> str:
    """Plain text for when Telegram cannot parse our entities."""
    from html import unescape

    return unescape(_TAG.sub("", text))
