"""One router per feature; ``build_routers`` combines them, ``COMMANDS`` feeds /help and
``setMyCommands``. To add a feature: write ``bot/handlers/<noun>.py`` with ``router()`` and
``COMMANDS``, and list it in ``FEATURES`` (before ``common``, whose catch-all comes last)."""

from __future__ import annotations

from types import ModuleType

from aiogram import Router

from bot.handlers import (
    assistant,
    audit,
    backups,
    common,
    flags,
    incidents,
    status,
    tokens,
    trading,
)

# The assistant comes last among features: it takes plain text (never a /command).
FEATURES: list[ModuleType] = [
    status,
    incidents,
    trading,
    backups,
    flags,
    audit,
    tokens,
    assistant,
]
LAST: list[ModuleType] = [common]


def build_routers() -> list[Router]:
    """Fresh routers (a router can belong to one dispatcher only), catch-all last."""
    return [feature.router() for feature in [*FEATURES, *LAST]]


def all_commands() -> list[tuple[str, str]]:
    """(command, description) of every feature, in /help order."""
    found: list[tuple[str, str]] = []
    for feature in [*FEATURES, *LAST]:
        found.extend(feature.COMMANDS)
    return found
