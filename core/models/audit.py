"""The audit chain's sealing rule: how an entry is hashed onto the one before it.

It sits with the models because both stores seal entries inside their own transactions, and a
store may import models but never services.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from core.models import AuditEntry, AuditRecord

GENESIS_HASH = "0" * 64


def entry_digest(record: AuditRecord, *, seq: int, ts: datetime, prev_hash: str) -> str:
    """The sha256 that seals one entry onto the chain."""
    payload = {
        "seq": seq,
        "ts": ts.isoformat(),
        "actor": record.actor.model_dump(mode="json"),
        "action": record.action,
        "target": record.target,
        "before": record.before,
        "after": record.after,
        "outcome": record.outcome,
        "detail": record.detail,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(record: AuditRecord, *, seq: int, ts: datetime, prev_hash: str) -> AuditEntry:
    """Build the chained entry for ``record`` at position ``seq``."""
    digest = entry_digest(record, seq=seq, ts=ts, prev_hash=prev_hash)
    return AuditEntry(**record.model_dump(), seq=seq, ts=ts, prev_hash=prev_hash, hash=digest)
