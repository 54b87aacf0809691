"""Runbook §7: security incidents (Falco Critical and above) are emailed to the security address
with the incident and the latest access/release report attached, when SMTP is configured.

The email is queued in the ``email`` outbox in the same transaction that opens the incident,
and sent at least once by an ``OutboxWorker`` using the standard library's SMTP client.

Header values come from alert text, so each is folded into one printable line: a CR/LF in an
incident's title can neither inject a header nor make the message unbuildable (which would hold
the queue for good). Mail and credentials go over TLS: STARTTLS, refused when the server does not
offer it (a stripped STARTTLS looks exactly like that), or implicit TLS with ``SMTP_TLS``; only
``SMTP_INSECURE=true`` sends in the clear.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

from core.config.settings import Settings
from core.models import OutboxItem, OutboxMessage
from core.models.incidents import Incident
from core.platform.outbox import Delivery

logger = logging.getLogger(__name__)

CHANNEL = "email"
HEADER_MAX_CHARS = 200


class NoTls(smtplib.SMTPException):
    """The server offers no STARTTLS and SMTP_INSECURE does not allow sending in the clear."""


def one_line(value: str, limit: int = HEADER_MAX_CHARS) -> str:
    """``value`` as a header may carry it: control characters and line breaks (CR, LF, U+2028...)
    become single spaces, and it is cut to ``limit`` characters."""
    printable = "".join(c if c.isprintable() else " " for c in value)
    return " ".join(printable.split())[:limit]


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
        report = await self._report()
        try:
            email = self._build(incident, report)
        except (ValueError, TypeError) as exc:
            # Building is deterministic: what failed once fails forever, so do not hold the queue.
            logger.error("security email for %s cannot be built: %s", incident.describe(), exc)
            return Delivery.failed(f"email could not be built: {exc}")
        try:
            await asyncio.to_thread(self._send, email)
        except NoTls as exc:
            logger.error("security email for %s not sent: %s", incident.describe(), exc)
            return Delivery.retry(str(exc))
        except smtplib.SMTPRecipientsRefused as exc:
            return Delivery.failed(f"SMTP refused the recipient: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return Delivery.retry(f"SMTP: {type(exc).__name__}: {exc}")
        logger.info(
            "security email for %s sent to %s", incident.describe(), self._settings.security_email
        )
        return Delivery.ok()

    def _build(self, incident: Incident, report: str) -> EmailMessage:
        email = EmailMessage()
        email["Subject"] = one_line(f"[Lunia security] #{incident.id} {incident.title}")
        email["From"] = one_line(self._settings.smtp_from)
        email["To"] = one_line(self._settings.security_email)
        email.set_content(incident_text(incident))
        email.add_attachment(
            report.encode(), maintype="text", subtype="markdown", filename="RELEASE_REPORT.md"
        )
        return email

    def _send(self, email: EmailMessage) -> None:
        s = self._settings
        assert s.smtp_host is not None  # noqa: S101 - only built when configured
        context = ssl.create_default_context(cafile=str(s.smtp_ca_file) if s.smtp_ca_file else None)
        smtp: smtplib.SMTP
        if s.smtp_tls:
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=15, context=context)
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=15)
        with smtp:
            if not s.smtp_tls and not s.smtp_insecure:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise NoTls(
                        f"{s.smtp_host}:{s.smtp_port} offers no STARTTLS; not sending in the "
                        "clear (SMTP_TLS=true for implicit TLS, SMTP_INSECURE=true for a "
                        "trusted local relay)"
                    )
                smtp.starttls(context=context)
            if s.smtp_username and s.smtp_password is not None:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
            smtp.send_message(email)
