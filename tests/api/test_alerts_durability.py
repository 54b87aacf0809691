"""Group commit keeps the webhook promise: an alert answered 2xx is stored, even when
``lunia run`` is killed (-9) while batches of concurrent webhooks are still in flight, on the
SQLite store and on the Redis store alike (issue 16 point 7)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from core.control_plane import open_store
from core.store import Store
from core.store.sqlite import SqliteStore
from tests.api.test_run import start, wait_healthy
from tests.conftest import RedisFactory, SettingsFactory
from tests.support.payloads import am_alert, am_payload

pytestmark = pytest.mark.slow  # lunia run as a real process, killed and started again

TOKEN = "durability-webhook-token"
WEBHOOKS, ALERTS, CONCURRENCY = 400, 20, 16


async def post_until_killed(port: int, answered: set[str]) -> int:
    """Post webhooks of new alerts from concurrent clients, adding the fingerprints answered
    2xx to ``answered``; returns how many webhooks failed because the server went away."""
    failed = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(WEBHOOKS):
        queue.put_nowait(index)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failed
        while not queue.empty():
            index = queue.get_nowait()
            fingerprints = [f"w{index}-{i}" for i in range(ALERTS)]
            body = am_payload(*[am_alert(f"Kill{index}", fingerprint=f) for f in fingerprints])
            try:
                response = await client.post("/api/v1/alerts/alertmanager", json=body)
            except httpx.TransportError:
                failed += 1
                continue
            if response.status_code == 200:
                answered.update(fingerprints)

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    return failed


async def stored_member_fingerprints(store: Store) -> set[str]:
    """The fingerprints of every alert the stored incidents (alert groups) hold."""
    await store.open()
    try:
        incidents = await store.list_incidents(limit=WEBHOOKS * ALERTS)
        return {m.fingerprint for i in incidents for m in i.members}
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_kill_9_during_batched_webhooks_loses_no_answered_alert(
    tmp_path: Path, kind: str, make_redis: RedisFactory, make_settings: SettingsFactory
) -> None:
    env = {"ALERT_WEBHOOK_TOKEN": TOKEN}
    if kind == "redis":  # the process is killed, not Redis: what it acknowledged is in Redis
        env.update(ENABLE_REDIS="true", REDIS_URL=make_redis().url, LEASE_TTL_SECONDS="2")
    proc, port = start(tmp_path, **env)
    try:
        wait_healthy(proc, port)
        answered: set[str] = set()
        posting = asyncio.create_task(post_until_killed(port, answered))
        # Kill once some batches have been answered while the others are still in flight.
        while len(answered) < 20 * ALERTS and not posting.done():
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        failed = await posting
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert answered, "no webhook was answered before the kill"
    assert failed, "the kill came after every webhook was answered: nothing was in flight"

    # Restarted on the same state dir, it comes up and every answered alert is there.
    again, port = start(tmp_path, **env)
    try:
        assert wait_healthy(again, port).status_code == 200
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=20)
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    store = (
        open_store(make_settings(enable_redis=True, redis_url=env["REDIS_URL"]))
        if kind == "redis"
        else SqliteStore(tmp_path / "var" / "lunia.db")
    )
    stored = await stored_member_fingerprints(store)
    missing = answered - stored
    assert not missing, f"{len(missing)} alerts answered 2xx were lost, e.g. {sorted(missing)[:5]}"
