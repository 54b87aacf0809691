"""Restoring a backup over the live state, checked, and rolled back if the result is bad.

A restore takes a safety backup of the current state, copies the backup over the live store in
one transaction, checks the result (integrity, counts against the manifest, audit chain) and rolls
back to the safety backup if anything is wrong; the process keeps serving throughout. Hooks run
around it to quiesce the process (hold jobs, trading read-only) and to resume it afterwards.

A restore never loosens safety: the halt, core switches, a failover, token revocations and the
strict flags are read before the swap and, where now is stricter than the backup, put back after
it (each kept item audited and listed in the report). While it runs, a mark in the store pauses
trading on every replica. The audit chain's head before the swap is linked to the restored chain
by a fork entry, so the history shows the rollback instead of hiding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.backups.catalog import BackupCatalog
from core.backups.journal import ROLLBACK, BackupJournal, reason_of
from core.backups.models import BackupManifest, FlagChange, KeptSafety, RestoreReport
from core.backups.offsite import OffsiteCopies, local_copy
from core.backups.verify import check_files, count_problems, portable_problems
from core.errors import LuniaError, OperationError
from core.flags import FlagService
from core.models import Actor, AuditEntry, AuditRecord, utcnow
from core.models.alerts import Severity
from core.platform.metrics import Metrics
from core.security.audit import FORK_ACTION, AuditLog, ChainHead
from core.security.tokens import INDEX_KEY, KEY_PREFIX
from core.store import FlagOverride, RestoreGuard, Store
from core.store.portable import PORTABLE_FILE, read_portable
from core.trading.engine import HALT_KEY
from core.trading.venues.service import STATE_KEY as VENUE_KEY

logger = logging.getLogger(__name__)

# Called around a restore with the restoring actor (pause jobs, trading read-only, reload).
Hook = Callable[[Actor], Awaitable[None]]
# Takes the safety backup of the current state, the way any backup is taken.
SafetyBackup = Callable[[Actor], Awaitable[BackupManifest]]


# How long the restore mark pauses trading at most: a restore that crashed half way must not
# pause every replica forever (a restore takes seconds; the safety backup is the slow part).
GUARD_TTL = timedelta(minutes=15)
# Flags with a safe value: if it holds now, a restore keeps it whatever the backup says.
SAFE_FLAGS: dict[str, Any] = {
    "BINANCE_FORCE_MOCK": True,
    "BINANCE_LIVE_TRADING": False,
    "INFRA_PROD_ENABLED": True,
}
KEEP_ACTION = "backup.restore.keep"


class _Safety(BaseModel):
    """The safety state as read from the store at one moment."""

    halt: dict[str, Any] | None
    cores_off: dict[str, Any]
    venue: dict[str, Any] | None
    tokens: dict[str, dict[str, Any]]  # the stored records as they are (hash included)
    flags: dict[str, Any]

    @property
    def failed_over(self) -> bool:
        """A failover is in force (``since`` is cleared by a failback)."""
        return self.venue is not None and bool(self.venue.get("since"))


class _Rejected(Exception):
    """A restored state failed its checks (internal: turns into a rollback)."""


class Restorer:
    """Replaces the live state with a backup's, or puts the previous state back."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        flags: FlagService,
        metrics: Metrics,
        journal: BackupJournal,
        catalog: BackupCatalog,
        offsite: OffsiteCopies | None,
        *,
        safety_backup: SafetyBackup,
        before: Hook | None = None,
        after: Hook | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._flags = flags
        self._metrics = metrics
        self._journal = journal
        self._catalog = catalog
        self._offsite = offsite
        self._safety_backup = safety_backup
        self._before = before
        self._after = after

    async def restore(self, backup_id: str, actor: Actor) -> RestoreReport:
        """Restore one backup (fetched from off-site first if only there); the caller has
        authorized and confirmed it and holds the backups' lock."""
        started_at, started = utcnow(), time.perf_counter()
        directory = await local_copy(self._catalog, self._offsite, backup_id)
        # Signed with our key, then every file as the manifest lists it and nothing more.
        manifest = await asyncio.to_thread(self._catalog.trusted_manifest, directory)
        problems = (
            [manifest]
            if isinstance(manifest, str)
            else await asyncio.to_thread(check_files, directory, manifest)
        )
        if not problems and not isinstance(manifest, str):
            problems = portable_problems(manifest, self._store.kind)
        if problems or isinstance(manifest, str):
            detail = "; ".join(problems)
            await self._journal.record(
                actor, "backup.restore", backup_id, outcome="failed", detail=detail
            )
            self._metrics.backup_operations.labels("restore", "error").inc()
            raise OperationError(
                f"backup {backup_id} cannot be restored: {detail}; nothing changed"
            )
        logger.warning("restoring backup %s for %s", backup_id, actor.describe())
        flags_before = {s.name: s.value for s in self._flags.states()}
        counts_before = await self._store.counts()
        now = utcnow()
        # Every replica's trading loop reads this mark before each tick and order.
        await self._store.put_restore_guard(
            RestoreGuard(
                backup_id=backup_id, by=actor.describe(), started_at=now, expires_at=now + GUARD_TTL
            )
        )
        try:
            if self._before is not None:
                await self._before(actor)
            try:
                safety = await self._safety_backup(actor)
                current = await self._read_safety()
                replaced = await self._audit.anchor_head()  # the head the swap leaves behind
                try:
                    checked = await self._replace_state(directory, manifest)
                except (LuniaError, _Rejected) as exc:
                    await self._roll_back(backup_id, safety, actor, exc, replaced)
                    raise AssertionError("unreachable") from exc  # _roll_back always raises
                fork = await self._record_fork(backup_id, actor, replaced)
                await self._flags.load()
                # Across store kinds the live store is another deployment's, not this backup's
                # future: a token it lacks was never pruned from it.
                kept = await self._keep_safety(
                    current, backup_id, actor, pruned=manifest.store == self._store.kind
                )
                await self._flags.load()
                await self._journal.sync()
                counts_after = await self._store.counts()
            finally:
                if self._after is not None:
                    await self._after(actor)
        finally:
            with contextlib.suppress(LuniaError):  # else the mark's expiry ends the pause
                await self._store.put_restore_guard(None)
        flags_after = {s.name: s.value for s in self._flags.states()}
        report = RestoreReport(
            backup_id=backup_id,
            backup_created_at=manifest.created_at,
            safety_backup_id=safety.id,
            restored_by=actor.describe(),
            started_at=started_at,
            duration_seconds=round(time.perf_counter() - started, 4),
            counts_before=counts_before,
            counts_after=counts_after,
            flags_changed=[
                FlagChange(name=n, before=flags_before.get(n), after=v)
                for n, v in flags_after.items()
                if flags_before.get(n) != v
            ],
            audit_entries_verified=checked,
            kept=kept,
            audit_fork_seq=fork.seq,
            replaced_head=replaced,
            backup_store=manifest.store,
            into_store=self._store.kind,
        )
        self._metrics.backup_duration.labels("restore").observe(report.duration_seconds)
        self._metrics.backup_operations.labels("restore", "ok").inc()
        await self._journal.record(
            actor,
            "backup.restore",
            backup_id,
            before=counts_before,
            after={
                "counts": counts_after,
                "kept": [k.model_dump(mode="json") for k in kept],
                "flags_changed": [f.model_dump(mode="json") for f in report.flags_changed],
            },
            detail=f"safety backup {safety.id}; kept from before the restore: "
            + (", ".join(k.item for k in kept) or "nothing stricter")
            + "; flags changed: "
            + (", ".join(f.name for f in report.flags_changed) or "none")
            + f"; audit fork at seq {fork.seq}"
            + (
                f"; moved from the {manifest.store} store into the {self._store.kind} store"
                if manifest.store != self._store.kind
                else ""
            ),
        )
        logger.warning(
            "restored backup %s (taken %s) for %s in %.2fs; safety backup %s",
            backup_id,
            manifest.created_at.isoformat(),
            actor.describe(),
            report.duration_seconds,
            safety.id,
        )
        return report

    async def _read_safety(self) -> _Safety:
        state = await self._store.engine_state()
        halt = state.get(HALT_KEY)
        venue = state.get(VENUE_KEY)
        tokens: dict[str, dict[str, Any]] = {}
        index = await self._store.get_value(INDEX_KEY)
        for token_id in index if isinstance(index, list) else []:
            raw = await self._store.get_value(KEY_PREFIX + str(token_id))
            if isinstance(raw, dict):
                tokens[str(token_id)] = raw
        return _Safety(
            halt=halt if isinstance(halt, dict) and halt.get("halted") else None,
            cores_off={
                key: value
                for key, value in state.items()
                if key.startswith("core.") and isinstance(value, dict) and not value["enabled"]
            },
            venue=venue if isinstance(venue, dict) else None,
            tokens=tokens,
            flags={s.name: s.value for s in self._flags.states() if s.name in SAFE_FLAGS},
        )

    async def _keep_safety(
        self, now: _Safety, backup_id: str, actor: Actor, *, pruned: bool = True
    ) -> list[KeptSafety]:
        """Put back whatever was stricter before the swap than in the restored state; each item
        kept is audited (action ``backup.restore.keep``) and returned. With ``pruned``, a token
        the live store no longer has was pruned after the backup (expired or revoked) and stays
        revoked."""
        restored = await self._read_safety()
        kept: list[KeptSafety] = []

        async def keep_engine(key: str, value: Any, item: str, before: Any, why: str) -> None:
            await self._store.put_engine_state(
                key,
                value,
                AuditRecord(
                    actor=actor,
                    action=KEEP_ACTION,
                    target=item,
                    before=before,
                    after=value,
                    detail=f"restore of {backup_id}: {why}",
                ),
            )
            kept.append(KeptSafety(item=item, backup=before, kept=value, why=why))

        if now.halt is not None and restored.halt is None:
            await keep_engine(
                HALT_KEY,
                now.halt,
                "halt",
                {"halted": False},
                "trading was halted before the restore; only an admin's resume ends a halt",
            )
        for key, value in now.cores_off.items():
            if key not in restored.cores_off:
                await keep_engine(
                    key,
                    value,
                    key,
                    {"enabled": True},
                    "the core was switched off before the restore",
                )
        if now.failed_over and now.venue != restored.venue:
            await keep_engine(
                VENUE_KEY,
                now.venue,
                "failover",
                restored.venue,
                "a failover was in force before the restore (the venue that trades now)",
            )
        for token_id, record in restored.tokens.items():
            if record.get("revoked_at") is not None:
                continue
            current = now.tokens.get(token_id)
            if current is not None and current.get("revoked_at") is None:
                continue
            if current is None and not pruned:
                continue
            # Pruned since the backup (it had expired or was revoked): revoked now.
            revoked_at, revoked_by = (
                (utcnow().isoformat(), "restore")
                if current is None
                else (current["revoked_at"], current.get("revoked_by"))
            )
            await self._store.set_value(
                KEY_PREFIX + token_id,
                {**record, "revoked_at": revoked_at, "revoked_by": revoked_by},
            )
            why = "the token was revoked (or expired and pruned) after the backup"
            await self._audit.record(
                AuditRecord(
                    actor=actor,
                    action=KEEP_ACTION,
                    target=f"token:{token_id}",
                    before={"revoked_at": None},
                    after={"revoked_at": revoked_at},
                    detail=f"restore of {backup_id}: {why}",
                )
            )
            kept.append(
                KeptSafety(
                    item=f"token:{token_id} ({record.get('name')}) revoked",
                    backup={"revoked": False},
                    kept={"revoked": True},
                    why=why,
                )
            )
        for name, safe in SAFE_FLAGS.items():
            if now.flags.get(name) == safe and restored.flags.get(name) != safe:
                why = f"{name} was at its safe value before the restore"
                await self._store.put_flag_override(
                    FlagOverride(name=name, value=safe, set_by=actor, set_at=utcnow()),
                    AuditRecord(
                        actor=actor,
                        action=KEEP_ACTION,
                        target=name,
                        before={"value": restored.flags.get(name)},
                        after={"value": safe},
                        detail=f"restore of {backup_id}: {why}",
                    ),
                )
                kept.append(
                    KeptSafety(item=name, backup=restored.flags.get(name), kept=safe, why=why)
                )
        return kept

    async def _record_fork(
        self, backup_id: str, actor: Actor, replaced: ChainHead | None
    ) -> AuditEntry:
        """Link the head the swap replaced to the chain now in the store (one entry), and
        anchor the new head at once."""
        restored = await self._audit.head()
        fork = await self._audit.record(
            AuditRecord(
                actor=actor,
                action=FORK_ACTION,
                target=backup_id,
                before=None if replaced is None else {"seq": replaced.seq, "hash": replaced.hash},
                after=None if restored is None else {"seq": restored.seq, "hash": restored.hash},
                detail=(
                    f"the chain before this entry is backup {backup_id}'s; the chain it replaced "
                    f"ended at {replaced.describe() if replaced else 'nothing'}"
                ),
            )
        )
        await self._audit.anchor_head(fork=True)
        return fork

    async def _replace_state(self, directory: Path, manifest: BackupManifest) -> int:
        """Copy the backup over the live store and check the result; ``_Rejected`` if bad.

        A backup of another kind of store (Redis lost for good: runbook §2.2) is loaded from
        its portable copy, and checked against that copy's own counts.
        """
        if manifest.store == self._store.kind:
            found = await self._store.restore(directory)
            problems = count_problems(manifest.counts, found)
        else:
            portable = await asyncio.to_thread(read_portable, directory / PORTABLE_FILE)
            found = await self._store.load_portable(portable)
            problems = count_problems(portable.counts(), found)
        problems += [f"integrity check: {p}" for p in await self._store.integrity_problems()]
        report = await self._audit.verify(anchored=False)
        if not report.ok:
            problems.append(f"audit chain: {report.problem}")
        if problems:
            raise _Rejected("; ".join(problems))
        return report.checked

    async def _roll_back(
        self,
        backup_id: str,
        safety: BackupManifest,
        actor: Actor,
        cause: BaseException,
        replaced: ChainHead | None,
    ) -> None:
        reason = reason_of(cause)
        logger.error("restore of %s failed (%s): rolling back to %s", backup_id, reason, safety.id)
        self._metrics.backup_operations.labels("restore", "error").inc()
        try:
            await self._replace_state(self._catalog.root / safety.id, safety)
            # The safety snapshot lacks what was appended after it (its own entry): a fork too.
            await self._record_fork(safety.id, actor, replaced)
            await self._flags.load()
        except (LuniaError, _Rejected) as exc:
            summary = (
                f"restore of {backup_id} failed ({reason}) and rolling back to safety backup "
                f"{safety.id} failed too ({reason_of(exc)}); restore {safety.id} by hand"
            )
            await self._journal.raise_incident(ROLLBACK, Severity.CRITICAL, summary)
            raise OperationError(summary) from exc
        await self._journal.record(
            actor,
            "backup.restore",
            backup_id,
            outcome="failed",
            detail=f"{reason}; rolled back to safety backup {safety.id}",
        )
        raise OperationError(
            f"restore of backup {backup_id} failed: {reason}; the previous state was put back "
            f"from safety backup {safety.id}"
        ) from cause
