"""S3-compatible object storage: the off-site copy of backups and audit exports.

Works with any service speaking the S3 REST API (AWS, MinIO, Ceph, R2, ...) through boto3, the
optional ``s3`` extra; without it, using an ``s3://`` destination fails with a message saying what
to install. Only PutObject, GetObject, HeadObject, ListObjectsV2 and DeleteObject are used (no
multipart), and every call runs in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.config.settings import Settings
from core.errors import InvalidInput, Unavailable

logger = logging.getLogger(__name__)

_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix, from ``s3://bucket/prefix``."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://bucket/prefix`` or raise ``InvalidInput`` showing the expected form."""
        match = _URL.match(url.strip())
        if match is None:
            raise InvalidInput(f"expected s3://bucket/prefix, got {url!r}")
        return cls(match.group("bucket"), (match.group("prefix") or "").strip("/"))

    def key(self, *parts: str) -> str:
        """The object key for ``parts`` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def url(self, *parts: str) -> str:
        """The ``s3://`` URL of ``parts`` under the prefix."""
        return f"s3://{self.bucket}/{self.key(*parts)}"


class S3Object(BaseModel):
    """One listed object."""

    key: str
    size: int
    last_modified: datetime | None = None


class S3Client:
    """A small async facade over a boto3 S3 client, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._creating = threading.Lock()

    def _get(self) -> Any:
        """The boto3 client, built on first use (in a worker thread: it takes a while)."""
        with self._creating:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise Unavailable(
                "s3:// destinations need boto3: pip install 'lunia-control-plane[s3]'",
                retryable=False,
            ) from None
        s = self._settings
        config = Config(
            # Most S3-compatible servers want path-style URLs; AWS accepts both.
            s3={"addressing_style": "path" if s.s3_endpoint_url else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # Plain PUT bodies (no aws-chunked trailers): understood by every S3-compatible server.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=s.s3_endpoint_url,
            region_name=s.s3_region,
            aws_access_key_id=(
                s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None
            ),
            aws_secret_access_key=(
                s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
            ),
            config=config,
        )

    async def close(self) -> None:
        """Release the connection pool; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        client = self._client or await asyncio.to_thread(self._get)
        try:
            return await asyncio.to_thread(fn, client, *args, **kwargs)
        except Exception as exc:
            if isinstance(exc, Unavailable | InvalidInput):
                raise
            raise Unavailable(f"S3 {what} failed: {_describe(exc)}") from exc

    async def put_file(self, loc: S3Location, key: str, path: Path) -> None:
        """Upload ``path`` as one object (PutObject)."""

        def put(client: Any) -> None:
            with path.open("rb") as body:
                client.put_object(Bucket=loc.bucket, Key=key, Body=body)

        await self._call(f"upload of s3://{loc.bucket}/{key}", put)

    async def get_file(self, loc: S3Location, key: str, dest: Path) -> None:
        """Download one object into ``dest`` (GetObject), streaming."""

        def get(client: Any) -> None:
            response = client.get_object(Bucket=loc.bucket, Key=key)
            body = response["Body"]
            try:
                with dest.open("wb") as out:
                    while chunk := body.read(_CHUNK):
                        out.write(chunk)
            finally:
                body.close()

        await self._call(f"download of s3://{loc.bucket}/{key}", get)

    async def get_bytes(self, loc: S3Location, key: str) -> bytes:
        """One (small) object's content."""

        def get(client: Any) -> bytes:
            body = client.get_object(Bucket=loc.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        result: bytes = await self._call(f"download of s3://{loc.bucket}/{key}", get)
        return result

    async def exists(self, loc: S3Location, key: str) -> bool:
        """True when the object exists (HeadObject)."""

        def head(client: Any) -> bool:
            try:
                client.head_object(Bucket=loc.bucket, Key=key)
            except Exception as exc:
                if _status(exc) == 404:
                    return False
                raise
            return True

        found: bool = await self._call(f"lookup of s3://{loc.bucket}/{key}", head)
        return found

    async def list(self, loc: S3Location, prefix: str = "") -> builtins.list[S3Object]:
        """Every object under ``prefix`` (ListObjectsV2, all pages)."""

        def list_all(client: Any) -> builtins.list[S3Object]:
            found: builtins.list[S3Object] = []
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": prefix}
            while True:
                page = client.list_objects_v2(**kwargs)
                for item in page.get("Contents", []):
                    found.append(
                        S3Object(
                            key=item["Key"], size=item["Size"], last_modified=item["LastModified"]
                        )
                    )
                if not page.get("IsTruncated"):
                    return found
                kwargs["ContinuationToken"] = page["NextContinuationToken"]

        result: builtins.list[S3Object] = await self._call(
            f"listing of {loc.url(prefix)}", list_all
        )
        return result

    async def delete(self, loc: S3Location, key: str) -> None:
        """Delete one object (DeleteObject; absent objects are fine)."""

        def delete(client: Any) -> None:
            client.delete_object(Bucket=loc.bucket, Key=key)

        await self._call(f"delete of s3://{loc.bucket}/{key}", delete)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _describe(exc: Exception) -> str:
    """A short reason from a botocore error (they never carry the credentials)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"
