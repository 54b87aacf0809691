"""The quarterly access review (runbook §4): who holds which role and what they did lately.

``lunia report`` renders it as ``docs/RELEASE_REPORT.md``: role holders (Telegram ids and API
token *names*, never tokens), each one's latest audited actions, flags that differ from their
defaults, the last backup and restore test, and the open incidents.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from core.backups import BackupInfo, BackupService, newest
from core.config.settings import Settings
from core.flags import FlagService, FlagState
from core.incidents.service import IncidentService
from core.models import Actor, AuditEntry, AuditRecord, Role, utcnow
from core.models.incidents import Incident
from core.security.access import TokenAuthority
from core.security.audit import AuditLog, VerifyReport
from core.store import Store

# How far back the review looks for each holder's actions.
SCAN_ENTRIES = 20_000
ACTIONS_PER_HOLDER = 5


class ActionSummary(BaseModel):
    """One audited action."""

    seq: int
    ts: datetime
    action: str
    target: str
    outcome: str


class RoleHolder(BaseModel):
    """A principal with a role and their latest actions."""

    principal: str
    role: Role | None
    source: str
    last_actions: list[ActionSummary]


class AccessReview(BaseModel):
    """Everything the quarterly review shows."""

    generated_at: datetime
    generated_by: str
    holders: list[RoleHolder]
    other_actors: list[RoleHolder]
    flags_differing: list[FlagState]
    last_backup: BackupInfo | None
    last_verified_backup: BackupInfo | None
    last_restore: ActionSummary | None
    open_incidents: list[Incident]
    audit_chain: VerifyReport
    scanned_entries: int


class AccessReviewService:
    """Builds the access review from settings, the audit log and the other services."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenAuthority,
        store: Store,
        audit: AuditLog,
        flags: FlagService,
        backups: BackupService,
        incidents: IncidentService,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._store = store
        self._audit = audit
        self._flags = flags
        self._backups = backups
        self._incidents = incidents

    async def review(self, actor: Actor) -> AccessReview:
        """Collect the review (read-only; recorded in the audit log as evidence)."""
        entries = await self._store.audit_tail(SCAN_ENTRIES)
        by_principal: dict[str, list[ActionSummary]] = {}
        last_restore: ActionSummary | None = None
        for entry in entries:  # newest first
            summary = _summary(entry)
            actions = by_principal.setdefault(f"{entry.actor.kind.value}:{entry.actor.id}", [])
            if len(actions) < ACTIONS_PER_HOLDER:
                actions.append(summary)
            if last_restore is None and entry.action == "backup.restore" and entry.outcome == "ok":
                last_restore = summary
        s = self._settings
        configured: list[tuple[str, Role, str]] = [
            *((f"telegram:{i}", Role.ADMIN, "TELEGRAM_ADMINS") for i in s.telegram_admins),
            *((f"telegram:{i}", Role.OPERATOR, "TELEGRAM_OPERATORS") for i in s.telegram_operators),
            *((f"telegram:{i}", Role.VIEWER, "TELEGRAM_VIEWERS") for i in s.telegram_viewers),
            *((f"api:{name}", role, "API_TOKENS") for name, role in self._tokens.names()),
        ]
        holders = [
            RoleHolder(principal=p, role=role, source=src, last_actions=by_principal.get(p, []))
            for p, role, src in configured
        ]
        known = {p for p, _, _ in configured}
        others = [
            RoleHolder(principal=p, role=None, source="audit log", last_actions=actions)
            for p, actions in sorted(by_principal.items())
            if p not in known
        ]
        backups = await self._backups.list()
        review = AccessReview(
            generated_at=utcnow(),
            generated_by=actor.describe(),
            holders=holders,
            other_actors=others,
            flags_differing=self._flags.differing_from_default(),
            last_backup=newest(backups),
            last_verified_backup=next((b for b in backups if b.status == "verified"), None),
            last_restore=last_restore,
            open_incidents=await self._incidents.list(open_only=True, limit=200),
            audit_chain=await self._audit.verify(),
            scanned_entries=len(entries),
        )
        await self._audit.record(
            AuditRecord(
                actor=actor,
                action="report.access_review",
                after={"holders": len(holders), "open_incidents": len(review.open_incidents)},
            )
        )
        return review


def _summary(entry: AuditEntry) -> ActionSummary:
    return ActionSummary(
        seq=entry.seq, ts=entry.ts, action=entry.action, target=entry.target, outcome=entry.outcome
    )


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _actions(holder: RoleHolder) -> str:
    if not holder.last_actions:
        return "none in the scanned log"
    return "<br>".join(
        _cell(f"{a.ts:%Y-%m-%d %H:%M}Z {a.action} {a.target} ({a.outcome})".replace("  ", " "))
        for a in holder.last_actions
    )


def render_markdown(review: AccessReview) -> str:
    """The review as the Markdown of ``docs/RELEASE_REPORT.md``."""
    out = [
        "# Release report and access review",
        "",
        f"Generated {review.generated_at.isoformat(timespec='seconds')} by "
        f"{_cell(review.generated_by)} with `lunia report`. Runbook §4 (quarterly).",
        "",
        "## Who holds which role",
        "",
        "| principal | role | granted by | last actions (newest first) |",
        "|---|---|---|---|",
    ]
    for h in review.holders:
        role = h.role.value if h.role else "-"
        out.append(f"| `{_cell(h.principal)}` | {role} | {h.source} | {_actions(h)} |")
    if not review.holders:
        out.append("| (nobody) | | | |")
    out += ["", "Other actors seen in the audit log (automation, CLI users, former holders):", ""]
    out += ["| actor | last actions |", "|---|---|"]
    for h in review.other_actors:
        out.append(f"| `{_cell(h.principal)}` | {_actions(h)} |")
    chain = review.audit_chain
    out += [
        "",
        f"Scanned the newest {review.scanned_entries} audit entries. Audit chain: "
        + (
            f"intact ({chain.checked} entries)."
            if chain.ok
            else f"**BROKEN** at entry {chain.first_bad_seq}: {chain.problem}"
        ),
        "",
        "## Flags that differ from their defaults",
        "",
    ]
    if review.flags_differing:
        out += ["| flag | value | default | source | set by |", "|---|---|---|---|---|"]
        out += [
            f"| {f.name} | {_cell(f.value)} | {_cell(f.default)} | {f.source.value} | "
            f"{_cell(f.override_set_by or '-')} |"
            for f in review.flags_differing
        ]
    else:
        out.append("None: every flag is at its default.")
    out += ["", "## Backups and restore tests", ""]
    b = review.last_backup
    out.append(
        f"- Last backup: `{b.id}` ({b.reason.value if b.reason else '?'}, {b.size_bytes} bytes, "
        f"{b.status})"
        if b
        else "- Last backup: **none**"
    )
    v = review.last_verified_backup
    out.append(
        f"- Last restore test (verification by trial restore): `{v.id}` passed at "
        f"{v.verification.checked_at.isoformat(timespec='seconds')}"
        if v and v.verification
        else "- Last restore test: **none recorded**"
    )
    r = review.last_restore
    out.append(
        f"- Last restore into production: `{r.target}` at {r.ts.isoformat(timespec='seconds')}"
        if r
        else "- Last restore into production: none in the scanned log"
    )
    out += ["", "## Open incidents", ""]
    if review.open_incidents:
        out += ["| id | severity | state | title | first seen |", "|---|---|---|---|---|"]
        out += [
            f"| #{i.id} | {i.severity.value} | {i.state.value} | {_cell(i.title)} | "
            f"{i.first_seen.isoformat(timespec='seconds')} |"
            for i in review.open_incidents
        ]
    else:
        out.append("None.")
    return "\n".join(out) + "\n"
