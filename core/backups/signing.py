"""Backup manifests signed with HMAC-SHA256 under ``BACKUP_SIGNING_KEY``.

Anyone who can write to the backup directory or bucket could otherwise plant a backup (flags,
tokens) that a restore would apply. The manifest lists every file with its sha256, and its
signature covers all of it, so a verified signature vouches for every byte of the backup. The key
lives in settings or the state dir's ``secrets/``, never inside a backup.

The signature covers the manifest's canonical JSON (sorted keys, no whitespace) without the
``signature`` field itself; ``key_id`` (a digest of the key, which reveals nothing about it) is
signed too and tells which key made a signature, so "signed with another key" is told apart from
"altered after signing".
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from pydantic import SecretStr

from core.backups.models import MANIFEST, BackupManifest

ALGORITHM = "hmac-sha256"


def key_id(key: SecretStr) -> str:
    """A short public name of a key: which key signed a manifest, without revealing it."""
    return hashlib.sha256(b"lunia-backup-key:" + key.get_secret_value().encode()).hexdigest()[:16]


def canonical(manifest: BackupManifest) -> bytes:
    """The bytes a signature covers: everything in the manifest but the signature."""
    body = manifest.model_dump(mode="json", exclude={"signature"})
    # A field left unset (None) is not covered, so adding an optional field to the manifest
    # keeps the signatures of manifests written before it valid.
    body = {name: value for name, value in body.items() if value is not None}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class ManifestSigner:
    """Signs manifests with the current key; checks them against it and the previous keys."""

    def __init__(self, key: SecretStr, old_keys: Sequence[SecretStr] = ()) -> None:
        if not key.get_secret_value():
            raise ValueError("a backup signing key cannot be empty")
        self._key = key
        self._keys = {key_id(k): k for k in [*old_keys, key] if k.get_secret_value()}
        self.key_id = key_id(key)

    def sign(self, manifest: BackupManifest) -> BackupManifest:
        """The manifest signed with the current key."""
        unsigned = manifest.model_copy(
            update={"signature": None, "key_id": self.key_id, "signature_algorithm": ALGORITHM}
        )
        return unsigned.model_copy(update={"signature": self._mac(self._key, unsigned)})

    def problem(self, manifest: BackupManifest) -> str | None:
        """Why the manifest's signature cannot be trusted, or None when it verifies."""
        if not manifest.signature:
            return (
                f"{MANIFEST}: not signed, so nothing proves this deployment made it (a backup "
                "taken before backups were signed, or a planted one); if you trust where it "
                f"came from, sign it with `lunia backup sign {manifest.id}`"
            )
        if manifest.signature_algorithm != ALGORITHM:
            return f"{MANIFEST}: signed with {manifest.signature_algorithm!r}, expected {ALGORITHM}"
        key = self._keys.get(manifest.key_id or "")
        if key is None:
            return (
                f"{MANIFEST}: signed with another key (key id {manifest.key_id}; this "
                f"deployment's is {self.key_id}): not made here, or made before a key rotation "
                "(then put the old key in BACKUP_SIGNING_KEYS_OLD)"
            )
        if not hmac.compare_digest(self._mac(key, manifest), manifest.signature):
            return f"{MANIFEST}: signature does not match: the manifest was altered after signing"
        return None

    @staticmethod
    def _mac(key: SecretStr, manifest: BackupManifest) -> str:
        secret = key.get_secret_value().encode()
        return hmac.new(secret, canonical(manifest), hashlib.sha256).hexdigest()
