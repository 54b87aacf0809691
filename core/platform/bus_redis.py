"""The event bus on Redis Streams: an event published in one process reaches subscribers in all.

Layout in Redis (``prefix`` defaults to ``lunia``)::

    {prefix}:events            the stream; field ``event`` holds the IncidentEvent as JSON.
                               XADD trims approximately to ``maxlen`` entries (default 100 000),
                               so the stream stays bounded even when a group stops reading.
    {prefix}:events:dead       dead letters (trimmed to ``dead_maxlen``): entries a group gave up
                               on, with ``group``, ``id``, ``deliveries``, ``error`` and ``event``.
    group {name}               a shared subscriber: each event is handled once across every
                               process subscribed under that name (e.g. one notifier replica).
    group {name}@{consumer}    a broadcast subscriber (``broadcast=True``): a group of one per
                               process, so every process handles every event. Destroyed on close;
                               pruned by any other bus once its owner's heartbeat has expired.
    consumer {host}:{pid}:{hex}  one per bus object, never reused.
    {prefix}:bus:alive:{consumer}  the bus's heartbeat, refreshed every third of
                               ``broadcast_expiry`` (default 600 s) and expiring after it. (Redis
                               does not refresh a consumer's idle time on a read that finds
                               nothing, so XINFO CONSUMERS cannot tell a quiet process from a dead
                               one.)

A new group starts at the end of the stream: like ``InProcessBus``, a subscriber gets the events
published after it subscribed (the incident event log is the replay path).

Delivery is at least once. An entry is acknowledged (XACK) only after its handler returned. A
handler that raises leaves the entry pending; the same consumer retries it once it has rested
``retry_delay``. The ``max_deliveries``-th failure (default 5) moves it to the dead-letter stream
and acknowledges it, with an error log, so one poison event cannot stall a group. Entries pending
on a consumer idle for ``claim_idle`` (default 30 s; a process that died mid-handler) are taken
over by a live consumer with XAUTOCLAIM; ``claim_idle`` must therefore exceed the longest handler
run. Retried and reclaimed entries may arrive out of order and more than once.

Redis going away never ends a delivery task: every loop backs off (exponentially, capped at
``max_backoff``) and reconnects. A group that vanished (Redis restarted without persistence) is
recreated at the last entry this process read, so events published after the restart are
delivered. ``publish`` never fails for an unreachable Redis: the event is spooled in memory
(bounded by ``spool_limit``, oldest dropped first) and sent in order once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import StoreError
from core.models.incidents import IncidentEvent
from core.platform.bus import Handler
from core.platform.metrics import Metrics
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# What "Redis is unreachable for now" looks like; anything else from Redis is a real refusal.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_BROADCAST_SEP = "@"
_FIELD = b"event"


def consumer_name() -> str:
    """A consumer name unique to this process and bus: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GroupStats(BaseModel):
    """How far one consumer group is behind (XINFO GROUPS)."""

    group: str
    consumers: int
    pending: int
    lag: int | None  # None when Redis cannot tell (entries trimmed or deleted unread)
    last_delivered_id: str


class _Backoff:
    """Exponential, jittered, capped waits between reconnect attempts."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        delay = min(self._cap, self._initial * 2**self.failures)
        self.failures += 1
        await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto


@dataclass
class _Subscriber:
    """One subscription: its group, handler and where this process got to in the stream."""

    name: str
    group: str
    handler: Handler
    broadcast: bool
    cursor: str | None = None  # last entry id read with ">"; None until the group is joined
    joined: bool = False
    handling: bool = False
    next_retry: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class RedisStreamsBus:
    """A bus shared by processes: one Redis stream, one consumer group per subscriber name."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lunia",
        consumer: str | None = None,
        maxlen: int = 100_000,
        dead_maxlen: int = 10_000,
        batch: int = 16,
        block: float = 1.0,
        retry_delay: float = 1.0,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        broadcast_expiry: float = 600.0,
        spool_limit: int = 10_000,
        max_backoff: float = 5.0,
        drain_timeout: float = 5.0,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.stream = f"{prefix}:events"
        self.dead_stream = f"{prefix}:events:dead"
        self.consumer = consumer or consumer_name()
        self._prefix = prefix
        self._maxlen = maxlen
        self._dead_maxlen = dead_maxlen
        self._batch = batch
        self._block_ms = max(1, int(block * 1000))
        self._retry_delay = retry_delay
        self._claim_idle = claim_idle
        self._max_deliveries = max_deliveries
        self._broadcast_expiry = broadcast_expiry
        self._max_backoff = max_backoff
        self._drain_timeout = drain_timeout
        # One retry hides a pooled connection that died with a Redis restart; the loops here
        # handle longer outages. Reads block for ``block``, so the socket waits longer than that.
        self._redis = Redis.from_url(
            url,
            socket_timeout=block + 5.0,
            socket_connect_timeout=5.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        self._subscribers: dict[str, _Subscriber] = {}
        self._spool: deque[str] = deque(maxlen=spool_limit)
        self._spool_dropped = 0
        self._spool_wakeup = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._started = False
        self._closing = False
        self._closed = False

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, event: IncidentEvent) -> None:
        """Append ``event`` to the stream (or spool it while Redis is unreachable)."""
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[IncidentEvent]) -> None:
        """Append ``events`` to the stream in order, all or none, in one round trip (or spool
        them while Redis is unreachable)."""
        if not events:
            return
        payloads = [event.model_dump_json() for event in events]
        seqs = f"{events[0].seq}" if len(events) == 1 else f"{events[0].seq}..{events[-1].seq}"
        if self._spool:  # keep order: behind what is already waiting
            for payload in payloads:
                self._spool_put(payload)
            return
        try:
            await self._append_many(payloads)
        except UNREACHABLE as e:
            logger.warning("bus: Redis unreachable (%s); spooling event %s", e, seqs)
            for payload in payloads:
                self._spool_put(payload)
        except RedisError as e:
            raise StoreError(f"the event bus refused event {seqs}: {e}") from e

    async def _append(self, payload: str) -> None:
        await self._redis.xadd(self.stream, {_FIELD: payload}, maxlen=self._maxlen)

    async def _append_many(self, payloads: Sequence[str]) -> None:
        """XADD each payload in one MULTI/EXEC: one round trip and, with ``appendfsync
        always``, one fsync for the batch instead of one per event."""
        if len(payloads) == 1:
            await self._append(payloads[0])
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for payload in payloads:
                pipe.xadd(self.stream, {_FIELD: payload}, maxlen=self._maxlen)
            await pipe.execute()

    def _spool_put(self, payload: str) -> None:
        if len(self._spool) == self._spool.maxlen:
            self._spool_dropped += 1
            logger.error(
                "bus: spool full; dropped the oldest event (%d so far)", self._spool_dropped
            )
        self._spool.append(payload)
        self._spool_wakeup.set()

    def spooled(self) -> int:
        """Events published while Redis was unreachable and not yet sent."""
        return len(self._spool)

    async def _flush_spool(self) -> None:
        backoff = _Backoff(0.05, self._max_backoff)
        while True:
            await self._spool_wakeup.wait()
            while self._spool:
                try:
                    await self._append(self._spool[0])
                except UNREACHABLE:
                    await backoff.wait()
                    continue
                except RedisError:
                    logger.exception("bus: Redis refused a spooled event; dropping it")
                self._spool.popleft()
                backoff.reset()
            self._spool_wakeup.clear()
            logger.info("bus: spool flushed")

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(self, name: str, handler: Handler, *, broadcast: bool = False) -> None:
        """Deliver later events to ``handler``: once per group, or in every process if broadcast."""
        if name in self._subscribers:
            raise ValueError(f"subscriber {name!r} already registered")
        if _BROADCAST_SEP in name:
            raise ValueError(f"subscriber name {name!r} must not contain {_BROADCAST_SEP!r}")
        group = f"{name}{_BROADCAST_SEP}{self.consumer}" if broadcast else name
        sub = _Subscriber(name=name, group=group, handler=handler, broadcast=broadcast)
        self._subscribers[name] = sub
        if self._started:
            sub.task = asyncio.create_task(self._consume(sub), name=f"bus-{name}")

    async def start(self) -> None:
        """Join every group (when Redis answers) and start one delivery task per subscriber."""
        self._started = True
        self._closing = False
        try:
            await self._heartbeat()  # before any broadcast group exists, so none looks orphaned
        except UNREACHABLE as e:
            logger.warning("bus: Redis unreachable at start (%s); delivery will retry", e)
        for sub in self._subscribers.values():
            try:
                await self._join(sub)
            except UNREACHABLE as e:
                logger.warning("bus: Redis unreachable at start (%s); %s will retry", e, sub.name)
            sub.task = asyncio.create_task(self._consume(sub), name=f"bus-{sub.name}")
        self._background = [
            asyncio.create_task(self._flush_spool(), name="bus-spool"),
            asyncio.create_task(self._housekeep(), name="bus-housekeeping"),
        ]
        if self._spool:
            self._spool_wakeup.set()

    async def _join(self, sub: _Subscriber) -> None:
        """Create the group (at the stream's end, or where we left off) and learn its position."""
        start = sub.cursor or "$"
        if sub.broadcast:
            await self._heartbeat()  # a group whose owner shows no heartbeat gets pruned
        try:
            await self._redis.xgroup_create(self.stream, sub.group, id=start, mkstream=True)
            if sub.cursor is not None:
                logger.warning("bus: group %s was gone; recreated at %s", sub.group, start)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        if sub.cursor is None:
            for info in await self._redis.xinfo_groups(self.stream):
                if _text(info["name"]) == sub.group:
                    sub.cursor = _text(info["last-delivered-id"])
        sub.joined = True

    async def _consume(self, sub: _Subscriber) -> None:
        """Read, handle and acknowledge entries for one subscriber until the bus closes."""
        loop = asyncio.get_running_loop()
        backoff = _Backoff(0.1, self._max_backoff)
        while not self._closing:
            try:
                if not sub.joined:
                    await self._join(sub)
                if loop.time() >= sub.next_retry:
                    await self._retry_pending(sub)
                    sub.next_retry = loop.time() + min(self._retry_delay, self._claim_idle / 2)
                await self._read_new(sub)
                if backoff.failures:
                    logger.info("bus: %s reconnected to Redis", sub.name)
                backoff.reset()
            except UNREACHABLE as e:
                if not backoff.failures:
                    logger.warning("bus: %s lost Redis (%s); reconnecting", sub.name, e)
                await backoff.wait()
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    sub.joined = False  # Redis lost the stream or group: rejoin where we were
                    continue
                logger.exception("bus: %s: Redis refused a command", sub.name)
                await backoff.wait()
            except Exception:
                logger.exception("bus: %s delivery loop failed; restarting it", sub.name)
                await backoff.wait()

    async def _read_new(self, sub: _Subscriber) -> None:
        reply = await self._redis.xreadgroup(
            sub.group, self.consumer, {self.stream: ">"}, count=self._batch, block=self._block_ms
        )
        for _, entries in reply or []:
            batch = [(entry_id, fields, 1) for entry_id, fields in entries]
            await self._handle_batch(sub, batch, advance=True)

    async def _handle_batch(
        self,
        sub: _Subscriber,
        batch: Sequence[tuple[bytes, dict[bytes, bytes] | None, int]],
        *,
        advance: bool = False,
    ) -> None:
        """Handle entries in order, then acknowledge the handled ones in one command (one round
        trip per batch, not per entry). The batch counts as handling until its acknowledgement
        is sent, so a closing bus waits for it rather than leave handled entries pending (they
        would be delivered again)."""
        if not batch:
            return
        sub.handling = True
        handled: list[bytes] = []
        try:
            for entry_id, fields, deliveries in batch:
                if advance:  # new entries: where to rejoin if Redis loses the group
                    sub.cursor = _text(entry_id)
                if await self._handle(sub, entry_id, fields, deliveries):
                    handled.append(entry_id)
        finally:
            try:
                if handled:
                    await self._redis.xack(self.stream, sub.group, *handled)
            finally:
                sub.handling = False

    async def _retry_pending(self, sub: _Subscriber) -> None:
        """Take over entries of dead consumers, and retry our own failures that have rested."""
        start: Any = "0-0"
        for _ in range(8):  # bounded per pass; the rest waits for the next pass
            start, claimed, _deleted = await self._redis.xautoclaim(
                self.stream,
                sub.group,
                self.consumer,
                int(self._claim_idle * 1000),
                start_id=start,
                count=self._batch,
            )
            if claimed:
                logger.warning("bus: %s took over %d stalled entries", sub.group, len(claimed))
                counts = await self._deliveries(sub, [entry_id for entry_id, _ in claimed])
                await self._handle_batch(
                    sub, [(i, fields, counts.get(i, 1)) for i, fields in claimed]
                )
            if _text(start) == "0-0":
                break
        rested = await self._redis.xpending_range(
            self.stream,
            sub.group,
            "-",
            "+",
            self._batch,
            consumername=self.consumer,
            idle=int(self._retry_delay * 1000),
        )
        if not rested:
            return
        counts = {p["message_id"]: p["times_delivered"] + 1 for p in rested}
        entries = await self._redis.xclaim(
            self.stream, sub.group, self.consumer, int(self._retry_delay * 1000), list(counts)
        )
        await self._handle_batch(sub, [(i, fields, counts.get(i, 1)) for i, fields in entries])

    async def _deliveries(self, sub: _Subscriber, ids: Sequence[bytes]) -> dict[bytes, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self.stream, sub.group, entry_id, entry_id, 1)
            replies = await pipe.execute()
        return {p["message_id"]: p["times_delivered"] for reply in replies for p in reply}

    async def _handle(
        self, sub: _Subscriber, entry_id: bytes, fields: dict[bytes, bytes] | None, deliveries: int
    ) -> bool:
        """Run the handler on one entry: True when it is to be acknowledged; False when it was
        left for a retry or dead-lettered (which acknowledges it with the letter)."""
        ident = _text(entry_id)
        if not fields or _FIELD not in fields:
            return True  # trimmed away: nothing left to handle
        if deliveries > self._max_deliveries:
            await self._dead_letter(sub, entry_id, fields, deliveries, "delivered too often")
            return False
        try:
            event = IncidentEvent.model_validate_json(fields[_FIELD])
        except ValidationError as e:
            await self._dead_letter(sub, entry_id, fields, deliveries, f"undecodable: {e}")
            return False
        try:
            await sub.handler(event)
        except Exception as e:
            if deliveries >= self._max_deliveries:
                logger.exception(
                    "bus: %s gave up on entry %s (event %d)", sub.group, ident, event.seq
                )
                await self._dead_letter(sub, entry_id, fields, deliveries, repr(e))
            else:
                logger.warning(
                    "bus: %s failed on entry %s (event %d, delivery %d of %d); will retry",
                    sub.group,
                    ident,
                    event.seq,
                    deliveries,
                    self._max_deliveries,
                    exc_info=True,
                )
            return False
        return True

    async def _dead_letter(
        self,
        sub: _Subscriber,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        deliveries: int,
        error: str,
    ) -> None:
        """Move one entry to the dead-letter stream and acknowledge it, atomically."""
        logger.error(
            "bus: %s dead-lettered entry %s after %d deliveries: %s",
            sub.group,
            _text(entry_id),
            deliveries,
            error,
        )
        letter = {
            "group": sub.group,
            "id": entry_id,
            "deliveries": deliveries,
            "error": error[:2000],
            "event": fields.get(_FIELD, b""),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, letter, maxlen=self._dead_maxlen)  # type: ignore[arg-type]
            pipe.xack(self.stream, sub.group, entry_id)
            await pipe.execute()

    # -- housekeeping and observability -------------------------------------------------------

    def _alive_key(self, consumer: str) -> str:
        return f"{self._prefix}:bus:alive:{consumer}"

    async def _heartbeat(self) -> None:
        await self._redis.set(
            self._alive_key(self.consumer), b"1", px=int(self._broadcast_expiry * 1000)
        )

    async def _housekeep(self) -> None:
        """Keep our heartbeat fresh and prune broadcast groups of processes that are gone."""
        while True:
            try:
                await self._heartbeat()
                await self.prune_broadcast_groups()
            except RedisError as e:
                logger.debug("bus: housekeeping skipped: %s", e)
            await asyncio.sleep(self._broadcast_expiry / 3)

    async def prune_broadcast_groups(self) -> list[str]:
        """Destroy broadcast groups whose owning process's heartbeat has expired."""
        try:
            groups = [_text(info["name"]) for info in await self._redis.xinfo_groups(self.stream)]
        except ResponseError:
            return []  # no stream yet
        pruned: list[str] = []
        for group in groups:
            _, sep, owner = group.partition(_BROADCAST_SEP)
            if not sep or owner == self.consumer:
                continue
            if not await self._redis.exists(self._alive_key(owner)):
                await self._redis.xgroup_destroy(self.stream, group)
                logger.info("bus: pruned broadcast group %s of a departed process", group)
                pruned.append(group)
        return pruned

    async def group_stats(self) -> list[GroupStats]:
        """Lag (entries not yet read) and pending (read, not acknowledged) of every group."""
        try:
            groups = await self._redis.xinfo_groups(self.stream)
        except ResponseError:
            return []  # no stream yet
        return [
            GroupStats(
                group=_text(g["name"]),
                consumers=g["consumers"],
                pending=g["pending"],
                lag=g.get("lag"),
                last_delivered_id=_text(g["last-delivered-id"]),
            )
            for g in groups
        ]

    async def export_metrics(self, metrics: Metrics) -> None:
        """Set ``bus_lag{group}`` and ``bus_pending{group}`` (lag NaN when Redis cannot tell)."""
        stats = await self.group_stats()
        metrics.bus_lag.clear()
        metrics.bus_pending.clear()
        for s in stats:
            metrics.bus_lag.labels(s.group).set(float("nan") if s.lag is None else s.lag)
            metrics.bus_pending.labels(s.group).set(s.pending)

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the entries in hand (bounded), send the spool, leave the groups, disconnect."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout
        subs = list(self._subscribers.values())
        for sub in subs:
            if sub.task is not None and not sub.handling:
                sub.task.cancel()  # idle in a blocking read: entries stay in Redis for others
        busy = [s.task for s in subs if s.task is not None and not s.task.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=self._drain_timeout)
            if late:
                logger.warning("bus closed with %d handlers still running", len(late))
        await cancel_and_wait(*(s.task for s in subs), *self._background)
        self._background = []
        # Whatever the drain left of the budget (at least a moment) sends the spool, then leaves.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout_at(max(deadline, loop.time() + 0.5)):
                await self._send_spool()
                await self._leave_groups(subs)
                await self._redis.delete(self._alive_key(self.consumer))
        if self._spool:
            logger.warning("bus closed with %d spooled events unsent", len(self._spool))
        for sub in subs:
            sub.task = None
        self._started = False
        await self._redis.aclose()

    async def _send_spool(self) -> None:
        while self._spool:
            await self._append(self._spool[0])
            self._spool.popleft()

    async def _leave_groups(self, subs: Sequence[_Subscriber]) -> None:
        """Destroy our broadcast groups; forget our consumer where it holds nothing pending."""
        for sub in subs:
            with contextlib.suppress(ResponseError):  # no such stream or group: nothing to leave
                if sub.broadcast:
                    await self._redis.xgroup_destroy(self.stream, sub.group)
                    continue
                for c in await self._redis.xinfo_consumers(self.stream, sub.group):
                    if _text(c["name"]) == self.consumer and c["pending"] == 0:
                        await self._redis.xgroup_delconsumer(self.stream, sub.group, self.consumer)
