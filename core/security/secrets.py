"""Secrets the control plane needs, from settings or generated into the state dir on first start.

Generated files live in ``$LUNIA_STATE_DIR/secrets/`` with mode 0600; startup logs their paths,
never their values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from core.config.settings import ApiToken, Settings
from core.models import Role
from core.platform.files import ensure_secret_file

logger = logging.getLogger(__name__)

# File names under secrets/, not secrets themselves.
ADMIN_TOKEN_FILE = "api-admin-token"  # noqa: S105
WEBHOOK_TOKEN_FILE = "alert-webhook-token"  # noqa: S105
SIGNING_KEY_FILE = "callback-signing-key"
METRICS_TOKEN_FILE = "metrics-token"  # noqa: S105
BACKUP_SIGNING_KEY_FILE = "backup-signing-key"


@dataclass
class RuntimeSecrets:
    """The resolved secrets, and which of them were generated (and where)."""

    api_tokens: list[ApiToken]
    alert_webhook_token: SecretStr
    callback_signing_key: SecretStr
    generated: dict[str, Path] = field(default_factory=dict)
    # Bearer token /metrics requires (None: open, outside production with no METRICS_TOKEN).
    metrics_token: SecretStr | None = None
    # HMAC key signing backup manifests, and the previous ones still accepted when verifying.
    backup_signing_key: SecretStr = SecretStr("")
    backup_signing_keys_old: list[SecretStr] = field(default_factory=list)


def resolve_secrets(settings: Settings) -> RuntimeSecrets:
    """Take secrets from settings, generating the missing ones into the state dir."""
    secrets_dir = settings.lunia_state_dir / "secrets"
    generated: dict[str, Path] = {}

    def generated_secret(name: str) -> str:
        path = secrets_dir / name
        value, created = ensure_secret_file(path)
        generated[name] = path
        if created:
            logger.warning("generated %s into %s (mode 0600)", name, path)
        return value

    tokens = settings.configured_api_tokens()
    if not tokens:
        tokens = [ApiToken("admin-generated", Role.ADMIN, generated_secret(ADMIN_TOKEN_FILE))]
    webhook = settings.alert_webhook_token or SecretStr(generated_secret(WEBHOOK_TOKEN_FILE))
    signing = settings.callback_signing_key or SecretStr(generated_secret(SIGNING_KEY_FILE))
    metrics = settings.metrics_token
    if metrics is None and settings.infra_prod_enabled:
        metrics = SecretStr(generated_secret(METRICS_TOKEN_FILE))
    backup_key = settings.backup_signing_key or SecretStr(generated_secret(BACKUP_SIGNING_KEY_FILE))
    old = settings.backup_signing_keys_old
    old_keys = [
        SecretStr(part.strip())
        for part in (old.get_secret_value().split(",") if old else [])
        if part.strip()
    ]
    return RuntimeSecrets(
        tokens,
        webhook,
        signing,
        generated,
        metrics_token=metrics,
        backup_signing_key=backup_key,
        backup_signing_keys_old=old_keys,
    )
