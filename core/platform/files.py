"""Small, careful file operations: atomic writes and owner-only secret files."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` so readers see the old file or the whole new one, never half."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def ensure_secret_file(path: Path, *, nbytes: int = 32) -> tuple[str, bool]:
    """Read the secret at ``path``, creating it (mode 0600) first if absent; True if created."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    try:
        # O_EXCL: two processes starting at once cannot both create (and disagree on) a secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value, False
        raise
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    return value, True


class AtomicFile:
    """A file written in pieces that appears under its name only on ``commit``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._out = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.committed = False

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._out.write(data)
        self._digest.update(data)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written."""
        return self._digest.hexdigest()

    def commit(self) -> None:
        """Flush to disk and move into place."""
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self._tmp, self.path)
        self.committed = True

    def discard(self) -> None:
        """Remove the partial file unless committed; safe after commit."""
        if not self._out.closed:
            self._out.close()
        if not self.committed:
            self._tmp.unlink(missing_ok=True)
