"""Telegram's sending limits: the pacer on a hand-driven clock, and the outbox obeying it and
a 429's ``retry_after`` with real (short) time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.pacing import Pacer
from core.models import OutboxItem, OutboxMessage
from core.platform.metrics import Metrics
from core.platform.outbox import Delivery, OutboxWorker
from core.store.sqlite import SqliteStore

PRIVATE, GROUP, OTHER_GROUP = 101, -1001000000001, -1001000000002


class Clock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_chat_may_receive_one_message_per_interval(clock: Clock) -> None:
    pacer = Pacer(per_chat_interval=1.0, clock=clock)
    assert pacer.wait(PRIVATE) == 0.0
    pacer.sent(PRIVATE)
    assert pacer.wait(PRIVATE) == pytest.approx(1.0)
    clock.advance(0.4)
    assert pacer.wait(PRIVATE) == pytest.approx(0.6)
    assert pacer.wait(PRIVATE + 1) == 0.0  # another chat is not held back by this one
    clock.advance(0.6)
    assert pacer.wait(PRIVATE) == 0.0


def test_a_group_may_receive_its_per_minute_limit_then_waits_for_the_oldest(
    clock: Clock,
) -> None:
    pacer = Pacer(per_chat_interval=1.0, group_per_minute=20, clock=clock)
    for _ in range(20):
        assert pacer.wait(GROUP) == 0.0
        pacer.sent(GROUP)
        clock.advance(1.5)
    # 20 sent over the last 30 s: the 21st waits until the first leaves the 60 s window.
    assert pacer.wait(GROUP) == pytest.approx(30.0)
    assert pacer.wait(OTHER_GROUP) == 0.0
    clock.advance(30.0)
    assert pacer.wait(GROUP) == 0.0
    pacer.sent(GROUP)
    assert pacer.wait(GROUP) == pytest.approx(1.5)  # the second-oldest now sets the limit


def test_private_chats_have_no_per_minute_limit(clock: Clock) -> None:
    pacer = Pacer(per_chat_interval=1.0, group_per_minute=2, clock=clock)
    for _ in range(5):
        assert pacer.wait(PRIVATE) == 0.0
        pacer.sent(PRIVATE)
        clock.advance(1.0)


def test_every_chat_waits_once_the_global_per_second_limit_is_reached(clock: Clock) -> None:
    pacer = Pacer(per_chat_interval=1.0, global_per_second=30, clock=clock)
    for chat in range(1, 31):
        assert pacer.wait(chat) == 0.0
        pacer.sent(chat)
        clock.advance(1 / 32)  # binary fractions: the window edge is exact
    # 30 sent within 30/32 s: a 31st chat waits until the first leaves the 1 s window.
    assert pacer.wait(31) == 2 / 32
    clock.advance(2 / 32)
    assert pacer.wait(31) == 0.0


def test_the_longest_of_the_limits_wins(clock: Clock) -> None:
    pacer = Pacer(per_chat_interval=3.0, group_per_minute=1, global_per_second=1, clock=clock)
    pacer.sent(GROUP)
    assert pacer.wait(GROUP) == pytest.approx(60.0)  # group window over the 3 s interval
    assert pacer.wait(PRIVATE) == pytest.approx(1.0)  # the global window only
    clock.advance(1.0)
    assert pacer.wait(PRIVATE) == 0.0
    assert pacer.wait(GROUP) == pytest.approx(59.0)


# -- the outbox obeys what the channel says (as bot/sender.py answers it) --------------------


class PacedChannel:
    """A deliver function the way the Telegram sender paces: defer while the pacer says wait,
    and answer one scripted 429 with its retry_after."""

    def __init__(self, pacer: Pacer, *, retry_after: dict[str, float] | None = None) -> None:
        self._pacer = pacer
        self._retry_after = dict(retry_after or {})
        self.sent: list[tuple[str, float]] = []
        self.attempts: list[tuple[str, float]] = []
        self.done = asyncio.Event()
        self.expect = 0

    async def deliver(self, item: OutboxItem) -> Delivery:
        text, chat = str(item.payload["text"]), int(item.payload["chat_id"])
        self.attempts.append((text, time.monotonic()))
        if text in self._retry_after:
            return Delivery.retry("Telegram 429", after=self._retry_after.pop(text))
        wait = self._pacer.wait(chat)
        if wait > 0:
            return Delivery.defer(wait)
        self._pacer.sent(chat)
        self.sent.append((text, time.monotonic()))
        if len(self.sent) == self.expect:
            self.done.set()
        return Delivery.ok()


async def run_outbox(
    tmp_path: Path,
    channel: PacedChannel,
    messages: list[tuple[int, str]],
    *,
    expect: int | None = None,
) -> None:
    """Queue ``messages`` and run a worker until ``channel`` has sent ``expect`` (all)."""
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    # A long idle poll: only the worker's own wake-ups (due times, new work) drive it.
    worker = OutboxWorker(store, "telegram", channel.deliver, Metrics(), idle_poll=3600)
    channel.expect = len(messages) if expect is None else expect
    try:
        await store.outbox_add(
            [
                OutboxMessage(
                    channel="telegram", key=str(chat), payload={"chat_id": chat, "text": t}
                )
                for chat, t in messages
            ]
        )
        await worker.start()
        worker.wake()
        await asyncio.wait_for(channel.done.wait(), timeout=20)
    finally:
        await worker.close(drain_timeout=0)
        await store.close()


@pytest.mark.slow
async def test_the_outbox_spaces_one_chats_messages_by_the_pacer_and_keeps_their_order(
    tmp_path: Path,
) -> None:
    channel = PacedChannel(Pacer(per_chat_interval=0.3))
    await run_outbox(tmp_path, channel, [(PRIVATE, f"m{i}") for i in range(3)])
    assert [text for text, _ in channel.sent] == ["m0", "m1", "m2"]
    gaps = [b - a for (_, a), (_, b) in zip(channel.sent, channel.sent[1:], strict=False)]
    assert all(gap >= 0.29 for gap in gaps), gaps
    # Deferred, not lost or duplicated: each message was sent exactly once.
    assert len(channel.sent) == 3


async def test_a_paced_chat_does_not_hold_back_another_chat(tmp_path: Path) -> None:
    channel = PacedChannel(Pacer(per_chat_interval=30.0))
    messages = [(PRIVATE, "a0"), (PRIVATE, "a1"), (PRIVATE + 1, "b0"), (PRIVATE + 2, "c0")]
    await run_outbox(tmp_path, channel, messages, expect=3)
    # a1 waits 30 s for its chat; b0 and c0 went out meanwhile.
    assert sorted(text for text, _ in channel.sent) == ["a0", "b0", "c0"]


@pytest.mark.slow
async def test_a_429s_retry_after_is_waited_out_exactly_then_the_message_is_sent(
    tmp_path: Path,
) -> None:
    channel = PacedChannel(Pacer(per_chat_interval=0.0), retry_after={"m0": 0.5})
    await run_outbox(tmp_path, channel, [(PRIVATE, "m0"), (PRIVATE, "m1")])
    first_try, second_try = (at for text, at in channel.attempts if text == "m0")
    # Not before retry_after (no early retry), and long before the hour-long idle poll.
    assert 0.49 <= second_try - first_try < 10
    # The message after it in the same chat did not overtake it.
    assert [text for text, _ in channel.sent] == ["m0", "m1"]
