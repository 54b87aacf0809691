"""``.env.example`` documents every setting and is itself a valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

from core.config.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_every_setting_is_documented() -> None:
    text = EXAMPLE.read_text()
    mentioned = {m.lower() for m in re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M)}
    assert set(Settings.model_fields) <= mentioned


def test_example_loads_as_is() -> None:
    settings = Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    assert settings.api_port == 8000
