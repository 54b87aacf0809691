"""Every renderer's output is what Telegram accepts, whatever an alert or an operator carries.

Each renderer runs on hostile values (markup, entities, RTL marks, emoji outside the BMP, 9,000-
character annotations, 120 labels, 400-character alertnames, ``javascript:`` URLs) and every
message it produces is checked by the strict fake Bot API's own validator (``check_text``,
``check_reply_markup``): what it refuses, Telegram refuses. The last test sends such an alert
through the webhook, the real bot and the fake over HTTP.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from bot.app import TelegramBot
from bot.callbacks import Signer, incident_keyboard
from bot.render import (
    audit_text,
    checklist_text,
    flags_text,
    health_text,
    incident_line,
    incident_message,
    split_html,
)
from core.flags import FlagKind, FlagState, Source
from core.models import Actor, ActorKind, AuditEntry
from core.models.alerts import AlertSource, Severity
from core.models.incidents import Incident, IncidentState
from core.models.ops import Checklist, ChecklistItem, Mark
from core.platform.health import ComponentHealth, HealthReport, Status
from core.security.audit import VerifyReport
from tests.bot.conftest import OPS
from tests.conftest import WEBHOOK_TOKEN
from tests.fakes.telegram import FakeTelegram, check_reply_markup, check_text, parse_html
from tests.support.payloads import am_alert, am_payload

# Pure functions of their input: no database, no deadline on a loaded box.
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

# What hostile or merely unusual alert text holds: markup and entities Telegram would parse,
# RTL and zero-width marks, emoji outside the BMP (two UTF-16 units each), quotes and newlines.
_HOSTILE = [
    "<b>",
    "</pre>",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    "&amp;",
    "&nbsp;",
    "&#0;",
    "&",
    "<",
    ">",
    '"',
    "'",
    "\u200f",
    "\u202e",
    "\u200d",
    "עברית",
    "😀",
    "🚀",
    "👩‍💻",
    "\n",
    " ",
    "x",
    "é",
]
_piece = st.sampled_from(_HOSTILE)
short = st.lists(_piece, min_size=1, max_size=30).map("".join)
# Long values: a hostile run repeated up to 9,000 characters (generating them char by char
# would be slow and no more hostile).
long = st.tuples(short, st.integers(min_value=1, max_value=9000)).map(
    lambda pair: (pair[0] * (pair[1] // len(pair[0]) + 1))[: pair[1]]
)
text = st.one_of(short, long)
alertname = st.one_of(short, st.integers(min_value=300, max_value=400).map(lambda n: "A" * n))
labels = st.one_of(
    st.dictionaries(short, text, max_size=8),
    st.integers(min_value=100, max_value=120).map(
        lambda n: {f"label_{i}_<b>&amp;": f"value {i} 😀 <i>" * 20 for i in range(n)}
    ),
)
urls = st.one_of(
    st.sampled_from(
        [
            "javascript:alert(document.cookie)",
            "JavaScript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "tg://resolve?domain=x",
            "http://prometheus:9090/graph?g0.expr=up&g1=<b>",
            'https://grafana.example/d/x?var="a"&b=1',
            "https://",
            "http://a b/",
            "//evil.example/x",
            "ftp://files.example/",
            "https://example.com/" + "x" * 5000,
        ]
    ),
    text,
)
actors = short.map(lambda name: Actor(kind=ActorKind.TELEGRAM, id="1", name=name))


@st.composite
def incidents(draw: st.DrawFn) -> Incident:
    """An incident carrying hostile values everywhere an alert can put them."""
    state = draw(st.sampled_from(list(IncidentState)))
    return Incident(
        id=draw(st.integers(min_value=1, max_value=10**12)),
        key="k",
        source=draw(st.sampled_from(list(AlertSource))),
        fingerprint="fp",
        title=draw(alertname),
        severity=draw(st.sampled_from(list(Severity))),
        state=state,
        security=draw(st.booleans()),
        summary=draw(text),
        description=draw(text),
        labels=draw(labels),
        annotations={"runbook_url": draw(urls), "extra": draw(text)},
        generator_url=draw(st.none() | urls),
        count=draw(st.integers(min_value=1, max_value=10**9)),
        first_seen=NOW,
        last_seen=NOW,
        acknowledged_by=draw(st.none() | actors),
        acknowledged_at=NOW,
        resolved_by=draw(st.none() | actors),
        resolved_at=NOW,
        silenced_by=draw(st.none() | actors),
        silenced_until=NOW,
        escalation_level=draw(st.integers(min_value=0, max_value=99)),
    )


def accepted(html: str) -> str:
    """The text Telegram shows for ``html``; fails the test where Telegram would answer 400."""
    shown, entities = check_text(html)
    assert shown is not None
    for entity in entities:
        if entity["type"] == "text_link":  # a link is only ever to the web
            assert entity["url"].startswith(("http://", "https://")), entity
    return shown


def all_accepted(html: str) -> list[str]:
    """Split as the bot splits a reply, then every part accepted."""
    return [accepted(part) for part in split_html(html)]


@EXAMPLES
@given(incidents())
def test_the_incident_message_is_one_message_telegram_accepts(incident: Incident) -> None:
    """Edited in place, the incident message must always fit one message."""
    accepted(incident_message(incident))


@EXAMPLES
@given(incidents())
def test_incident_buttons_are_a_keyboard_telegram_accepts(incident: Incident) -> None:
    """Signed callback_data stays within 64 bytes, even for a twelve-digit incident id."""
    markup = incident_keyboard(Signer(b"k" * 32), incident, diagnose=True)
    if markup is not None:
        check_reply_markup(markup.model_dump(mode="json", exclude_none=True))


@pytest.mark.slow
@EXAMPLES
@given(st.lists(incidents(), min_size=1, max_size=60))
def test_incident_lists_split_into_messages_telegram_accepts(found: list[Incident]) -> None:
    all_accepted("\n".join(["<b>Open incidents</b>", *map(incident_line, found)]))


@pytest.mark.slow
@EXAMPLES
@given(st.dictionaries(text, st.tuples(st.sampled_from(list(Status)), text), max_size=20))
def test_health_splits_into_messages_telegram_accepts(
    components: dict[str, tuple[Status, str]],
) -> None:
    report = HealthReport(
        status=Status.DEGRADED,
        components={k: ComponentHealth(status=s, detail=d) for k, (s, d) in components.items()},
    )
    all_accepted(health_text(report))


@pytest.mark.slow
@EXAMPLES
@given(st.lists(st.tuples(text, st.one_of(st.booleans(), text), text), max_size=30))
def test_flags_split_into_messages_telegram_accepts(rows: list[tuple[str, object, str]]) -> None:
    states = [
        FlagState(
            name=name,
            kind=FlagKind.BOOL if isinstance(value, bool) else FlagKind.VENUE,
            value=value,
            default=False,
            source=Source.DEFAULT,
            description=description,
            applies="now",
        )
        for name, value, description in rows
    ]
    all_accepted(flags_text(states))


@pytest.mark.slow
@EXAMPLES
@given(st.lists(st.tuples(actors, text, text, short), max_size=40), st.none() | text)
def test_audit_splits_into_messages_telegram_accepts(
    rows: list[tuple[Actor, str, str, str]], problem: str | None
) -> None:
    entries = [
        AuditEntry(
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            seq=seq,
            ts=NOW,
            prev_hash="0" * 64,
            hash="1" * 64,
        )
        for seq, (actor, action, target, outcome) in enumerate(rows)
    ]
    verify = None if problem is None else VerifyReport(ok=False, checked=1, problem=problem)
    all_accepted(audit_text(entries, verify))


@pytest.mark.slow
@EXAMPLES
@given(st.lists(st.tuples(text, st.sampled_from(list(Mark)), text), min_size=1, max_size=40))
def test_the_checklist_splits_into_messages_telegram_accepts(
    rows: list[tuple[str, Mark, str]],
) -> None:
    items = [ChecklistItem(name=n, mark=m, reason=r) for n, m, r in rows]
    all_accepted(checklist_text(Checklist(generated_at=NOW, items=items)))


def test_a_javascript_source_is_shown_as_code_not_as_a_link() -> None:
    incident = Incident(
        key="k",
        source=AlertSource.ALERTMANAGER,
        fingerprint="fp",
        title="Evil",
        severity=Severity.CRITICAL,
        generator_url="javascript:alert(document.cookie)",
        annotations={"runbook_url": "https://runbooks.example/evil"},
        first_seen=NOW,
        last_seen=NOW,
    )
    shown, entities = parse_html(incident_message(incident))
    assert "source: javascript:alert(document.cookie)" in shown
    assert [e.get("url") for e in entities if e["type"] == "text_link"] == [
        "https://runbooks.example/evil"
    ]
    assert {"type": "code"} in [{"type": e["type"]} for e in entities]


async def test_a_hostile_alert_reaches_the_chat_through_the_strict_fake(
    telegram: TelegramBot, fake_telegram: FakeTelegram
) -> None:
    """Webhook → real bot → Bot API over HTTP: the strict fake accepts the incident message."""
    many = {f"l{i:03d}": f"<i>v{i}</i> &amp; \u202e😀" for i in range(120)}
    alert = am_alert(
        "Storm<b>" + "A" * 392,  # a 400-character alertname with markup
        fingerprint="fp-hostile",
        description="&lt;script&gt; " * 600 + "😀" * 200,  # over 9,000 characters
        **many,
    )
    alert["generatorURL"] = "javascript:alert(1)"
    alert["annotations"]["summary"] = "\u200fעברית <pre>" + "x" * 9000
    transport = httpx.ASGITransport(app=create_app(telegram.plane, telegram=telegram))
    async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
        response = await client.post(
            "/api/v1/alerts/alertmanager",
            json=am_payload(alert),
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        )
    assert response.status_code < 300, response.text

    def delivered() -> str | None:
        return next(
            (m.text for m in fake_telegram.messages(OPS) if m.text and "Storm<b>A" in m.text), None
        )

    shown = await fake_telegram.wait_for(delivered, timeout=10)
    assert "source: javascript:alert(1)" in shown
    refused = [c for c in fake_telegram.calls_to("sendMessage") if not c.ok]
    assert refused == [], [c.description for c in refused]
