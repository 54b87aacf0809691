"""What the operations views report: checklist verdicts and status lines.

Low in the layers because the capabilities that contribute lines (backups, tokens, trading) sit
below the services that assemble them.
"""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel


class Mark(enum.StrEnum):
    """A checklist line's verdict."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def symbol(self) -> str:
        """The emoji the chat and terminal show."""
        return {"ok": "✅", "warn": "⚠️", "fail": "❌"}[self.value]


class ChecklistItem(BaseModel):
    """One checked thing."""

    name: str
    mark: Mark
    reason: str


class Checklist(BaseModel):
    """The whole daily checklist."""

    generated_at: datetime
    items: list[ChecklistItem]

    @property
    def worst(self) -> Mark:
        """FAIL if any line failed, WARN if any warned, else OK."""
        marks = {i.mark for i in self.items}
        return Mark.FAIL if Mark.FAIL in marks else Mark.WARN if Mark.WARN in marks else Mark.OK


class StatusLine(BaseModel):
    """One labelled fact, e.g. ("PnL 24h", "+12.40 USDT")."""

    label: str
    value: str
    ok: bool = True
