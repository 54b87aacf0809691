"""Alert identity: fingerprints and dedup keys never change from one release to the next.

Stored dedup keys recognise a sender's retry and stored incident keys group repeats, so the hash
of the same parts must stay byte for byte what it was, whichever way it is computed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from core.models.alerts import AlertSource, stable_hash


def canonical_hash(*parts: Any) -> str:
    """The definition: SHA-256 of the sorted, compact JSON of the parts, cut to 32 hex digits."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_stable_hash_keeps_the_values_stored_by_earlier_releases() -> None:
    started = "2026-11-28T09:00:00+00:00"
    assert stable_hash("alertmanager", "fp-1", "firing", started, None) == (
        "6e8b6207cc703a58dba5edab275b2ee8"
    )
    labels = [("alertname", "Drawdown"), ("job", "lunia")]
    assert stable_hash("alertmanager", labels) == "3afaecdcce2a223cc143010085185305"
    assert stable_hash("grafana", 'ü"\\\n😀', None) == "edd567d8526626a804ae3f8e8da95811"


@pytest.mark.parametrize(
    "parts",
    [
        ("alertmanager", "fp", "resolved", "2026-11-28T09:00:00+00:00", "2026-11-28T09:30:00Z"),
        ('ü"\\\n\x00\t\u2028é😀', None),
        ("\ud800",),  # half a surrogate pair, as JSON may escape it
        (None,),
        (),
        ("",),
        (AlertSource.FALCO, "rule"),
        ("falco", "rule", "host", None, 5, 1.5, True),
        ({"b": 1, "a": [2, None]}, datetime(2026, 1, 1, tzinfo=UTC)),
        ("alertmanager", sorted({"z": "1", "a": "ü"}.items())),
    ],
)
def test_stable_hash_matches_its_definition(parts: tuple[Any, ...]) -> None:
    assert stable_hash(*parts) == canonical_hash(*parts)
