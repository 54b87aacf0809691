"""Webhook bodies from Alertmanager, Grafana and falcosidekick, parsed into ``Alert``s.

This module owns the wire formats of the three alert sources and their mapping onto the one
``Alert`` model. Parsing is all or nothing: a body either yields every alert it carries or raises
``PayloadError`` naming the first bad field (``alerts[2].labels.alertname: field required``).

Strict about what identifies an alert, lenient about the rest, because Alertmanager does not retry
a 4xx and a refused alert is lost: fields real senders leave out (``version``, ``groupKey``,
``externalURL``, ``generatorURL``, ``receiver``, an alert's ``status``, ``labels`` or
``alertname``) are derived the way the sender would, a timestamp that cannot be read becomes the
receive time (``startsAt``, a Falco ``time``, a resolved alert's ``endsAt``), and over-long text
is cut rather than refused. Whatever was repaired is written into ``Alert.notes`` for the
incident's timeline. Only a body that carries no alert at all, or fields of the wrong JSON type,
is refused.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from core.errors import InvalidInput
from core.models import utcnow
from core.models.alerts import (
    Alert,
    AlertSource,
    AlertStatus,
    Severity,
    severity_from_word,
    stable_hash,
)

MAX_ALERTS_PER_PAYLOAD = 1000
SUMMARY_MAX_CHARS = 1000
TITLE_MAX_CHARS = 300
FINGERPRINT_MAX_CHARS = 128
# Bounds on what one stored alert may hold: generous for real alerts (a Prometheus label value is
# rarely over a few hundred characters), small enough that a hostile body cannot bloat the store
# or every chat message. Longer text is cut with an ellipsis and a note, never refused.
MAX_JSON_DEPTH = 64
NAME_MAX_CHARS = 256
LABEL_VALUE_MAX_CHARS = 1024
ANNOTATION_MAX_CHARS = 4096
DESCRIPTION_MAX_CHARS = 4096
URL_MAX_CHARS = 4096
MAX_LABELS = 256
# The title of an alert that names nothing: no alertname, no rule title, no telling labels.
UNNAMED_ALERT = "unnamed alert"

# Alertmanager (and Grafana's fork of it) send Go's zero time as endsAt while an alert fires.
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# JSON may escape half a surrogate pair (``"\ud800"``); such text cannot be stored as UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class PayloadError(InvalidInput):
    """A webhook body is malformed; the message names the offending field path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- raw bytes ----------------------------------------------------------------------------


def check_nesting(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse a body nested deeper than ``limit`` before any JSON parser recurses into it."""
    openers = raw.count(b"[") + raw.count(b"{")
    if openers <= limit:
        return  # cannot be deeper than the number of brackets it opens
    # Strings may hold any brackets: only the ones outside them count. Dropping escaped
    # backslashes, then escaped quotes (left to right, as a JSON parser reads escapes), leaves
    # only the quotes that open and close strings: every other piece between them is outside.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            raise PayloadError("body", f"JSON nesting deeper than {limit} levels")


# --- timestamps ---------------------------------------------------------------------------


def _parse_timestamp(value: object) -> datetime:
    """Parse an RFC 3339 timestamp (up to nanoseconds, offset required) into UTC."""
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    return _parse_rfc3339(value)


@functools.lru_cache(maxsize=4096)  # a group's alerts share times (endsAt: Go's zero time)
def _parse_rfc3339(value: str) -> datetime:
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp with a time zone")
    date, clock, fraction, offset = match.groups()
    # Go writes up to 9 fractional digits; Python keeps 6, so the nanoseconds are dropped.
    micros = f".{fraction[:6].ljust(6, '0')}" if fraction else ""
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}{micros}{zone}").astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise ValueError("not a valid date and time") from e


def _parse_end_timestamp(value: object) -> datetime | None:
    """Parse ``endsAt``; Go's zero time (an alert still firing) means no end."""
    parsed = _parse_timestamp(value)
    return None if parsed == _GO_ZERO_TIME else parsed


@functools.lru_cache(maxsize=4096)  # as for parsing: a group's alerts share their times
def _iso(moment: datetime | None) -> str | None:
    """The canonical text of a parsed timestamp, for hashing."""
    return None if moment is None else moment.isoformat()


# --- wire models ---------------------------------------------------------------------------


class _Wire(BaseModel):
    """Base of the wire models: strict types, unknown fields ignored, camelCase aliases."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)


class _GroupedAlert(_Wire):
    """One alert inside an Alertmanager-style notification group."""

    # Absent in some senders' bodies: derived from endsAt, as Alertmanager itself does.
    status: Literal["firing", "resolved"] | None = None
    # Go marshals an empty map as null; an alert without labels is still an alert.
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    # Read leniently in ``_from_grouped``: absent means "now", as Alertmanager's own API treats a
    # pushed alert without one; an unreadable one becomes the receive time, noted.
    starts_at: Any = Field(default=None, alias="startsAt")
    ends_at: Any = Field(default=None, alias="endsAt")
    fingerprint: str | None = Field(default=None, max_length=FINGERPRINT_MAX_CHARS)
    generator_url: str | None = Field(default=None, alias="generatorURL")


class _AlertmanagerAlert(_GroupedAlert):
    """One alert of an Alertmanager webhook (v4) body."""


class _GroupedPayload(_Wire):
    """What Alertmanager and Grafana bodies share; only ``alerts`` and ``receiver`` are required."""

    group_key: str | None = Field(default=None, alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"] | None = None
    receiver: str = ""  # only names the sender's route; some senders leave it out
    group_labels: dict[str, str] | None = Field(default=None, alias="groupLabels")
    common_labels: dict[str, str] | None = Field(default=None, alias="commonLabels")
    common_annotations: dict[str, str] | None = Field(default=None, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")

    @property
    def derived_group_key(self) -> str:
        """The sender's groupKey, or the one Alertmanager would form from the group labels."""
        if self.group_key is not None:
            return self.group_key
        labels = ", ".join(
            f"{name}={json.dumps(value, ensure_ascii=False)}"
            for name, value in sorted((self.group_labels or {}).items())
        )
        return f"{{}}:{{{labels}}}"


class _AlertmanagerPayload(_GroupedPayload):
    """The Alertmanager webhook (v4) body (older Alertmanagers send no ``version``)."""

    version: Literal["4"] = "4"
    alerts: list[_AlertmanagerAlert] = Field(min_length=1, max_length=MAX_ALERTS_PER_PAYLOAD)


class _GrafanaAlert(_GroupedAlert):
    """One alert of a Grafana webhook contact point body."""

    silence_url: str = Field(default="", alias="silenceURL")
    dashboard_url: str = Field(default="", alias="dashboardURL")
    panel_url: str = Field(default="", alias="panelURL")
    values: dict[str, float] | None = None
    value_string: str = Field(default="", alias="valueString")


class _GrafanaPayload(_GroupedPayload):
    """The Grafana unified alerting webhook contact point body (version 1)."""

    version: Literal["1"] = "1"
    org_id: int = Field(default=0, alias="orgId")
    title: str = ""
    state: str = ""
    message: str = ""
    alerts: list[_GrafanaAlert] = Field(min_length=1, max_length=MAX_ALERTS_PER_PAYLOAD)


_FALCO_PRIORITIES = (
    "Emergency",
    "Alert",
    "Critical",
    "Error",
    "Warning",
    "Notice",
    "Informational",
    "Debug",
)
_FALCO_SEVERITY = {
    "Emergency": Severity.CRITICAL,
    "Alert": Severity.CRITICAL,
    "Critical": Severity.CRITICAL,
    "Error": Severity.WARNING,
    "Warning": Severity.WARNING,
    "Notice": Severity.INFO,
    "Informational": Severity.INFO,
    "Debug": Severity.INFO,
}
_FALCO_SECURITY_PRIORITIES = frozenset({"Emergency", "Alert", "Critical"})
_FALCO_LABEL_FIELDS = (
    "container.id",
    "container.name",
    "k8s.ns.name",
    "k8s.pod.name",
    "proc.name",
    "user.name",
)


class _FalcoEvent(_Wire):
    """One falcosidekick webhook event (Falco's JSON output plus sidekick's additions)."""

    output: str
    priority: str
    rule: str = Field(min_length=1)
    # Read leniently in ``parse_falco``: an unreadable time becomes the receive time.
    time: Any = None
    output_fields: dict[str, Any] | None = None
    source: str = ""
    tags: list[str] | None = None
    hostname: str = ""
    uuid: str = Field(default="", max_length=FINGERPRINT_MAX_CHARS)

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, word: str) -> str:
        """Accept Falco's priority words in any case, answering the canonical spelling."""
        for canonical in _FALCO_PRIORITIES:
            if canonical.lower() == word.strip().lower():
                return canonical
        raise ValueError(f"must be one of {', '.join(_FALCO_PRIORITIES)}")


# --- error reporting -----------------------------------------------------------------------


def _json_kind(value: object) -> str:
    """Name a Python value by its JSON type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object"


def _show(value: object) -> str:
    """A short rendering of an offending input value."""
    if value is None or isinstance(value, bool | int | float | str):
        text = json.dumps(value)
        return text if len(text) <= 60 else f"{text[:57]}..."
    return _json_kind(value)


def _format_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location as ``alerts[2].labels.alertname``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path or "body"


_EXPECTED = {
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "list_type": "a JSON array",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
}


def _problem(error: ErrorDetails) -> str:
    """Say in plain words what is wrong with one field."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error["input"]
    if kind == "missing":
        return "field required"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(value)}"
    if kind == "too_short" and isinstance(value, list):
        return f"expected at least {ctx['min_length']} item(s), got {len(value)}"
    if kind == "too_long" and isinstance(value, list):
        return f"expected at most {ctx['max_length']} items, got {len(value)}"
    text = str(ctx["error"]) if kind == "value_error" else error["msg"]
    return f"{text[:1].lower()}{text[1:]}, got {_show(value)}"


def _payload_error(exc: ValidationError) -> PayloadError:
    """Turn a pydantic validation error into a ``PayloadError`` about its first problem."""
    errors = exc.errors(include_url=False)
    problem = _problem(errors[0])
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return PayloadError(_format_path(errors[0]["loc"]), problem)


_Model = TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], body: Any) -> _Model:
    """Validate a decoded JSON body against a wire model, or raise ``PayloadError``."""
    if not isinstance(body, dict):
        raise PayloadError("body", f"expected a JSON object, got {_json_kind(body)}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise _payload_error(e) from e


# --- bounding what is stored ------------------------------------------------------------------


def _clean(text: str) -> str:
    """Text that can be stored and sent: a lone surrogate becomes U+FFFD."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def _cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long, an ellipsis marking a cut."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


class _Bounds:
    """Cuts one alert's text to the stored limits, remembering what it cut for the timeline."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._cut: dict[str, list[str]] = {}

    def text(self, what: str, value: str, limit: int) -> str:
        """``value`` cleaned and cut to ``limit`` characters (noted under ``what``)."""
        if len(value) <= limit and value.isascii():
            return value  # most text: nothing to clean, nothing to cut
        value = _clean(value)
        if len(value) <= limit:
            return value
        self._cut.setdefault(f"{what} cut to {limit:,} characters", []).append(
            f"{_cut(value, 40)!r} was {len(value):,}"
        )
        return _cut(value, limit)

    def mapping(self, what: str, values: dict[str, str], limit: int) -> dict[str, str]:
        """Labels or annotations with names and values cut, at most ``MAX_LABELS`` of them."""
        if (  # most labels: few, short and ASCII; kept as sent without a look at each
            len(values) <= MAX_LABELS
            and max(map(len, values), default=0) <= NAME_MAX_CHARS
            and max(map(len, values.values()), default=0) <= limit
            and "".join(values).isascii()
            and "".join(values.values()).isascii()
        ):
            return dict(values)
        items = list(values.items())
        if len(items) > MAX_LABELS:
            self.notes.append(f"kept the first {MAX_LABELS} of {len(items)} {what}")
            items = items[:MAX_LABELS]
        bounded: dict[str, str] = {}
        for name, value in items:
            key = self.text(f"{what} names", name, NAME_MAX_CHARS)
            shown = _cut(key, 40)
            bounded[key] = self.text(f"{what} {shown!r}", value, limit)
        return bounded

    def url(self, value: str | None) -> str | None:
        """A link kept whole or not at all: a cut URL would lead somewhere else."""
        if not value:
            return None
        value = _clean(value)
        if len(value) > URL_MAX_CHARS:
            self.notes.append(f"dropped a {len(value):,}-character link (over {URL_MAX_CHARS:,})")
            return None
        return value

    def all_notes(self) -> list[str]:
        """Every note, cuts grouped per field so a hostile body cannot flood the timeline."""
        cuts = [
            f"{what} ({'; '.join(examples[:3])}{'; …' if len(examples) > 3 else ''})"
            for what, examples in self._cut.items()
        ]
        return [*self.notes, *cuts][:10]


def _alert(bounds: _Bounds, **fields: Any) -> Alert:
    """An ``Alert`` from already bounded fields, with the bounding notes."""
    return Alert(**fields, notes=bounds.all_notes())


# --- mapping -------------------------------------------------------------------------------


def _is_security(labels: dict[str, str]) -> bool:
    """Whether an alert's labels mark it as a security alert."""
    return labels.get("security", "").strip().lower() == "true"


def _status(item: _GroupedAlert, ends_at: datetime | None, received_at: datetime) -> AlertStatus:
    """The alert's status, or the one its ``endsAt`` implies (an end in the past: resolved)."""
    if item.status is not None:
        return AlertStatus(item.status)
    if ends_at is not None and ends_at <= received_at:
        return AlertStatus.RESOLVED
    return AlertStatus.FIRING


class _Times(NamedTuple):
    """An alert's start and end as read, and as hashed for its dedup key (as sent, when
    unreadable, so a sender's retry still matches)."""

    starts_at: datetime
    ends_at: datetime | None
    hashed: tuple[str | None, str | None]


def _unreadable(raw: object) -> str:
    """A timestamp that cannot be read, as sent (for the note and the dedup key)."""
    return _cut(_clean(json.dumps(raw, ensure_ascii=False, default=str)), 200)


def _grouped_times(item: _GroupedAlert, received_at: datetime, bounds: _Bounds) -> _Times:
    """Read ``startsAt`` and ``endsAt``; what cannot be read is replaced and noted."""
    starts_at, start_hash = received_at, None
    if item.starts_at is not None:
        try:
            starts_at = _parse_timestamp(item.starts_at)
            start_hash = _iso(starts_at)
        except ValueError:
            start_hash = _unreadable(item.starts_at)
            bounds.notes.append(
                f"startsAt {start_hash} is not an RFC 3339 timestamp; "
                f"the receive time {received_at.isoformat()} was used"
            )
    ends_at: datetime | None = None
    end_hash = None
    if item.ends_at is not None:
        try:
            ends_at = _parse_end_timestamp(item.ends_at)
            end_hash = _iso(ends_at)
        except ValueError:
            end_hash = _unreadable(item.ends_at)
            # An unreadable end must not resolve a firing alert: only a resolved one ends now.
            if item.status == "resolved":
                ends_at = received_at
                outcome = f"the receive time {received_at.isoformat()} was used"
            else:
                outcome = "the alert was taken as not ended"
            bounds.notes.append(f"endsAt {end_hash} is not an RFC 3339 timestamp; {outcome}")
    return _Times(starts_at, ends_at, (start_hash, end_hash))


def _title_from_labels(labels: dict[str, str]) -> str:
    """A title for an alert without an alertname: its identifying labels, as Prometheus writes
    a label set (severity says how bad, not what)."""
    names = sorted(n for n in labels if n not in ("alertname", "severity") and labels[n].strip())
    if not names:
        return UNNAMED_ALERT
    shown = ", ".join(
        f"{name}={json.dumps(labels[name], ensure_ascii=False)}" for name in names[:5]
    )
    return f"{{{shown}{', …' if len(names) > 5 else ''}}}"


def _from_grouped(
    source: AlertSource,
    group_key: str,
    item: _GroupedAlert,
    *,
    title: str,
    annotations: dict[str, str],
    generator_url: str | None,
    received_at: datetime,
    repaired: Sequence[str] = (),
) -> Alert:
    """Build an ``Alert`` from one alert of an Alertmanager-style group (``repaired``: notes
    on what the caller derived)."""
    bounds = _Bounds()
    bounds.notes.extend(repaired)
    sent_labels = item.labels or {}
    times = _grouped_times(item, received_at, bounds)
    # Identity comes from what was sent (before any cut), so a re-delivery hashes the same.
    fingerprint = item.fingerprint or stable_hash(source.value, sorted(sent_labels.items()))
    status = _status(item, times.ends_at, received_at)
    dedup_key = stable_hash(source.value, fingerprint, status.value, *times.hashed)
    labels = bounds.mapping("labels", sent_labels, LABEL_VALUE_MAX_CHARS)
    kept = bounds.mapping("annotations", annotations, ANNOTATION_MAX_CHARS)
    title = bounds.text("title", title, TITLE_MAX_CHARS)
    return _alert(
        bounds,
        source=source,
        fingerprint=_clean(fingerprint),
        dedup_key=dedup_key,
        status=status,
        severity=severity_from_word(sent_labels.get("severity")),
        title=title,
        summary=bounds.text("summary", kept.get("summary") or title, SUMMARY_MAX_CHARS),
        description=bounds.text("description", kept.get("description", ""), DESCRIPTION_MAX_CHARS),
        labels=labels,
        annotations=kept,
        starts_at=times.starts_at,
        ends_at=times.ends_at,
        generator_url=bounds.url(generator_url),
        group_key=_clean(group_key),
        security=_is_security(sent_labels),
    )


def parse_alertmanager(body: Any, *, received_at: datetime | None = None) -> list[Alert]:
    """Turn an Alertmanager webhook (v4) body into one ``Alert`` per alert in the group."""
    payload = _validate(_AlertmanagerPayload, body)
    now = received_at or utcnow()
    group_key = payload.derived_group_key

    def convert(item: _AlertmanagerAlert) -> Alert:
        labels = item.labels or {}
        title, repaired = labels.get("alertname", "").strip(), []
        if not title:
            title = _title_from_labels(labels)
            repaired.append(f"the alert carried no alertname; titled {title}")
        return _from_grouped(
            AlertSource.ALERTMANAGER,
            group_key,
            item,
            title=title,
            annotations=dict(item.annotations or {}),
            generator_url=item.generator_url,
            received_at=now,
            repaired=repaired,
        )

    return [convert(item) for item in payload.alerts]


def parse_grafana(body: Any, *, received_at: datetime | None = None) -> list[Alert]:
    """Turn a Grafana webhook contact point body into one ``Alert`` per alert in the group."""
    payload = _validate(_GrafanaPayload, body)
    now = received_at or utcnow()
    group_key = payload.derived_group_key

    def convert(item: _GrafanaAlert) -> Alert:
        labels = item.labels or {}
        title = (
            labels.get("alertname", "").strip()
            or labels.get("__alert_rule_title__", "").strip()
            or payload.title.strip()
        )
        repaired = []
        if not title:
            title = _title_from_labels(labels)
            repaired.append(f"the alert carried no alertname or rule title; titled {title}")
        annotations = dict(item.annotations or {})
        for name, url in (("dashboardURL", item.dashboard_url), ("panelURL", item.panel_url)):
            if url:
                annotations[name] = url
        if item.value_string:
            annotations.setdefault("valueString", item.value_string)
        return _from_grouped(
            AlertSource.GRAFANA,
            group_key,
            item,
            title=title,
            annotations=annotations,
            generator_url=item.generator_url or item.panel_url or item.dashboard_url or None,
            received_at=now,
            repaired=repaired,
        )

    return [convert(item) for item in payload.alerts]


def _field_text(value: Any) -> str:
    """Render one Falco output field value as text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), default=str)


def _falco_time(raw: object, received_at: datetime, bounds: _Bounds) -> datetime:
    """The event's time, or the receive time (noted with the raw value) when it cannot be read."""
    if raw is None:
        bounds.notes.append("the event carried no time; the receive time was used")
        return received_at
    try:
        return _parse_timestamp(raw)
    except ValueError:
        shown = _cut(_clean(json.dumps(raw, ensure_ascii=False, default=str)), 200)
        bounds.notes.append(
            f"the event's time {shown} is not an RFC 3339 timestamp; "
            f"the receive time {received_at.isoformat()} was used"
        )
        return received_at


def parse_falco(body: Any, *, received_at: datetime | None = None) -> list[Alert]:
    """Turn one falcosidekick webhook event into a single firing ``Alert``."""
    event = _validate(_FalcoEvent, body)
    bounds = _Bounds()
    starts_at = _falco_time(event.time, received_at or utcnow(), bounds)
    fields = event.output_fields or {}
    labels = {"rule": event.rule, "priority": event.priority}
    if event.hostname:
        labels["hostname"] = event.hostname
    if event.source:
        labels["source"] = event.source
    for name in _FALCO_LABEL_FIELDS:
        text = _field_text(fields.get(name))
        if text and text != "<NA>":
            labels[name] = text
    annotations = {"tags": ",".join(event.tags)} if event.tags else {}
    fingerprint = stable_hash(
        "falco", event.rule, event.hostname, fields.get("container.id"), fields.get("k8s.pod.name")
    )
    description = "\n".join(f"{k}={_field_text(v)}" for k, v in sorted(fields.items()))
    # Falco sends one event at a time: its group is the rule on one host, written the way
    # Alertmanager writes a group key.
    group = ", ".join(
        f"{name}={json.dumps(value, ensure_ascii=False)}"
        for name, value in (("hostname", event.hostname), ("rule", event.rule))
    )
    group_key = f"{{}}:{{{group}}}"
    return [
        _alert(
            bounds,
            source=AlertSource.FALCO,
            fingerprint=fingerprint,
            # The time is hashed as sent (not as read), so nanoseconds still tell events apart
            # and a re-delivery with an unreadable time still matches.
            dedup_key=_clean(event.uuid) or stable_hash(event.rule, event.time, event.output),
            status=AlertStatus.FIRING,
            severity=_FALCO_SEVERITY[event.priority],
            title=bounds.text("title", event.rule, TITLE_MAX_CHARS),
            summary=bounds.text("summary", event.output or event.rule, SUMMARY_MAX_CHARS),
            description=bounds.text("description", description, DESCRIPTION_MAX_CHARS),
            labels=bounds.mapping("labels", labels, LABEL_VALUE_MAX_CHARS),
            annotations=bounds.mapping("annotations", annotations, ANNOTATION_MAX_CHARS),
            starts_at=starts_at,
            group_key=_clean(group_key),
            security=event.priority in _FALCO_SECURITY_PRIORITIES,
        )
    ]
