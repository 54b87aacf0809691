"""Redis implementation of ``Store``: the state shared by replicas, held to SQLite's contract.

Every key lives under ``R = {prefix}:store``; the event bus and the leases keep theirs beside it
under ``{prefix}:``, so a snapshot or a restore of the store never touches them::

    R:schema                    schema version (an integer)
    R:audit                     stream; entry ``seq`` has the id ``{seq}-0``, field ``e`` its JSON
    R:audit:head                JSON ``[seq, hash]`` of the last entry
    R:flags                     hash: flag name -> override JSON
    R:flags:versions            hash: flag name -> ``{"version", "changed_by", "changed_at"}``
    R:engine                    hash: engine setting -> ``{"value", "updated_at"}`` JSON
    R:kv                        hash: adapter key -> JSON value
    R:cursors                   hash: consumer -> event log position
    R:incidents                 hash: id -> Incident JSON
    R:incidents:seq             the last incident id handed out
    R:incidents:all             zset of ids (score: id)
    R:incidents:state:{state}   zset of ids in that state (score: id)
    R:incidents:deadline        zset of ids with an escalation/silence deadline (score: its time)
    R:incidents:open            hash: incident key -> id of its one open incident
    R:incidents:open:{severity} zset of the open incidents' ids of that severity (score: id)
    R:incidents:latest          hash: incident key -> id of its newest incident
    R:alerts                    hash: id -> ``{"incident_id", "received_at", "alert"}`` JSON
    R:alerts:seq                the last alert id handed out
    R:alerts:dedup              hash: ``{source}:{dedup_key}`` -> alert id
    R:alerts:incident:{id}      zset of the incident's alert ids (score: id)
    R:events                    stream; event ``seq`` has the id ``{seq}-0``, field ``e`` its JSON
    R:events:seq                the last event seq handed out
    R:events:incident:{id}      zset of the incident's event seqs (score: seq)
    R:outbox                    stream; message ``id`` has the id ``{id}-0`` (channel, key,
                                created_at: what was queued, never changed; payload only in
                                messages queued before payloads moved to R:outbox:payload)
    R:outbox:seq                the last outbox id handed out
    R:outbox:state              hash: id -> ``{"next_at", "attempts", "status", "last_error",
                                "sensitive", "finished_at"}``
    R:outbox:payload            hash: id -> payload JSON, deleted once the message is finished
                                (a stream entry cannot be changed, and a deleted one stays in
                                its node's bytes, so a secret or a chart never goes there)
    R:outbox:queue:{[ch, key]}  zset of one key's pending ids (score: id); the lowest is the head
    R:outbox:due:{channel}      zset of the head of each key's queue (score: its next_at)
    R:outbox:pending:{channel}  zset of the channel's pending ids (score: created_at)
    R:orders                    hash: client order id -> OrderRecord JSON
    R:orders:seq                the last order number handed out (orders list in this order)
    R:orders:all                zset of client order ids (score: order number)
    R:orders:status:{status}    zset of client order ids in that status (score: order number)
    R:pnl                       hash: ``[core, ts]`` JSON -> ``[realized, unrealized]``
    R:pnl:ts                    zset of ``[core, ts]`` JSON (score: ts)
    R:holdings                  hash: ``[core, symbol]`` JSON -> Holding JSON (booked positions)
    R:venues                    hash: paper venue name -> VenueAccount JSON

Times in scores are microseconds since the epoch (exact in a double until the year 2255).

Writes are optimistic transactions (WATCH, reads, MULTI, writes, EXEC; retried when a watched key
changed), one at a time per process (an ``asyncio.Lock``, like SQLite's single writer). What a
transaction reads is guarded by a watched key that every writer of that data changes:

* the audit chain by ``R:audit:head``: sequence numbers are gap-free and the hash chain unbroken
  across processes;
* incidents and their indexes by ``R:events:seq`` (every incident write appends an event);
* alert de-duplication by ``R:alerts:seq`` (every stored alert takes an id);
* a key's outbox queue by the queue itself; orders by ``R:orders``; PnL pruning by ``R:pnl:ts``;
* new ids by their ``*:seq`` counter, read under WATCH and written in the same MULTI.

The ``plan`` and ``mutate`` callbacks may therefore run more than once (once per conflict) and
must not have side effects. A connection lost while EXEC was on its way leaves its outcome
unknown; that is reported as ``StoreUnavailable`` like any other unreachable Redis.

Snapshots and restores run Lua scripts, which Redis executes atomically: one reads every key
(``DUMP`` payloads, whose CRC64 a later ``RESTORE`` checks) and the counts in one step; the other
swaps keys restored under a private staging prefix into place. Both address keys by pattern, so
this store needs a standalone Redis (or a single-shard one), not Redis Cluster; both block Redis
for as long as they run (milliseconds for a control plane's state). A ``DUMP`` payload restores
only on a Redis of the same or a newer version than the one that took it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import NotFound, StoreError, StoreUnavailable
from core.models import (
    Actor,
    AuditEntry,
    AuditRecord,
    OutboxItem,
    OutboxMessage,
    OutboxStats,
    utcnow,
)
from core.models.alerts import Alert, Severity
from core.models.audit import GENESIS_HASH, seal
from core.models.cluster import Heartbeat
from core.models.incidents import (
    Change,
    Incident,
    IncidentEvent,
    IncidentState,
    incident_key,
    legacy_key,
)
from core.models.trading import Holding, VenueAccount
from core.models.venues import OrderRecord, OrderStatus
from core.store import (
    AlertPlanner,
    Confirmation,
    ConfirmationTake,
    FlagOverride,
    FlagVersion,
    HeldChange,
    HeldChanges,
    IncidentMutation,
    IngestOutcome,
    PnlPoint,
    RateLimitHit,
    RestoreGuard,
    Store,
    StoredAlert,
    StoreSnapshot,
    flag_version_conflict,
    splice_incident,
)
from core.store.group_commit import GroupCommit
from core.store.portable import (
    AUDIT_HEAD,
    KV_PREFIX,
    PORTABLE_FILE,
    PortableState,
    write_portable,
)
from core.store.portable import TABLES as PORTABLE_TABLES

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The one file a snapshot of this store consists of: a header line, then one line per key.
SNAPSHOT_FILE = "redis.jsonl"
SNAPSHOT_FORMAT = "lunia-redis-snapshot/1"

# Each migration is a Lua script (ARGV[1] is the store's key root) that moves the layout one
# version up; it runs in the same MULTI as the version bump. Never edit a shipped one.
MIGRATIONS: list[str] = [
    "-- 1: the layout in the module docstring; its keys are created by the first writes\nreturn 0",
    """-- 2: incidents:open:{severity}, so that counting open incidents reads no documents
local root = ARGV[1]
local ids = redis.call('HVALS', root .. ':incidents:open')
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', root .. ':incidents', id)
  if raw then
    local incident = cjson.decode(raw)
    if incident.state ~= 'resolved' then
      redis.call('ZADD', root .. ':incidents:open:' .. incident.severity, id, id)
    end
  end
end
return #ids""",
    """-- 3: incidents are alert groups: each incident stored before gets its member list from its
-- stored alerts (the newest alert of each fingerprint); its key stays. The document is
-- extended as text, so nothing else in it goes through cjson.
local root = ARGV[1]
local ids = redis.call('HKEYS', root .. ':incidents')
local migrated = 0
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', root .. ':incidents', id)
  if cjson.decode(raw).members == nil then
    local newest, order = {}, {}
    for _, alert_id in ipairs(redis.call('ZRANGE', root .. ':alerts:incident:' .. id, 0, -1)) do
      local stored = redis.call('HGET', root .. ':alerts', alert_id)
      if stored then
        local doc = cjson.decode(stored)
        local fp = doc.alert.fingerprint
        if newest[fp] == nil then order[#order + 1] = fp end
        newest[fp] = {fingerprint = fp, status = doc.alert.status,
          severity = doc.alert.severity, labels = doc.alert.labels or {},
          last_seen = doc.received_at}
      end
    end
    if #order > 0 then
      local members = {}
      for i, fp in ipairs(order) do members[i] = cjson.encode(newest[fp]) end
      local list = ',"members":[' .. table.concat(members, ',') .. ']}'
      redis.call('HSET', root .. ':incidents', id, string.sub(raw, 1, -2) .. list)
      migrated = migrated + 1
    end
  end
end
return migrated""",
]

# What "Redis cannot be reached" looks like; any other RedisError is a refusal by Redis.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Short timeouts: with Redis gone a request should fail in about a second, not hang (the API
# answers 503 and the outage watch turns read-only).
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
# Snapshot and restore send or receive the whole state in one reply: they get a client of their
# own that waits longer.
BULK_TIMEOUT = 120.0
# Optimistic transactions retried this often before giving up (only other processes' commits
# cause retries, so each retry means progress elsewhere).
MAX_CONFLICTS = 200
_PAGE = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTRY = "e"

# Counted per kind of state, named like the SQLite store's tables so that backups read alike.
_COUNTED: list[tuple[str, str, str]] = [
    ("alerts", "hash", "alerts"),
    ("audit", "stream", "audit"),
    ("cursors", "hash", "cursors"),
    ("engine_state", "hash", "engine"),
    ("flag_overrides", "hash", "flags"),
    ("flag_versions", "hash", "flags:versions"),
    ("incident_events", "stream", "events"),
    ("incidents", "hash", "incidents"),
    ("meta", "hash", "kv"),
    ("meta", "exists", "audit:head"),
    ("orders", "hash", "orders"),
    ("outbox", "stream", "outbox"),
    ("pnl_points", "hash", "pnl"),
    ("holdings", "hash", "holdings"),
    ("venue_accounts", "hash", "venues"),
]

# ARGV: [1] key root, [2] "1" to add every key's DUMP payload, then (kind, type, key) triples.
# Returns {schema version or false, {kind, count, ...}, {key, payload, ...}} in one atomic step.
_COUNT_FUNCTION = """
local function counts(root, first)
  local found = {}
  for i = first, #ARGV, 3 do
    local kind, kt, key = ARGV[i], ARGV[i + 1], root .. ':' .. ARGV[i + 2]
    local n = 0
    if kt == 'hash' then n = redis.call('HLEN', key)
    elseif kt == 'stream' then n = redis.call('XLEN', key)
    else n = redis.call('EXISTS', key) end
    found[#found + 1] = kind
    found[#found + 1] = n
  end
  return found
end
"""
_READ_ALL_LUA = (
    _COUNT_FUNCTION
    + """
local root = ARGV[1]
local dumps = {}
if ARGV[2] == '1' then
  local keys = redis.call('KEYS', ARGV[3])
  table.sort(keys)
  for _, key in ipairs(keys) do
    dumps[#dumps + 1] = key
    dumps[#dumps + 1] = redis.call('DUMP', key)
  end
end
return {redis.call('GET', root .. ':schema'), counts(root, 4), dumps}
"""
)
# ARGV: [1] key root, [2] live key pattern, [3] staging root, [4] number of staged keys, then
# the staged keys (relative names), then the (kind, type, key) triples. Deletes every live key,
# renames the staged ones into place and counts the result, all in one atomic step.
_SWAP_LUA = (
    _COUNT_FUNCTION
    + """
local root, staging, n = ARGV[1], ARGV[3], tonumber(ARGV[4])
-- Refuse before deleting anything unless every staged key is there (e.g. a swap sent twice).
for i = 5, 4 + n do
  if redis.call('EXISTS', staging .. ':' .. ARGV[i]) == 0 then
    return redis.error_reply('staged key ' .. ARGV[i] .. ' is missing; nothing was replaced')
  end
end
for _, key in ipairs(redis.call('KEYS', ARGV[2])) do redis.call('DEL', key) end
for i = 5, 4 + n do redis.call('RENAME', staging .. ':' .. ARGV[i], root .. ':' .. ARGV[i]) end
return counts(root, 5 + n)
"""
)


# KEYS[1]: a caller's sorted set of hit times; ARGV: now, window (both in milliseconds: Lua turns
# numbers into 14-digit strings when it hands them to Redis), limit, a unique member. Returns
# {1, 0} for a counted hit, {0, milliseconds until a slot frees}.
_RATE_LIMIT_LUA = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[1] .. ':' .. ARGV[4])
  redis.call('PEXPIRE', key, window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, math.max(0, tonumber(oldest[2]) + window - now)}
"""


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _micros(value: datetime) -> int:
    return (value.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: float) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


async def _reply(result: Awaitable[T] | T) -> T:
    """Await a command of the asyncio client (typed by redis-py as sync or async)."""
    return await cast("Awaitable[T]", result)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_seq(entry_id: bytes | str) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn redis-py errors into the store's: unreachable is retryable, the rest is not."""
    try:
        yield
    except UNREACHABLE as exc:
        raise StoreUnavailable(f"Redis is unreachable ({what}): {exc}") from exc
    except WatchError as exc:  # a WATCH lost with its connection, outside our retry loop
        raise StoreUnavailable(f"Redis connection lost ({what}): {exc}") from exc
    except RedisError as exc:
        raise StoreError(f"Redis refused {what}: {exc}") from exc


class _Keys:
    """The names of the store's keys under one root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.pattern = _glob_escape(root) + ":*"
        self.schema = f"{root}:schema"
        self.audit = f"{root}:audit"
        self.audit_head = f"{root}:audit:head"
        self.flags = f"{root}:flags"
        self.flag_versions = f"{root}:flags:versions"
        self.engine = f"{root}:engine"
        self.kv = f"{root}:kv"
        self.cursors = f"{root}:cursors"
        self.incidents = f"{root}:incidents"
        self.incidents_seq = f"{root}:incidents:seq"
        self.incidents_all = f"{root}:incidents:all"
        self.deadlines = f"{root}:incidents:deadline"
        self.open = f"{root}:incidents:open"
        self.latest = f"{root}:incidents:latest"
        self.alerts = f"{root}:alerts"
        self.alerts_seq = f"{root}:alerts:seq"
        self.dedup = f"{root}:alerts:dedup"
        self.events = f"{root}:events"
        self.events_seq = f"{root}:events:seq"
        self.outbox = f"{root}:outbox"
        self.outbox_seq = f"{root}:outbox:seq"
        self.outbox_state = f"{root}:outbox:state"
        self.outbox_payload = f"{root}:outbox:payload"
        self.orders = f"{root}:orders"
        self.orders_seq = f"{root}:orders:seq"
        self.orders_all = f"{root}:orders:all"
        self.pnl = f"{root}:pnl"
        self.pnl_ts = f"{root}:pnl:ts"
        self.holdings = f"{root}:holdings"
        self.venues = f"{root}:venues"

    def state(self, state: IncidentState) -> str:
        return f"{self.root}:incidents:state:{state.value}"

    def open_severity(self, severity: Severity) -> str:
        return f"{self.root}:incidents:open:{severity.value}"

    def incident_alerts(self, incident_id: int) -> str:
        return f"{self.root}:alerts:incident:{incident_id}"

    def incident_events(self, incident_id: int) -> str:
        return f"{self.root}:events:incident:{incident_id}"

    def queue(self, channel: str, key: str) -> str:
        # JSON keeps ("a:b", "c") and ("a", "b:c") apart.
        return f"{self.root}:outbox:queue:{_dump([channel, key])}"

    def due(self, channel: str) -> str:
        return f"{self.root}:outbox:due:{channel}"

    def pending(self, channel: str) -> str:
        return f"{self.root}:outbox:pending:{channel}"

    def order_status(self, status: OrderStatus) -> str:
        return f"{self.root}:orders:status:{status.value}"

    def relative(self, key: str) -> str:
        return key[len(self.root) + 1 :]


# Types of the store's keys, for the integrity check: exact relative names, then prefixes.
_KEY_TYPES = {
    "schema": "string",
    "audit": "stream",
    "audit:head": "string",
    "flags": "hash",
    "flags:versions": "hash",
    "engine": "hash",
    "kv": "hash",
    "cursors": "hash",
    "incidents": "hash",
    "incidents:seq": "string",
    "incidents:all": "zset",
    "incidents:deadline": "zset",
    "incidents:open": "hash",
    "incidents:latest": "hash",
    "alerts": "hash",
    "alerts:seq": "string",
    "alerts:dedup": "hash",
    "events": "stream",
    "events:seq": "string",
    "outbox": "stream",
    "outbox:seq": "string",
    "outbox:state": "hash",
    "outbox:payload": "hash",
    "orders": "hash",
    "orders:seq": "string",
    "orders:all": "zset",
    "pnl": "hash",
    "pnl:ts": "zset",
    "holdings": "hash",
    "venues": "hash",
}
_KEY_PREFIX_TYPES = (
    ("incidents:state:", "zset"),
    ("incidents:open:", "zset"),
    ("alerts:incident:", "zset"),
    ("events:incident:", "zset"),
    ("outbox:queue:", "zset"),
    ("outbox:due:", "zset"),
    ("outbox:pending:", "zset"),
    ("orders:status:", "zset"),
)


def _expected_type(relative: str) -> str | None:
    if relative in _KEY_TYPES:
        return _KEY_TYPES[relative]
    return next((t for p, t in _KEY_PREFIX_TYPES if relative.startswith(p)), None)


_Arg = str | bytes | int | float


def _member(value: str | bytes | int) -> str | bytes:
    """A hash field or sorted-set member as Redis compares them (so 7 and "7" are one)."""
    return value if isinstance(value, str | bytes) else str(value)


class _Tx:
    """One optimistic transaction: reads after WATCH, writes buffered and sent in one MULTI.

    Reads start once a guarding key is watched: single ones go through ``pipe`` (redis-py runs
    commands at once while watching), batches through ``read`` on another connection in one round
    trip (still after the WATCH, so a change they could miss fails the EXEC). Writes are few
    commands however many records change: hash and sorted-set writes are kept as their net effect
    per field or member (a value or score, None to remove) and sent as one command per key, after
    the commands given to ``send`` (stream appends, scripts, deletions) in their order. What the
    transaction wrote stays visible to its own later reads through the callers' caches.
    """

    def __init__(self, pipe: Pipeline, redis: Redis) -> None:
        self.pipe = pipe
        self._redis = redis
        self._watched: set[str] = set()
        self._writes: list[tuple[_Arg, ...]] = []
        self._hashes: dict[str, dict[str | bytes, _Arg | None]] = {}
        self._zsets: dict[str, dict[str | bytes, float | None]] = {}
        self._strings: dict[str, _Arg] = {}
        self._counters: dict[str, tuple[int, int]] = {}  # key -> (as read, last handed out)
        self._before_commit: list[Callable[[], Awaitable[None]]] = []
        self.audit_head: tuple[int, str] | None = None
        # Outbox queue -> (channel, id, created_us) of the first message this transaction put on it.
        self.first_queued: dict[str, tuple[str, int, int]] = {}

    async def watch(self, *keys: str) -> None:
        """WATCH the keys not watched yet."""
        new = [k for k in dict.fromkeys(keys) if k not in self._watched]
        if new:
            await self.pipe.watch(*new)
            self._watched.update(new)

    async def read(self, *commands: tuple[_Arg, ...]) -> list[Any]:
        """Run read commands in one round trip; the keys guarding them must be watched."""
        async with self._redis.pipeline(transaction=False) as reads:
            for command in commands:
                reads.execute_command(*command)
            return list(await reads.execute())

    async def load_counters(self, *counters: str) -> None:
        """WATCH and read counters for ``next_id``: two round trips, however many counters."""
        new = [c for c in dict.fromkeys(counters) if c not in self._counters]
        if new:
            await self.watch(*new)
            (values,) = await self.read(("MGET", *new))
            for counter, raw in zip(new, values, strict=True):
                self._counters[counter] = (int(raw or 0), int(raw or 0))

    async def next_id(self, counter: str) -> int:
        """The next number of ``counter``, stored when the transaction commits."""
        if counter not in self._counters:
            await self.load_counters(counter)
        stored, last = self._counters[counter]
        self._counters[counter] = (stored, last + 1)
        return last + 1

    def send(self, *command: _Arg) -> None:
        """Queue one write command for the MULTI (stream appends, scripts, deletions): these
        go first, in order."""
        self._writes.append(command)

    def set(self, key: str, value: _Arg) -> None:
        """SET ``key`` when the transaction commits (the last value given wins)."""
        self._strings[key] = value

    def hset(self, key: str, field: str | bytes | int, value: _Arg) -> None:
        """Set one field of a hash."""
        self._hashes.setdefault(key, {})[_member(field)] = value

    def hdel(self, key: str, *fields: str | bytes | int) -> None:
        """Delete fields of a hash."""
        self._hashes.setdefault(key, {}).update((_member(f), None) for f in fields)

    def zadd(self, key: str, member: str | bytes | int, score: float) -> None:
        """Add (or re-score) one member of a sorted set."""
        self._zsets.setdefault(key, {})[_member(member)] = score

    def zrem(self, key: str, *members: str | bytes | int) -> None:
        """Remove members of a sorted set."""
        self._zsets.setdefault(key, {}).update((_member(m), None) for m in members)

    def before_commit(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` (more reads and writes) once the body is done, just before MULTI."""
        self._before_commit.append(step)

    async def commit(self) -> None:
        """Send the writes in MULTI/EXEC; ``WatchError`` if a watched key changed."""
        for step in self._before_commit:
            await step()
        self.pipe.multi()  # type: ignore[no-untyped-call]
        for command in self._writes:
            self.pipe.execute_command(*command)
        for key, fields in self._hashes.items():
            if pairs := [part for f, v in fields.items() if v is not None for part in (f, v)]:
                self.pipe.execute_command("HSET", key, *pairs)
            if gone := [f for f, v in fields.items() if v is None]:
                self.pipe.execute_command("HDEL", key, *gone)
        for key, members in self._zsets.items():
            if scored := [part for m, s in members.items() if s is not None for part in (s, m)]:
                self.pipe.execute_command("ZADD", key, *scored)
            if gone := [m for m, s in members.items() if s is None]:
                self.pipe.execute_command("ZREM", key, *gone)
        for counter, (stored, last) in self._counters.items():
            if last != stored:
                self._strings[counter] = last
        for key, value in self._strings.items():
            self.pipe.execute_command("SET", key, value)
        await self.pipe.execute()


class _IncidentWork:
    """Incident reads and writes inside one transaction (the caller watches ``events:seq``).

    ``prefetch`` reads what a batch of incident keys needs in two round trips; whatever it did
    not read is read on first use. Every read is cached, and every save updates the caches.
    """

    def __init__(self, tx: _Tx, keys: _Keys) -> None:
        self._tx = tx
        self._k = keys
        self._docs: dict[int, Incident | None] = {}
        self._open: dict[str, int | None] = {}
        self._latest: dict[str, int | None] = {}

    async def prefetch(self, keys: Sequence[str]) -> None:
        """Read the open and newest incident of each of ``keys``, with their documents."""
        k = self._k
        todo = [
            key for key in dict.fromkeys(keys) if key not in self._open or key not in self._latest
        ]
        if todo:
            open_ids, latest_ids = await self._tx.read(
                ("HMGET", k.open, *todo), ("HMGET", k.latest, *todo)
            )
            for key, open_id, latest_id in zip(todo, open_ids, latest_ids, strict=True):
                # What this transaction wrote already (cached) wins over what was stored.
                self._open.setdefault(key, None if open_id is None else int(open_id))
                self._latest.setdefault(key, None if latest_id is None else int(latest_id))
        wanted = {self._open[key] for key in keys} | {self._latest[key] for key in keys}
        ids = sorted(i for i in wanted if i is not None and i not in self._docs)
        if ids:
            (raws,) = await self._tx.read(("HMGET", k.incidents, *ids))
            for incident_id, raw in zip(ids, raws, strict=True):
                self._docs[incident_id] = None if raw is None else Incident.model_validate_json(raw)

    async def get(self, incident_id: int) -> Incident | None:
        """One incident as this transaction sees it."""
        if incident_id not in self._docs:
            raw = await _reply(self._tx.pipe.hget(self._k.incidents, str(incident_id)))
            self._docs[incident_id] = None if raw is None else Incident.model_validate_json(raw)
        return self._docs[incident_id]

    async def _index(self, cache: dict[str, int | None], hash_key: str, key: str) -> int | None:
        if key not in cache:
            raw = await _reply(self._tx.pipe.hget(hash_key, key))
            cache[key] = None if raw is None else int(raw)
        return cache[key]

    async def open_for(self, key: str) -> Incident | None:
        """The open incident of an incident key."""
        found = await self._index(self._open, self._k.open, key)
        return None if found is None else await self.get(found)

    async def latest_for(self, key: str) -> Incident | None:
        """The newest incident of an incident key."""
        found = await self._index(self._latest, self._k.latest, key)
        return None if found is None else await self.get(found)

    async def save(self, incident: Incident) -> tuple[Incident, str]:
        """Insert (id 0) or update an incident and its indexes; returns it with id and version,
        and the JSON stored for it."""
        tx, k = self._tx, self._k
        previous: Incident | None = None
        if incident.id == 0:
            new_id = await tx.next_id(k.incidents_seq)
            incident = incident.model_copy(update={"id": new_id, "version": 1})
        else:
            previous = await self.get(incident.id)
            incident = incident.model_copy(update={"version": incident.version + 1})
        iid = incident.id
        open_id = await self._index(self._open, k.open, incident.key)
        if incident.is_open and open_id not in (None, iid):
            # The SQLite store's unique index on open incidents per key refuses the same.
            raise StoreError(f"incident key {incident.key!r} already has open incident #{open_id}")
        tx.hset(k.incidents, iid, doc := incident.model_dump_json())
        tx.zadd(k.incidents_all, iid, iid)
        if previous is not None and previous.state is not incident.state:
            tx.zrem(k.state(previous.state), iid)
        tx.zadd(k.state(incident.state), iid, iid)
        if previous is not None and previous.is_open:
            tx.zrem(k.open_severity(previous.severity), iid)
        if incident.is_open:
            tx.zadd(k.open_severity(incident.severity), iid, iid)
        if incident.deadline is not None:
            tx.zadd(k.deadlines, iid, _micros(incident.deadline))
        else:
            tx.zrem(k.deadlines, iid)
        if (
            previous is not None
            and previous.key != incident.key
            and await self._index(self._open, k.open, previous.key) == iid
        ):
            tx.hdel(k.open, previous.key)
            self._open[previous.key] = None
        if incident.is_open:
            tx.hset(k.open, incident.key, iid)
            self._open[incident.key] = iid
        elif open_id == iid:
            tx.hdel(k.open, incident.key)
            self._open[incident.key] = None
        latest = await self._index(self._latest, k.latest, incident.key)
        if latest is None or iid > latest:
            tx.hset(k.latest, incident.key, iid)
            self._latest[incident.key] = iid
        self._docs[iid] = incident
        return incident, doc


_IngestJob = tuple[Sequence[Alert], AlertPlanner]


# The database number trial restores (backup verification) load into; 14 if production uses 15.
VERIFY_DB = 15


def scratch_db_url(url: str) -> str:
    """``url`` pointing at the scratch database (``VERIFY_DB``) of the same server."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    path = parts.path.strip("/")
    if parts.scheme == "unix":  # unix:///path/redis.sock?db=N
        current, path_part = int(query.get("db", "0")), parts.path
    else:  # redis[s]://host:port/N
        current, path_part = int(path if path.isdigit() else query.get("db", "0")), ""
        query.pop("db", None)
    scratch = VERIFY_DB if current != VERIFY_DB else VERIFY_DB - 1
    if parts.scheme == "unix":
        query["db"] = str(scratch)
    else:
        path_part = f"/{scratch}"
    return urlunsplit(parts._replace(path=path_part, query=urlencode(query)))


class RedisStore:
    """The shared store: every replica opens one on the same Redis and ``prefix``."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "lunia", scratch: bool = False) -> None:
        self.prefix = prefix
        self._url = url
        self._k = _Keys(f"{prefix}:store")
        self._scratch = scratch  # a trial store: its keys are deleted on close
        self._redis: Redis | None = None
        self._write_lock = asyncio.Lock()
        self._ingests = GroupCommit[_IngestJob, IngestOutcome](self._commit_ingests)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check Redis answers and run pending migrations."""
        # One retry hides a pooled connection that died with a Redis restart; a transaction
        # never re-sends its EXEC (redis-py raises WatchError instead while watching).
        self._redis = Redis.from_url(
            self._url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        while True:
            version = await self.schema_version()
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"Redis state is at schema {version}, newer than this release "
                    f"({len(MIGRATIONS)}); upgrade the control plane"
                )
            if version == len(MIGRATIONS):
                return

            async def step(tx: _Tx, version: int = version) -> None:
                await tx.watch(self._k.schema)
                if int(await tx.pipe.get(self._k.schema) or 0) != version:
                    return  # another process migrated meanwhile: look again
                tx.send("EVAL", MIGRATIONS[version], 0, self._k.root)
                tx.set(self._k.schema, version + 1)

            await self._transaction("migrating the schema", step)
            logger.info("Redis state at %s migrated to schema %d", self._k.root, version + 1)

    async def close(self) -> None:
        """Close the connections (a trial store first deletes its keys); safe to call twice."""
        redis, self._redis = self._redis, None
        if redis is None:
            return
        if self._scratch:
            try:
                await _delete_matching(redis, self._k.pattern)
            except RedisError as exc:
                logger.warning("trial store %s not cleaned up: %s", self._k.root, exc)
        await redis.aclose()

    # -- plumbing --------------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreUnavailable("the state store is closed")
        return self._redis

    @contextlib.asynccontextmanager
    async def _bulk_client(self) -> AsyncIterator[Redis]:
        """A client for one snapshot or restore, whose replies may take long to come."""
        self._client()  # a closed store stays closed
        # No retries: a swap must never be sent twice.
        client = Redis.from_url(
            self._url,
            socket_timeout=BULK_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            yield client
        finally:
            await client.aclose()

    async def _transaction(self, what: str, body: Callable[[_Tx], Awaitable[T]]) -> T:
        """Run ``body`` (reads, then queued writes) and commit it, again on every conflict."""
        redis = self._client()
        async with self._write_lock:
            for attempt in range(MAX_CONFLICTS):
                with _translated(what):
                    async with redis.pipeline(transaction=True) as pipe:
                        tx = _Tx(pipe, redis)
                        try:
                            result = await body(tx)
                            await tx.commit()
                        except WatchError as exc:
                            if isinstance(exc.__context__, UNREACHABLE):
                                raise StoreUnavailable(
                                    f"Redis connection lost ({what}); if it was lost while "
                                    f"committing, the change may or may not be stored: {exc}"
                                ) from exc
                        else:
                            return result
                # Another process committed first: back off a little so we do not collide again.
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))  # noqa: S311
        raise StoreError(f"{what}: gave up after {MAX_CONFLICTS} conflicting writes")

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers PING."""
        with _translated("ping"):
            await _reply(self._client().ping())

    async def schema_version(self) -> int:
        """The schema version recorded in Redis (0 before the first migration)."""
        with _translated("reading the schema version"):
            return int(await self._client().get(self._k.schema) or 0)

    # -- audit -----------------------------------------------------------------------------

    async def _append_audit(self, tx: _Tx, record: AuditRecord) -> AuditEntry:
        if tx.audit_head is None:
            await tx.watch(self._k.audit_head)
            raw = await _reply(tx.pipe.get(self._k.audit_head))
            seq, digest = (0, GENESIS_HASH) if raw is None else json.loads(raw)
            tx.audit_head = (int(seq), str(digest))
        seq, prev_hash = tx.audit_head
        entry = seal(record, seq=seq + 1, ts=utcnow(), prev_hash=prev_hash)
        doc = {
            "ts": _ts(entry.ts),
            "actor": entry.actor.model_dump(mode="json"),
            "action": entry.action,
            "target": entry.target,
            "before": entry.before,
            "after": entry.after,
            "outcome": entry.outcome,
            "detail": entry.detail,
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
        }
        # before/after are stored as SQLite stores them (json with default=str): the digest
        # was computed over that rendering, so the chain verifies after a round trip.
        tx.send("XADD", self._k.audit, f"{entry.seq}-0", _ENTRY, _dump(doc))
        tx.set(self._k.audit_head, _dump([entry.seq, entry.hash]))
        tx.audit_head = (entry.seq, entry.hash)
        return entry

    async def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Seal ``record`` onto the end of the chain."""
        return await self._transaction(
            "appending to the audit log", lambda tx: self._append_audit(tx, record)
        )

    @staticmethod
    def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> AuditEntry:
        doc = json.loads(fields[_ENTRY.encode()])
        return AuditEntry(
            seq=_stream_seq(entry_id),
            ts=datetime.fromisoformat(doc["ts"]),
            actor=Actor.model_validate(doc["actor"]),
            action=doc["action"],
            target=doc["target"],
            before=doc["before"],
            after=doc["after"],
            outcome=doc["outcome"],
            detail=doc["detail"],
            prev_hash=doc["prev_hash"],
            hash=doc["hash"],
        )

    async def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Entries after ``after_seq`` in chain order, optionally within [since, until)."""
        found: list[AuditEntry] = []
        start = after_seq + 1
        page = limit if since is None and until is None else max(limit, _PAGE)
        since = None if since is None else since.astimezone(UTC)
        until = None if until is None else until.astimezone(UTC)
        redis = self._client()
        while len(found) < limit:
            with _translated("reading the audit log"):
                batch = await redis.xrange(self._k.audit, min=f"{start}-0", count=page)
            for entry_id, fields in batch:
                entry = self._entry(entry_id, fields)
                if (since is None or entry.ts >= since) and (until is None or entry.ts < until):
                    found.append(entry)
                    if len(found) == limit:
                        break
            if len(batch) < page:
                break
            start = _stream_seq(batch[-1][0]) + 1
        return found

    async def audit_tail(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        if limit <= 0:
            return []
        with _translated("reading the audit log"):
            batch = await self._client().xrevrange(self._k.audit, count=limit)
        return [self._entry(entry_id, fields) for entry_id, fields in batch]

    async def audit_head(self) -> tuple[int, str] | None:
        """The chain head as recorded at the last append."""
        with _translated("reading the audit head"):
            raw = await self._client().get(self._k.audit_head)
        if raw is None:
            return None
        seq, digest = json.loads(raw)
        return int(seq), str(digest)

    # -- flags -----------------------------------------------------------------------------

    async def flag_overrides(self) -> dict[str, FlagOverride]:
        """Every runtime flag override by name."""
        with _translated("reading flag overrides"):
            rows = await _reply(self._client().hgetall(self._k.flags))
        found: dict[str, FlagOverride] = {}
        for raw_name, raw in rows.items():
            name, doc = _text(raw_name), json.loads(raw)
            found[name] = FlagOverride(
                name=name,
                value=doc["value"],
                set_by=Actor.model_validate(doc["set_by"]),
                set_at=datetime.fromisoformat(doc["set_at"]),
            )
        return found

    async def flag_versions(self) -> dict[str, FlagVersion]:
        """Every flag's version by name."""
        with _translated("reading flag versions"):
            rows = await _reply(self._client().hgetall(self._k.flag_versions))
        return {_text(name): self._flag_version(_text(name), raw) for name, raw in rows.items()}

    @staticmethod
    def _flag_version(name: str, raw: bytes | str) -> FlagVersion:
        doc = json.loads(raw)
        return FlagVersion(
            name=name,
            version=int(doc["version"]),
            changed_by=Actor.model_validate(doc["changed_by"]),
            changed_at=datetime.fromisoformat(doc["changed_at"]),
        )

    async def _bump_flag_version(
        self, tx: _Tx, name: str, audit: AuditRecord, expected: int | None
    ) -> None:
        """WATCH the versions, check ``expected`` and queue the bump: EXEC fails (and the body
        runs again, re-checking) if another replica changed any flag in between."""
        await tx.watch(self._k.flag_versions)
        raw = await _reply(tx.pipe.hget(self._k.flag_versions, name))
        current = None if raw is None else self._flag_version(name, raw)
        version = 0 if current is None else current.version
        if expected is not None and expected != version:
            raise flag_version_conflict(name, current, expected)
        doc = {
            "version": version + 1,
            "changed_by": audit.actor.model_dump(mode="json"),
            "changed_at": _ts(utcnow()),
        }
        tx.hset(self._k.flag_versions, name, _dump(doc))

    async def put_flag_override(
        self, override: FlagOverride, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Set an override, bump its version and audit it in one transaction."""
        doc = _dump(
            {
                "value": override.value,
                "set_by": override.set_by.model_dump(mode="json"),
                "set_at": _ts(override.set_at),
            }
        )

        async def body(tx: _Tx) -> AuditEntry:
            await self._bump_flag_version(tx, override.name, audit, expected_version)
            entry = await self._append_audit(tx, audit)
            tx.hset(self._k.flags, override.name, doc)
            return entry

        return await self._transaction("setting a flag override", body)

    async def delete_flag_override(
        self, name: str, audit: AuditRecord, expected_version: int | None = None
    ) -> AuditEntry:
        """Clear an override, bump its version and audit it in one transaction."""

        async def body(tx: _Tx) -> AuditEntry:
            await self._bump_flag_version(tx, name, audit, expected_version)
            entry = await self._append_audit(tx, audit)
            tx.hdel(self._k.flags, name)
            return entry

        return await self._transaction("clearing a flag override", body)

    # -- incidents -------------------------------------------------------------------------

    async def _apply_change(
        self, tx: _Tx, work: _IncidentWork, change: Change, before: IncidentState | None
    ) -> IncidentEvent:
        incident, incident_json = await work.save(change.incident)
        now = utcnow()
        seq = await tx.next_id(self._k.events_seq)
        event = IncidentEvent(
            seq=seq,
            ts=now,
            kind=change.kind,
            incident=incident,
            actor=change.actor,
            detail=change.detail,
        )
        head = event.model_dump_json(exclude={"incident"})
        tx.send("XADD", self._k.events, f"{seq}-0", _ENTRY, splice_incident(head, incident_json))
        tx.zadd(self._k.incident_events(incident.id), seq, seq)
        if change.audit:
            await self._append_audit(
                tx,
                AuditRecord(
                    actor=change.actor,
                    action=f"incident.{change.kind.value}",
                    target=incident.describe(),
                    before={"state": before.value} if before else None,
                    after={"state": incident.state.value},
                    detail=change.detail,
                ),
            )
        if change.outbox:
            # A message about a brand-new incident names it as id 0: give it the real id.
            messages = [
                m.model_copy(update={"payload": {**m.payload, "incident_id": incident.id}})
                if m.payload.get("incident_id") == 0
                else m
                for m in change.outbox
            ]
            await self._queue_outbox(tx, messages, now)
        return event

    async def _ingest(self, tx: _Tx, jobs: Sequence[_IngestJob]) -> list[IngestOutcome]:
        """Several webhooks' alerts in one transaction, in order, as if each came alone."""
        k = self._k
        # alerts:seq guards the de-duplication, events:seq every incident (see the docstring);
        # incidents:seq only changes with events:seq, so watching it early costs no conflicts.
        await tx.load_counters(k.alerts_seq, k.events_seq, k.incidents_seq)
        dedups = [[f"{a.source.value}:{a.dedup_key}" for a in alerts] for alerts, _ in jobs]
        flat = [dedup for batch in dedups for dedup in batch]
        (stored_ids,) = await tx.read(("HMGET", k.dedup, *flat)) if flat else ([],)
        taken = {dedup for dedup, stored in zip(flat, stored_ids, strict=True) if stored}
        fresh_per_job: list[dict[str, Alert]] = []
        for (alerts, _), batch in zip(jobs, dedups, strict=True):
            fresh: dict[str, Alert] = {}  # not stored yet, by dedup key (the first if sent twice)
            for alert, dedup in zip(alerts, batch, strict=True):
                if dedup not in taken:
                    fresh.setdefault(dedup, alert)
            taken.update(fresh)
            fresh_per_job.append(fresh)
        work = _IncidentWork(tx, k)
        await work.prefetch(
            [
                key
                for fresh in fresh_per_job
                for a in fresh.values()
                for key in (incident_key(a), legacy_key(a))
            ]
        )
        received = _ts(utcnow())
        return [
            await self._ingest_fresh(tx, work, fresh, len(alerts), plan, received)
            for (alerts, plan), fresh in zip(jobs, fresh_per_job, strict=True)
        ]

    async def _ingest_fresh(
        self,
        tx: _Tx,
        work: _IncidentWork,
        fresh: dict[str, Alert],
        sent: int,
        plan: AlertPlanner,
        received: str,
    ) -> IngestOutcome:
        k = self._k
        events: list[IncidentEvent] = []
        rows: list[list[Any]] = []
        held = HeldChanges()

        async def apply(hold: HeldChange) -> Incident:
            event = await self._apply_change(tx, work, hold.final(), hold.before)
            events.append(event)
            for row in hold.rows:
                row[1] = event.incident.id
            return event.incident

        for dedup, alert in fresh.items():
            key, legacy = incident_key(alert), legacy_key(alert)
            row: list[Any] = [dedup, None, alert]
            rows.append(row)
            # An open incident stored before groups keeps taking its own fingerprint's alerts.
            legacy_open = await work.open_for(legacy)
            candidates = (legacy if legacy_open else key, legacy)
            hold = held.open_one(*candidates)
            if hold is not None:
                open_incident: Incident | None = hold.change.incident
            else:
                for taken in held.take(key, legacy):
                    await apply(taken)
                open_incident = await work.open_for(legacy) or await work.open_for(key)
            latest = await work.latest_for(key)
            last_resolved = latest if latest is not None and not latest.is_open else None
            change = plan(alert, open_incident, last_resolved)
            target = open_incident or last_resolved
            row[1] = target.id if target else None
            if change is None:
                continue
            hold = held.get(change.incident.key)
            if hold is not None and hold.absorb(change):
                hold.rows.append(row)
                continue
            before = None if change.incident.id == 0 else (target or change.incident).state
            if hold is not None:  # the held incident changes otherwise (e.g. resolves): apply
                saved = await apply(hold)
                change, before = hold.rebase(change, saved), hold.change.incident.state
            held[change.incident.key] = HeldChange(change, before)
            held[change.incident.key].rows.append(row)
        for hold in held.values():
            await apply(hold)
        for dedup, incident_id, alert in rows:
            alert_id = await tx.next_id(k.alerts_seq)
            # {"incident_id", "received_at", "alert"}, the alert serialised by pydantic in one
            # pass (its dict through json.dumps cost three times as much, per alert).
            doc = (
                f'{{"incident_id":{_dump(incident_id)},"received_at":{_dump(received)},'
                f'"alert":{alert.model_dump_json()}}}'
            )
            tx.hset(k.alerts, alert_id, doc)
            tx.hset(k.dedup, dedup, alert_id)
            if incident_id is not None:
                tx.zadd(k.incident_alerts(incident_id), alert_id, alert_id)
        return IngestOutcome(accepted=len(fresh), duplicates=sent - len(fresh), events=events)

    async def _commit_ingests(
        self, jobs: Sequence[_IngestJob]
    ) -> list[IngestOutcome | BaseException]:
        """One transaction for the batch; should it fail for a reason of one webhook's own
        (not Redis being unreachable), each webhook alone, so the others still go through."""
        try:
            return list(
                await self._transaction("storing alerts", lambda tx: self._ingest(tx, jobs))
            )
        except StoreUnavailable:
            raise
        except Exception:
            if len(jobs) == 1:
                raise
        outcomes: list[IngestOutcome | BaseException] = []
        for job in jobs:
            try:
                [outcome] = await self._transaction(
                    "storing alerts", partial(self._ingest, jobs=[job])
                )
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(outcome)
        return outcomes

    async def ingest_alerts(
        self, alerts: Sequence[Alert], plan: AlertPlanner, now: datetime
    ) -> IngestOutcome:
        """Store new alerts and apply ``plan`` to their incidents in one transaction; webhooks
        arriving while one commits share the next transaction (group commit)."""
        if not alerts:
            return IngestOutcome(accepted=0, duplicates=0, events=[])
        return await self._ingests.submit((alerts, plan))

    async def change_incident(
        self, incident_id: int, mutate: IncidentMutation
    ) -> tuple[Incident, IncidentEvent | None]:
        """Read-modify-write one incident atomically."""

        async def body(tx: _Tx) -> tuple[Incident, IncidentEvent | None]:
            await tx.watch(self._k.events_seq)
            work = _IncidentWork(tx, self._k)
            current = await work.get(incident_id)
            if current is None:
                raise NotFound(f"no incident #{incident_id}")
            change = mutate(current)
            if change is None:
                return current, None
            event = await self._apply_change(tx, work, change, current.state)
            return event.incident, event

        return await self._transaction(f"changing incident #{incident_id}", body)

    async def get_incident(self, incident_id: int) -> Incident | None:
        """One incident by id."""
        with _translated("reading an incident"):
            raw = await _reply(self._client().hget(self._k.incidents, str(incident_id)))
        return None if raw is None else Incident.model_validate_json(raw)

    async def _newest(
        self,
        indexes: Sequence[str],
        docs: str,
        accept: Callable[[bytes], T | None],
        limit: int,
    ) -> list[T]:
        """The ``limit`` newest accepted documents of the union of zset ``indexes`` (score:
        insertion number, member: field of the ``docs`` hash)."""
        redis = self._client()
        found: list[tuple[float, T]] = []
        for index in indexes:
            taken = 0
            start = 0
            while taken < limit:
                with _translated("reading an index"):
                    members = await redis.zrevrange(
                        index, start, start + _PAGE - 1, withscores=True
                    )
                    raws = (
                        await _reply(redis.hmget(docs, [m for m, _ in members])) if members else []
                    )
                for (_, score), raw in zip(members, raws, strict=True):
                    item = None if raw is None else accept(raw)
                    if item is not None and taken < limit:
                        found.append((score, item))
                        taken += 1
                if len(members) < _PAGE:
                    break
                start += _PAGE
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [item for _, item in found[:limit]]

    async def list_incidents(
        self,
        *,
        states: Sequence[IncidentState] | None = None,
        severity: Severity | None = None,
        due_before: datetime | None = None,
        limit: int = 50,
    ) -> list[Incident]:
        """Incidents newest first, filtered."""
        if limit <= 0:
            return []

        def accept(raw: bytes) -> Incident | None:
            incident = Incident.model_validate_json(raw)
            if states and incident.state not in states:
                return None
            if severity is not None and incident.severity is not severity:
                return None
            return incident

        if due_before is None:
            indexes = [self._k.state(s) for s in set(states)] if states else [self._k.incidents_all]
            return await self._newest(indexes, self._k.incidents, accept, limit)
        # Deadlines exist only on open incidents, a short list: read them all.
        redis = self._client()
        with _translated("reading incident deadlines"):
            ids = await redis.zrangebyscore(self._k.deadlines, "-inf", _micros(due_before))
            raws = await _reply(redis.hmget(self._k.incidents, ids)) if ids else []
        found = [i for i in (accept(raw) for raw in raws if raw is not None) if i is not None]
        found.sort(key=lambda i: i.id, reverse=True)
        return found[:limit]

    async def count_open_incidents(self) -> dict[Severity, int]:
        """Open incidents by severity."""
        k = self._k
        with _translated("counting open incidents"):
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.hlen(k.open)
                for severity in Severity:
                    pipe.zcard(k.open_severity(severity))
                total, *sizes = await pipe.execute()
        if sum(sizes) == total:
            return dict(zip(Severity, map(int, sizes), strict=True))
        # Out of step with incidents:open, e.g. written by an older release during an upgrade.
        logger.warning("incidents:open:{severity} out of step with incidents:open: rebuilding it")
        return await self._transaction("indexing open incidents", self._index_open_incidents)

    async def _index_open_incidents(self, tx: _Tx) -> dict[Severity, int]:
        """Rebuild incidents:open:{severity} from the open incidents' documents."""
        k = self._k
        await tx.watch(k.events_seq)  # every incident write changes it
        ids = await _reply(tx.pipe.hvals(k.open))
        (raws,) = await tx.read(("HMGET", k.incidents, *ids)) if ids else ([],)
        tx.send("DEL", *(k.open_severity(severity) for severity in Severity))
        counts = dict.fromkeys(Severity, 0)
        for raw in raws:
            incident = None if raw is None else Incident.model_validate_json(raw)
            if incident is not None and incident.is_open:
                tx.zadd(k.open_severity(incident.severity), incident.id, incident.id)
                counts[incident.severity] += 1
        return counts

    async def incident_alerts(self, incident_id: int, limit: int = 50) -> list[StoredAlert]:
        """The newest alerts of an incident."""
        if limit <= 0:
            return []
        redis = self._client()
        with _translated("reading an incident's alerts"):
            ids = await redis.zrevrange(self._k.incident_alerts(incident_id), 0, limit - 1)
            raws = await _reply(redis.hmget(self._k.alerts, ids)) if ids else []
        found: list[StoredAlert] = []
        for alert_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            doc = json.loads(raw)
            found.append(
                StoredAlert(
                    id=int(alert_id),
                    incident_id=doc["incident_id"],
                    received_at=datetime.fromisoformat(doc["received_at"]),
                    alert=Alert.model_validate(doc["alert"]),
                )
            )
        return found

    async def incident_events(
        self, *, incident_id: int | None = None, after_seq: int = 0, limit: int = 100
    ) -> list[IncidentEvent]:
        """Incident events in order."""
        if limit <= 0:
            return []
        redis = self._client()
        with _translated("reading incident events"):
            if incident_id is None:
                batch = await redis.xrange(self._k.events, min=f"{after_seq + 1}-0", count=limit)
            else:
                seqs = await redis.zrangebyscore(
                    self._k.incident_events(incident_id), f"({after_seq}", "+inf", 0, limit
                )
                async with redis.pipeline(transaction=False) as pipe:
                    for seq in seqs:
                        pipe.xrange(self._k.events, min=f"{int(seq)}-0", max=f"{int(seq)}-0")
                    batch = [entry for found in await pipe.execute() for entry in found]
        return [IncidentEvent.model_validate_json(fields[_ENTRY.encode()]) for _, fields in batch]

    # -- outbox and cursors ----------------------------------------------------------------

    async def _queue_outbox(
        self, tx: _Tx, messages: Sequence[OutboxMessage], now: datetime
    ) -> None:
        created, created_us = _ts(now), _micros(now)
        fresh = {"next_at": created, "attempts": 0, "status": "pending", "last_error": None}
        for message in messages:
            state = _dump({**fresh, "sensitive": True} if message.sensitive else fresh)
            item_id = await tx.next_id(self._k.outbox_seq)
            queue = self._k.queue(message.channel, message.key)
            tx.send(
                "XADD",
                self._k.outbox,
                f"{item_id}-0",
                "channel",
                message.channel,
                "key",
                message.key,
                "created_at",
                created,
            )
            tx.hset(self._k.outbox_payload, item_id, _dump(message.payload))
            tx.hset(self._k.outbox_state, item_id, state)
            tx.zadd(queue, item_id, item_id)
            tx.zadd(self._k.pending(message.channel), item_id, created_us)
            if not tx.first_queued:
                tx.before_commit(lambda: self._mark_heads_due(tx))
            tx.first_queued.setdefault(queue, (message.channel, item_id, created_us))

    async def _mark_heads_due(self, tx: _Tx) -> None:
        """Make the first message queued on an empty key's queue due at once: it is the head.
        Run once all messages are queued, so that every queue is read in one round trip."""
        queues = list(tx.first_queued)
        await tx.watch(*queues)  # every writer of a key's queue watches it
        sizes = await tx.read(*(("ZCARD", queue) for queue in queues))
        for (channel, item_id, created_us), size in zip(
            tx.first_queued.values(), sizes, strict=True
        ):
            if size == 0:
                tx.zadd(self._k.due(channel), item_id, created_us)

    async def outbox_add(
        self, messages: Sequence[OutboxMessage], *, cursor: tuple[str, int] | None = None
    ) -> None:
        """Queue messages for delivery, saving ``cursor`` in the same transaction."""

        async def body(tx: _Tx) -> None:
            await tx.watch(self._k.outbox_seq)
            await self._queue_outbox(tx, messages, utcnow())
            if cursor is not None:
                tx.hset(self._k.cursors, cursor[0], cursor[1])

        await self._transaction("queueing outbox messages", body)

    async def get_value(self, key: str) -> Any:
        """A small JSON value saved by an adapter, or None."""
        with _translated("reading a value"):
            raw = await _reply(self._client().hget(self._k.kv, key))
        return None if raw is None else json.loads(raw)

    async def set_value(self, key: str, value: Any) -> None:
        """Save (or, with None, delete) a small JSON value."""
        with _translated("saving a value"):
            if value is None:
                await _reply(self._client().hdel(self._k.kv, key))
            else:
                await _reply(self._client().hset(self._k.kv, key, _dump(value)))

    async def _outbox_messages(self, ids: Sequence[int]) -> dict[int, dict[bytes, bytes]]:
        redis = self._client()
        async with redis.pipeline(transaction=False) as pipe:
            for item_id in ids:
                pipe.xrange(self._k.outbox, min=f"{item_id}-0", max=f"{item_id}-0")
            found = await pipe.execute()
        return {_stream_seq(e[0][0]): e[0][1] for e in found if e}

    async def outbox_due(self, channel: str, now: datetime, limit: int) -> list[OutboxItem]:
        """Pending messages of ``channel`` whose time has come, oldest first."""
        if limit <= 0:
            return []
        now = now.astimezone(UTC)
        redis = self._client()
        with _translated("reading the outbox"):
            # Only the head of each key's queue is in the due index: strict order per key.
            heads = await redis.zrangebyscore(self._k.due(channel), "-inf", _micros(now))
            ids = sorted(int(i) for i in heads)[:limit]
            if not ids:
                return []
            states = await _reply(redis.hmget(self._k.outbox_state, [str(i) for i in ids]))
            payloads = await _reply(redis.hmget(self._k.outbox_payload, [str(i) for i in ids]))
            messages = await self._outbox_messages(ids)
        items: list[OutboxItem] = []
        for item_id, raw, payload in zip(ids, states, payloads, strict=True):
            fields = messages.get(item_id)
            if raw is None or fields is None:
                continue
            state = json.loads(raw)
            next_at = datetime.fromisoformat(state["next_at"])
            if state["status"] != "pending" or next_at > now:
                continue  # finished or rescheduled by another worker since the index was read
            items.append(
                OutboxItem(
                    id=item_id,
                    channel=_text(fields[b"channel"]),
                    key=_text(fields[b"key"]),
                    # Queued before payloads moved out of the stream: still in its entry.
                    payload=json.loads(payload if payload is not None else fields[b"payload"]),
                    created_at=datetime.fromisoformat(_text(fields[b"created_at"])),
                    next_at=next_at,
                    attempts=state["attempts"],
                    last_error=state["last_error"],
                    sensitive=bool(state.get("sensitive")),
                )
            )
        return items

    async def outbox_finish(
        self, item_id: int, *, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """Mark delivered, rescheduled or failed for good."""
        with _translated("reading the outbox"):
            messages = await self._outbox_messages([item_id])
        fields = messages.get(item_id)
        if fields is None:
            return  # like an UPDATE that matches no row
        channel, key = _text(fields[b"channel"]), _text(fields[b"key"])
        queue, due = self._k.queue(channel, key), self._k.due(channel)

        async def body(tx: _Tx) -> None:
            await tx.watch(queue)  # every writer of this key's items watches it
            raw = await _reply(tx.pipe.hget(self._k.outbox_state, str(item_id)))
            if raw is None:
                return
            state = json.loads(raw)
            was_pending = state["status"] == "pending"
            state["attempts"] += 1
            if error is None:
                state.update(status="done", last_error=None, finished_at=_ts(utcnow()))
            elif retry_at is not None:
                state.update(last_error=error, next_at=_ts(retry_at))
            else:
                state.update(status="failed", last_error=error, finished_at=_ts(utcnow()))
            tx.hset(self._k.outbox_state, item_id, _dump(state))
            if not was_pending:
                return
            first_two = [int(i) for i in await tx.pipe.zrange(queue, 0, 1)]
            is_head = bool(first_two) and first_two[0] == item_id
            if state["status"] == "pending":
                if is_head and retry_at is not None:
                    tx.zadd(due, item_id, _micros(retry_at))
                return
            tx.zrem(queue, item_id)
            tx.zrem(self._k.pending(channel), item_id)
            tx.zrem(due, item_id)
            tx.hdel(self._k.outbox_payload, item_id)  # finished: the payload (a secret, a chart)
            wiped.append(bool(state.get("sensitive")))
            if is_head and len(first_two) == 2:  # the next message of the key becomes eligible
                nxt = first_two[1]
                raw_next = await _reply(tx.pipe.hget(self._k.outbox_state, str(nxt)))
                if raw_next is not None:
                    next_at = datetime.fromisoformat(json.loads(raw_next)["next_at"])
                    tx.zadd(due, nxt, _micros(next_at))

        wiped: list[bool] = []  # per attempt of the body: whether it wiped a secret
        await self._transaction(f"finishing outbox message #{item_id}", body)
        if wiped and wiped[-1]:
            await self._rewrite_aof()

    async def _rewrite_aof(self) -> None:
        """Have Redis rewrite its append-only file: the command that queued a secret stays in
        the AOF until then (a rewrite writes the keyspace as it is now, without the secret).
        Secrets are rare (a token issued); a Redis that forbids the command is logged."""
        redis = self._client()
        try:
            persistence = await redis.info("persistence")
            if persistence.get("aof_enabled"):
                await redis.execute_command("BGREWRITEAOF")  # type: ignore[no-untyped-call]
        except RedisError as exc:  # e.g. already rewriting, or the command is disabled
            logger.warning("could not rewrite the AOF after wiping a secret: %s", exc)

    async def outbox_prune(self, before: datetime) -> int:
        """Delete delivered messages finished before ``before``; never a pending or failed one.
        A finished message changes no more, so no watch is needed."""
        redis = self._client()
        gone: list[int] = []
        with _translated("pruning the outbox"):
            async for raw_id, raw in redis.hscan_iter(self._k.outbox_state, count=1000):
                state = json.loads(raw)
                finished = state.get("finished_at") or state["next_at"]
                if state["status"] == "done" and datetime.fromisoformat(finished) < before:
                    gone.append(int(raw_id))
            for start in range(0, len(gone), 500):
                chunk = gone[start : start + 500]
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.xdel(self._k.outbox, *(f"{i}-0" for i in chunk))
                    pipe.hdel(self._k.outbox_state, *map(str, chunk))
                    pipe.hdel(self._k.outbox_payload, *map(str, chunk))
                    await pipe.execute()
        return len(gone)

    async def outbox_stats(self, channel: str) -> OutboxStats:
        """Depth and oldest pending message of ``channel``."""
        redis = self._client()
        with _translated("reading outbox stats"):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.zcard(self._k.pending(channel))
                pipe.zrange(self._k.pending(channel), 0, 0, withscores=True)
                depth, oldest = await pipe.execute()
        return OutboxStats(depth=int(depth), oldest=_from_micros(oldest[0][1]) if oldest else None)

    async def get_cursor(self, name: str) -> int:
        """A consumer's saved position (0 when new)."""
        with _translated("reading a cursor"):
            raw = await _reply(self._client().hget(self._k.cursors, name))
        return 0 if raw is None else int(raw)

    async def set_cursor(self, name: str, value: int) -> None:
        """Save a consumer's position."""
        with _translated("saving a cursor"):
            await _reply(self._client().hset(self._k.cursors, name, str(value)))

    # -- trading engine --------------------------------------------------------------------

    async def engine_state(self) -> dict[str, Any]:
        """Every persisted engine setting by key."""
        with _translated("reading engine state"):
            rows = await _reply(self._client().hgetall(self._k.engine))
        return {_text(key): json.loads(raw)["value"] for key, raw in rows.items()}

    async def put_engine_state(self, key: str, value: Any, audit: AuditRecord) -> AuditEntry:
        """Set one engine setting and audit it in one transaction."""

        async def body(tx: _Tx) -> AuditEntry:
            entry = await self._append_audit(tx, audit)
            doc = _dump({"value": value, "updated_at": _ts(utcnow())})
            tx.hset(self._k.engine, key, doc)
            return entry

        return await self._transaction("saving engine state", body)

    async def save_order(self, order: OrderRecord, holdings: Sequence[Holding] = ()) -> None:
        """Insert or update an order by client order id, with the positions its fill changed."""
        k, cid = self._k, order.client_order_id

        async def body(tx: _Tx) -> None:
            await tx.watch(k.orders)  # every order write changes it
            raw = await _reply(tx.pipe.hget(k.orders, cid))
            if raw is None:
                number = await tx.next_id(k.orders_seq)
                tx.zadd(k.orders_all, cid, number)
                tx.zadd(k.order_status(order.status), cid, number)
            else:
                old = OrderRecord.model_validate_json(raw)
                if old.status is not order.status:
                    number = int(await tx.pipe.zscore(k.orders_all, cid) or 0)
                    tx.zrem(k.order_status(old.status), cid)
                    tx.zadd(k.order_status(order.status), cid, number)
            tx.hset(k.orders, cid, order.model_dump_json())
            for h in holdings:
                tx.hset(k.holdings, _dump([h.core, h.symbol]), h.model_dump_json())

        await self._transaction(f"saving order {cid}", body)

    async def holdings(self) -> list[Holding]:
        """Every booked position by core and symbol."""
        with _translated("reading positions"):
            values = await _reply(self._client().hvals(self._k.holdings))
        found = [Holding.model_validate_json(v) for v in values]
        return sorted(found, key=lambda h: (h.core, h.symbol))

    async def save_holdings(self, holdings: Sequence[Holding]) -> None:
        """Insert or replace positions by core and symbol (idempotent: one HSET)."""
        if not holdings:
            return
        mapping = {_dump([h.core, h.symbol]): h.model_dump_json() for h in holdings}
        with _translated("saving positions"):
            await _reply(self._client().hset(self._k.holdings, mapping=mapping))

    async def venue_account(self, venue: str) -> VenueAccount | None:
        """A paper venue's saved account."""
        with _translated("reading a paper account"):
            raw = await _reply(self._client().hget(self._k.venues, venue))
        return None if raw is None else VenueAccount.model_validate_json(raw)

    async def save_venue_account(self, account: VenueAccount) -> None:
        """Save a paper venue's account."""
        with _translated("saving a paper account"):
            await _reply(
                self._client().hset(self._k.venues, account.venue, account.model_dump_json())
            )

    async def list_orders(
        self,
        *,
        limit: int = 100,
        statuses: Sequence[OrderStatus] | None = None,
        core: str | None = None,
    ) -> list[OrderRecord]:
        """Orders newest first, optionally by status and core."""
        if limit <= 0:
            return []

        def accept(raw: bytes) -> OrderRecord | None:
            order = OrderRecord.model_validate_json(raw)
            return order if core is None or order.core == core else None

        indexes = (
            [self._k.order_status(s) for s in set(statuses)] if statuses else [self._k.orders_all]
        )
        return await self._newest(indexes, self._k.orders, accept, limit)

    async def add_pnl_points(self, points: Sequence[PnlPoint]) -> None:
        """Append PnL points; the same core and time replaces the earlier point."""
        if not points:
            return
        redis = self._client()
        with _translated("saving PnL points"):
            # Idempotent writes: safe to send again if the connection drops.
            async with redis.pipeline(transaction=True) as pipe:
                for p in points:
                    member = _dump([p.core, _ts(p.ts)])
                    pipe.hset(self._k.pnl, member, _dump([p.realized, p.unrealized]))
                    pipe.zadd(self._k.pnl_ts, {member: _micros(p.ts)})
                await pipe.execute()

    async def pnl_points(self, *, since: datetime, core: str | None = None) -> list[PnlPoint]:
        """PnL points at or after ``since``, oldest first."""
        redis = self._client()
        with _translated("reading PnL points"):
            members = await redis.zrangebyscore(self._k.pnl_ts, _micros(since), "+inf")
            values = await _reply(redis.hmget(self._k.pnl, members)) if members else []
        found: list[PnlPoint] = []
        for member, raw in zip(members, values, strict=True):
            point_core, ts = json.loads(member)
            if raw is None or (core is not None and point_core != core):
                continue
            realized, unrealized = json.loads(raw)
            found.append(
                PnlPoint(
                    core=point_core,
                    ts=datetime.fromisoformat(ts),
                    realized=realized,
                    unrealized=unrealized,
                )
            )
        found.sort(key=lambda p: (p.ts, p.core))
        return found

    async def pnl_baseline(self, at: datetime, cores: Sequence[str]) -> list[PnlPoint]:
        """Each core's latest PnL point at or before ``at``: the time index read backwards a
        page at a time until every core has one (all cores snapshot together, so the first
        page usually holds them all)."""
        wanted, found = set(cores), dict[str, PnlPoint]()
        redis = self._client()
        offset = 0
        with _translated("reading PnL points"):
            while wanted - found.keys():
                members = await redis.zrevrangebyscore(
                    self._k.pnl_ts, _micros(at), "-inf", start=offset, num=_PAGE
                )
                if not members:
                    break
                offset += len(members)
                picked = {}
                for member in members:
                    point_core, ts = json.loads(member)
                    if (
                        point_core in wanted
                        and point_core not in found
                        and point_core not in picked
                    ):
                        picked[point_core] = (member, ts)
                if not picked:
                    continue
                values = await _reply(redis.hmget(self._k.pnl, [m for m, _ in picked.values()]))
                for (point_core, (_, ts)), raw in zip(picked.items(), values, strict=True):
                    if raw is not None:
                        realized, unrealized = json.loads(raw)
                        found[point_core] = PnlPoint(
                            core=point_core,
                            ts=datetime.fromisoformat(ts),
                            realized=realized,
                            unrealized=unrealized,
                        )
        return [found[c] for c in cores if c in found]

    async def prune_pnl_points(self, before: datetime) -> int:
        """Delete PnL points older than ``before``."""

        async def body(tx: _Tx) -> int:
            await tx.watch(self._k.pnl_ts)
            members = await tx.pipe.zrangebyscore(self._k.pnl_ts, "-inf", f"({_micros(before)}")
            if members:
                tx.zrem(self._k.pnl_ts, *members)
                tx.hdel(self._k.pnl, *members)
            return len(members)

        return await self._transaction("pruning PnL points", body)

    # -- backups ---------------------------------------------------------------------------

    def _count_args(self) -> list[str]:
        return [part for triple in _COUNTED for part in triple]

    @staticmethod
    def _counts(flat: Sequence[Any]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in range(0, len(flat), 2):
            kind = _text(flat[i])
            counts[kind] = counts.get(kind, 0) + int(flat[i + 1])
        return counts

    async def _read_all(
        self, redis: Redis, *, dumps: bool
    ) -> tuple[int, dict[str, int], list[Any]]:
        """Schema version, counts and (with ``dumps``) every key's DUMP, in one atomic step."""
        with _translated("reading a consistent copy"):
            version, flat, payloads = await redis.eval(  # type: ignore[misc]
                _READ_ALL_LUA,
                0,
                self._k.root,
                "1" if dumps else "0",
                self._k.pattern,
                *self._count_args(),
            )
        return int(version or 0), self._counts(flat), list(payloads)

    async def snapshot(self, dest_dir: Path) -> StoreSnapshot:
        """Copy every key of the store in one atomic Lua step (writers carry on right after)
        into ``dest_dir/redis.jsonl`` (mode 0600): a header line, then one line per key with
        its ``DUMP`` payload in base64."""
        async with self._bulk_client() as redis:
            # The DUMPs and the portable copy's reads in one MULTI: the same moment.
            with _translated("reading a consistent copy"):
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.eval(
                        _READ_ALL_LUA, 0, self._k.root, "1", self._k.pattern, *self._count_args()
                    )
                    self._queue_portable_reads(pipe)
                    replies = await pipe.execute()
        raw_version, flat, payloads = replies[0]
        version, counts = int(raw_version or 0), self._counts(flat)
        portable = self._portable_from(replies[1:])
        lines = [
            _dump(
                {
                    "format": SNAPSHOT_FORMAT,
                    "schema_version": version,
                    "keys": len(payloads) // 2,
                    "counts": counts,
                }
            )
        ]
        for i in range(0, len(payloads), 2):
            key = self._k.relative(_text(payloads[i]))
            lines.append(_dump({"key": key, "dump": base64.b64encode(payloads[i + 1]).decode()}))
        data = ("\n".join(lines) + "\n").encode()
        await asyncio.to_thread(_write_private, dest_dir / SNAPSHOT_FILE, data)
        await asyncio.to_thread(write_portable, dest_dir / PORTABLE_FILE, portable)
        return StoreSnapshot(
            kind="redis",
            schema_version=version,
            files=[SNAPSHOT_FILE, PORTABLE_FILE],
            counts=counts,
        )

    async def restore(self, source_dir: Path) -> dict[str, int]:
        """Load the snapshot's keys under a private staging prefix (RESTORE checks each
        payload's checksum), then swap them in for the live keys in one atomic Lua step, so
        readers see the old state or the new one. Writers of this process wait for the swap;
        other processes' transactions in flight fail their WATCH and retry on the new state."""
        source = source_dir / SNAPSHOT_FILE
        if not source.is_file():
            raise StoreError(f"snapshot file {SNAPSHOT_FILE} is missing from {source_dir}")
        version, keys = await asyncio.to_thread(_read_snapshot, source)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"snapshot is at schema {version}, newer than this release "
                f"({len(MIGRATIONS)}); restore it with a newer control plane"
            )
        staging = f"{self.prefix}:restore:{secrets.token_hex(8)}"
        async with self._bulk_client() as redis:
            try:
                with _translated(f"restoring {SNAPSHOT_FILE}"):
                    flat = await self._stage_and_swap(redis, staging, keys)
            except StoreUnavailable:
                raise
            except StoreError as exc:
                raise StoreError(f"restore from {SNAPSHOT_FILE} failed: {exc}") from exc
            finally:  # after a swap nothing is left here; after a failure, the staged keys
                with contextlib.suppress(RedisError):
                    await _delete_matching(redis, _glob_escape(staging) + ":*")
        counts = self._counts(flat)
        await self._migrate()  # an older snapshot is brought up to this release's schema
        return counts

    async def export_portable(self) -> PortableState:
        """All durable state as a store-neutral copy, read in one MULTI (one consistent step)."""
        async with self._bulk_client() as redis:
            with _translated("reading a portable copy"):
                async with redis.pipeline(transaction=True) as pipe:
                    self._queue_portable_reads(pipe)
                    replies = await pipe.execute()
        return self._portable_from(replies)

    def _queue_portable_reads(self, pipe: Any) -> None:
        """Queue the reads ``_portable_from`` turns into rows (fixed keys: indexes are rebuilt
        from the records they index)."""
        k = self._k
        pipe.xrange(k.audit)
        pipe.get(k.audit_head)
        for key in (k.flags, k.flag_versions, k.engine, k.kv, k.cursors, k.incidents):
            pipe.hgetall(key)
        pipe.hgetall(k.alerts)
        pipe.hgetall(k.dedup)
        pipe.xrange(k.events)
        pipe.xrange(k.outbox)
        pipe.hgetall(k.outbox_state)
        pipe.hgetall(k.outbox_payload)
        pipe.hgetall(k.orders)
        pipe.zrange(k.orders_all, 0, -1, withscores=True)
        pipe.hgetall(k.pnl)
        pipe.hgetall(k.holdings)
        pipe.hgetall(k.venues)

    @staticmethod
    def _portable_from(replies: Sequence[Any]) -> PortableState:
        (audit, head, flags, versions, engine, kv, cursors, incidents, alerts, dedup, events,
         outbox, outbox_state, payloads, orders, order_numbers, pnl, holdings,
         venues) = replies  # fmt: skip
        tables: dict[str, list[dict[str, Any]]] = {t: [] for t in PORTABLE_TABLES}
        for entry_id, fields in audit:
            doc = json.loads(fields[_ENTRY.encode()])
            tables["audit"].append(
                {
                    **{c: doc[c] for c in ("ts", "action", "target", "outcome", "detail")},
                    **{c: doc[c] for c in ("prev_hash", "hash")},
                    "seq": _stream_seq(entry_id),
                    "actor": _dump(doc["actor"]),
                    "before": _dump(doc["before"]),
                    "after": _dump(doc["after"]),
                }
            )
        tables.update(_trading_rows(holdings, venues))
        if head is not None:
            tables["meta"].append({"key": AUDIT_HEAD, "value": _text(head)})
        tables["meta"] += [{"key": KV_PREFIX + _text(n), "value": _text(v)} for n, v in kv.items()]
        for name, raw in flags.items():
            doc = json.loads(raw)
            tables["flag_overrides"].append(
                {
                    "name": _text(name),
                    "value": _dump(doc["value"]),
                    "set_by": _dump(doc["set_by"]),
                    "set_at": doc["set_at"],
                }
            )
        for name, raw in versions.items():
            doc = json.loads(raw)
            tables["flag_versions"].append(
                {
                    "name": _text(name),
                    "version": int(doc["version"]),
                    "changed_by": _dump(doc["changed_by"]),
                    "changed_at": doc["changed_at"],
                }
            )
        for key, raw in engine.items():
            doc = json.loads(raw)
            tables["engine_state"].append(
                {"key": _text(key), "value": _dump(doc["value"]), "updated_at": doc["updated_at"]}
            )
        tables["cursors"] = [{"name": _text(n), "value": int(v)} for n, v in cursors.items()]
        for raw in incidents.values():
            incident = Incident.model_validate_json(raw)
            tables["incidents"].append(
                {
                    "id": incident.id,
                    "key": incident.key,
                    "state": incident.state.value,
                    "severity": incident.severity.value,
                    "deadline": None if incident.deadline is None else _ts(incident.deadline),
                    "resolved_at": None
                    if incident.resolved_at is None
                    else _ts(incident.resolved_at),
                    "updated_at": _ts(incident.last_seen),
                    "doc": _text(raw),
                }
            )
        dedup_of = {int(alert_id): _text(key) for key, alert_id in dedup.items()}
        for alert_id, raw in alerts.items():
            doc = json.loads(raw)
            tables["alerts"].append(
                {
                    "id": int(alert_id),
                    "dedup": dedup_of[int(alert_id)],
                    "incident_id": doc["incident_id"],
                    "received_at": doc["received_at"],
                    "doc": _dump(doc["alert"]),
                }
            )
        for entry_id, fields in events:
            doc = json.loads(fields[_ENTRY.encode()])
            ts = _ts(datetime.fromisoformat(doc.pop("ts")))
            doc.pop("seq", None)
            tables["incident_events"].append(
                {
                    "seq": _stream_seq(entry_id),
                    "incident_id": doc["incident"]["id"],
                    "ts": ts,
                    "kind": doc["kind"],
                    "doc": _dump(doc),
                }
            )
        for entry_id, fields in outbox:
            item_id = _stream_seq(entry_id)
            state = json.loads(outbox_state[str(item_id).encode()])
            payload = payloads.get(str(item_id).encode(), fields.get(b"payload"))
            tables["outbox"].append(
                {
                    "id": item_id,
                    "channel": _text(fields[b"channel"]),
                    "key": _text(fields[b"key"]),
                    "payload": "{}" if state["status"] != "pending" else _text(payload or b"{}"),
                    "created_at": _text(fields[b"created_at"]),
                    "next_at": state["next_at"],
                    "attempts": state["attempts"],
                    "status": state["status"],
                    "last_error": state["last_error"],
                    "sensitive": int(bool(state.get("sensitive"))),
                    "finished_at": state.get("finished_at"),
                }
            )
        numbers = {_text(cid): int(score) for cid, score in order_numbers}
        for cid, raw in orders.items():
            order = OrderRecord.model_validate_json(raw)
            tables["orders"].append(
                {
                    "id": numbers[_text(cid)],
                    "client_order_id": order.client_order_id,
                    "core": order.core,
                    "venue": order.venue,
                    "status": order.status.value,
                    "created_at": _ts(order.created_at),
                    "doc": _text(raw),
                }
            )
        for member, raw in pnl.items():
            core, ts = json.loads(member)
            realized, unrealized = json.loads(raw)
            tables["pnl_points"].append(
                {"core": core, "ts": ts, "realized": realized, "unrealized": unrealized}
            )
        return PortableState(source="redis", tables=tables)

    async def load_portable(self, state: PortableState) -> dict[str, int]:
        """Replace all state with a portable copy (from any kind of store): its keys and every
        index are built under a private staging prefix, then swapped in for the live keys in
        one atomic step, as ``restore`` does."""
        problems = state.problems()
        if problems:
            raise StoreError("portable copy cannot be loaded: " + "; ".join(problems))
        staging = f"{self.prefix}:restore:{secrets.token_hex(8)}"
        staged = _StagedKeys(_Keys(staging))
        _stage_portable(staged, state)
        async with self._bulk_client() as redis:
            try:
                with _translated("loading a portable copy"):
                    for start in range(0, len(staged.commands), _PAGE):
                        async with redis.pipeline(transaction=False) as pipe:
                            for command in staged.commands[start : start + _PAGE]:
                                pipe.execute_command(*command)
                            await pipe.execute()
                    async with self._write_lock:
                        flat = await redis.eval(  # type: ignore[misc]
                            _SWAP_LUA,
                            0,
                            self._k.root,
                            self._k.pattern,
                            staging,
                            str(len(staged.names)),
                            *sorted(staged.names),
                            *self._count_args(),
                        )
            finally:
                with contextlib.suppress(RedisError):
                    await _delete_matching(redis, _glob_escape(staging) + ":*")
        await self._migrate()
        return self._counts(list(flat))

    async def _stage_and_swap(
        self, redis: Redis, staging: str, keys: Sequence[tuple[str, bytes]]
    ) -> list[Any]:
        for start in range(0, len(keys), _PAGE):
            async with redis.pipeline(transaction=False) as pipe:
                for relative, payload in keys[start : start + _PAGE]:
                    pipe.restore(f"{staging}:{relative}", 0, payload, replace=True)
                await pipe.execute()
        async with self._write_lock:  # this process's writers wait for the swap
            flat = await redis.eval(  # type: ignore[misc]
                _SWAP_LUA,
                0,
                self._k.root,
                self._k.pattern,
                staging,
                str(len(keys)),
                *(relative for relative, _ in keys),
                *self._count_args(),
            )
        return list(flat)

    async def counts(self) -> dict[str, int]:
        """Records per kind of state (named like the SQLite store's tables)."""
        _, counts, _ = await self._read_all(self._client(), dumps=False)
        return counts

    async def integrity_problems(self) -> list[str]:
        """Broken invariants of the layout: unknown or mistyped keys, a head that does not
        match the audit stream, indexes whose sizes disagree with what they index."""
        redis = self._client()
        with _translated("checking integrity"):
            problems = await self._key_type_problems(redis)
            if problems:
                return problems
            k = self._k
            async with redis.pipeline(transaction=True) as pipe:
                pipe.get(k.schema)
                pipe.get(k.audit_head)
                pipe.xrevrange(k.audit, count=1)
                pipe.get(k.events_seq)
                pipe.xrevrange(k.events, count=1)
                for key in (k.alerts, k.dedup, k.incidents, k.orders, k.pnl, k.outbox_state):
                    pipe.hlen(key)
                for key in (k.incidents_all, k.orders_all, k.pnl_ts):
                    pipe.zcard(key)
                pipe.xlen(k.outbox)
                pipe.get(k.outbox_seq)
                pipe.xrevrange(k.outbox, count=1)
                pipe.hlen(k.open)
                for key in map(k.open_severity, Severity):
                    pipe.zcard(key)
                results = await pipe.execute()
        schema, head, last, events_seq, last_event = results[:5]
        alerts, dedup, incidents, orders, pnl, outbox_states = map(int, results[5:11])
        incidents_all, orders_all, pnl_ts, outbox = map(int, results[11:15])
        outbox_seq, last_message, open_incidents = results[15:18]
        open_by_severity = sum(map(int, results[18:]))
        if schema is None or not _text(schema).isdigit():
            problems.append("schema: the version is missing")
        problems += _audit_head_problems(head, last)
        if last_event and _stream_seq(last_event[0][0]) != int(events_seq or 0):
            problems.append("events:seq: does not match the newest event")
        # Delivered messages are pruned, the newest included once all are old: not above.
        if last_message and _stream_seq(last_message[0][0]) > int(outbox_seq or 0):
            problems.append("outbox:seq: is behind the newest outbox message")
        for what, have, want in (
            ("alerts:dedup", dedup, alerts),
            ("incidents:all", incidents_all, incidents),
            ("orders:all", orders_all, orders),
            ("pnl:ts", pnl_ts, pnl),
            ("outbox:state", outbox_states, outbox),
            ("incidents:open:{severity}", open_by_severity, int(open_incidents)),
        ):
            if have != want:
                problems.append(f"{what}: indexes {have} records, there are {want}")
        return problems

    async def _key_type_problems(self, redis: Redis) -> list[str]:
        """Keys under the store's root that are not of its layout, or not of their type."""
        problems: list[str] = []
        async for raw_key in redis.scan_iter(match=self._k.pattern, count=1000):
            relative = self._k.relative(_text(raw_key))
            expected = _expected_type(relative)
            found = _text(await redis.type(raw_key))
            if expected is None:
                problems.append(f"{relative}: not a key of this store")
            elif found not in (expected, "none"):
                problems.append(f"{relative}: a {found}, should be a {expected}")
        return problems

    def trial_store(self, workdir: Path) -> Store:
        """An empty store on the same Redis server but in a scratch database number
        (``VERIFY_DB``), under a scratch prefix of its own (``workdir`` is not needed), so a
        trial restore never writes to the production keyspace; closing it deletes its keys."""
        scratch = f"{self.prefix}:trial:{secrets.token_hex(6)}"
        return RedisStore(scratch_db_url(self._url), prefix=scratch, scratch=True)

    # -- security state --------------------------------------------------------------------
    # Short-lived keys beside the store's root (``{prefix}:security:*``), like the bus and the
    # leases: snapshots, restores and the integrity check leave them alone, and each carries a
    # TTL so nothing outlives its use.

    async def hit_rate_limit(
        self, key: str, *, limit: int, window: timedelta, now: datetime
    ) -> RateLimitHit:
        """A sliding log per key (a sorted set of hit times) checked and appended by one Lua
        script, so concurrent replicas never both take the last slot."""
        span = window // timedelta(milliseconds=1)
        with _translated("counting a rate limit hit"):
            allowed, wait = await self._client().eval(  # type: ignore[misc]
                _RATE_LIMIT_LUA,
                1,
                f"{self.prefix}:security:rate:{key}",
                _micros(now) // 1000,
                span,
                limit,
                secrets.token_hex(6),
            )
        return RateLimitHit(allowed=bool(allowed), retry_after=int(wait) / 1000)

    async def put_restore_guard(self, guard: RestoreGuard | None) -> None:
        """``{prefix}:security:restore-guard``, beside the root so a restore's swap keeps it,
        dropped by Redis when the mark expires."""
        key = f"{self.prefix}:security:restore-guard"
        with _translated("marking a restore"):
            if guard is None:
                await _reply(self._client().delete(key))
            else:
                ttl = guard.expires_at - utcnow()
                await _reply(
                    self._client().set(
                        key, guard.model_dump_json(), px=max(1, ttl // timedelta(milliseconds=1))
                    )
                )

    async def restore_guard(self, now: datetime) -> RestoreGuard | None:
        """The mark, unless it expired."""
        with _translated("reading the restore mark"):
            raw = await _reply(self._client().get(f"{self.prefix}:security:restore-guard"))
        guard = None if raw is None else RestoreGuard.model_validate_json(raw)
        return guard if guard is not None and guard.expires_at > now else None

    # -- heartbeats ------------------------------------------------------------------------
    # One hash beside the root (``{prefix}:cluster:heartbeats``, field = instance), like the
    # leases: snapshots, restores and the integrity check leave it alone. Each field carries its
    # own expiry (readers skip and drop expired ones); the hash itself expires with the last beat.

    @property
    def _heartbeats_key(self) -> str:
        return f"{self.prefix}:cluster:heartbeats"

    async def put_heartbeat(self, beat: Heartbeat) -> None:
        """HSET the beat and push the hash's expiry past it, in one round trip."""
        ttl = max(1, (beat.expires_at - utcnow()) // timedelta(milliseconds=1))
        with _translated("saving a heartbeat"):
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.hset(self._heartbeats_key, beat.instance, beat.model_dump_json())
                pipe.pexpire(self._heartbeats_key, ttl, gt=True)
                pipe.pexpire(self._heartbeats_key, ttl, nx=True)
                await pipe.execute()

    async def heartbeats(self, now: datetime) -> list[Heartbeat]:
        """HGETALL; expired beats are left out (and deleted once expired by the clock)."""
        with _translated("reading heartbeats"):
            raw = await _reply(self._client().hgetall(self._heartbeats_key))
        live: list[Heartbeat] = []
        expired: list[str] = []
        clock = utcnow()
        for field, value in raw.items():
            beat = Heartbeat.model_validate_json(value)
            if beat.expires_at > now:
                live.append(beat)
            if beat.expires_at <= clock:  # gone for every reader: tidy it away
                expired.append(_text(field))
        if expired:
            with contextlib.suppress(RedisError):
                await _reply(self._client().hdel(self._heartbeats_key, *expired))
        return sorted(live, key=lambda b: (b.role, b.instance))

    async def drop_heartbeat(self, instance: str) -> None:
        """HDEL the process's field."""
        with _translated("dropping a heartbeat"):
            await _reply(self._client().hdel(self._heartbeats_key, instance))

    def _confirmation_key(self, token: str) -> str:
        return f"{self.prefix}:security:confirm:{token}"

    async def put_confirmation(self, confirmation: Confirmation) -> None:
        """Keep a pending confirmation under a key that Redis drops a little after expiry."""
        ttl = confirmation.expires_at - utcnow() + timedelta(seconds=60)
        with _translated("saving a confirmation"):
            await _reply(
                self._client().set(
                    self._confirmation_key(confirmation.token),
                    confirmation.model_dump_json(),
                    px=max(1, ttl // timedelta(milliseconds=1)),
                )
            )

    async def take_confirmation(self, token: str, owner: str, now: datetime) -> ConfirmationTake:
        """WATCH the key, read and check it, delete it in MULTI: a concurrent take anywhere
        fails the EXEC, retries and finds it gone."""
        key = self._confirmation_key(token)

        async def body(tx: _Tx) -> ConfirmationTake:
            await tx.watch(key)
            raw = await _reply(tx.pipe.get(key))
            if raw is None:
                return ConfirmationTake(outcome="missing")
            found = Confirmation.model_validate_json(raw)
            if found.owner != owner:
                return ConfirmationTake(outcome="not_owner")
            tx.send("DEL", key)
            if found.expires_at <= now:
                return ConfirmationTake(outcome="expired")
            return ConfirmationTake(outcome="taken", confirmation=found)

        return await self._transaction("taking a confirmation", body)


def _audit_head_problems(head: bytes | None, last: list[Any]) -> list[str]:
    if not last:
        return [] if head is None else ["audit:head: recorded, but the audit stream is empty"]
    if head is None:
        return ["audit:head: missing, but the audit stream has entries"]
    seq, digest = json.loads(head)
    entry_id, fields = last[0]
    if _stream_seq(entry_id) != int(seq) or json.loads(fields[_ENTRY.encode()])["hash"] != digest:
        return [f"audit:head: names entry {seq}, the stream ends at {_stream_seq(entry_id)}"]
    return []


async def _delete_matching(redis: Redis, pattern: str) -> None:
    batch: list[Any] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= _PAGE:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file of mode 0600 and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _read_snapshot(path: Path) -> tuple[int, list[tuple[str, bytes]]]:
    """The schema version and (relative key, DUMP payload) pairs of a snapshot file."""
    lines = path.read_bytes().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            raise StoreError(f"{path.name}: not a {SNAPSHOT_FORMAT} file")
        keys: list[tuple[str, bytes]] = []
        for number, line in enumerate(lines[1:], start=2):
            doc = json.loads(line)
            relative = str(doc["key"])
            if not relative or relative.startswith(":"):
                raise StoreError(f"{path.name} line {number}: bad key {relative!r}")
            keys.append((relative, base64.b64decode(doc["dump"], validate=True)))
        if len(keys) != header.get("keys"):
            raise StoreError(
                f"{path.name}: the header lists {header.get('keys')} keys, the file has {len(keys)}"
            )
        return int(header["schema_version"]), keys
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise StoreError(f"{path.name} is damaged: {type(exc).__name__}: {exc}") from exc


class _StagedKeys:
    """Commands that build a store's keys under a staging root, and the keys they create."""

    def __init__(self, keys: _Keys) -> None:
        self.k = keys
        self.commands: list[tuple[Any, ...]] = []
        self.names: set[str] = set()

    def send(self, command: str, key: str, *args: Any) -> None:
        self.commands.append((command, key, *args))
        self.names.add(self.k.relative(key))


def _stage_portable(staged: _StagedKeys, state: PortableState) -> None:
    """Queue the keys and indexes of the layout in the module docstring for ``state``."""
    k, send = staged.k, staged.send
    send("SET", k.schema, len(MIGRATIONS))
    for row in sorted(state.rows("audit"), key=lambda r: int(r["seq"])):
        doc = {
            **{c: row[c] for c in ("ts", "action", "target", "outcome", "detail")},
            **{c: row[c] for c in ("prev_hash", "hash")},
            "actor": json.loads(row["actor"]),
            "before": None if row["before"] is None else json.loads(row["before"]),
            "after": None if row["after"] is None else json.loads(row["after"]),
        }
        send("XADD", k.audit, f"{row['seq']}-0", _ENTRY, _dump(doc))
    for row in state.rows("meta"):
        if row["key"] == AUDIT_HEAD:
            send("SET", k.audit_head, row["value"])
        elif row["key"].startswith(KV_PREFIX):
            send("HSET", k.kv, row["key"].removeprefix(KV_PREFIX), row["value"])
    for row in state.rows("flag_overrides"):
        doc = {"value": json.loads(row["value"]), "set_by": json.loads(row["set_by"])}
        send("HSET", k.flags, row["name"], _dump({**doc, "set_at": row["set_at"]}))
    for row in state.rows("flag_versions"):
        doc = {"version": row["version"], "changed_by": json.loads(row["changed_by"])}
        send("HSET", k.flag_versions, row["name"], _dump({**doc, "changed_at": row["changed_at"]}))
    for row in state.rows("engine_state"):
        doc = {"value": json.loads(row["value"]), "updated_at": row["updated_at"]}
        send("HSET", k.engine, row["key"], _dump(doc))
    for row in state.rows("cursors"):
        send("HSET", k.cursors, row["name"], int(row["value"]))
    _stage_incidents(staged, state)
    _stage_outbox(staged, state)
    orders = sorted(state.rows("orders"), key=lambda r: int(r["id"]))
    for row in orders:
        cid, number = row["client_order_id"], int(row["id"])
        send("HSET", k.orders, cid, row["doc"])
        send("ZADD", k.orders_all, number, cid)
        send("ZADD", k.order_status(OrderStatus(row["status"])), number, cid)
    if orders:
        send("SET", k.orders_seq, int(orders[-1]["id"]))
    _stage_trading(staged, state)
    for row in state.rows("pnl_points"):
        member = _dump([row["core"], row["ts"]])
        send("HSET", k.pnl, member, _dump([row["realized"], row["unrealized"]]))
        send("ZADD", k.pnl_ts, _micros(datetime.fromisoformat(row["ts"])), member)


def _trading_rows(
    holdings: dict[Any, Any], venues: dict[Any, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Positions and paper accounts (``holdings``, ``venues`` hashes) as portable rows."""
    positions = []
    for position, raw in holdings.items():
        core, symbol = json.loads(position)
        positions.append({"core": core, "symbol": symbol, "doc": _text(raw)})
    accounts = [{"venue": _text(venue), "doc": _text(raw)} for venue, raw in venues.items()]
    return {"holdings": positions, "venue_accounts": accounts}


def _stage_trading(staged: _StagedKeys, state: PortableState) -> None:
    """Positions and paper accounts back into their hashes."""
    k, send = staged.k, staged.send
    for row in state.rows("holdings"):
        send("HSET", k.holdings, _dump([row["core"], row["symbol"]]), row["doc"])
    for row in state.rows("venue_accounts"):
        send("HSET", k.venues, row["venue"], row["doc"])


def _stage_incidents(staged: _StagedKeys, state: PortableState) -> None:
    """Incidents, their alerts and events, with every index the store reads by."""
    k, send = staged.k, staged.send
    latest: dict[str, int] = {}
    top = 0
    for row in state.rows("incidents"):
        incident = Incident.model_validate_json(row["doc"])
        iid = incident.id
        top = max(top, iid)
        send("HSET", k.incidents, iid, row["doc"])
        send("ZADD", k.incidents_all, iid, iid)
        send("ZADD", k.state(incident.state), iid, iid)
        if incident.is_open:
            send("ZADD", k.open_severity(incident.severity), iid, iid)
            send("HSET", k.open, incident.key, iid)
        if incident.deadline is not None:
            send("ZADD", k.deadlines, _micros(incident.deadline), iid)
        latest[incident.key] = max(latest.get(incident.key, 0), iid)
    for key, iid in latest.items():
        send("HSET", k.latest, key, iid)
    if top:
        send("SET", k.incidents_seq, top)
    top = 0
    for row in state.rows("alerts"):
        alert_id = int(row["id"])
        top = max(top, alert_id)
        doc = {
            "incident_id": row["incident_id"],
            "received_at": row["received_at"],
            "alert": json.loads(row["doc"]),
        }
        send("HSET", k.alerts, alert_id, _dump(doc))
        send("HSET", k.dedup, row["dedup"], alert_id)
        if row["incident_id"] is not None:
            send("ZADD", k.incident_alerts(int(row["incident_id"])), alert_id, alert_id)
    if top:
        send("SET", k.alerts_seq, top)
    events = sorted(state.rows("incident_events"), key=lambda r: int(r["seq"]))
    for row in events:
        seq = int(row["seq"])
        doc = {**json.loads(row["doc"]), "seq": seq, "ts": row["ts"]}
        send("XADD", k.events, f"{seq}-0", _ENTRY, _dump(doc))
        send("ZADD", k.incident_events(int(row["incident_id"])), seq, seq)
    if events:
        send("SET", k.events_seq, int(events[-1]["seq"]))


def _stage_outbox(staged: _StagedKeys, state: PortableState) -> None:
    """Outbox messages; the pending ones queued per key, each key's head due at its time."""
    k, send = staged.k, staged.send
    heads: dict[tuple[str, str], dict[str, Any]] = {}
    rows = sorted(state.rows("outbox"), key=lambda r: int(r["id"]))
    for row in rows:
        item_id, channel, key = int(row["id"]), row["channel"], row["key"]
        send("XADD", k.outbox, f"{item_id}-0", "channel", channel, "key", key,
             "created_at", row["created_at"])  # fmt: skip
        doc: dict[str, Any] = {c: row[c] for c in ("next_at", "attempts", "status", "last_error")}
        if row["sensitive"]:
            doc["sensitive"] = True
        if row["finished_at"] is not None:
            doc["finished_at"] = row["finished_at"]
        send("HSET", k.outbox_state, item_id, _dump(doc))
        if row["status"] != "pending":
            continue
        send("HSET", k.outbox_payload, item_id, row["payload"])
        send("ZADD", k.queue(channel, key), item_id, item_id)
        created = _micros(datetime.fromisoformat(row["created_at"]))
        send("ZADD", k.pending(channel), created, item_id)
        heads.setdefault((channel, key), row)
    for (channel, _), head in heads.items():
        due = _micros(datetime.fromisoformat(head["next_at"]))
        send("ZADD", k.due(channel), due, int(head["id"]))
    if rows:
        send("SET", k.outbox_seq, int(rows[-1]["id"]))
