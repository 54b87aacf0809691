"""The leader lease: which one process polls Telegram, runs the scheduler and the trading loop.

Keys in Redis (``prefix`` defaults to ``lunia``)::

    {prefix}:lease:{name}        "{term}:{holder}" while held; expires ``ttl`` after the last
                                 acquisition or renewal (SET NX PX / PEXPIRE in Lua scripts)
    {prefix}:lease:{name}:term   the fencing term: incremented by every acquisition, in the same
                                 script, and never expired

Timing rules (``ttl`` default 10 s, ``renew_interval`` default ttl/3, ``margin`` default ttl/5):

- A leader counts itself leader only until a *local* deadline: the monotonic time at which it
  *sent* the last successful acquire or renew, plus ``ttl - margin``. The key cannot expire in
  Redis before that instant, so no other process can hold the lease while this one still acts;
  ``margin`` absorbs clock-rate drift and a late wake-up of the event loop.
- The leader renews every ``renew_interval``; a failed attempt (Redis unreachable) is retried
  until the deadline. A renewal Redis refuses (the key is gone or someone else's), a deadline
  that passes, or a failed ``fence`` end leadership at once: ``is_leader`` turns false and
  ``on_lost`` is awaited. No Redis call is allowed to run past the deadline.
- A standby tries to acquire every ``renew_interval``. When a leader dies, its key expires at
  most ``ttl`` after its last renewal, so a standby takes over within **ttl + renew_interval**
  (plus one round trip); a leader that shuts down cleanly releases the key (compare-and-DEL)
  and the standby takes over at its next attempt, within ``renew_interval``.
- Every acquisition gets a strictly higher term. If Redis lost the term counter (restarted
  without persistence), the script still issues a term above the highest this process has seen.

Guard each action taken as leader with ``check()`` (local, free) or ``fence()`` (also confirms
the lease in Redis); hand the term to whatever records the action, so a stale leader's writes
can be refused with ``is_current(term)``.

Callbacks run in the lease's task: keep them short (start or stop work, don't do it), since a
callback that outlasts the deadline loses the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.errors import Conflict
from core.platform.bus_redis import consumer_name
from core.platform.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

OnAcquired = Callable[[int], Awaitable[None]]
OnLost = Callable[[], Awaitable[None]]

# A lease call that fails for any of these reasons has simply not succeeded; the loop retries.
_FAILED = (RedisError, OSError, TimeoutError)

# KEYS: lease, term counter. ARGV: holder, ttl ms, highest term the caller has seen.
# Takes a free lease (or our own stale one) and issues the next term; returns {term, value},
# term 0 when someone else holds it (value then names them).
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep == nil or string.sub(current, sep + 1) ~= ARGV[1] then
    return {0, current}
  end
end
local term = redis.call('INCR', KEYS[2])
local seen = tonumber(ARGV[3])
if term <= seen then
  term = seen + 1
  redis.call('SET', KEYS[2], term)
end
local value = term .. ':' .. ARGV[1]
if current then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2], 'XX')
else
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2], 'NX')
end
return {term, value}
"""

# KEYS: lease. ARGV: our value, ttl ms. Extends the lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: our value. Deletes the lease only while it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class NotLeader(Conflict):
    """This process does not hold the lease, so it must not act as the leader."""

    code = "not_leader"


def _parse(value: Any) -> tuple[int, str]:
    """Split a lease value ``term:holder``."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    term, _, holder = text.partition(":")
    return (int(term) if term.isdigit() else 0), holder


class Lease:
    """A named leader lease on Redis with fencing terms; run it, then ask ``is_leader``."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        holder: str | None = None,
        ttl: float = 10.0,
        renew_interval: float | None = None,
        margin: float | None = None,
        prefix: str = "lunia",
        on_acquired: OnAcquired | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        self.name = name
        self.holder_id = holder or consumer_name()
        self.ttl = ttl
        self.renew_interval = renew_interval if renew_interval is not None else ttl / 3
        self.margin = margin if margin is not None else ttl / 5
        if not 0 < self.margin < ttl:
            raise ValueError("lease margin must be between 0 and ttl")
        if not 0 < self.renew_interval < ttl - self.margin:
            raise ValueError("lease renew_interval must be shorter than ttl - margin")
        self._key = f"{prefix}:lease:{name}"
        self._term_key = f"{self._key}:term"
        self._ttl_ms = max(1, int(ttl * 1000))
        # No hidden retries: every call is bounded here, and the loop decides what a failure means.
        self._call_timeout = min(self.renew_interval, 2.0)
        self._redis = Redis.from_url(
            url,
            socket_timeout=self._call_timeout,
            socket_connect_timeout=self._call_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._value: bytes | None = None  # our "term:holder" while leader
        self._term: int | None = None
        self._deadline = 0.0  # time.monotonic() until which we may act as leader
        self._sent = 0.0  # when the last successful acquire or renew was sent
        self._seen_term = 0
        self._holder: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unreachable = False
        self._closed = False

    # -- state --------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this process holds the lease right now (by its local deadline)."""
        return self._term is not None and time.monotonic() < self._deadline

    @property
    def term(self) -> int | None:
        """The fencing term of our leadership, or None while standby."""
        return self._term if self.is_leader else None

    @property
    def holder(self) -> str | None:
        """Who held the lease when we last looked (us while leader; None if free or unknown)."""
        return self.holder_id if self.is_leader else self._holder

    @property
    def highest_term(self) -> int:
        """The highest term this process has issued or seen."""
        return self._seen_term

    def check(self) -> int:
        """Return our term, or raise ``NotLeader`` if this process must not act as leader now."""
        term = self._term
        if term is None or not self.is_leader:
            raise NotLeader(f"this process is not the {self.name} leader (holder: {self.holder})")
        return term

    async def fence(self) -> int:
        """Like ``check``, and confirm in Redis that the lease is still ours; return the term."""
        term = self.check()
        try:
            async with asyncio.timeout(self._deadline - time.monotonic()):
                value = await self._redis.get(self._key)
        except _FAILED as e:
            raise NotLeader(f"cannot confirm the {self.name} lease: Redis unreachable") from e
        if value != self._value:
            self._deadline = 0.0  # stop acting now; the loop reports it with on_lost
            self._wake.set()
            raise NotLeader(f"the {self.name} lease was taken over (our term {term} is stale)")
        return term

    async def is_current(self, term: int) -> bool:
        """Whether ``term`` is the term of the lease Redis holds now (for fencing any writer)."""
        value = await self._redis.get(self._key)
        return value is not None and _parse(value)[0] == term

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the acquire/renew loop in the background."""
        self._task = asyncio.create_task(self.run(), name=f"lease-{self.name}")

    async def close(self) -> None:
        """Stop the loop; if leader, stop acting (``on_lost``) and hand the lease over at once."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        value = self._value
        if self._term is not None:
            await self._step_down("released on shutdown", logging.INFO)
        if value is not None:
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._release_script(keys=[self._key], args=[value])
            except _FAILED as e:
                logger.warning(
                    "lease %s: could not release (%s); it expires by itself", self.name, e
                )
        await self._redis.aclose()

    async def run(self) -> None:
        """Try to acquire while standby and renew while leader, until cancelled."""
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A cancellation that a Redis call swallowed (seen on Python 3.11 when close()
                # landed inside the acquire call): honour it here rather than renew on.
                raise asyncio.CancelledError
            if self._term is None:
                if await self._try_acquire():
                    await self._call(self._on_acquired, self._term)
                else:
                    await self._pause(self.renew_interval)
                    continue
            renew_at = min(self._deadline, self._sent + self.renew_interval)
            await self._pause(renew_at - time.monotonic())
            if not await self._renew():
                await self._step_down("lease lost")

    # -- steps --------------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``fence`` found the lease gone."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()
        self._wake.clear()

    async def _try_acquire(self) -> bool:
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self._call_timeout):
                term, value = await self._acquire_script(
                    keys=[self._key, self._term_key],
                    args=[self.holder_id, self._ttl_ms, self._seen_term],
                )
        except _FAILED as e:
            self._note_unreachable(e)
            return False
        self._note_reachable()
        seen, self._holder = _parse(value)
        self._seen_term = max(self._seen_term, seen)
        if not term:
            return False
        self._term, self._value, self._sent = int(term), value, sent
        self._deadline = sent + self.ttl - self.margin
        logger.info("lease %s: acquired as %s, term %d", self.name, self.holder_id, self._term)
        return True

    async def _renew(self) -> bool:
        """Extend the lease; False once Redis refuses or the local deadline passes."""
        value = self._value
        while value is not None and (left := self._deadline - time.monotonic()) > 0:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(left):  # never act on a reply that came too late
                    renewed = await self._renew_script(keys=[self._key], args=[value, self._ttl_ms])
            except _FAILED as e:
                self._note_unreachable(e)
                await self._pause(min(self.renew_interval / 4, self._deadline - time.monotonic()))
                continue
            self._note_reachable()
            if not renewed:
                return False
            self._sent = sent
            self._deadline = sent + self.ttl - self.margin
            return True
        return False

    async def _step_down(self, why: str, level: int = logging.WARNING) -> None:
        logger.log(level, "lease %s: no longer leader (term %s): %s", self.name, self._term, why)
        self._term = None
        self._value = None
        self._holder = None
        self._deadline = 0.0
        await self._call(self._on_lost)

    async def _call(self, callback: Callable[..., Awaitable[None]] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            await callback(*args)
        except Exception:
            logger.exception("lease %s: callback %s failed", self.name, callback)

    def _note_unreachable(self, error: BaseException) -> None:
        if not self._unreachable:
            logger.warning("lease %s: Redis unreachable (%s)", self.name, error)
        self._unreachable = True

    def _note_reachable(self) -> None:
        if self._unreachable:
            logger.info("lease %s: Redis reachable again", self.name)
        self._unreachable = False
