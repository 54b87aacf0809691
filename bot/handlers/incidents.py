"""Incidents from chat: list, act by command, and the buttons on every incident message."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.callbacks import IncidentButton, StormButton, incident_keyboard
from bot.handlers.assistant import diagnose
from bot.render import e, incident_line, incident_message
from bot.ui import Ui
from core.control_plane import ControlPlane
from core.errors import Conflict, InvalidInput
from core.models import Actor
from core.models.incidents import Incident

logger = logging.getLogger(__name__)

COMMANDS = [
    ("incidents", "open incidents (/incidents all: the latest 20 of any state)"),
    ("incident", "one incident with its buttons: /incident ID"),
    ("ack", "acknowledge: /ack ID"),
    ("unack", "hand back: /unack ID"),
    ("resolve", "resolve: /resolve ID"),
    ("silence", "silence: /silence ID 1h (30m, 4h, 1d, max 7d)"),
    ("unsilence", "lift a silence: /unsilence ID"),
]


def incident_id(command: CommandObject, usage: str) -> int:
    """The ID argument, or a message saying how to use the command."""
    arg = (command.args or "").split()
    if not arg or not arg[0].lstrip("#").isdigit():
        raise InvalidInput(f"usage: {usage}")
    return int(arg[0].lstrip("#"))


async def list_incidents(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui
) -> None:
    """Open incidents, newest first."""
    everything = (command.args or "").strip() == "all"
    found = await plane.incidents.list(open_only=not everything, limit=20)
    if not found:
        await ui.reply(message.chat.id, "✅ No open incidents.")
        return
    title = "Latest incidents" if everything else "Open incidents"
    lines = [f"<b>{title}</b>"] + [incident_line(i) for i in found]
    lines.append("Act with /ack ID, /resolve ID, /silence ID 1h")
    await ui.reply(message.chat.id, "\n".join(lines))


async def show_incident(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui
) -> None:
    """One incident's message with its buttons (the way in from a storm board)."""
    incident = await plane.incidents.get(incident_id(command, "/incident ID"))
    keyboard = incident_keyboard(ui.signer, incident, diagnose=ui.diagnose)
    await ui.reply(message.chat.id, incident_message(incident), keyboard)


_VERBS = {
    "a": "Acknowledged",
    "u": "Unacknowledged",
    "r": "Resolved",
    "s": "Silenced",
    "l": "Unsilenced",
}


async def _press(plane: ControlPlane, data: IncidentButton, actor: Actor) -> Incident:
    """Carry out one incident button (roles and state rules are checked in core)."""
    service, number = plane.incidents, data.incident
    if data.action == "a":
        return await service.acknowledge(number, actor)
    if data.action == "u":
        return await service.unacknowledge(number, actor)
    if data.action == "r":
        return await service.resolve(number, actor)
    if data.action == "s":
        return await service.silence(number, actor, data.arg)
    return await service.unsilence(number, actor)


async def done(message: Message, ui: Ui, verb: str, incident_id: int, title: str) -> None:
    await ui.reply(message.chat.id, f"{verb} <b>#{incident_id}</b> {e(title)}")


async def ack(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Acknowledge an incident by id."""
    incident = await plane.incidents.acknowledge(incident_id(command, "/ack ID"), actor)
    await done(message, ui, "👀 Acknowledged", incident.id, incident.title)


async def unack(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Hand an incident back."""
    incident = await plane.incidents.unacknowledge(incident_id(command, "/unack ID"), actor)
    await done(message, ui, "↩️ Unacknowledged", incident.id, incident.title)


async def resolve(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Resolve an incident by id."""
    incident = await plane.incidents.resolve(incident_id(command, "/resolve ID"), actor)
    await done(message, ui, "✅ Resolved", incident.id, incident.title)


async def silence(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Silence an incident for a duration."""
    usage = "/silence ID DURATION (e.g. /silence 12 4h)"
    args = (command.args or "").split()
    if len(args) != 2:
        raise InvalidInput(f"usage: {usage}")
    incident = await plane.incidents.silence(incident_id(command, usage), actor, args[1])
    await done(message, ui, f"🔕 Silenced for {e(args[1])}", incident.id, incident.title)


async def unsilence(
    message: Message, command: CommandObject, plane: ControlPlane, ui: Ui, actor: Actor
) -> None:
    """Lift a silence."""
    incident = await plane.incidents.unsilence(incident_id(command, "/unsilence ID"), actor)
    await done(message, ui, "🔔 Unsilenced", incident.id, incident.title)


async def pressed(
    query: CallbackQuery,
    callback_data: IncidentButton,
    plane: ControlPlane,
    ui: Ui,
    actor: Actor,
) -> None:
    """A button on an incident message; the message itself is edited by the event."""
    if not await ui.genuine(query, callback_data, plane, actor):
        return
    number = callback_data.incident
    if callback_data.action == "d":
        await query.answer("Diagnosing…")
        chat_id = query.message.chat.id if query.message else query.from_user.id
        await diagnose(plane, ui, actor, chat_id, number)
        return
    verb = _VERBS.get(callback_data.action)
    if verb is None:
        await query.answer("This button is no longer supported.")
        return
    try:
        incident = await _press(plane, callback_data, actor)
    except Conflict as exc:
        # A stale button: say how things stand, and bring the message up to date.
        await query.answer(exc.message, show_alert=True)
        if query.message is not None:
            await ui.refresh_incident(query.message.chat.id, number)
        return
    text = f"{verb} #{number}" + (
        f" for {callback_data.arg}" if callback_data.action == "s" else ""
    )
    await query.answer(f"{text}: now {incident.state.value}")


async def storm_pressed(
    query: CallbackQuery,
    callback_data: StormButton,
    plane: ControlPlane,
    ui: Ui,
    actor: Actor,
) -> None:
    """A bulk button on a storm board: every incident of the storm, as the presser; the board
    shows the outcome as their events arrive."""
    if not await ui.genuine(query, callback_data, plane, actor):
        return
    boards = plane.storm_boards
    if callback_data.action == "a":
        outcome = await boards.acknowledge_all(callback_data.storm, actor)
        verb = "Acknowledged"
    elif callback_data.action == "s":
        outcome = await boards.silence_all(callback_data.storm, actor, "1h")
        verb = "Silenced for 1h"
    else:
        await query.answer("This button is no longer supported.")
        return
    left = f"; {len(outcome.unchanged)} left as they were" if outcome.unchanged else ""
    await query.answer(f"{verb} {len(outcome.changed)} incidents{left}.", show_alert=True)


def router() -> Router:
    """The incidents feature's handlers."""
    r = Router(name="incidents")
    r.message.register(list_incidents, Command("incidents"))
    r.message.register(show_incident, Command("incident"))
    r.message.register(ack, Command("ack"))
    r.message.register(unack, Command("unack"))
    r.message.register(resolve, Command("resolve"))
    r.message.register(silence, Command("silence"))
    r.message.register(unsilence, Command("unsilence"))
    r.callback_query.register(pressed, IncidentButton.filter())
    r.callback_query.register(storm_pressed, StormButton.filter())
    return r
