"""What the chat channel remembers between deliveries, kept in the store behind one service.

The Telegram adapter needs a little state of its own that must survive restarts and be shared by
replicas: which message shows each incident (so changes edit it), which group chats were migrated
to supergroups, how far the notifier has read the incident event log, and the ``telegram`` outbox
itself. Adapters reach the store only through this service, under the store keys used so far
(``tg:incident:{id}``, ``tg:migrated:{chat}``, cursor ``telegram-notifier``), so existing state
keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from core.models import OutboxMessage, OutboxStats
from core.models.incidents import IncidentEvent
from core.platform.metrics import Metrics
from core.platform.outbox import Deliver, OutboxWorker
from core.store import Store

logger = logging.getLogger(__name__)

CHANNEL = "telegram"
CURSOR = "telegram-notifier"


class ShownMessage(BaseModel):
    """The chat message that shows an incident, and a digest of what it shows."""

    chat_id: int
    message_id: int
    hash: str | None = None  # text + buttons last sent: an unchanged state is not sent again


def _incident_key(incident_id: int) -> str:
    return f"tg:incident:{incident_id}"


def _migration_key(chat_id: int) -> str:
    return f"tg:migrated:{chat_id}"


class ChatDeliveryState:
    """The chat channel's durable delivery state: shown messages, migrations, cursor, outbox."""

    def __init__(
        self, store: Store, metrics: Metrics, *, channel: str = CHANNEL, cursor: str = CURSOR
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.channel = channel
        self.cursor_name = cursor

    async def shown(self, incident_id: int) -> ShownMessage | None:
        """The message that shows this incident, or None if it has not been posted."""
        raw = await self._store.get_value(_incident_key(incident_id))
        if not raw:
            return None
        try:
            return ShownMessage.model_validate(raw)
        except ValidationError:
            # Unreadable: post the incident afresh rather than fail its delivery forever.
            logger.warning("ignoring unreadable shown-message state of incident %d", incident_id)
            return None

    async def set_shown(self, incident_id: int, shown: ShownMessage) -> None:
        """Remember the message that now shows this incident."""
        await self._store.set_value(_incident_key(incident_id), shown.model_dump(mode="json"))

    async def migrated(self, chat_id: int) -> int | None:
        """The supergroup a group chat was migrated to, if it was."""
        moved = await self._store.get_value(_migration_key(chat_id))
        return None if moved is None else int(moved)

    async def record_migration(self, old: int, new: int) -> None:
        """Remember that chat ``old`` now lives at ``new``."""
        await self._store.set_value(_migration_key(old), new)

    async def cursor(self) -> int:
        """The notifier's position in the incident event log (0 when new)."""
        return await self._store.get_cursor(self.cursor_name)

    async def events_since(self, cursor: int, limit: int = 200) -> list[IncidentEvent]:
        """Incident events after ``cursor``, oldest first."""
        return await self._store.incident_events(after_seq=cursor, limit=limit)

    async def enqueue(self, messages: Sequence[OutboxMessage], cursor: int | None = None) -> None:
        """Queue messages; with ``cursor``, move the notifier's position in the same
        transaction, so an event becomes its messages exactly once."""
        await self._store.outbox_add(
            messages, cursor=None if cursor is None else (self.cursor_name, cursor)
        )

    async def outbox_stats(self) -> OutboxStats:
        """Depth and oldest pending message of the channel's outbox."""
        return await self._store.outbox_stats(self.channel)

    def outbox_worker(self, deliver: Deliver) -> OutboxWorker:
        """The worker that delivers the channel's outbox with ``deliver``."""
        return OutboxWorker(self._store, self.channel, deliver, self._metrics)
