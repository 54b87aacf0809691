"""Runbook §7: a Falco Critical event emails the security address, report attached, over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.control_plane import ControlPlane
from core.incidents.receivers import parse_falco
from tests.conftest import PlaneFactory
from tests.fakes.smtp import FakeSmtp
from tests.support.payloads import falco_event


@dataclass
class Tls:
    """A throwaway certificate for 127.0.0.1: the fake's server context and the CA file."""

    server: ssl.SSLContext
    ca_file: Path


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Tls(server=server, ca_file=cert_file)


async def mail_plane(make_plane: PlaneFactory, smtp: FakeSmtp, **env: object) -> ControlPlane:
    return await make_plane(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        security_email="security@lunia.example",
        smtp_username="lunia",
        smtp_password="s3cret",  # noqa: S106 - a test credential
        **env,
    )


async def test_security_incident_is_emailed_with_the_report_over_starttls(
    make_plane: PlaneFactory, tls: Tls
) -> None:
    async with FakeSmtp(tls.server) as smtp:
        plane = await mail_plane(make_plane, smtp, smtp_ca_file=tls.ca_file)
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
        assert smtp.over_tls == [True]
        assert smtp.logins == [("lunia", True)]
    assert len(smtp.messages) == 1  # the Notice event is not a security incident


async def test_crlf_in_a_title_cannot_add_headers_or_jam_the_queue(
    make_plane: PlaneFactory, tls: Tls
) -> None:
    async with FakeSmtp(tls.server) as smtp:
        plane = await mail_plane(make_plane, smtp, smtp_ca_file=tls.ca_file)
        hostile = "Shell\r\nBcc: attacker@evil.example\r\n\r\nbody"
        first = await plane.incidents.ingest(parse_falco(falco_event(hostile, uuid="hostile")))
        await plane.incidents.ingest(parse_falco(falco_event("Write below etc", uuid="next")))
        jammed, after = await smtp.wait_for(2)
        assert jammed["Subject"] == (
            f"[Lunia security] #{first.incidents[0]} Shell Bcc: attacker@evil.example body"
        )
        assert jammed["Bcc"] is None
        assert [recipients for _, recipients in smtp.envelopes] == [
            ["security@lunia.example"],
            ["security@lunia.example"],
        ]
        assert "Write below etc" in after["Subject"]
        assert (await plane.store.outbox_stats("email")).depth == 0


@pytest.mark.slow
async def test_server_without_starttls_is_refused_unless_smtp_insecure(
    make_plane: PlaneFactory,
) -> None:
    async with FakeSmtp() as smtp:  # no TLS context: STARTTLS is not advertised
        plane = await mail_plane(make_plane, smtp)
        await plane.incidents.ingest(parse_falco(falco_event()))
        assert plane.security_mail_outbox is not None
        await plane.security_mail_outbox.run_once()
        assert smtp.sessions >= 1  # it did talk to the server...
        assert smtp.messages == []  # ...and sent nothing in the clear
        assert smtp.logins == []  # not even the password
        assert (await plane.store.outbox_stats("email")).depth == 1
        await plane.close()

        insecure = await mail_plane(make_plane, smtp, smtp_insecure=True)
        await insecure.incidents.ingest(parse_falco(falco_event(uuid="second")))
        await smtp.wait_for(1)
        assert smtp.over_tls == [False]
        assert smtp.logins == [("lunia", False)]


async def test_an_untrusted_certificate_is_refused(make_plane: PlaneFactory, tls: Tls) -> None:
    async with FakeSmtp(tls.server) as smtp:
        plane = await mail_plane(make_plane, smtp)  # the throwaway CA is not trusted
        await plane.incidents.ingest(parse_falco(falco_event()))
        assert plane.security_mail_outbox is not None
        await plane.security_mail_outbox.run_once()
        assert smtp.messages == []
        assert smtp.logins == []
        assert (await plane.store.outbox_stats("email")).depth == 1


async def test_implicit_tls_with_smtp_tls(make_plane: PlaneFactory, tls: Tls) -> None:
    async with FakeSmtp(tls.server, implicit_tls=True) as smtp:
        plane = await mail_plane(make_plane, smtp, smtp_tls=True, smtp_ca_file=tls.ca_file)
        await plane.incidents.ingest(parse_falco(falco_event()))
        await smtp.wait_for(1)
        assert smtp.over_tls == [True]
        assert smtp.logins == [("lunia", True)]


async def test_smtp_down_keeps_the_email_queued(make_plane: PlaneFactory) -> None:
    plane = await make_plane(smtp_host="127.0.0.1", smtp_port=9)  # nothing listens
    await plane.incidents.ingest(parse_falco(falco_event()))
    assert plane.security_mail_outbox is not None
    await plane.security_mail_outbox.run_once()
    assert (await plane.store.outbox_stats("email")).depth == 1
