"""The audit log: append-only, hash-chained, verifiable and exportable.

Each entry carries the hash of the previous one, so editing or deleting any row breaks the chain
at that row. The store keeps the chain's head separately, which catches a deleted tail; the head
is also anchored outside the store (``audit-anchor.json`` in the state dir, every backup manifest,
every export), which catches a tail removed together with the store's head (a rollback). A
restore appends a fork entry naming the head it replaced, so a legitimate rollback is explained.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.errors import InvalidInput, PermissionDenied, StoreError
from core.models import Actor, AuditEntry, AuditRecord, Role, utcnow
from core.models.audit import GENESIS_HASH, entry_digest
from core.platform.files import AtomicFile, write_atomically
from core.platform.metrics import Metrics
from core.security.access import require
from core.security.refusals import RefusalRecorder
from core.store import Store

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "lunia-audit-export/1"
# The state-dir file holding the last chain head seen (written atomically).
ANCHOR_FILE = "audit-anchor.json"
# The action of the entry a restore appends to link the head it replaced to the restored chain.
FORK_ACTION = "backup.restore.fork"
# How often the anchor follows the head: most entries are appended by the store in the same
# transaction as the change they describe (and by every replica), never through ``AuditLog``, so
# a timer reading the head is the one place that sees them all; an fsync'd file per append would
# double the cost of every audited write. Restores, backups and exports anchor at once.
ANCHOR_SECONDS = 2.0
# The most entries one read returns, whichever adapter asks (API, chat, assistant).
AUDIT_LIST_MAX = 1000
# Who may read the audit log: it names people, tokens and every refused attempt.
READ_ROLE = Role.OPERATOR


class ChainHead(BaseModel):
    """The chain's last entry (seq, hash) as seen at ``at``: what the anchor records."""

    seq: int
    hash: str
    at: datetime

    def describe(self) -> str:
        """``seq N (hash abcd1234…)``."""
        return f"seq {self.seq} (hash {self.hash[:12]}…)"


class VerifyReport(BaseModel):
    """Outcome of checking a chain: how many entries held, and the first one that did not."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""
    # The anchor the chain was compared with, and the restores (fork entries) found in it.
    anchor: ChainHead | None = None
    forks: list[str] = []


class AuditAnchor:
    """The chain head kept in a file outside the store, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> ChainHead | None:
        """The recorded head, or None when nothing was anchored yet."""
        try:
            return ChainHead.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None

    def write(self, head: ChainHead) -> None:
        """Record ``head`` (the file is whole, old or new, even after a crash)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, head.model_dump_json().encode(), mode=0o600)


def _fork_before(entry: AuditEntry) -> tuple[int, str] | None:
    """The (seq, hash) a fork entry says it replaced."""
    before = entry.before
    if entry.action != FORK_ACTION or not isinstance(before, dict):
        return None
    seq, digest = before.get("seq"), before.get("hash")
    return (seq, digest) if isinstance(seq, int) and isinstance(digest, str) else None


class ChainChecker:
    """Walks entries in order and reports the first break of the chain."""

    def __init__(self, *, expected_seq: int = 1, prev_hash: str = GENESIS_HASH) -> None:
        self.expected_seq = expected_seq
        self.prev_hash = prev_hash
        self.checked = 0
        self.failure: VerifyReport | None = None

    def feed(self, entry: AuditEntry) -> bool:
        """Check one entry; False (and ``failure`` set) at the first bad one."""
        if entry.seq != self.expected_seq:
            return self._fail(
                entry.seq,
                f"entry {self.expected_seq} is missing (found {entry.seq} next): a row was deleted",
            )
        if entry.prev_hash != self.prev_hash:
            return self._fail(
                entry.seq,
                f"entry {entry.seq} does not link to entry "
                f"{entry.seq - 1}: the chain was rewritten",
            )
        if entry_digest(entry, seq=entry.seq, ts=entry.ts, prev_hash=entry.prev_hash) != entry.hash:
            return self._fail(
                entry.seq, f"entry {entry.seq} was edited: its content does not match its hash"
            )
        self.expected_seq += 1
        self.prev_hash = entry.hash
        self.checked += 1
        return True

    def _fail(self, seq: int, problem: str) -> bool:
        self.failure = VerifyReport(
            ok=False, checked=self.checked, first_bad_seq=seq, problem=problem
        )
        return False

    def report(self) -> VerifyReport:
        """The verdict so far."""
        return self.failure or VerifyReport(ok=True, checked=self.checked)


class ExportManifest(BaseModel):
    """Describes one audit export so it can be verified offline."""

    format: str = EXPORT_FORMAT
    created_at: datetime
    file: str
    sha256: str
    count: int
    first_seq: int | None
    last_seq: int | None
    first_prev_hash: str
    last_hash: str
    since: datetime | None
    until: datetime | None
    # The whole chain's head when the export was taken (the anchor), whatever the time range.
    chain_head: ChainHead | None = None


class AuditLog:
    """Records who did what, and proves afterwards that nobody rewrote it."""

    PAGE = 1000

    def __init__(self, store: Store, metrics: Metrics, anchor: AuditAnchor | None = None) -> None:
        self._store = store
        self._refusals = RefusalRecorder(self, metrics)
        self.anchor = anchor
        self._anchored: tuple[int, str] | None = None

    async def head(self) -> ChainHead | None:
        """The store's chain head now, or None while the log is empty."""
        head = await self._store.audit_head()
        return None if head is None else ChainHead(seq=head[0], hash=head[1], at=utcnow())

    async def anchor_head(self, *, fork: bool = False) -> ChainHead | None:
        """Read the head and record it in the anchor file when it moved forward on the same
        chain; return it. The anchor never follows a shorter or rewritten chain (that is what
        it exposes) unless ``fork``: a restore moving it after appending its fork entry."""
        head = await self.head()
        if head is None or self.anchor is None:
            return head
        if self._anchored is None:
            previous = await asyncio.to_thread(self.anchor.read)
            self._anchored = None if previous is None else (previous.seq, previous.hash)
        if self._anchored == (head.seq, head.hash):
            return head
        if not fork and self._anchored is not None and not await self._extends(*self._anchored):
            logger.error(
                "the audit chain's head %s does not extend the anchored seq %d: anchor kept "
                "(`lunia audit verify` reports the difference)",
                head.describe(),
                self._anchored[0],
            )
            return head
        await asyncio.to_thread(self.anchor.write, head)
        self._anchored = (head.seq, head.hash)
        return head

    async def _extends(self, seq: int, digest: str) -> bool:
        """True when the store's chain still holds entry ``seq`` with hash ``digest``."""
        found = await self._store.audit_entries(after_seq=seq - 1, limit=1)
        return bool(found) and found[0].seq == seq and found[0].hash == digest

    async def keep_anchored(self, interval: float = ANCHOR_SECONDS) -> None:
        """Follow the head into the anchor file every ``interval`` seconds (a task)."""
        while True:
            await self.anchor_quietly()
            await asyncio.sleep(interval)

    async def anchor_quietly(self) -> None:
        """``anchor_head``, logging instead of raising (the last anchor at shutdown, too)."""
        try:
            await self.anchor_head()
        except (StoreError, OSError) as exc:
            logger.warning("could not anchor the audit chain's head: %s", exc)

    async def record(self, record: AuditRecord) -> AuditEntry:
        """Append one entry."""
        return await self._store.append_audit(record)

    async def record_throttled(
        self, record: AuditRecord, limits: Mapping[str, int], *, every: timedelta
    ) -> AuditEntry | None:
        """Append ``record`` unless one of ``limits`` (throttle key -> entries allowed per
        ``every``, shared by every replica) is used up; keys are checked in order."""
        for key, limit in limits.items():
            hit = await self._store.hit_rate_limit(
                f"audit-throttle:{key}", limit=limit, window=every, now=utcnow()
            )
            if not hit.allowed:
                return None
        return await self.record(record)

    async def tail(self, limit: int = 20) -> list[AuditEntry]:
        """The newest entries, newest first (for core's own use: no permission check)."""
        if not 1 <= limit <= AUDIT_LIST_MAX:
            raise InvalidInput(f"limit must be between 1 and {AUDIT_LIST_MAX}")
        return await self._store.audit_tail(limit)

    async def read(self, actor: Actor, limit: int = 20) -> list[AuditEntry]:
        """The newest entries for ``actor`` (operator or admin), newest first."""
        await self._check_reader(actor, "audit.read")
        return await self.tail(limit)

    async def verify_for(self, actor: Actor) -> VerifyReport:
        """``verify`` on behalf of ``actor`` (operator or admin)."""
        await self._check_reader(actor, "audit.verify")
        return await self.verify()

    async def _check_reader(self, actor: Actor, action: str) -> None:
        """The one rule for who may read the audit log; a refusal is counted and audited."""
        try:
            require(actor, READ_ROLE, "reading the audit log")
        except PermissionDenied as exc:
            await self._refusals.record(actor, action, "role", detail=exc.message)
            raise

    async def verify(self, *, anchored: bool = True) -> VerifyReport:
        """Walk the whole chain, the recorded head and (``anchored``) the anchor; name the
        first bad entry. A restore checks the swapped-in chain with ``anchored=False``: its
        fork entry, which explains the difference to the anchor, follows the check."""
        anchor = None
        if anchored and self.anchor is not None:
            anchor = await asyncio.to_thread(self.anchor.read)
        report = await self._verify_chain(anchor)
        return report.model_copy(update={"anchor": anchor})

    async def _verify_chain(self, anchor: ChainHead | None) -> VerifyReport:
        checker = ChainChecker()
        forks: list[AuditEntry] = []
        at_anchor: str | None = None
        after = 0
        while True:
            page = await self._store.audit_entries(after_seq=after, limit=self.PAGE)
            for entry in page:
                if not checker.feed(entry):
                    return checker.report()
                if entry.action == FORK_ACTION:
                    forks.append(entry)
                if anchor is not None and entry.seq == anchor.seq:
                    at_anchor = entry.hash
            if len(page) < self.PAGE:
                break
            after = page[-1].seq
        head = await self._store.audit_head()
        last_seq = checker.expected_seq - 1
        if head is not None and (head[0] != last_seq or head[1] != checker.prev_hash):
            if head[0] > last_seq:
                problem = (
                    f"entries {last_seq + 1}..{head[0]} are missing: the end of the log was deleted"
                )
            else:
                problem = "the recorded head does not match the last entry"
            return VerifyReport(
                ok=False, checked=checker.checked, first_bad_seq=last_seq + 1, problem=problem
            )
        if head is None and last_seq > 0:
            return VerifyReport(
                ok=False,
                checked=checker.checked,
                first_bad_seq=1,
                problem="the log has entries but no recorded head",
            )
        named = [_describe_fork(f) for f in forks]
        if anchor is not None and at_anchor != anchor.hash and not _explained(anchor, forks):
            when = anchor.at.isoformat(timespec="seconds")
            if anchor.seq > last_seq:
                problem = (
                    f"the chain ends at seq {last_seq} but the anchor recorded seq {anchor.seq} "
                    f"(hash {anchor.hash[:12]}…) at {when}: {anchor.seq - last_seq} entries "
                    "missing (the end of the log was removed or rolled back)"
                )
            else:
                problem = (
                    f"entry {anchor.seq} differs from the anchor recorded at {when} "
                    f"(hash {anchor.hash[:12]}…): the chain was rolled back and rewritten"
                )
            return VerifyReport(
                ok=False,
                checked=checker.checked,
                first_bad_seq=min(anchor.seq, last_seq + 1),
                problem=problem,
                forks=named,
            )
        return checker.report().model_copy(update={"forks": named})

    async def export(
        self, dest_dir: Path, *, since: datetime | None = None, until: datetime | None = None
    ) -> ExportManifest:
        """Write the entries in [since, until) as JSONL plus a manifest (with the chain's
        head, anchored at the same time), atomically."""
        chain_head = await self.anchor_head()
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        name, n = f"audit-{stamp}.jsonl", 1
        while (dest_dir / name).exists():  # never overwrite an earlier export of the same second
            n += 1
            name = f"audit-{stamp}-{n}.jsonl"
        out = await asyncio.to_thread(AtomicFile, dest_dir / name)
        count, first, last = 0, None, None
        try:
            after = 0
            while True:
                page = await self._store.audit_entries(
                    after_seq=after, limit=self.PAGE, since=since, until=until
                )
                chunk = b"".join(e.model_dump_json().encode() + b"\n" for e in page)
                await asyncio.to_thread(out.write, chunk)
                if page:
                    first = first or page[0]
                    last = page[-1]
                    count += len(page)
                if len(page) < self.PAGE:
                    break
                after = page[-1].seq
            await asyncio.to_thread(out.commit)
        finally:
            await asyncio.to_thread(out.discard)
        manifest = ExportManifest(
            created_at=utcnow(),
            file=name,
            sha256=out.sha256,
            count=count,
            first_seq=first.seq if first else None,
            last_seq=last.seq if last else None,
            first_prev_hash=first.prev_hash if first else GENESIS_HASH,
            last_hash=last.hash if last else GENESIS_HASH,
            since=since,
            until=until,
            chain_head=chain_head,
        )
        await asyncio.to_thread(
            write_atomically,
            dest_dir / f"{name}.manifest.json",
            manifest.model_dump_json(indent=2).encode(),
        )
        return manifest


def _explained(anchor: ChainHead, forks: list[AuditEntry]) -> bool:
    """True when a restore after the anchor was written replaced a head at or past it (the
    anchor's head was on the branch the restore left behind)."""
    for fork in forks:
        before = _fork_before(fork)
        if (
            before is not None
            and fork.ts >= anchor.at
            and (before[0] > anchor.seq or before == (anchor.seq, anchor.hash))
        ):
            return True
    return False


def _describe_fork(fork: AuditEntry) -> str:
    before = _fork_before(fork)
    replaced = f"seq {before[0]} (hash {before[1][:12]}…)" if before else "an unknown head"
    return (
        f"seq {fork.seq}: restore of backup {fork.target} by {fork.actor.describe()} at "
        f"{fork.ts.isoformat(timespec='seconds')} replaced the chain's head {replaced}"
    )


def verify_export(path: Path) -> VerifyReport:
    """Verify an exported JSONL file offline against its manifest and its own chain."""
    manifest_path = path.with_name(path.name + ".manifest.json")
    if not manifest_path.exists():
        return VerifyReport(ok=False, checked=0, problem=f"manifest {manifest_path.name} missing")
    manifest = ExportManifest.model_validate_json(manifest_path.read_bytes())
    data = path.read_bytes()
    lines = data.splitlines()
    checker: ChainChecker | None = None
    for number, line in enumerate(lines, start=1):
        try:
            entry = AuditEntry.model_validate_json(line)
        except ValueError:
            return VerifyReport(
                ok=False,
                checked=number - 1,
                first_bad_seq=None,
                problem=f"line {number} is not a valid audit entry",
            )
        if checker is None:
            checker = ChainChecker(expected_seq=entry.seq, prev_hash=manifest.first_prev_hash)
        if not checker.feed(entry):
            return checker.report()
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        return VerifyReport(
            ok=False, checked=len(lines), problem="file sha256 does not match the manifest"
        )
    if len(lines) != manifest.count:
        return VerifyReport(
            ok=False,
            checked=len(lines),
            problem=f"manifest lists {manifest.count} entries, file has {len(lines)}",
        )
    return checker.report() if checker else VerifyReport(ok=True, checked=0)


def jsonable(value: Any) -> Any:
    """A value as it will be stored in JSON (for before/after fields)."""
    return json.loads(json.dumps(value, default=str))
