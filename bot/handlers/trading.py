"""The engine from chat (runbook §2.1, §2.4, §7): venues, failover, cores, PnL, exposure,
orders, and the halt kill switch. Roles and confirmations are decided in core."""

from __future__ import annotations

import asyncio

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.charts import pnl_png
from bot.render import e, when
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor
from core.models.trading import PnlWindow
from core.trading.engine import ORDER_LIST_MAX

COMMANDS = [
    ("venues", "venues: health, latency, errors, which is active"),
    ("failover", "fail over: /failover [VENUE] (operator, confirmed; admin for live funds)"),
    ("failback", "return to the primary venue (operator)"),
    ("cores", "strategy cores: on/off, essential, PnL"),
    ("toggle", "switch a core on/off: /toggle NAME (operator)"),
    ("pnl", f"PnL chart: /pnl [{'|'.join(PnlWindow)}]"),
    ("exposure", "open exposure against the risk limits"),
    ("orders", "latest orders: /orders [N]"),
    ("halt", "kill switch: disable every core, cancel open orders (operator, confirmed)"),
    ("resume", "undo /halt (admin, confirmed)"),
]


def _user(message: Message) -> int:
    return message.from_user.id if message.from_user else 0


async def venues(message: Message, plane: ControlPlane, ui: Ui) -> None:
    """Every venue's mode, health and role."""
    s = plane.venues.status()
    lines = [
        f"🏦 <b>Venues</b> · trading on <b>{e(s.active)}</b>"
        + (f" (failed over {when(s.since)}: {e(s.reason)})" if s.failed_over else "")
    ]
    for v in s.items:
        health = "❔" if v.healthy is None else "✅" if v.healthy else "❌"
        flags = "".join(
            [
                " 🚫banned" if v.banned else "",
                " 🛠maintenance" if v.maintenance else "",
                " 🧪chaos" if v.chaos else "",
            ]
        )
        lines.append(
            f"{health} <b>{e(v.name)}</b> ({e(v.role)}{', active' if v.active else ''})"
            f" · {v.mode.value}{flags} · failures {v.consecutive_failures}"
            + (f"\n   last error: {e(v.last_error)}" if v.last_error else "")
        )
    await ui.reply(message.chat.id, "\n".join(lines))


async def failover(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Fail over now; the confirmation shows the standby's pre-check."""
    target = (command.args or "").strip() or None

    async def run(confirm: bool) -> str:
        s = await plane.venues.failover(actor, to=target, confirm=confirm, reason="from Telegram")
        return f"🔀 Trading on <b>{e(s.active)}</b> now (primary {e(s.primary)})."

    await ui.confirm_or_run(message.chat.id, _user(message), run)


async def failback(message: Message, plane: ControlPlane, ui: Ui, actor: Actor) -> None:
    """Return to the primary venue."""
    s = await plane.venues.failback(actor)
    await ui.reply(message.chat.id, f"↩️ Back on <b>{e(s.active)}</b>.")


async def cores(message: Message, plane: ControlPlane, ui: Ui) -> None:
    """Every core: on/off, essential, PnL, crashes."""
    lines = ["⚙️ <b>Cores</b>"]
    for c in plane.cluster.cores():
        state = "🟢 on" if c.enabled else "⚪️ off"
        lines.append(
            f"{state} <b>{e(c.name)}</b>{' (essential)' if c.essential else ''} · "
            f"PnL {c.pnl:+,.2f} USDT · {', '.join(map(e, c.symbols))}"
            + (f" · ⚠️ {c.crashes} crashes" if c.crashes else "")
        )
    lines.append("Switch with /toggle NAME")
    await ui.reply(message.chat.id, "\n".join(lines))


async def toggle(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Switch a core on or off (essential cores need confirmation to go off)."""
    name = (command.args or "").strip()
    if not name:
        raise InvalidInput("usage: /toggle NAME (see /cores)")

    async def run(confirm: bool) -> str:
        c = await plane.trading.toggle_core(name, actor, confirm=confirm)
        return f"⚙️ Core <b>{e(c.name)}</b> is now {'on' if c.enabled else 'off'}."

    await ui.confirm_or_run(message.chat.id, _user(message), run)


async def pnl(message: Message, command: CommandObject, plane: ControlPlane, ui: Ui) -> None:
    """A PnL chart with a one-line summary."""
    report = await plane.trading.pnl(command.args or PnlWindow.DAY)
    png = await asyncio.to_thread(pnl_png, report)
    per_core = ", ".join(
        f"{e(name)} {change:+,.2f}" for name, change in report.core_changes.items()
    )
    await ui.photo(
        message.chat.id,
        png,
        f"💰 PnL {e(report.label)}: <b>{report.change:+,.2f} USDT</b> ({per_core}); "
        f"total {report.total:+,.2f} USDT",
    )


async def exposure(message: Message, plane: ControlPlane, ui: Ui) -> None:
    """Open exposure per symbol against the limits."""
    report = plane.trading.exposure()
    lines = [f"📊 <b>Exposure</b> {report.total:,.2f} / {report.limit:,.0f} USDT"]
    lines += [
        f"• {e(s.symbol)}: {s.quantity:+.6g} ≈ {s.exposure:,.2f} / {s.limit:,.0f} USDT"
        for s in report.symbols
    ]
    await ui.reply(message.chat.id, "\n".join(lines))


async def orders(message: Message, command: CommandObject, plane: ControlPlane, ui: Ui) -> None:
    """The latest orders."""
    arg = (command.args or "10").strip()
    if not arg.isdigit():
        raise InvalidInput(f"usage: /orders [N] with N from 1 to {ORDER_LIST_MAX}")
    found = await plane.trading.orders(limit=int(arg))  # core checks the range
    lines = (
        ["🧾 <b>Orders</b> (newest first)"]
        + [
            f"{when(o.created_at)} {e(o.core)} {o.side.value} {o.amount:.6g} {e(o.symbol)} on "
            f"{e(o.venue)} · {o.status.value}" + (f" @ {o.average:.6g}" if o.average else "")
            for o in found
        ]
        if found
        else ["No orders yet."]
    )
    await ui.reply(message.chat.id, "\n".join(lines))


async def halt(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """The kill switch."""
    reason = (command.args or "").strip() or "halted from Telegram"

    async def run(confirm: bool) -> str:
        report = await plane.trading.halt(actor, confirm=confirm, reason=reason)
        failed = f"; could not cancel: {e(', '.join(report.failed))}" if report.failed else ""
        return (
            f"🛑 <b>Trading halted</b>: every core stopped, {len(report.canceled)} open "
            f"orders canceled{failed}. Undo with /resume."
        )

    await ui.confirm_or_run(message.chat.id, _user(message), run)


async def resume(message: Message, plane: ControlPlane, ui: Ui, actor: Actor) -> None:
    """Undo the kill switch."""

    async def run(confirm: bool) -> str:
        state = await plane.trading.resume(actor, confirm=confirm)
        return f"▶️ Trading resumed on <b>{e(state.active_venue)}</b>."

    await ui.confirm_or_run(message.chat.id, _user(message), run)


def router() -> Router:
    """The engine feature's handlers."""
    r = Router(name="trading")
    for handler, name in (
        (venues, "venues"),
        (failover, "failover"),
        (failback, "failback"),
        (cores, "cores"),
        (toggle, "toggle"),
        (pnl, "pnl"),
        (exposure, "exposure"),
        (orders, "orders"),
        (halt, "halt"),
        (resume, "resume"),
    ):
        r.message.register(handler, Command(name))
    return r
