"""Alerts as they arrive from outside: one ``Alert`` model, whatever the source.

Parsers for each source's webhook body live in ``core/incidents/receivers.py``; this module owns the
model, the severity vocabulary and the identity rules (fingerprint and delivery dedup key).
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import BaseModel, Field


class AlertSource(enum.StrEnum):
    """Where an alert came from."""

    ALERTMANAGER = "alertmanager"
    GRAFANA = "grafana"
    FALCO = "falco"
    ENGINE = "engine"


class Severity(enum.StrEnum):
    """Incident severity; each source's own words are mapped onto these."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is more severe."""
        return {"critical": 3, "warning": 2, "info": 1}[self.value]


class AlertStatus(enum.StrEnum):
    """Whether the condition is active or has cleared."""

    FIRING = "firing"
    RESOLVED = "resolved"


_SEVERITY_WORDS = {
    "critical": Severity.CRITICAL,
    "crit": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "high": Severity.CRITICAL,
    "error": Severity.CRITICAL,
    "fatal": Severity.CRITICAL,
    "emergency": Severity.CRITICAL,
    "alert": Severity.CRITICAL,
    "p1": Severity.CRITICAL,
    "warning": Severity.WARNING,
    "warn": Severity.WARNING,
    "medium": Severity.WARNING,
    "p2": Severity.WARNING,
    "p3": Severity.WARNING,
    "info": Severity.INFO,
    "informational": Severity.INFO,
    "low": Severity.INFO,
    "notice": Severity.INFO,
    "debug": Severity.INFO,
    "none": Severity.INFO,
    "p4": Severity.INFO,
}


def severity_from_word(word: str | None, default: Severity = Severity.WARNING) -> Severity:
    """Map a source's severity word onto ours (unknown or missing words get ``default``)."""
    if not word:
        return default
    return _SEVERITY_WORDS.get(word.strip().lower(), default)


# The canonical form hashed below: stored fingerprints and dedup keys depend on every byte of it.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(*parts: Any) -> str:
    """A short, stable identifier from JSON-able parts (used for fingerprints and dedup keys)."""
    if all(part is None or type(part) is str for part in parts):
        # Every alert's dedup key: the text ``_CANONICAL`` writes, at a third of its cost.
        canonical = (
            f"[{','.join('null' if p is None else encode_basestring_ascii(p) for p in parts)}]"
        )
    else:
        canonical = _CANONICAL.encode(parts)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Alert(BaseModel):
    """One alert notification, normalised.

    ``fingerprint`` identifies the alerting condition (repeats of it group into one incident);
    ``dedup_key`` identifies this very delivery, so a sender's retry of the same payload is
    recognised and stored once.
    """

    source: AlertSource
    fingerprint: str = Field(min_length=1, max_length=128)
    dedup_key: str = Field(min_length=1, max_length=128)
    status: AlertStatus
    severity: Severity
    title: str = Field(min_length=1, max_length=300)
    summary: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    generator_url: str | None = None
    group_key: str | None = None
    security: bool = False
    # What the receiver had to repair to accept it (an unreadable time, text cut to the stored
    # limits); the incident's timeline shows these notes.
    notes: list[str] = Field(default_factory=list)
