"""Alert storms inside Telegram's limits: a board naming every incident, bulk buttons, and
``/incident ID``, against a fake Bot API that answers 429 wherever Telegram would."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.app import TelegramBot
from bot.render import storm_board, storm_board_line, units
from core.incidents.receivers import parse_alertmanager
from core.incidents.storm import Storm
from core.models.alerts import AlertSource, Severity
from core.models.incidents import Incident, IncidentState
from tests.bot.conftest import OPERATOR, OPS, VIEWER, BotFactory
from tests.fakes.telegram import FakeTelegram, FloodLimits, StoredMessage
from tests.support.payloads import am_alert, am_payload

STORM = 120
_NAMED = re.compile(r"#(\d+) (Storm\d+) · (\w+) · (\d+) alerts? · \S+ (\w+)")


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """The Bot API fake with Telegram's flood limits on: 1/s per chat, 20/min per group, 30/s."""
    async with FakeTelegram(flood_limits=FloodLimits()) as fake:
        yield fake


def board_lines(fake: FakeTelegram) -> dict[int, tuple[str, str, int, str]]:
    """Every incident the delivered messages name: id → (title, severity, alerts, state)."""
    named: dict[int, tuple[str, str, int, str]] = {}
    for message in fake.messages(OPS):
        for number, title, severity, alerts, state in _NAMED.findall(message.text or ""):
            named[int(number)] = (title, severity, int(alerts), state)
    return named


def first_board_message(fake: FakeTelegram) -> StoredMessage | None:
    return next(
        (m for m in fake.messages(OPS) if (m.text or "").startswith("🌪 Alert storm ·")), None
    )


def rate_limited(fake: FakeTelegram) -> list[str]:
    return [f"{c.method}: {c.description}" for c in fake.calls if c.status == 429]


def severity_of(n: int) -> str:
    return ("critical", "warning", "info")[n % 3]


async def storm(telegram: TelegramBot, count: int = STORM) -> list[int]:
    """``count`` new incidents within about two seconds, in webhook-sized batches."""
    opened: list[int] = []
    for start in range(0, count, 20):
        # One Alertmanager group per incident, as a storm of distinct problems arrives.
        alerts = [
            alert
            for n in range(start, min(start + 20, count))
            for alert in parse_alertmanager(
                {
                    **am_payload(
                        am_alert(f"Storm{n}", fingerprint=f"storm-{n}", severity=severity_of(n))
                    ),
                    "groupKey": f'{{}}:{{alertname="Storm{n}"}}',
                }
            )
        ]
        opened += (await telegram.plane.incidents.ingest(alerts)).incidents
        await asyncio.sleep(0.3)
    return opened


@pytest.mark.slow
async def test_a_storm_board_names_every_incident_and_acknowledge_all_acknowledges_each(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    telegram = await make_bot()
    opened = await storm(telegram)
    assert len(opened) == STORM
    named = await fake_telegram.wait_for(
        lambda: found if len(found := board_lines(fake_telegram)) >= STORM else None, timeout=60
    )
    assert set(named) == set(opened)
    # Each line: the incident's own title and severity, its alert count, its state.
    assert {title for title, *_ in named.values()} == {f"Storm{n}" for n in range(STORM)}
    assert all(
        (severity, alerts, state) == (severity_of(int(title[5:])), 1, "triggered")
        for title, severity, alerts, state in named.values()
    )
    # Far fewer messages than incidents, each within 4,096 characters.
    sent = fake_telegram.calls_to("sendMessage", ok=True)
    assert len(sent) <= 10, [c.params.get("text", "")[:40] for c in sent]
    assert all(len(m.text or "") <= 4096 for m in fake_telegram.messages(OPS))
    first = first_board_message(fake_telegram)
    assert first is not None and f"{STORM} incidents" in (first.text or "")
    buttons = {b["text"]: b["callback_data"] for b in first.buttons}
    assert set(buttons) == {"👀 Acknowledge all", "🔕 Silence the storm 1h"}
    assert all(len(data.encode()) <= 64 for data in buttons.values())

    # A viewer may not acknowledge: refused, nothing changes.
    fake_telegram.push_callback(OPS, VIEWER, first.message_id, buttons["👀 Acknowledge all"])
    await fake_telegram.wait_for(lambda: fake_telegram.calls_to("answerCallbackQuery"))
    states = {(await telegram.plane.incidents.get(n)).state for n in opened}
    assert states == {IncidentState.TRIGGERED}

    fake_telegram.push_callback(OPS, OPERATOR, first.message_id, buttons["👀 Acknowledge all"])

    async def all_acknowledged() -> None:
        while True:
            states = {(await telegram.plane.incidents.get(n)).state for n in opened}
            if states == {IncidentState.ACKNOWLEDGED}:
                return
            await asyncio.sleep(0.2)

    await asyncio.wait_for(all_acknowledged(), timeout=30)
    for number in opened:
        incident = await telegram.plane.incidents.get(number)
        assert incident.acknowledged_by is not None
        assert incident.acknowledged_by.id == str(OPERATOR)
    # The board's lines follow, edited in place (at most every few seconds, never a 429).
    await fake_telegram.wait_for(
        lambda: (
            all(s == "acknowledged" for *_, s in board_lines(fake_telegram).values())
            and len(board_lines(fake_telegram)) == STORM
        ),
        timeout=70,
    )
    assert rate_limited(fake_telegram) == []
    assert not [c for c in fake_telegram.calls if c.description and "not modified" in c.description]


@pytest.mark.slow
async def test_incident_command_shows_one_incident_of_the_storm_with_its_buttons(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    telegram = await make_bot()
    opened = await storm(telegram, 40)
    await fake_telegram.wait_for(lambda: len(board_lines(fake_telegram)) >= 40, timeout=60)
    wanted = opened[-1]
    fake_telegram.push_message(OPS, OPERATOR, f"/incident {wanted}")

    def shown() -> StoredMessage | None:
        return next(
            (
                m
                for m in fake_telegram.messages(OPS)
                if f"#{wanted}" in (m.text or "") and "TRIGGERED" in (m.text or "")
            ),
            None,
        )

    message = await fake_telegram.wait_for(shown, timeout=30)
    assert {b["text"] for b in message.buttons} >= {"👀 Acknowledge", "✅ Resolve"}
    assert rate_limited(fake_telegram) == []


def test_board_parts_stay_within_telegram_limits_and_cut_between_lines_only() -> None:
    started = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    incidents = [
        Incident(
            id=n,
            key=f"k{n}",
            source=AlertSource.ALERTMANAGER,
            fingerprint=f"f{n}",
            title=f"Storm{n} " + "🔥<&>" * 100,  # astral emoji count 2 UTF-16 units
            severity=Severity.CRITICAL,
            first_seen=started,
            last_seen=started,
        )
        for n in range(1, 401)
    ]
    storm = Storm(id="s1", destination=OPS, started=started, last_opened=started, incident_ids=[])
    parts = storm_board(storm, incidents)
    assert len(parts) > 1
    assert all(units(part) <= 4096 for part in parts)
    lines = [line for part in parts for line in part.split("\n")]
    for incident in incidents:  # every incident on exactly one whole line
        [line] = [x for x in lines if f"<b>#{incident.id}</b> " in x]
        assert line == storm_board_line(incident)
