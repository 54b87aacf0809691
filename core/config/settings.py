"""Settings: every knob of the control plane, read from the environment and ``.env``.

Names are the environment variable names of DESIGN §4 (case-insensitive). A bad value stops
startup with one line naming the variable (``Settings.load``); secrets are ``SecretStr`` so they
never print.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from core.config.secret_files import SecretFileSource
from core.errors import ConfigError, InvalidInput
from core.models import Role, parse_duration
from core.models.alerts import Severity
from core.models.incidents import EscalationStep

_VENUE_ID = re.compile(r"^[a-z][a-z0-9_]*$")
# A Prometheus label name.
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_FIELDS = frozenset(
    {
        "smtp_password",
        "api_tokens",
        "alert_webhook_token",
        "metrics_token",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "callback_signing_key",
        "backup_signing_key",
        "backup_signing_keys_old",
        "redis_url",
        "redis_password",
        "openai_api_key",
        "pagerduty_routing_key",
        "s3_access_key_id",
        "s3_secret_access_key",
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


class VenueCredentials(BaseModel):
    """One venue's ccxt credentials and REST host override; secrets never print."""

    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    password: SecretStr | None = None
    api_url: str | None = None

    @property
    def complete(self) -> bool:
        """True when there is at least a key and a secret to trade with."""
        return self.api_key is not None and self.secret is not None


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
    # Requests per minute per bearer token on /api/v1 (alert webhooks exempt); 0 turns it off.
    api_rate_limit_per_minute: int = Field(default=600, ge=0, le=1_000_000)
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-Proto/-For are believed; none by default.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Bearer token Prometheus sends to /metrics: required when set, and under INFRA_PROD_ENABLED
    # (generated into the state dir then if unset; core/security/secrets.py).
    metrics_token: SecretStr | None = None
    # /docs, /redoc, /openapi.json: unset means on, except under INFRA_PROD_ENABLED.
    api_docs_enabled: bool | None = None

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
    callback_signing_key: SecretStr | None = None
    checklist_time_utc: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    exchange_primary: str = "binance"
    exchange_failover: str = "okx"
    binance_force_mock: bool = False
    binance_live_trading: bool = True
    sandbox_enabled: bool = False
    # The trading engine (issue #5): failover, cores, risk and the paper venue.
    failover_after_failures: int = Field(default=3, ge=1, le=100)
    venue_probe_seconds: float = Field(default=15.0, gt=0, le=3600)
    venue_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    core_tick_seconds: float = Field(default=2.0, gt=0, le=3600)
    signal_health_refresh_seconds: int = Field(default=15, ge=2, le=3600)
    core_restart_backoff_seconds: float = Field(default=1.0, gt=0, le=600)
    core_restart_backoff_max_seconds: float = Field(default=60.0, gt=0, le=3600)
    pnl_snapshot_seconds: float = Field(default=60.0, gt=0, le=3600)
    risk_max_symbol_exposure: float = Field(default=5000.0, gt=0)
    risk_max_total_exposure: float = Field(default=15000.0, gt=0)
    paper_prices: Literal["simulated", "venue"] = "simulated"
    paper_seed: int = 7
    paper_start_balance: float = Field(default=100000.0, gt=0)
    paper_fee_rate: float = Field(default=0.001, ge=0, le=0.05)

    enable_redis: bool = False
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # The password Redis asks for (requirepass / the default ACL user), usually a Docker secret
    # through REDIS_PASSWORD_FILE; it replaces any password in REDIS_URL.
    redis_password: SecretStr | None = None
    lease_ttl_seconds: float = Field(default=10.0, ge=1, le=300)
    redis_check_seconds: float = Field(default=1.0, gt=0, le=60)
    # Every process of a split deployment beats into the store this often; one that misses
    # HEARTBEAT_MISSED beats (core/ops/cluster.py) is reported absent by every replica.
    heartbeat_seconds: float = Field(default=2.0, gt=0, le=60)

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    llm_rate_limited: bool = False
    # The assistant (issue #7): per-question budget and the circuit breaker;
    # see core/assistant/service.py.
    llm_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    llm_max_steps: int = Field(default=4, ge=1, le=20)
    llm_max_tokens: int = Field(default=12000, ge=500, le=1_000_000)
    llm_backoff_seconds: float = Field(default=30.0, gt=0, le=3600)
    llm_backoff_max_seconds: float = Field(default=600.0, gt=0, le=86400)
    llm_probe_seconds: float = Field(default=15.0, gt=0, le=3600)

    escalation_policy: dict[Severity, EscalationStep] = Field(
        default_factory=default_escalation_policy
    )
    escalation_check_seconds: float = Field(default=10.0, gt=0, le=3600)
    incident_reopen_minutes: float = Field(default=60.0, ge=0)
    # Label names (comma separated) to regroup alerts by; empty: each sender's own groups.
    alert_group_by: Annotated[list[str], NoDecode] = Field(default_factory=list)
    silence_sync_seconds: float = Field(default=30.0, gt=0, le=3600)

    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    # Mail goes over TLS: STARTTLS (refused when the server does not offer it), or implicit TLS
    # with SMTP_TLS (port 465). Only SMTP_INSECURE=true sends in the clear (a local relay).
    smtp_tls: bool = False
    smtp_insecure: bool = False
    smtp_ca_file: Path | None = None  # CA bundle for the server's certificate; system CAs if unset
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "lunia-control-plane@localhost"
    security_email: str = "security@lunia.example"

    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    alertmanager_url: str | None = None

    self_healing_enabled: bool = True
    # Self-healing (issue #9, core/ops/self_healing.py) and the latency SLO guard (core/ops/slo.py).
    self_healing_interval_seconds: float = Field(default=15.0, gt=0, le=3600)
    self_healing_cooldown_seconds: float = Field(default=300.0, ge=0, le=86400)
    self_healing_outbox_stuck_seconds: float = Field(default=120.0, gt=0, le=86400)
    slo_p99_seconds: float = Field(default=0.2, gt=0, le=60)
    slo_window_seconds: float = Field(default=300.0, gt=0, le=86400)
    slo_check_seconds: float = Field(default=15.0, gt=0, le=3600)
    auto_backup_enabled: bool = True
    infra_prod_enabled: bool = False
    frontend_signal_health_enabled: bool = True

    # Backups (runbook §3) and audit exports (§4);
    # see core/backups/ and core/security/exports.py.
    backup_dir: Path | None = None
    backup_interval_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)
    backup_keep_last: int = Field(default=24, ge=1)
    backup_keep_daily: int = Field(default=7, ge=0)
    backup_keep_weekly: int = Field(default=4, ge=0)
    backup_verify_hour: int = Field(default=3, ge=0, le=23)
    backup_s3_url: str | None = None
    # How long delivered outbox messages (already without their payload) are kept: 30m, 7d...
    outbox_retention: str = "7d"
    # HMAC key signing every backup's manifest (generated into the state dir's secrets/ when
    # unset; never inside a backup). Previous keys, comma separated, still verify old backups.
    backup_signing_key: SecretStr | None = None
    backup_signing_keys_old: SecretStr | None = None
    audit_export_dest: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    _split = field_validator(
        "telegram_admins", "telegram_operators", "telegram_viewers", mode="before"
    )(_split_ids)

    @field_validator("alert_group_by", mode="before")
    @classmethod
    def _group_labels(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return value
        parsed = [str(item).strip() for item in items if str(item).strip()]
        for name in parsed:
            if not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"expected comma-separated label names, got {name!r}")
        return parsed

    @field_validator("outbox_retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        try:
            parse_duration(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return value
        parsed = [str(item).strip() for item in items if str(item).strip()]
        for item in parsed:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"expected comma-separated IPs or CIDRs, got {item!r}") from None
        return parsed

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
        "s3_endpoint_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("backup_s3_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?", value):
            raise ValueError("expected s3://bucket/prefix (bucket: 3-63 lowercase characters)")
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add ``<NAME>_FILE`` for each secret (core/config/secret_files.py) below explicit ones."""
        environments = [
            getattr(source, "env_vars", {}) for source in (env_settings, dotenv_settings)
        ]
        files = SecretFileSource(settings_cls, _SECRET_FIELDS, environments)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @property
    def db_path(self) -> Path:
        """Where the SQLite state database lives."""
        return self.lunia_state_dir / "lunia.db"

    @property
    def redis_dsn(self) -> str:
        """``REDIS_URL`` with ``REDIS_PASSWORD`` as its password when one is set."""
        url = self.redis_url.get_secret_value()
        if self.redis_password is None:
            return url
        parts = urlsplit(url)
        user, _, host = parts.netloc.rpartition("@")
        user = user.partition(":")[0]
        password = quote(self.redis_password.get_secret_value(), safe="")
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    @property
    def outbox_retention_period(self) -> timedelta:
        """``OUTBOX_RETENTION`` as a duration."""
        return parse_duration(self.outbox_retention)

    @property
    def backup_path(self) -> Path:
        """Where local backups live (``BACKUP_DIR``, default ``$LUNIA_STATE_DIR/backups``)."""
        return self.backup_dir or self.lunia_state_dir / "backups"

    @property
    def audit_export_target(self) -> str:
        """Where scheduled audit exports go (``AUDIT_EXPORT_DEST``, default the state dir's)."""
        return self.audit_export_dest or str(self.lunia_state_dir / "exports")

    def venue_credentials(
        self, venue: str, environ: Mapping[str, str] | None = None
    ) -> VenueCredentials:
        """``<VENUE>_API_KEY/_SECRET/_PASSWORD/_API_URL`` from the environment, then ``.env``."""
        source: dict[str, str] = {}
        dotenv = Path(str(self.model_config.get("env_file") or ".env"))
        if environ is None and dotenv.is_file():
            source.update({k.upper(): v for k, v in dotenv_values(dotenv).items() if v})
        source.update({k.upper(): v for k, v in (environ or os.environ).items()})
        prefix = venue.strip().upper()

        def secret(suffix: str) -> SecretStr | None:
            value = source.get(f"{prefix}_{suffix}", "").strip()
            return SecretStr(value) if value else None

        url = source.get(f"{prefix}_API_URL", "").strip().rstrip("/") or None
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise ConfigError(f"{prefix}_API_URL: expected an http(s) URL, got {url!r}")
        return VenueCredentials(
            api_key=secret("API_KEY"),
            secret=secret("SECRET"),
            password=secret("PASSWORD"),
            api_url=url,
        )

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
