"""The one refusal recorder: every refused request is counted and audited, whichever adapter it
came through (API 401/403, an unknown Telegram user, a role check in core).

Refusals of known actors are audited every time: they are attributable and already rate limited.
Refusals of unknown callers (bad or missing tokens, users on no list) are throttled, so that a
flood of them cannot flood the audit log: one entry per caller and reason per ``EVERY``, and at
most ``BURST`` per channel and reason in that time. The throttle lives in the store, so it holds
across replicas.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from core.models import Actor, AuditRecord

if TYPE_CHECKING:
    from core.platform.metrics import Metrics
    from core.security.audit import AuditLog

EVERY = timedelta(hours=1)
BURST = 30


class RefusalRecorder:
    """Counts a refusal in ``unauthorized_attempts`` and writes its ``denied`` audit entry."""

    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self._audit = audit
        self._metrics = metrics

    async def record(
        self,
        principal: Actor,
        action: str,
        reason: str,
        *,
        channel: str | None = None,
        target: str = "",
        detail: str = "",
        before: Any = None,
        after: Any = None,
    ) -> bool:
        """Count and audit one refusal; False when an unknown caller's entry was throttled."""
        channel = channel or principal.kind.value
        self._metrics.auth_denied.labels(channel, reason).inc()
        record = AuditRecord(
            actor=principal,
            action=action,
            target=target,
            before=before,
            after=after,
            outcome="denied",
            detail=detail or reason,
        )
        if principal.role is None:
            written = await self._audit.record_throttled(
                record,
                {
                    f"refusal:{channel}:{reason}:{principal.id}": 1,
                    f"refusals:{channel}:{reason}": BURST,
                },
                every=EVERY,
            )
            if not written:
                return False
        else:
            await self._audit.record(record)
        self._metrics.audit_entries.labels("denied").inc()
        return True
