"""Runbook §7: a Falco Critical event emails the security address, report attached."""

from __future__ import annotations

from core.incidents.receivers import parse_falco
from tests.conftest import PlaneFactory
from tests.fakes.smtp import FakeSmtp
from tests.support.payloads import falco_event


async def test_security_incident_is_emailed_with_the_report(make_plane: PlaneFactory) -> None:
    async with FakeSmtp() as smtp:
        plane = await make_plane(
            smtp_host="127.0.0.1", smtp_port=smtp.port, security_email="security@lunia.example"
        )
        result = await plane.incidents.ingest(parse_falco(falco_event()))
        await plane.incidents.ingest(
            parse_falco(falco_event("Read sensitive file", priority="Notice", uuid="not-security"))
        )
        [email] = await smtp.wait_for(1)
        assert smtp.envelopes[0][1] == ["security@lunia.example"]
        assert email["Subject"] == (
            f"[Lunia security] #{result.incidents[0]} Terminal shell in container"
        )
        parts = list(email.iter_parts())
        assert "Severity: critical" in str(parts[0].get_content())
        assert parts[1].get_filename() == "RELEASE_REPORT.md"
        assert parts[1].get_content().startswith("# Release report and access review")
    assert len(smtp.messages) == 1  # the Notice event is not a security incident


async def test_smtp_down_keeps_the_email_queued(make_plane: PlaneFactory) -> None:
    plane = await make_plane(smtp_host="127.0.0.1", smtp_port=9)  # nothing listens
    await plane.incidents.ingest(parse_falco(falco_event()))
    assert plane.security_mail_outbox is not None
    await plane.security_mail_outbox.run_once()
    assert (await plane.store.outbox_stats("email")).depth == 1
