"""Backups and restore from chat (runbook §3) and the scheduled jobs (/jobs)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.render import ago, e, when
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor

COMMANDS = [
    ("backup", "take a backup now (operator)"),
    ("backups", "backups with age and verification status"),
    ("verify", "verify a backup by trial restore: /verify ID (operator)"),
    ("restore", "restore a backup: /restore ID (admin, confirmed)"),
    ("jobs", "scheduled jobs: last and next run (/jobs run NAME, admin)"),
]
_STATUS = {"verified": "✅", "unverified": "🕓", "failed": "❌", "broken": "⛔️"}


def _size(size: int) -> str:
    return f"{size / 1_048_576:.1f} MiB" if size >= 1_048_576 else f"{size / 1024:.0f} KiB"


async def backup(message: Message, plane: ControlPlane, ui: Ui, actor: Actor) -> None:
    """Take a backup now."""
    info = await plane.backups.create(actor)
    await ui.reply(
        message.chat.id,
        f"💾 Backup <code>{e(info.id)}</code> taken "
        f"({_size(info.size_bytes)}). Verify with /verify {e(info.id)}",
    )


async def backups(message: Message, plane: ControlPlane, ui: Ui) -> None:
    """The newest backups, with age and verification status."""
    found = await plane.backups.list()
    status = plane.backups.status()
    head = (
        f"💾 <b>Backups</b> · scheduled {'on' if status.auto_enabled else 'OFF'}, last "
        f"success {when(status.last_success_at)}" + (" · ⚠️ overdue" if status.overdue else "")
    )
    lines = [head] + [
        f"{_STATUS.get(b.status, '❔')} <code>{e(b.id)}</code> · {ago(b.created_at)} ago · "
        f"{_size(b.size_bytes)} · {e(b.reason.value if b.reason else '?')}"
        + (f" · {e(b.problem)}" if b.problem else "")
        for b in found[:15]
    ]
    if not found:
        lines.append("No backups yet: /backup takes one.")
    await ui.reply(message.chat.id, "\n".join(lines))


def _backup_id(command: CommandObject, usage: str) -> str:
    arg = (command.args or "").strip()
    if not arg:
        raise InvalidInput(f"usage: {usage} (see /backups)")
    return arg.split()[0]


async def verify(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Checksums, then a trial restore into a temporary store."""
    result = await plane.backups.verify(_backup_id(command, "/verify ID"), actor)
    if result.ok:
        text = (
            f"✅ Backup <code>{e(result.backup_id)}</code> verified: "
            f"{result.audit_entries_checked} audit entries checked, "
            f"{result.duration_seconds:.1f}s"
        )
    else:
        text = f"❌ Backup <code>{e(result.backup_id)}</code> FAILED verification:\n" + "\n".join(
            f"• {e(p)}" for p in result.problems
        )
    await ui.reply(message.chat.id, text)


async def restore(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Restore (admin): safety backup first, read-only meanwhile, rollback on failure."""
    backup_id = _backup_id(command, "/restore ID")

    async def run(confirm: bool) -> str:
        r = await plane.backups.restore(backup_id, actor, confirm=confirm)
        changed = ", ".join(
            f"{k} {r.counts_before.get(k, 0)}→{v}" for k, v in sorted(r.counts_after.items())
        )
        return (
            f"♻️ <b>Restored</b> <code>{e(r.backup_id)}</code> in "
            f"{r.duration_seconds:.1f}s: {e(changed)}; {len(r.flags_changed)} flags changed;"
            f" safety backup <code>{e(r.safety_backup_id)}</code>"
            + (
                f"\nKept (stricter than the backup): {e(', '.join(k.item for k in r.kept))}"
                if r.kept
                else ""
            )
            + (
                f"\nMoved from the {e(r.backup_store)} store into the {e(r.into_store)} store"
                if r.backup_store != r.into_store
                else ""
            )
        )

    user_id = message.from_user.id if message.from_user else 0
    await ui.confirm_or_run(message.chat.id, user_id, run)


async def jobs(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Scheduled jobs, or ``/jobs run NAME`` to run one now (admin)."""
    args = (command.args or "").split()
    if args[:1] == ["run"] and len(args) == 2:
        info = await plane.jobs.run(args[1], actor)
        await ui.reply(
            message.chat.id,
            f"⏱ <b>{e(info.name)}</b> ran: {e(info.last_outcome)}"
            + (f" ({e(info.last_error)})" if info.last_error else ""),
        )
        return
    if args:
        raise InvalidInput("usage: /jobs, or /jobs run NAME")
    lines = ["⏱ <b>Scheduled jobs</b>"] + [
        f"{'❌' if j.last_outcome == 'error' else '✅' if j.last_outcome == 'ok' else '🕓'} "
        f"<b>{e(j.name)}</b> · {e(j.schedule)} · last {when(j.last_run)} · next {when(j.next_run)}"
        for j in plane.jobs.list()
    ]
    await ui.reply(message.chat.id, "\n".join(lines))


def router() -> Router:
    """The backups feature's handlers."""
    r = Router(name="backups")
    for handler, name in (
        (backup, "backup"),
        (backups, "backups"),
        (verify, "verify"),
        (restore, "restore"),
        (jobs, "jobs"),
    ):
        r.message.register(handler, Command(name))
    return r
