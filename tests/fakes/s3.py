"""A loopback fake of the S3 REST API subset the control plane uses, for boto3 to talk to.

Path-style requests (``/bucket/key``) with AWS Signature V4, which the fake checks for real
(wrong keys or a tampered request answer 403 ``SignatureDoesNotMatch`` like S3 does):
PutObject, GetObject, HeadObject, DeleteObject and ListObjectsV2 (with paging and
``encoding-type=url``). Objects live in memory; tests read and corrupt them through ``objects``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

ACCESS_KEY = "FAKEACCESSKEY"
SECRET_KEY = "fake-secret-key-for-tests"


@dataclass
class StoredObject:
    """One object as the fake holds it."""

    body: bytes
    modified: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.body, usedforsecurity=False).hexdigest() + '"'


class FakeS3:
    """The fake's state: buckets of objects, plus a request log."""

    def __init__(self, buckets: tuple[str, ...] = ("lunia",)) -> None:
        self.buckets: dict[str, dict[str, StoredObject]] = {b: {} for b in buckets}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    def objects(self, bucket: str = "lunia") -> dict[str, StoredObject]:
        """The objects of ``bucket`` by key (live: edit to corrupt)."""
        return self.buckets[bucket]


def _signing_key(date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so "Expect: 100-continue" is answered at once
    fake: FakeS3

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        ).encode()
        self._send(status, body, {"Content-Type": "application/xml"})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self, body: bytes) -> bool:
        """Check the AWS Signature V4 exactly as S3 would."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            self._error(403, "AccessDenied", "missing AWS4-HMAC-SHA256 signature")
            return False
        parts = dict(
            p.strip().split("=", 1) for p in auth.removeprefix("AWS4-HMAC-SHA256 ").split(",")
        )
        access_key, date, region, service, _ = parts["Credential"].split("/")
        if access_key != ACCESS_KEY:
            self._error(403, "InvalidAccessKeyId", "unknown access key")
            return False
        payload_hash = self.headers.get("x-amz-content-sha256", "")
        if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
            self._error(400, "XAmzContentSHA256Mismatch", "body does not match its hash")
            return False
        split = urlsplit(self.path)
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted(parse_qsl(split.query, keep_blank_values=True))
        )
        signed = parts["SignedHeaders"].split(";")
        headers = "".join(f"{h}:{' '.join((self.headers.get(h) or '').split())}\n" for h in signed)
        canonical = "\n".join(
            [self.command, split.path, query, headers, parts["SignedHeaders"], payload_hash]
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                self.headers.get("x-amz-date", ""),
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        expected = hmac.new(
            _signing_key(date, region, service), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, parts["Signature"]):
            self._error(403, "SignatureDoesNotMatch", "the request signature does not match")
            return False
        return True

    def _route(self) -> tuple[str, str, dict[str, str]] | None:
        split = urlsplit(self.path)
        bucket, _, key = split.path.lstrip("/").partition("/")
        with self.fake.lock:
            self.fake.requests.append((self.command, split.path))
            known = bucket in self.fake.buckets
        if not known:
            self._error(404, "NoSuchBucket", f"bucket {bucket!r} does not exist")
            return None
        return bucket, unquote(key), dict(parse_qsl(split.query, keep_blank_values=True))

    def _handle(self) -> None:
        body = self._body() if self.command == "PUT" else b""
        if not self._authorized(body):
            return
        route = self._route()
        if route is None:
            return
        bucket, key, query = route
        objects = self.fake.buckets[bucket]
        if self.command == "GET" and not key:
            self._list(bucket, query)
        elif self.command == "PUT":
            with self.fake.lock:
                objects[key] = StoredObject(body)
            self._send(200, headers={"ETag": objects[key].etag})
        elif self.command in ("GET", "HEAD"):
            with self.fake.lock:
                found = objects.get(key)
            if found is None:
                self._error(404, "NoSuchKey", f"no object {key!r}")
                return
            self._send(
                200,
                found.body,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(found.body)),
                    "ETag": found.etag,
                    "Last-Modified": format_datetime(found.modified, usegmt=True),
                },
            )
        elif self.command == "DELETE":
            with self.fake.lock:
                objects.pop(key, None)
            self._send(204)
        else:
            self._error(405, "MethodNotAllowed", self.command)

    def _list(self, bucket: str, query: dict[str, str]) -> None:
        if query.get("list-type") != "2":
            self._error(400, "InvalidArgument", "only ListObjectsV2 is implemented")
            return
        prefix = query.get("prefix", "")
        limit = int(query.get("max-keys", "1000"))
        after = query.get("continuation-token", "")
        encode = query.get("encoding-type") == "url"
        with self.fake.lock:
            keys = sorted(
                k for k in self.fake.buckets[bucket] if k.startswith(prefix) and k > after
            )
            page = [(k, self.fake.buckets[bucket][k]) for k in keys[:limit]]
        truncated = len(keys) > limit

        def shown(text: str) -> str:
            return escape(quote(text, safe="/") if encode else text)

        items = "".join(
            f"<Contents><Key>{shown(k)}</Key>"
            f"<LastModified>{o.modified.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
            f"<ETag>{escape(o.etag)}</ETag><Size>{len(o.body)}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k, o in page
        )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix>{shown(prefix)}</Prefix>"
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
            + ("<EncodingType>url</EncodingType>" if encode else "")
            + f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (
                f"<NextContinuationToken>{escape(page[-1][0])}</NextContinuationToken>"
                if truncated
                else ""
            )
            + items
            + "</ListBucketResult>"
        )
        self._send(200, xml.encode(), {"Content-Type": "application/xml"})

    do_GET = do_PUT = do_HEAD = do_DELETE = _handle  # noqa: N815 - stdlib dispatch names


@contextmanager
def running_fake_s3(buckets: tuple[str, ...] = ("lunia",)) -> Iterator[FakeS3]:
    """Serve a fake S3 on a free loopback port for the duration of the block."""
    fake = FakeS3(buckets)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-s3", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
