"""Rendering for Telegram: HTML with every dynamic value escaped, units and UTC times, and
splitting of long text on line boundaries without breaking tags."""

from __future__ import annotations

import re
from datetime import datetime
from html import escape, unescape
from urllib.parse import urlsplit

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
_HEALTH = {Status.OK: "✅", Status.DEGRADED: "⚠️", Status.DOWN: "❌", Status.DISABLED: "⏸"}
# Room each dynamic field may take in the incident message, in UTF-16 units (Telegram's unit),
# so that the whole message stays within one 4,096-unit message whatever the alert carries.
_TITLE, _TEXT, _LABEL_KEY, _LABEL_VALUE, _LABELS, _NAME, _URL = 256, 600, 40, 100, 12, 64, 200
_LINK_SCHEMES = ("http", "https")


def e(value: object) -> str:
    """Escape any dynamic value for Telegram HTML."""
    return escape(str(value), quote=False)


def units(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's length limits."""
    return len(text.encode("utf-16-le")) // 2


def clip(value: object, limit: int) -> str:
    """``value`` cut to at most ``limit`` UTF-16 units (with "…"), never inside a surrogate
    pair; escape it afterwards, so an entity is never cut either."""
    text = str(value)
    if units(text) <= limit:
        return text
    out, used = [], 1  # the ellipsis
    for char in text:
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            break
        out.append(char)
    return "".join(out) + "…"


def is_web_url(url: str) -> bool:
    """True for an http(s) URL with a host: the only links we send (Telegram refuses
    ``javascript:`` and friends, and a link must never run anything)."""
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme.lower() in _LINK_SCHEMES and bool(host)


def link(url: str, label: str) -> str:
    """A link labelled ``label`` for a web URL; anything else shown as code, not as a link."""
    if is_web_url(url) and units(url) <= 2048:
        return f'<a href="{escape(url, quote=True)}">{e(label)}</a>'
    return f"{e(label)}: <code>{e(clip(url, _URL))}</code>"


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
        f"{_SEVERITY[incident.severity]} <b>#{incident.id}</b> {e(clip(incident.title, _TITLE))}"
        " · "
        f"{incident.state.value} · {incident.count}× · {ago(incident.last_seen)}"
    )


def group_line(incident: Incident) -> str:
    """The incident's member alerts: ``3 alerts (2 firing, 1 resolved) · differ: instance``."""
    text = (
        f"{len(incident.group)} alerts ({incident.firing_members} firing, "
        f"{incident.resolved_members} resolved)"
    )
    differ = incident.differing_labels
    if differ:
        names = ", ".join(e(clip(name, _LABEL_KEY)) for name in differ[:_LABELS])
        more = f" (+{len(differ) - _LABELS} more)" if len(differ) > _LABELS else ""
        text += f" · differ: {names}{more}"
    return text


def incident_message(incident: Incident) -> str:
    """The incident's one message, edited in place as it changes."""
    lines = [
        f"{_SEVERITY[incident.severity]} <b>{e(clip(incident.title, _TITLE))}</b> "
        f"<i>#{incident.id}</i>{'  🛡 security' if incident.security else ''}",
        f"<b>{_STATE[incident.state]}</b> · {incident.severity.value} · "
        f"{e(clip(incident.source.value, _NAME))}",
    ]
    if incident.summary and incident.summary != incident.title:
        lines.append(e(clip(incident.summary, _TEXT)))
    if incident.description:
        lines.append(f"<i>{e(clip(incident.description, _TEXT))}</i>")
    # A group shows what its alerts share; what differs is named on the members line.
    face = incident.common_labels if len(incident.group) > 1 else incident.labels
    shown = {k: v for k, v in face.items() if k not in ("alertname", "severity")}
    if shown:
        labels = ", ".join(
            f"{e(clip(k, _LABEL_KEY))}=<code>{e(clip(v, _LABEL_VALUE))}</code>"
            for k, v in sorted(shown.items())[:_LABELS]
        )
        more = f" (+{len(shown) - _LABELS} more)" if len(shown) > _LABELS else ""
        lines.append(f"🏷 {labels}{more}")
    lines.append(
        f"🔁 {incident.count}× · first {when(incident.first_seen)} · last "
        f"{when(incident.last_seen)}"
    )
    if len(incident.group) > 1:
        lines.append(f"📦 {group_line(incident)}")
    if incident.acknowledged_by is not None:
        lines.append(
            f"👀 acknowledged by {e(clip(incident.acknowledged_by.name, _NAME))} at "
            f"{when(incident.acknowledged_at)}"
        )
    if incident.state is IncidentState.SILENCED:
        by = incident.silenced_by.name if incident.silenced_by else "?"
        lines.append(f"🔕 silenced by {e(clip(by, _NAME))} until {when(incident.silenced_until)}")
    if incident.escalation_level:
        lines.append(f"⏫ escalated {incident.escalation_level}×")
    if incident.state is IncidentState.RESOLVED:
        by = incident.resolved_by.name if incident.resolved_by else "its source"
        lines.append(f"✅ resolved by {e(clip(by, _NAME))} at {when(incident.resolved_at)}")
    links = []
    if incident.generator_url:
        links.append(link(incident.generator_url, "source"))
    runbook = incident.annotations.get("runbook") or incident.annotations.get("runbook_url")
    if runbook:
        links.append(link(runbook, "runbook"))
    if links:
        lines.append("🔗 " + " · ".join(links))
    return "\n".join(lines)


_BOARD_STATE = {
    IncidentState.TRIGGERED: "🚨 triggered",
    IncidentState.ACKNOWLEDGED: "👀 acknowledged",
    IncidentState.SILENCED: "🔕 silenced",
    IncidentState.RESOLVED: "✅ resolved",
}
_BOARD_TITLE = 80  # characters of a title on a board line: every line stays short


def _members(incident: Incident) -> int:
    """Alerts grouped in the incident (1 for an incident that is a single alert)."""
    group = getattr(incident, "group", None)  # alert groups (issue 15 point 3), when present
    return len(group) if isinstance(group, list) and group else 1


def storm_board_line(incident: Incident) -> str:
    """One incident on a storm board: ``🔴 #12 RedisDown · critical · 3 alerts · 🚨 triggered``."""
    members = _members(incident)
    title = clip(incident.title, _BOARD_TITLE)
    return (
        f"{_SEVERITY[incident.severity]} <b>#{incident.id}</b> {e(title)} · "
        f"{incident.severity.value} · {members} alert{'s' if members != 1 else ''} · "
        f"{_BOARD_STATE[incident.state]}"
    )


def storm_board(storm: Storm, incidents: list[Incident], limit: int = LIMIT) -> list[str]:
    """The storm's board: every incident named, over as many messages as ``limit`` needs (in
    UTF-16 units, as Telegram counts), cut between lines only."""
    still_open = sum(1 for i in incidents if i.is_open)
    header = (
        f"🌪 <b>Alert storm</b> · {len(incidents)} incidents since {when(storm.started)} · "
        f"{still_open} open"
    )
    footer = "One incident with its buttons: /incident ID · the buttons act on every one"
    parts: list[list[str]] = [[header]]
    size = units(header)
    for line in [storm_board_line(i) for i in incidents] + [footer]:
        if size + 1 + units(line) > limit:
            parts.append(["🌪 <b>Alert storm</b> (continued)"])
            size = units(parts[-1][0])
        parts[-1].append(line)
        size += 1 + units(line)
    return ["\n".join(lines) for lines in parts]


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
# A tag, a character entity, a newline, or one character of text: the places a cut may fall.
_TOKEN = re.compile(r"<[^>]*>|&[#a-zA-Z0-9]+;|\n|[^<&\n]|[<&]")


def _shows(token: str) -> bool:
    """True when ``token`` puts a non-blank character on screen (tags and blanks do not;
    Telegram refuses a message that is blank once its entities are parsed)."""
    return not token.startswith("<") and not unescape(token).isspace()


def _after(stack: list[tuple[str, str]], token: str) -> list[tuple[str, str]]:
    """The open tags (name, start tag) after ``token``."""
    tag = _TAG.fullmatch(token)
    if tag is None:
        return stack
    closing, name, _ = tag.groups()
    if not closing:
        return [*stack, (name, token)]
    for index in range(len(stack) - 1, -1, -1):
        if stack[index][0] == name:
            return stack[:index] + stack[index + 1 :]
    return stack


def _closing(stack: list[tuple[str, str]]) -> str:
    return "".join(f"</{name}>" for name, _ in reversed(stack))


def split_html(text: str, limit: int = LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` UTF-16 units (which bounds the text
    after entity parsing, what Telegram counts), cut at a line end where one fits, never inside a
    tag or an entity; tags open at a cut are closed at the end of one part and reopened at the
    start of the next, and every part shows some non-blank text."""
    if units(text) <= limit:
        return [text]
    tokens = _TOKEN.findall(text)
    shows_from = [False] * (len(tokens) + 1)  # does anything non-blank follow index i?
    # Is the next thing after index i (tags aside) a line end? A cut there is a line cut.
    line_next = [False] * (len(tokens) + 1)
    for index in range(len(tokens) - 1, -1, -1):
        shows_from[index] = shows_from[index + 1] or _shows(tokens[index])
        starts_tag = tokens[index].startswith("<")
        line_next[index] = line_next[index + 1] if starts_tag else tokens[index] == "\n"
    parts: list[str] = []
    stack: list[tuple[str, str]] = []  # open at the start of the current part
    start = 0
    while start < len(tokens) and shows_from[start]:
        prefix = "".join(tag for _, tag in stack)
        size, open_, shown = units(prefix), stack, False
        at_line: tuple[int, list[tuple[str, str]]] | None = None  # cut before a newline
        anywhere: tuple[int, list[tuple[str, str]]] | None = None  # cut inside a line
        end = start
        while end < len(tokens):
            piece = tokens[end]
            if piece == "\n" and shown and shows_from[end + 1]:
                at_line = (end, open_)
            after = _after(open_, piece)
            cost = units(piece)
            if size + cost + units(_closing(after)) > limit and (shown or end > start):
                break
            size, open_ = size + cost, after
            shown = shown or _shows(piece)
            end += 1
            if shown and shows_from[end] and not piece.startswith("<") and not line_next[end]:
                anywhere = (end, open_)
        if end == len(tokens):
            parts.append(prefix + "".join(tokens[start:]) + _closing(open_))
            return parts
        cut, skip = (at_line, 1) if at_line is not None else (anywhere, 0)
        if cut is None and not shown:  # a blank run longer than a message: Telegram would
            start, stack = end, open_  # refuse it as empty text, so it is dropped
            continue
        if cut is None:  # nothing shown fits after the reopened tags: take what was read
            cut, skip = (end, open_), 0
        parts.append(prefix + "".join(tokens[start : cut[0]]) + _closing(cut[1]))
        start, stack = cut[0] + skip, cut[1]
    return parts


def strip_html(text: str) -> str:
    """Plain text for when Telegram cannot parse our entities."""
    return unescape(_TAG.sub("", text))
