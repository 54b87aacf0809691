"""Which chat an incident's messages go to: ops, security, or the escalation chat.

The rule lives here, not in an adapter, so every channel that posts about incidents (the Telegram
notifier today, PagerDuty or e-mail routing later) sends the same incident to the same place.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.config.settings import Settings
from core.models.incidents import Incident


class ChatRouting(BaseModel):
    """The chats incidents are routed to (None: that kind of message is not posted)."""

    ops: int | None = None
    security: int | None = None
    escalation: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatRouting:
        """TELEGRAM_*_CHAT_ID; the security and escalation chats default to the ops chat."""
        ops = settings.telegram_ops_chat_id
        return cls(
            ops=ops,
            security=settings.telegram_security_chat_id or ops,
            escalation=settings.telegram_escalation_chat_id or ops,
        )

    def chat_for(self, incident: Incident) -> int | None:
        """Where an incident's own message lives: security incidents apart from the rest."""
        return self.security if incident.security else self.ops
