"""Security state holds across API replicas on one real Redis: the rate limit is counted once
for all of them, a confirmation asked through one replica is taken through another exactly once,
and the refusal throttle is shared."""

from __future__ import annotations

import httpx
import pytest

from core.models import AuditEntry
from core.platform.roles import ProcessRole
from tests.conftest import VIEWER_TOKEN, auth
from tests.e2e import test_redis_roles as roles
from tests.e2e.test_redis_roles import Replicas, client, eventually
from tests.fakes.telegram import FakeTelegram, StoredMessage

pytestmark = pytest.mark.slow  # replicas on a real Redis

# The replica fixtures of test_redis_roles (a durable Redis, planes of a role on it).
redis = roles.redis
replicas = roles.replicas

ADMIN_ID = 5151
SECRET = "s3cret-token"
HOOK = {
    "telegram_mode": "webhook",
    "telegram_webhook_url": "https://ops.example/telegram/webhook",
    "telegram_webhook_secret": SECRET,
    "telegram_admins": str(ADMIN_ID),
}


async def test_a_rate_limit_of_n_allows_n_in_total_across_two_replicas(
    replicas: Replicas,
) -> None:
    api1 = await replicas(ProcessRole.API, "api1", api_rate_limit_per_minute=5)
    api2 = await replicas(ProcessRole.API, "api2", api_rate_limit_per_minute=5)
    async with client(api1) as one, client(api2) as two:
        answers = [
            await http.get("/api/v1/flags", headers=auth(VIEWER_TOKEN)) for http in (one, two) * 5
        ]
    assert [a.status_code for a in answers].count(200) == 5
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 5
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in refused)


async def test_the_refusal_throttle_is_shared_by_the_replicas(replicas: Replicas) -> None:
    api1 = await replicas(ProcessRole.API, "api1")
    api2 = await replicas(ProcessRole.API, "api2")
    async with client(api1) as one, client(api2) as two:
        for http in (one, two, one, two):
            assert (await http.get("/api/v1/flags", headers=auth("stolen"))).status_code == 401

    def refusals(entries: list[AuditEntry]) -> list[AuditEntry]:
        return [e for e in entries if e.action == "api.unauthenticated"]

    assert len(refusals(await api2.audit.tail(20))) == 1
    counted = api1.metrics.auth_denied.labels("api", "bad_token")._value.get()
    assert counted == 2  # each replica counts its own; the audit log has one entry


async def webhook(http: httpx.AsyncClient, update: dict[str, object]) -> None:
    response = await http.post(
        "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert response.status_code == 200, response.text


def press(fake: FakeTelegram, message: StoredMessage, label: str) -> dict[str, object]:
    """The callback update Telegram would POST for a press on ``label`` (not polled by anyone)."""
    data = next(b["callback_data"] for b in message.buttons if label in b["text"])
    update_id = fake.push_callback(ADMIN_ID, ADMIN_ID, message.message_id, data)
    return next(u for u in fake.pending_updates if u["update_id"] == update_id)


async def test_a_confirmation_asked_through_one_replica_is_taken_through_another_once(
    replicas: Replicas, fake_telegram: FakeTelegram
) -> None:
    api_a = await replicas(ProcessRole.API, "api-a", telegram=fake_telegram, **HOOK)
    api_b = await replicas(ProcessRole.API, "api-b", telegram=fake_telegram, **HOOK)
    sender = await replicas(ProcessRole.BOT, "bot", telegram=fake_telegram, **HOOK)
    await eventually(lambda: sender.duties.active)

    async with (
        client(api_a, replicas.bots["api-a"]) as a,
        client(api_b, replicas.bots["api-b"]) as b,
    ):
        await webhook(
            a, fake_telegram.message_update(ADMIN_ID, ADMIN_ID, "/flag SANDBOX_ENABLED on")
        )

        def prompt() -> StoredMessage | None:
            return next(
                (
                    m
                    for m in fake_telegram.messages(ADMIN_ID)
                    if "Only you can confirm" in (m.text or "") and m.buttons
                ),
                None,
            )

        asked = await eventually(prompt)
        assert not api_b.flags.value("SANDBOX_ENABLED")

        confirm = press(fake_telegram, asked, "Confirm")
        await webhook(b, confirm)  # the press lands on the other replica
        await eventually(lambda: api_a.flags.value("SANDBOX_ENABLED") is True)
        await eventually(
            lambda: any(
                "SANDBOX_ENABLED = True" in (m.text or "") for m in fake_telegram.messages(ADMIN_ID)
            )
        )

        again = press(fake_telegram, asked, "Confirm")
        await webhook(a, again)  # a second press, through either replica, finds it used

        def refused_again() -> bool:
            answers = fake_telegram.callback_answers.values()
            return any("already used" in str(answer.get("text")) for answer in answers)

        await eventually(refused_again)
    sets = [e for e in await api_a.audit.tail(20) if e.action == "flag.set"]
    assert len(sets) == 1
