"""/status, /health and /checklist: how the platform is doing (runbook §1)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.render import checklist_text, e, health_text, when
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.models.alerts import Severity

COMMANDS = [
    ("status", "one-screen summary: health, incidents, PnL, exposure, venue, flags"),
    ("health", "every component's health"),
    ("checklist", "run the daily checklist (runbook §1)"),
]


def router() -> Router:
    """The status feature's handlers."""
    r = Router(name="status")

    @r.message(Command("status"))
    async def status(message: Message, plane: ControlPlane, ui: Ui) -> None:
        """One screen: health, open incidents, engine figures, flags off their default."""
        s = await plane.status.summary()
        icon = {"ok": "✅", "degraded": "⚠️", "down": "❌"}.get(s.health.value, "❔")
        counts = " · ".join(f"{n} {sev.value}" for sev, n in s.open_incidents.items() if n)
        lines = [f"{icon} <b>Lunia status</b> · {s.health.value} · {when(s.generated_at)}"]
        lines += [f"⚠️ {e(name)}: {e(detail)}" for name, detail in s.unhealthy.items()]
        critical = s.open_incidents.get(Severity.CRITICAL, 0)
        lines.append(
            f"{'🚨' if critical else '📋'} incidents: {counts or 'none open'}"
            f"{f' · {s.unacknowledged} not acknowledged' if s.unacknowledged else ''}"
        )
        lines += [
            f"{'•' if line.ok else '⚠️'} {e(line.label)}: <b>{e(line.value)}</b>" for line in s.lines
        ]
        if s.flags_changed:
            changed = ", ".join(f"{f.name}={f.value}" for f in s.flags_changed)
            lines.append(f"✳️ flags: {e(changed)}")
        await ui.reply(message.chat.id, "\n".join(lines))

    @r.message(Command("health"))
    async def health(message: Message, plane: ControlPlane, ui: Ui) -> None:
        """Every component's cached health."""
        await ui.reply(message.chat.id, health_text(plane.health.snapshot()))

    @r.message(Command("checklist"))
    async def checklist(message: Message, plane: ControlPlane, ui: Ui) -> None:
        """Run the daily checklist now."""
        await ui.reply(message.chat.id, checklist_text(await plane.checklist.run()))

    return r
