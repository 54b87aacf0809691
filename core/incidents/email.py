"""Runbook §7: security incidents (Falco Critical and above) are emailed to the security address
with the incident and the latest access/release report attached, when SMTP is configured.

The email is queued in the ``email`` outbox in the same transaction that opens the incident,
and sent at least once by an ``OutboxWorker`` using the standard library's SMTP client.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

from core.config.settings import Settings
from core.models import OutboxItem, OutboxMessage
from core.models.incidents import Incident
from core.platform.outbox import Delivery

logger = logging.getLogger(__name__)

CHANNEL = "email"


def message_for(incident: Incident) -> OutboxMessage:
    """The outbox entry that emails ``incident`` to the security address."""
    return OutboxMessage(channel=CHANNEL, key="security", payload={"incident_id": incident.id})


def incident_text(incident: Incident) -> str:
    """The incident as plain text for the email body."""
    labels = "\n".join(f"  {k}: {v}" for k, v in sorted(incident.labels.items()))
    return (
        f"Security incident #{incident.id}: {incident.title}\n"
        f"Severity: {incident.severity.value}   Source: {incident.source.value}   "
        f"State: {incident.state.value}\n"
        f"First seen: {incident.first_seen.isoformat()}   Count: {incident.count}\n\n"
        f"{incident.summary}\n\n{incident.description}\n\nLabels:\n{labels}\n\n"
        "Act on it in Telegram (/incidents) or the API (/api/v1/incidents/"
        f"{incident.id}). The latest release/access report is attached.\n"
    )


class SecurityMailer:
    """Builds and sends the security email for a queued incident."""

    def __init__(
        self,
        settings: Settings,
        incident: Callable[[int], Awaitable[Incident]],
        report: Callable[[], Awaitable[str]],
    ) -> None:
        self._settings = settings
        self._incident = incident
        self._report = report

    async def deliver(self, item: OutboxItem) -> Delivery:
        """Send one email; SMTP and network errors are retried by the outbox."""
        incident = await self._incident(int(item.payload["incident_id"]))
        email = EmailMessage()
        email["Subject"] = f"[Lunia security] #{incident.id} {incident.title}"
        email["From"] = self._settings.smtp_from
        email["To"] = self._settings.security_email
        email.set_content(incident_text(incident))
        email.add_attachment(
            (await self._report()).encode(),
            maintype="text",
            subtype="markdown",
            filename="RELEASE_REPORT.md",
        )
        try:
            await asyncio.to_thread(self._send, email)
        except smtplib.SMTPRecipientsRefused as exc:
            return Delivery.failed(f"SMTP refused the recipient: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return Delivery.retry(f"SMTP: {type(exc).__name__}: {exc}")
        logger.info(
            "security email for %s sent to %s", incident.describe(), self._settings.security_email
        )
        return Delivery.ok()

    def _send(self, email: EmailMessage) -> None:
        s = self._settings
        assert s.smtp_host is not None  # noqa: S101 - only built when configured
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=15) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username and s.smtp_password is not None:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
            smtp.send_message(email)
