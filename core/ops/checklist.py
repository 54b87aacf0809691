"""The daily checklist (runbook §1) as data: each line ✅/⚠️/❌ with its reason.

Run on a cron where the scheduler leads (the worker) and queued for the ops chat through the
shared ``telegram`` outbox (``post``: the bot renders and sends it), on ``/checklist``, by ``GET
/api/v1/checklist`` and by ``lunia checklist`` (exit 1 on any ❌). Sections come from providers,
so capabilities added later (PnL and exposure, backups, credentials) join by registering one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from core.incidents.delivery import CHANNEL, ChatDeliveryState
from core.incidents.service import IncidentService
from core.models import OutboxMessage, utcnow
from core.models.alerts import Severity
from core.models.incidents import IncidentState
from core.models.ops import Checklist, ChecklistItem, Mark
from core.platform.health import HealthService, Status

logger = logging.getLogger(__name__)


Provider = Callable[[], Awaitable[list[ChecklistItem]]]


class ChecklistService:
    """Builds the daily checklist from registered providers."""

    def __init__(self, health: HealthService, incidents: IncidentService) -> None:
        self._health = health
        self._incidents = incidents
        self._providers: list[tuple[str, Provider]] = [
            ("health", self._service_health),
            ("incidents", self._incident_lines),
        ]

    def register(self, name: str, provider: Provider) -> None:
        """Add a section (key metrics, backups, credentials, ...)."""
        self._providers.append((name, provider))

    async def run(self) -> Checklist:
        """Every provider's lines; a provider that fails becomes a ❌ line, not an exception."""
        items: list[ChecklistItem] = []
        for name, provider in self._providers:
            try:
                items.extend(await provider())
            except Exception as exc:
                logger.exception("checklist section %s failed", name)
                items.append(
                    ChecklistItem(name=name, mark=Mark.FAIL, reason=f"could not be checked: {exc}")
                )
        return Checklist(generated_at=utcnow(), items=items)

    async def post(self, delivery: ChatDeliveryState, chat_id: int) -> Checklist:
        """Run the checklist and queue it for ``chat_id``: an ``op: checklist`` message of the
        shared outbox, rendered and sent by whichever process runs the bot."""
        checklist = await self.run()
        payload = {
            "op": "checklist",
            "chat_id": chat_id,
            "checklist": checklist.model_dump(mode="json"),
        }
        await delivery.enqueue([OutboxMessage(channel=CHANNEL, key=str(chat_id), payload=payload)])
        logger.info("daily checklist queued for chat %s (%s)", chat_id, checklist.worst.value)
        return checklist

    async def _service_health(self) -> list[ChecklistItem]:
        report = self._health.snapshot()
        lines = []
        for name, component in report.components.items():
            if component.status in (Status.OK, Status.DISABLED):
                mark = Mark.OK
            elif component.status is Status.DEGRADED:
                mark = Mark.WARN
            else:
                mark = Mark.FAIL
            lines.append(
                ChecklistItem(
                    name=f"health: {name}",
                    mark=mark,
                    reason=f"{component.status.value}: {component.detail}",
                )
            )
        return lines

    async def _incident_lines(self) -> list[ChecklistItem]:
        open_ = await self._incidents.list(open_only=True, limit=500)
        unacked = [i for i in open_ if i.state is IncidentState.TRIGGERED]
        critical = [i for i in unacked if i.severity is Severity.CRITICAL]
        if critical:
            mark = Mark.FAIL
        elif unacked:
            mark = Mark.WARN
        else:
            mark = Mark.OK
        names = ", ".join(i.describe() for i in unacked[:5])
        reason = f"{len(open_)} open, {len(unacked)} not acknowledged" + (
            f" ({names})" if names else ""
        )
        return [ChecklistItem(name="incidents acknowledged", mark=mark, reason=reason)]
