"""Production hardening: ``<NAME>_FILE`` secrets and the INFRA_PROD_ENABLED start checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.errors import ConfigError
from tests.conftest import ADMIN_TOKEN, PlaneFactory, SettingsFactory

LUNIA = str(Path(sys.executable).with_name("lunia"))
STRONG = "k3Vq9ZrX2mLp7WbN4tYc8HdJ"  # 24 characters, mixed


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / "run-secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    return path


def test_file_variables_supply_secrets_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = secret_file(tmp_path, "api_tokens", f"admin:{STRONG}\n")
    webhook = secret_file(tmp_path, "webhook", f"  {STRONG}-hook\n")
    monkeypatch.setenv("API_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN_FILE", str(webhook))
    settings = Settings.load(_env_file=None)
    assert [(t.role.value, t.token) for t in settings.configured_api_tokens()] == [
        ("admin", STRONG)
    ]
    assert settings.alert_webhook_token is not None
    assert settings.alert_webhook_token.get_secret_value() == f"{STRONG}-hook"


def test_file_variables_are_read_from_dotenv_too(tmp_path: Path) -> None:
    key = secret_file(tmp_path, "openai", "sk-from-a-vault-agent-file\n")
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY_FILE={key}\n")  # the cwd is tmp_path
    settings = Settings.load()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-a-vault-agent-file"


def test_both_value_and_file_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(tmp_path, "redis", "redis://:file-password@redis:6379/0")
    monkeypatch.setenv("REDIS_URL", "redis://:env-password@redis:6379/0")
    monkeypatch.setenv("REDIS_URL_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        Settings.load(_env_file=None)
    message = str(caught.value)
    assert message == "REDIS_URL and REDIS_URL_FILE are both set; keep only one"
    assert "password" not in message


@pytest.mark.parametrize("kind", ["missing", "directory", "empty"])
def test_unreadable_file_is_refused_naming_variable_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = {
        "missing": tmp_path / "no-such-secret",
        "directory": tmp_path,
        "empty": secret_file(tmp_path, "empty", " \n"),
    }[kind]
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        Settings.load(_env_file=None)
    message = str(caught.value)
    assert message.startswith("TELEGRAM_BOT_TOKEN_FILE: ")
    assert str(path) in message
    assert "\n" not in message


async def test_file_secret_reaches_the_running_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_plane: PlaneFactory
) -> None:
    path = secret_file(tmp_path, "tokens", f"viewer:{STRONG}")
    monkeypatch.setenv("API_TOKENS_FILE", str(path))
    settings = Settings.load(_env_file=None, lunia_state_dir=tmp_path / "state")
    plane = await make_plane(settings=settings)
    actor = plane.tokens.resolve(STRONG)
    assert actor is not None
    assert actor.role is not None
    assert actor.role.value == "viewer"


def test_prod_refuses_generated_secrets_before_writing_any(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(infra_prod_enabled=True, api_tokens=None)
    with pytest.raises(ConfigError, match=r"^INFRA_PROD_ENABLED is on: API_TOKENS: not set"):
        ControlPlane(settings)
    assert not (tmp_path / "state" / "secrets").exists()
    settings = make_settings(infra_prod_enabled=True, alert_webhook_token=None)
    with pytest.raises(ConfigError, match="ALERT_WEBHOOK_TOKEN: not set"):
        ControlPlane(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"api_tokens": "admin:short-but-valid"}, "API_TOKENS: token admin-1 is weak (shorter"),
        ({"api_tokens": "operator:" + "x" * 40}, "API_TOKENS: token operator-1 is weak (a single"),
        ({"alert_webhook_token": "0" * 32}, "ALERT_WEBHOOK_TOKEN: weak (a single repeated"),
        ({"alert_webhook_token": "hook-123"}, "ALERT_WEBHOOK_TOKEN: weak (shorter than 24"),
        ({"metrics_token": "scrape-me-123"}, "METRICS_TOKEN: weak (shorter than 24"),
    ],
)
def test_prod_refuses_weak_secrets_naming_the_variable(
    make_settings: SettingsFactory, env: dict[str, str], expected: str
) -> None:
    settings = make_settings(infra_prod_enabled=True, **env)
    with pytest.raises(ConfigError) as caught:
        ControlPlane(settings)
    assert expected in str(caught.value)
    secret = next(iter(env.values())).partition(":")[2] or next(iter(env.values()))
    assert secret not in str(caught.value)


async def test_prod_starts_with_strong_configured_secrets(make_plane: PlaneFactory) -> None:
    plane = await make_plane(infra_prod_enabled=True)
    assert plane.tokens.resolve(ADMIN_TOKEN) is not None
    # Prometheus reads the generated metrics token from the state dir (deploy/prometheus); the
    # keys that never leave the deployment (button signatures, backup manifests) may be generated.
    assert plane.secrets.generated.keys() == {
        "callback-signing-key",
        "metrics-token",
        "backup-signing-key",
    }


async def test_outside_prod_generated_secrets_still_start(make_plane: PlaneFactory) -> None:
    plane = await make_plane(api_tokens=None, alert_webhook_token=None)
    assert "api-admin-token" in plane.secrets.generated


@pytest.mark.slow
def test_lunia_run_in_prod_with_a_generated_secret_exits_2_with_one_line(tmp_path: Path) -> None:
    tokens = secret_file(tmp_path, "tokens", f"admin:{STRONG}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "ALERT_"))}
    env.update(
        LUNIA_STATE_DIR=str(tmp_path / "var"),
        INFRA_PROD_ENABLED="true",
        API_TOKENS_FILE=str(tokens),
    )
    done = subprocess.run(
        [LUNIA, "run"], cwd=tmp_path, env=env, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "lunia: configuration error: INFRA_PROD_ENABLED is on: ALERT_WEBHOOK_TOKEN: not set "
        "(a generated token is not allowed in production)"
    ]
    assert not (tmp_path / "var" / "secrets").exists()
