"""Off-site copies of backups in S3 (``BACKUP_S3_URL``): ship, list, fetch back and delete.

A remote backup is ``<prefix>/<id>/<file>`` for each of its files plus its manifest, uploaded
last, so a remote manifest means a complete copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from core.backups.catalog import BACKUP_ID, BackupCatalog, load_manifest
from core.backups.models import MANIFEST, REMOTE, BackupInfo, BackupManifest
from core.errors import NotFound, OperationError
from core.models import utcnow
from core.platform.files import write_atomically
from core.platform.s3 import S3Client, S3Location

logger = logging.getLogger(__name__)


class OffsiteCopies:
    """The backups' copies in one S3 location."""

    def __init__(self, s3: S3Client, location: S3Location, catalog: BackupCatalog) -> None:
        self._s3 = s3
        self._location = location
        self._catalog = catalog

    def url(self, *parts: str) -> str:
        """The ``s3://`` URL of the location, or of a backup (and file) in it."""
        return self._location.url(*parts)

    async def ship(self, manifest: BackupManifest) -> str:
        """Upload a local backup (files first, manifest last) and note where it went in
        ``remote.json``; its URL, or ``OperationError`` with the local backup untouched."""
        loc, directory = self._location, self._catalog.root / manifest.id
        for entry in manifest.files:
            await self._s3.put_file(loc, loc.key(manifest.id, entry.name), directory / entry.name)
        await self._s3.put_file(loc, loc.key(manifest.id, MANIFEST), directory / MANIFEST)
        url = loc.url(manifest.id)
        remote = {"url": url, "uploaded_at": utcnow().isoformat()}
        await asyncio.to_thread(
            write_atomically, directory / REMOTE, json.dumps(remote).encode(), mode=0o600
        )
        return url

    async def exists(self, backup_id: str) -> bool:
        """Whether a complete copy of the backup is off-site."""
        return await self._s3.exists(self._location, self._location.key(backup_id, MANIFEST))

    async def fetch(self, backup_id: str) -> Path:
        """Download a backup into the catalogue (hidden until complete, then one rename)."""
        loc, root = self._location, self._catalog.root
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".fetch-", dir=root))
        try:
            await self._s3.get_file(loc, loc.key(backup_id, MANIFEST), tmp / MANIFEST)
            manifest = await asyncio.to_thread(load_manifest, tmp)
            if isinstance(manifest, str):
                raise OperationError(f"off-site backup {backup_id}: {manifest}")
            for entry in manifest.files:
                if "/" in entry.name or entry.name.startswith("."):
                    raise OperationError(f"off-site backup {backup_id}: bad file {entry.name!r}")
                await self._s3.get_file(loc, loc.key(backup_id, entry.name), tmp / entry.name)
            remote = {"url": loc.url(backup_id), "fetched_at": utcnow().isoformat()}
            await asyncio.to_thread(
                write_atomically, tmp / REMOTE, json.dumps(remote).encode(), mode=0o600
            )
            await asyncio.to_thread(_restrict, tmp)
            await asyncio.to_thread(os.rename, tmp, root / backup_id)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        logger.info("fetched backup %s from %s", backup_id, loc.url(backup_id))
        return root / backup_id

    async def ids(self) -> list[str]:
        """The ids of the backups with a complete copy off-site, oldest first."""
        prefix = self._location.key() + "/" if self._location.key() else ""
        ids = set()
        for obj in await self._s3.list(self._location, prefix):
            parts = obj.key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and BACKUP_ID.match(parts[0]):
                ids.add(parts[0])
        return sorted(ids)

    async def info(self, backup_id: str, now: datetime) -> BackupInfo:
        """A backup that is only off-site, as ``/backups`` lists it."""
        raw = await self._s3.get_bytes(self._location, self._location.key(backup_id, MANIFEST))
        manifest = BackupManifest.model_validate_json(raw)
        return BackupInfo.of(
            manifest,
            now,
            status="unverified",
            local=False,
            offsite=self._location.url(backup_id),
        )

    async def delete(self, backup_id: str) -> None:
        """Delete a pruned backup's copy; a failure is logged, the local prune still stands."""
        try:
            for obj in await self._s3.list(self._location, self._location.key(backup_id) + "/"):
                await self._s3.delete(self._location, obj.key)
        except OperationError as exc:
            logger.warning("off-site copy of %s not pruned: %s", backup_id, exc.message)


async def local_copy(catalog: BackupCatalog, offsite: OffsiteCopies | None, backup_id: str) -> Path:
    """The backup's local directory, fetched from off-site first if only there."""
    directory = catalog.directory(backup_id)
    if (directory / MANIFEST).is_file():
        return directory
    if offsite is None:
        raise NotFound(f"no backup {backup_id!r}; `lunia backup list` shows them")
    if not await offsite.exists(backup_id):
        raise NotFound(f"no backup {backup_id!r} here or in {offsite.url()}")
    return await offsite.fetch(backup_id)


def _restrict(directory: Path) -> None:
    os.chmod(directory, 0o700)
    for child in directory.iterdir():
        os.chmod(child, 0o600)
