"""A loopback SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, plus
STARTTLS (RFC 3207), implicit TLS and AUTH PLAIN when given a TLS context) that keeps every
message it accepts, and whether it came over TLS, for the security-email tests."""

from __future__ import annotations

import asyncio
import base64
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage


class FakeSmtp:
    """Accepts mail on 127.0.0.1; ``messages`` holds the parsed emails.

    With ``tls`` (a server context) it advertises STARTTLS, or with ``implicit_tls`` speaks TLS
    from the first byte; ``over_tls`` says, per message, whether it arrived encrypted, and
    ``logins`` each AUTH's user name and whether it was encrypted.
    """

    def __init__(self, tls: ssl.SSLContext | None = None, *, implicit_tls: bool = False) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.over_tls: list[bool] = []
        self.logins: list[tuple[str, bool]] = []
        self.sessions = 0
        self._tls = tls
        self._implicit = implicit_tls
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeSmtp:
        context = self._tls if self._implicit else None
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until ``count`` messages have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                await asyncio.sleep(0.05)
        return self.messages

    def _ehlo(self, encrypted: bool) -> list[str]:
        """The EHLO reply lines: AUTH only where a password would not travel in the clear."""
        offers = ["fake-smtp"]
        if encrypted or self._tls is None:
            offers.append("AUTH PLAIN")
        if self._tls is not None and not encrypted:
            offers.append("STARTTLS")
        return [f"250-{o}" for o in offers[:-1]] + [f"250 {offers[-1]}"]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(*lines: str) -> None:
            writer.write(b"".join(line.encode() + b"\r\n" for line in lines))
            await writer.drain()

        self.sessions += 1
        sender, recipients = "", []
        encrypted = self._implicit
        await say("220 fake-smtp ESMTP ready")
        try:
            while line := await reader.readline():
                command = line.decode(errors="replace").strip()
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await say(*self._ehlo(encrypted))
                elif verb == "HELO":
                    await say("250 fake-smtp")
                elif verb == "STARTTLS" and self._tls is not None and not encrypted:
                    await say("220 go ahead")
                    await writer.start_tls(self._tls)
                    encrypted, sender, recipients = True, "", []
                elif verb == "AUTH":
                    initial = command.rsplit(" ", 1)[1]
                    user = base64.b64decode(initial).split(b"\0")[1].decode()
                    self.logins.append((user, encrypted))
                    await say("235 authenticated")
                elif verb == "MAIL":
                    sender, recipients = command.split(":", 1)[1].strip(" <>"), []
                    await say("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip(" <>"))
                    await say("250 OK")
                elif verb == "DATA":
                    await say("354 end with <CRLF>.<CRLF>")
                    await self._data(reader, sender, recipients, encrypted)
                    await say("250 queued")
                elif verb == "QUIT":
                    await say("221 bye")
                    break
                elif verb in ("RSET", "NOOP"):
                    await say("250 OK")
                else:
                    await say("502 command not implemented")
        finally:
            writer.close()

    async def _data(
        self, reader: asyncio.StreamReader, sender: str, recipients: list[str], encrypted: bool
    ) -> None:
        body = bytearray()
        while (chunk := await reader.readline()) not in (b".\r\n", b""):
            body += chunk[1:] if chunk.startswith(b"..") else chunk
        parsed = message_from_bytes(bytes(body), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((sender, list(recipients)))
        self.over_tls.append(encrypted)
