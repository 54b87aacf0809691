"""Webhook bodies from Alertmanager, Grafana and falcosidekick, parsed into ``Alert``s.

This module owns the wire formats of the three alert sources and their mapping onto the one
``Alert`` model. Parsing is all or nothing: a body either yields every alert it carries or raises
``PayloadError`` naming the first bad field (``alerts[2].labels.alertname: field required``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from core.errors import InvalidInput
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

# Alertmanager (and Grafana's fork of it) send Go's zero time as endsAt while an alert fires.
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PayloadError(InvalidInput):
    """A webhook body is malformed; the message names the offending field path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- timestamps ---------------------------------------------------------------------------


def _parse_timestamp(value: object) -> datetime:
    """Parse an RFC 3339 timestamp (up to nanoseconds, offset required) into UTC."""
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
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


Timestamp = Annotated[datetime, BeforeValidator(_parse_timestamp)]
EndTimestamp = Annotated[datetime | None, BeforeValidator(_parse_end_timestamp)]


def _iso(moment: datetime | None) -> str | None:
    """The canonical text of a parsed timestamp, for hashing."""
    return None if moment is None else moment.isoformat()


# --- wire models ---------------------------------------------------------------------------


class _Wire(BaseModel):
    """Base of the wire models: strict types, unknown fields ignored, camelCase aliases."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)


class _GroupedAlert(_Wire):
    """One alert inside an Alertmanager-style notification group."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: Timestamp = Field(alias="startsAt")
    ends_at: EndTimestamp = Field(alias="endsAt")
    fingerprint: str | None = Field(default=None, max_length=FINGERPRINT_MAX_CHARS)


class _AlertmanagerAlert(_GroupedAlert):
    """One alert of an Alertmanager webhook (v4) body."""

    generator_url: str = Field(alias="generatorURL")


class _AlertmanagerPayload(_Wire):
    """The Alertmanager webhook (v4) body."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
    alerts: list[_AlertmanagerAlert] = Field(min_length=1, max_length=MAX_ALERTS_PER_PAYLOAD)


class _GrafanaAlert(_GroupedAlert):
    """One alert of a Grafana webhook contact point body."""

    generator_url: str = Field(default="", alias="generatorURL")
    silence_url: str = Field(default="", alias="silenceURL")
    dashboard_url: str = Field(default="", alias="dashboardURL")
    panel_url: str = Field(default="", alias="panelURL")
    values: dict[str, float] | None = None
    value_string: str = Field(default="", alias="valueString")


class _GrafanaPayload(_Wire):
    """The Grafana unified alerting webhook contact point body (version 1)."""

    version: Literal["1"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    org_id: int = Field(alias="orgId")
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
    title: str
    state: str
    message: str
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
    time: Timestamp
    output_fields: dict[str, Any] | None
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


# --- mapping -------------------------------------------------------------------------------


def _is_security(labels: dict[str, str]) -> bool:
    """Whether an alert's labels mark it as a security alert."""
    return labels.get("security", "").strip().lower() == "true"


def _from_grouped(
    source: AlertSource,
    group_key: str,
    item: _GroupedAlert,
    *,
    title: str,
    annotations: dict[str, str],
    generator_url: str | None,
) -> Alert:
    """Build an ``Alert`` from one alert of an Alertmanager-style group."""
    fingerprint = item.fingerprint or stable_hash(source.value, sorted(item.labels.items()))
    dedup_key = stable_hash(
        source.value, fingerprint, item.status, _iso(item.starts_at), _iso(item.ends_at)
    )
    return Alert(
        source=source,
        fingerprint=fingerprint,
        dedup_key=dedup_key,
        status=AlertStatus(item.status),
        severity=severity_from_word(item.labels.get("severity")),
        title=title[:TITLE_MAX_CHARS],
        summary=annotations.get("summary") or title,
        description=annotations.get("description", ""),
        labels=dict(item.labels),
        annotations=annotations,
        starts_at=item.starts_at,
        ends_at=item.ends_at,
        generator_url=generator_url,
        group_key=group_key,
        security=_is_security(item.labels),
    )


def parse_alertmanager(body: Any) -> list[Alert]:
    """Turn an Alertmanager webhook (v4) body into one ``Alert`` per alert in the group."""
    payload = _validate(_AlertmanagerPayload, body)

    def convert(index: int, item: _AlertmanagerAlert) -> Alert:
        alertname = item.labels.get("alertname")
        if alertname is None:
            raise PayloadError(f"alerts[{index}].labels.alertname", "field required")
        if not alertname.strip():
            raise PayloadError(f"alerts[{index}].labels.alertname", "must not be empty")
        return _from_grouped(
            AlertSource.ALERTMANAGER,
            payload.group_key,
            item,
            title=alertname,
            annotations=dict(item.annotations),
            generator_url=item.generator_url or None,
        )

    return [convert(index, item) for index, item in enumerate(payload.alerts)]


def parse_grafana(body: Any) -> list[Alert]:
    """Turn a Grafana webhook contact point body into one ``Alert`` per alert in the group."""
    payload = _validate(_GrafanaPayload, body)

    def convert(item: _GrafanaAlert) -> Alert:
        title = (
            item.labels.get("alertname", "").strip()
            or item.labels.get("__alert_rule_title__", "").strip()
            or payload.title.strip()
            or "Grafana alert"
        )
        annotations = dict(item.annotations)
        for name, url in (("dashboardURL", item.dashboard_url), ("panelURL", item.panel_url)):
            if url:
                annotations[name] = url
        if item.value_string:
            annotations.setdefault("valueString", item.value_string)
        return _from_grouped(
            AlertSource.GRAFANA,
            payload.group_key,
            item,
            title=title,
            annotations=annotations,
            generator_url=item.generator_url or item.panel_url or item.dashboard_url or None,
        )

    return [convert(item) for item in payload.alerts]


def _field_text(value: Any) -> str:
    """Render one Falco output field value as text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), default=str)


def parse_falco(body: Any) -> list[Alert]:
    """Turn one falcosidekick webhook event into a single firing ``Alert``."""
    event = _validate(_FalcoEvent, body)
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
    raw_time = body["time"]  # validated above; hashed as sent so nanoseconds still tell apart
    fingerprint = stable_hash(
        "falco", event.rule, event.hostname, fields.get("container.id"), fields.get("k8s.pod.name")
    )
    alert = Alert(
        source=AlertSource.FALCO,
        fingerprint=fingerprint,
        dedup_key=event.uuid or stable_hash(event.rule, raw_time, event.output),
        status=AlertStatus.FIRING,
        severity=_FALCO_SEVERITY[event.priority],
        title=event.rule[:TITLE_MAX_CHARS],
        summary=event.output[:SUMMARY_MAX_CHARS] or event.rule,
        description="\n".join(f"{k}={_field_text(v)}" for k, v in sorted(fields.items())),
        labels=labels,
        annotations=annotations,
        starts_at=event.time,
        security=event.priority in _FALCO_SECURITY_PRIORITIES,
    )
    return [alert]
