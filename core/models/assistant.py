"""What the assistant answers: facts from tools, the inference drawn from them, and proposals.

Text markup (plain text, never HTML; adapters escape everything):

- a line starting with ``# `` is a section heading;
- a line starting with ``- `` is a list item;
- any other line is a paragraph line; an empty line separates blocks.

Nothing else is markup: ``*``, ``_``, backticks and ``<`` are literal characters. Adapters that
prefer structure can render ``Answer.sections`` instead of parsing ``Answer.text``.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.models import Role


class ActionKind(enum.StrEnum):
    """What the assistant may propose (a person still has to press the button)."""

    ACKNOWLEDGE_INCIDENT = "ack_incident"
    TOGGLE_CORE = "toggle_core"
    FAILOVER = "failover"
    BACKUP = "backup"


class ProposedAction(BaseModel):
    """An action the assistant suggests; never carried out by the assistant itself.

    ``target`` is the incident id (as text), core name, venue id, or empty for a backup.
    ``role`` is the least role that may carry it out, ``confirm`` whether the operation asks
    for an explicit confirmation. ``from_alert_content``: the answer that proposed it read alert
    text (titles, labels, annotations), which anyone able to fire an alert can write.
    ``loosens_safety``: it switches a core on or fails back, the direction an injected alert
    would push; such a proposal from alert content is never a one-press button.
    """

    kind: ActionKind
    target: str = ""
    args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    reason: str
    role: Role = Role.OPERATOR
    confirm: bool = False
    from_alert_content: bool = False
    loosens_safety: bool = False

    @property
    def one_press(self) -> bool:
        """Whether an adapter may offer it as a button (not when alert text could have put a
        safety-loosening action there)."""
        return not (self.from_alert_content and self.loosens_safety)

    def describe(self) -> str:
        """One line for people, e.g. ``Acknowledge incident #3``."""
        if self.kind is ActionKind.ACKNOWLEDGE_INCIDENT:
            return f"Acknowledge incident #{self.target}"
        if self.kind is ActionKind.TOGGLE_CORE:
            state = self.args.get("enabled")
            verb = "Switch on" if state is True else "Switch off" if state is False else "Toggle"
            return f"{verb} core {self.target}"
        if self.kind is ActionKind.FAILOVER:
            return f"Fail over to {self.target}"
        return "Take a backup now"


class ToolResult(BaseModel):
    """One tool call and what it showed (``data``, JSON-able) or why it failed (``error``)."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    ok: bool
    summary: str = ""
    data: Any = None
    error: str | None = None


class AnswerSection(BaseModel):
    """A titled block of an answer: paragraph lines, and list items."""

    title: str
    lines: list[str] = Field(default_factory=list)
    items: list[str] = Field(default_factory=list)


Source = Literal["llm", "fallback"]


class Answer(BaseModel):
    """The assistant's reply to a question or a diagnosis request."""

    question: str
    text: str
    source: Source
    fallback_reason: str | None = None
    intent: str | None = None
    inference: str = ""
    facts: list[ToolResult] = Field(default_factory=list)
    tools_failed: list[str] = Field(default_factory=list)
    proposals: list[ProposedAction] = Field(default_factory=list)
    sections: list[AnswerSection] = Field(default_factory=list)
    latency_seconds: float = 0.0
    steps: int = 0
    tokens: int = 0


def render(sections: list[AnswerSection]) -> str:
    """The sections as plain text in the markup described in this module's docstring."""
    blocks = []
    for section in sections:
        lines = [f"# {section.title}"]
        lines.extend(_plain(line) for line in section.lines)
        lines.extend(f"- {_plain(item)}" for item in section.items)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _plain(line: str) -> str:
    """Keep a content line from reading as markup (a leading ``#`` or ``-``)."""
    stripped = line.strip()
    while stripped.startswith(("# ", "- ")):
        stripped = stripped[2:].lstrip()
    return stripped
