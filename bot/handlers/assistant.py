"""Questions in plain words (runbook §2.3): /ask, private messages, mentions and replies in the
ops group, and the Diagnose button. Proposed actions become buttons that go through the same
roles and confirmations as the commands; the assistant itself never acts. A proposal that
loosens safety from an answer that read alert text is never a button: the reply names the command
to type instead, so an alert's author cannot put a one-press "switch core on" in front of us."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from bot.callbacks import ProposalButton
from bot.render import e
from bot.ui import Ui
from core.assistant.service import ActionResult
from core.control_plane import ControlPlane
from core.errors import InvalidInput
from core.models import Actor
from core.models.assistant import ActionKind, Answer, ProposedAction

COMMANDS = [("ask", "ask in plain words: /ask what's our PnL? (or just write to me)")]

_KINDS = {
    ActionKind.ACKNOWLEDGE_INCIDENT: "a",
    ActionKind.TOGGLE_CORE: "t",
    ActionKind.FAILOVER: "f",
    ActionKind.BACKUP: "b",
}


def answer_html(answer: Answer) -> str:
    """The answer's sections, escaped, with where it came from."""
    lines: list[str] = []
    for section in answer.sections:
        lines.append(f"<b>{e(section.title)}</b>")
        lines += [e(line) for line in section.lines]
        lines += [f"• {e(item)}" for item in section.items]
        lines.append("")
    if not answer.sections:
        lines.append(e(answer.text))
    if answer.tools_failed:
        lines.append(f"⚠️ unavailable: {e(', '.join(answer.tools_failed))}")
    source = (
        "🤖 LLM"
        if answer.source == "llm"
        else f"📐 rule-based fallback ({e(answer.fallback_reason or 'no LLM')})"
    )
    lines.append(f"<i>{source} · {answer.latency_seconds:.1f}s</i>")
    return "\n".join(lines).strip()


def typed_commands_html(plane: ControlPlane, proposals: list[ProposedAction]) -> str:
    """For each proposal withheld from the buttons, the command to type if you agree."""
    lines = [
        f"✋ Not a button (alert text could have written it): type "
        f"<code>{e(_command(plane, p))}</code> yourself if you agree."
        for p in proposals
        if not p.one_press
    ]
    return "\n".join(lines)


def _command(plane: ControlPlane, proposal: ProposedAction) -> str:
    """The chat command that carries out ``proposal`` by hand."""
    match proposal.kind:
        case ActionKind.TOGGLE_CORE:
            return f"/toggle {proposal.target}"
        case ActionKind.FAILOVER:
            if proposal.target == plane.venues.status().primary:
                return "/failback"
            return f"/failover {proposal.target}".strip()
        case ActionKind.ACKNOWLEDGE_INCIDENT:
            return f"/ack {proposal.target}"
        case ActionKind.BACKUP:
            return "/backup"


def proposal_keyboard(ui: Ui, proposals: list[ProposedAction]) -> InlineKeyboardMarkup | None:
    """One button per proposed action that may be one press (signed; pressing runs the real
    command path)."""
    rows = []
    for proposal in [p for p in proposals if p.one_press][:4]:
        state = proposal.args.get("enabled")
        enabled = "1" if state is True else "0" if state is False else ""
        data = ProposalButton(
            kind=_KINDS[proposal.kind], target=proposal.target[:24], enabled=enabled
        )
        rows.append([ui.signer.button(f"▶️ {proposal.describe()}"[:60], data)])
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


def _html(plane: ControlPlane, answer: Answer) -> str:
    typed = typed_commands_html(plane, answer.proposals)
    return answer_html(answer) + (f"\n{typed}" if typed else "")


async def _reply(ui: Ui, plane: ControlPlane, chat_id: int, answer: Answer) -> None:
    await ui.reply(chat_id, _html(plane, answer), proposal_keyboard(ui, answer.proposals))


async def ask(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """``/ask QUESTION``."""
    question = (command.args or "").strip()
    if not question:
        raise InvalidInput("usage: /ask QUESTION, e.g. /ask is redis ok?")
    await _reply(ui, plane, message.chat.id, await plane.assistant.ask(question, actor))


async def plain_question(
    message: Message, plane: ControlPlane, ui: Ui, actor: Actor, bot: Bot
) -> None:
    """Plain text in a private chat, or a mention/reply to the bot in a group."""
    text = (message.text or "").strip()
    if message.chat.type != "private":
        me = await bot.me()
        mention = f"@{me.username}" if me.username else ""
        replied = (
            message.reply_to_message is not None
            and message.reply_to_message.from_user is not None
            and message.reply_to_message.from_user.id == me.id
        )
        if not replied and (not mention or mention.lower() not in text.lower()):
            return  # ordinary group chatter is not for us
        text = text.replace(mention, "").strip()
    if not text:
        return
    await _reply(ui, plane, message.chat.id, await plane.assistant.ask(text, actor))


async def diagnose(
    plane: ControlPlane, ui: Ui, actor: Actor, chat_id: int, incident_id: int
) -> None:
    """The Diagnose button: likely causes and the runbook's next steps, in the thread."""
    answer = await plane.assistant.diagnose(incident_id, actor)
    await ui.reply_in_thread(
        chat_id, incident_id, _html(plane, answer), proposal_keyboard(ui, answer.proposals)
    )


async def proposal_pressed(
    query: CallbackQuery, callback_data: ProposalButton, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Carry out a proposed action as the presser: roles and confirmations from core."""
    if not await ui.genuine(query, callback_data, plane, actor):
        return
    chat_id = query.message.chat.id if query.message else query.from_user.id
    proposal = _proposal(callback_data)

    async def run(confirm: bool) -> str:
        return _done_html(await plane.assistant.execute(proposal, actor, confirm=confirm))

    await ui.confirm_or_run(chat_id, query.from_user.id, run)
    await query.answer("Done, or waiting for your confirmation below.")


def _proposal(data: ProposalButton) -> ProposedAction:
    """The proposal a button carries (its kind, target and, for a core, the state to set)."""
    kind = next((k for k, letter in _KINDS.items() if letter == data.kind), None)
    if kind is None:
        raise InvalidInput("this button names no action I know; ask again")
    enabled = {"1": True, "0": False}.get(data.enabled)
    return ProposedAction(
        kind=kind,
        target=data.target,
        args={} if enabled is None else {"enabled": enabled},
        reason="proposed by the assistant",
    )


def _done_html(result: ActionResult) -> str:
    """What the action did, for chat."""
    if result.incident is not None:
        return f"👀 Acknowledged <b>#{result.incident.id}</b> {e(result.incident.title)}"
    if result.core is not None:
        state = "on" if result.core.enabled else "off"
        return f"⚙️ Core <b>{e(result.core.name)}</b> is now {state}."
    if result.venues is not None:
        return f"🔀 Trading on <b>{e(result.venues.active)}</b> now."
    if result.backup is not None:
        return f"💾 Backup <code>{e(result.backup.id)}</code> taken."
    return e(result.summary)


def router() -> Router:
    """The assistant's handlers (plain text last: after every command)."""
    r = Router(name="assistant")
    r.message.register(ask, Command("ask"))
    r.callback_query.register(proposal_pressed, ProposalButton.filter())
    r.message.register(plain_question, F.text & ~F.text.startswith("/"))
    return r
