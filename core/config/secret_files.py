"""``<NAME>_FILE`` secrets: a secret setting read from a file, as Docker secrets and Vault agent
render them.

The file's content, stripped, becomes the setting's value. Setting both ``NAME`` and
``NAME_FILE`` is refused, and so is a file that cannot be read; the errors name the variable and
the path, never the content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from core.errors import ConfigError

SUFFIX = "_file"


class SecretFileSource(PydanticBaseSettingsSource):
    """Settings source giving each secret field the content of its ``<NAME>_FILE``."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        fields: Iterable[str],
        environments: Iterable[Mapping[str, str | None]],
    ) -> None:
        super().__init__(settings_cls)
        self._fields = sorted(fields)
        self._environments = list(environments)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: values are produced all at once by ``__call__``."""
        return None, field_name, False

    def _lookup(self, name: str) -> str:
        """The first non-empty value of ``name`` (lower case) in the environments."""
        for environment in self._environments:
            value = environment.get(name)
            if value is not None and value.strip():
                return value.strip()
        return ""

    def __call__(self) -> dict[str, Any]:
        """Read every ``<NAME>_FILE`` that is set; refuse ambiguous or unreadable ones."""
        values: dict[str, Any] = {}
        for field in self._fields:
            path_text = self._lookup(field + SUFFIX)
            if not path_text:
                continue
            name = field.upper()
            if self._lookup(field):
                raise ConfigError(f"{name} and {name}_FILE are both set; keep only one")
            values[field] = read_secret_file(f"{name}_FILE", Path(path_text))
        return values


def read_secret_file(variable: str, path: Path) -> str:
    """The stripped content of a secret file, or a ``ConfigError`` naming ``variable``."""
    try:
        content = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{variable}: cannot read {path}: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}: {path} is not UTF-8 text") from None
    if not content:
        raise ConfigError(f"{variable}: {path} is empty")
    return content
