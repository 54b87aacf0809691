"""Settings: exact names, one-line errors naming the variable, secrets never echoed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.config.settings import Settings
from core.errors import ConfigError
from core.security.secrets import resolve_secrets


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    assert settings.lunia_state_dir == Path("./var")
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.enable_redis is False
    assert settings.telegram_bot_token is None
    assert (settings.exchange_primary, settings.exchange_failover) == ("binance", "okx")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("API_PORT", "eighty", "API_PORT: Input should be a valid integer"),
        ("API_PORT", "70000", "API_PORT: Input should be less than or equal to 65535"),
        ("TELEGRAM_ADMINS", "12,alice", "TELEGRAM_ADMINS: expected comma-separated numeric"),
        ("ENABLE_REDIS", "maybe", "ENABLE_REDIS: Input should be a valid boolean"),
        ("EXCHANGE_FAILOVER", "OK X", "EXCHANGE_FAILOVER: expected a ccxt exchange id"),
        ("TELEGRAM_MODE", "carrier-pigeon", "TELEGRAM_MODE: Input should be 'polling'"),
        ("PAGERDUTY_EVENTS_URL", "events.pagerduty", "PAGERDUTY_EVENTS_URL: expected an http"),
        ("ESCALATION_POLICY", "{critical", "ESCALATION_POLICY: not valid JSON"),
        (
            "ESCALATION_POLICY",
            '{"critical": {"ack_timeout_seconds": 60, "targets": ["sms"]}}',
            "ESCALATION_POLICY: critical: unknown targets ['sms']",
        ),
        (
            "ESCALATION_POLICY",
            '{"critical": {"ack_timeout_seconds": -1}}',
            "ESCALATION_POLICY: Input should be greater than 0",
        ),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_bad_secret_is_reported_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKENS", "superuser:hunter2-hunter2")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    assert str(info.value).startswith("API_TOKENS: entry 1: role must be")
    assert "hunter2" not in str(info.value)


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:very-secret")
    monkeypatch.setenv("API_TOKENS", "admin:also-very-secret")
    settings = Settings.load()
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in settings.model_dump_json()


def test_dotenv_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("API_PORT=9001\nTELEGRAM_ADMINS=1, 2\nLOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    settings = Settings.load()
    assert settings.api_port == 9001
    assert settings.telegram_admins == [1, 2]
    assert settings.log_level == "WARNING"


def test_webhook_mode_needs_url_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:x")
    monkeypatch.setenv("TELEGRAM_MODE", "webhook")
    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_URL is required"):
        Settings.load()


def test_generated_secrets_are_owner_only_and_stable(tmp_path: Path) -> None:
    settings = Settings.load(lunia_state_dir=tmp_path / "state")
    first = resolve_secrets(settings)
    assert set(first.generated) == {
        "api-admin-token",
        "alert-webhook-token",
        "callback-signing-key",
        "backup-signing-key",
    }
    for path in first.generated.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "secrets").st_mode) == 0o700
    second = resolve_secrets(settings)
    assert second.api_tokens[0].token == first.api_tokens[0].token
    assert (
        second.alert_webhook_token.get_secret_value()
        == first.alert_webhook_token.get_secret_value()
    )


def test_configured_tokens_replace_the_generated_admin(tmp_path: Path) -> None:
    settings = Settings.load(
        lunia_state_dir=tmp_path, api_tokens="viewer:abcdefgh12,admin:zz9zz9zz9"
    )
    secrets = resolve_secrets(settings)
    assert [(t.name, t.role.value) for t in secrets.api_tokens] == [
        ("viewer-1", "viewer"),
        ("admin-1", "admin"),
    ]
    assert "api-admin-token" not in secrets.generated
