"""The chat channel's delivery state, on both stores, under the keys the bot always used."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.incidents.delivery import CHANNEL, CURSOR, ChatDeliveryState, ShownMessage
from core.models import OutboxMessage
from core.platform.metrics import Metrics
from core.store import Store
from core.store.redis import RedisStore
from core.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store
    if request.param == "redis":
        server = request.getfixturevalue("shared_redis")
        opened = RedisStore(server.url, prefix=f"test-{secrets.token_hex(4)}")
    else:
        opened = SqliteStore(tmp_path / "state.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def delivery(store: Store) -> ChatDeliveryState:
    return ChatDeliveryState(store, Metrics())


async def test_shown_messages_keep_their_store_keys(
    store: Store, delivery: ChatDeliveryState
) -> None:
    assert await delivery.shown(12) is None
    # State written before this service existed is read as it is.
    await store.set_value("tg:incident:12", {"chat_id": -100123, "message_id": 7, "hash": "ab"})
    assert await delivery.shown(12) == ShownMessage(chat_id=-100123, message_id=7, hash="ab")
    await delivery.set_shown(12, ShownMessage(chat_id=-100123, message_id=9, hash="cd"))
    assert await store.get_value("tg:incident:12") == {
        "chat_id": -100123,
        "message_id": 9,
        "hash": "cd",
    }


async def test_unreadable_shown_state_means_post_afresh(
    store: Store, delivery: ChatDeliveryState
) -> None:
    await store.set_value("tg:incident:3", {"chat_id": "not a chat"})
    assert await delivery.shown(3) is None


async def test_migrations_are_remembered(store: Store, delivery: ChatDeliveryState) -> None:
    assert await delivery.migrated(-4001) is None
    await delivery.record_migration(-4001, -1004001)
    assert await delivery.migrated(-4001) == -1004001
    assert await store.get_value("tg:migrated:-4001") == -1004001


async def test_enqueue_moves_the_cursor_with_the_messages(
    store: Store, delivery: ChatDeliveryState
) -> None:
    assert await delivery.cursor() == 0
    message = OutboxMessage(channel=CHANNEL, key="-1", payload={"op": "text", "chat_id": -1})
    await delivery.enqueue([message], 5)
    assert await delivery.cursor() == await store.get_cursor(CURSOR) == 5
    await delivery.enqueue([message])  # a reply: no cursor involved
    assert await delivery.cursor() == 5
    assert (await delivery.outbox_stats()).depth == 2
    assert (await store.outbox_stats(CHANNEL)).depth == 2
    assert await delivery.events_since(0) == []
