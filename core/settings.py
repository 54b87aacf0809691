"""Settings: every knob of the control plane, read from the environment and ``.env``.

Names are the environment variable names of DESIGN §4 (case-insensitive). A bad value stops
startup with one line naming the variable (``Settings.load``); secrets are ``SecretStr`` so they
never print.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from core.alerts import Severity
from core.errors import ConfigError
from core.incident_model import EscalationStep
from core.models import Role

_VENUE_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_SECRET_FIELDS = frozenset(
    {
        "api_tokens",
        "alert_webhook_token",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "redis_url",
        "openai_api_key",
        "pagerduty_routing_key",
    }
)

UserIds = Annotated[list[int], NoDecode]


def default_escalation_policy() -> dict[Severity, EscalationStep]:
    """Critical pages after 5 min (3 times), warnings reach the escalation chat after 30 min."""
    return {
        Severity.CRITICAL: EscalationStep(
            ack_timeout_seconds=300, repeat=3, targets=["chat", "pagerduty"]
        ),
        Severity.WARNING: EscalationStep(ack_timeout_seconds=1800, repeat=1, targets=["chat"]),
        Severity.INFO: EscalationStep(ack_timeout_seconds=3600, repeat=0, targets=[]),
    }


def _split_ids(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        for part in parts:
            if not re.fullmatch(r"-?\d+", part):
                raise ValueError(f"expected comma-separated numeric Telegram ids, got {part!r}")
        return [int(p) for p in parts]
    return value


class ApiToken:
    """One configured API bearer token: its role and a printable name (never the token)."""

    __slots__ = ("name", "role", "token")

    def __init__(self, name: str, role: Role, token: str) -> None:
        self.name = name
        self.role = role
        self.token = token


class Settings(BaseSettings):
    """All settings of one control-plane process."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    lunia_state_dir: Path = Path("./var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_tokens: SecretStr | None = None
    alert_webhook_token: SecretStr | None = None
    health_check_interval_seconds: float = Field(default=5.0, gt=0, le=300)

    telegram_bot_token: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"
    telegram_ops_chat_id: int | None = None
    telegram_escalation_chat_id: int | None = None
    telegram_security_chat_id: int | None = None
    telegram_admins: UserIds = Field(default_factory=list)
    telegram_operators: UserIds = Field(default_factory=list)
    telegram_viewers: UserIds = Field(default_factory=list)
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None

    exchange_primary: str = "binance"
    exchange_failover: str = "okx"
    binance_force_mock: bool = False
    binance_live_trading: bool = True
    sandbox_enabled: bool = False

    enable_redis: bool = False
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    llm_rate_limited: bool = False

    escalation_policy: dict[Severity, EscalationStep] = Field(
        default_factory=default_escalation_policy
    )
    escalation_check_seconds: float = Field(default=10.0, gt=0, le=3600)
    incident_reopen_minutes: float = Field(default=60.0, ge=0)
    silence_sync_seconds: float = Field(default=30.0, gt=0, le=3600)

    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    alertmanager_url: str | None = None

    self_healing_enabled: bool = True
    auto_backup_enabled: bool = True
    infra_prod_enabled: bool = False
    frontend_signal_health_enabled: bool = True

    _split = field_validator(
        "telegram_admins", "telegram_operators", "telegram_viewers", mode="before"
    )(_split_ids)

    @field_validator("exchange_primary", "exchange_failover")
    @classmethod
    def _venue_id(cls, value: str) -> str:
        value = value.strip().lower()
        if not _VENUE_ID.fullmatch(value):
            raise ValueError(f"expected a ccxt exchange id such as 'binance', got {value!r}")
        return value

    @field_validator(
        "telegram_api_base",
        "pagerduty_events_url",
        "openai_base_url",
        "alertmanager_url",
        "telegram_webhook_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("escalation_policy")
    @classmethod
    def _targets_known(
        cls, value: dict[Severity, EscalationStep]
    ) -> dict[Severity, EscalationStep]:
        for severity, step in value.items():
            unknown = set(step.targets) - {"chat", "pagerduty"}
            if unknown:
                raise ValueError(
                    f"{severity.value}: unknown targets {sorted(unknown)} (use chat, pagerduty)"
                )
        return {**default_escalation_policy(), **value}

    @field_validator("api_tokens")
    @classmethod
    def _tokens_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_tokens(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _webhook_mode_complete(self) -> Settings:
        if self.telegram_mode == "webhook" and self.telegram_bot_token is not None:
            if not self.telegram_webhook_url:
                raise ValueError("TELEGRAM_WEBHOOK_URL is required when TELEGRAM_MODE=webhook")
            if self.telegram_webhook_secret is None:
                raise ValueError("TELEGRAM_WEBHOOK_SECRET is required when TELEGRAM_MODE=webhook")
        return self

    @property
    def db_path(self) -> Path:
        """Where the SQLite state database lives."""
        return self.lunia_state_dir / "lunia.db"

    def configured_api_tokens(self) -> list[ApiToken]:
        """The API tokens from ``API_TOKENS`` (empty when unset)."""
        if self.api_tokens is None:
            return []
        return parse_api_tokens(self.api_tokens.get_secret_value())

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read settings, turning a validation error into one ``ConfigError`` line."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        except SettingsError as exc:  # a complex value (JSON) that does not parse
            found = re.search(r'field "(\w+)"', str(exc))
            name = found.group(1).upper() if found else "settings"
            raise ConfigError(f"{name}: not valid JSON") from None


def parse_api_tokens(raw: str) -> list[ApiToken]:
    """Parse ``role:token`` pairs, comma separated, into named tokens."""
    tokens: list[ApiToken] = []
    counts: dict[Role, int] = {}
    for index, item in enumerate(p.strip() for p in raw.split(",")):
        if not item:
            continue
        role_text, sep, token = item.partition(":")
        try:
            role = Role(role_text.strip().lower())
        except ValueError:
            raise ValueError(
                f"entry {index + 1}: role must be viewer, operator or admin (format role:token)"
            ) from None
        if not sep or len(token.strip()) < 8:
            raise ValueError(f"entry {index + 1}: token missing or shorter than 8 characters")
        counts[role] = counts.get(role, 0) + 1
        tokens.append(ApiToken(f"{role.value}-{counts[role]}", role, token.strip()))
    return tokens


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad variable, never echoing a secret's value."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field:
        return f"invalid settings: {message}"
    shown = ""
    if field not in _SECRET_FIELDS and "input" in error and isinstance(error["input"], str):
        shown = f" (got {error['input']!r})"
    return f"{field.upper()}: {message}{shown}"
