"""Production start checks: with ``INFRA_PROD_ENABLED`` on, refuse generated or weak secrets.

The environment value of the flag is read once, at start: a runtime override cannot make an
insecure configuration start, and turning it off at runtime does not weaken a running process.
"""

from __future__ import annotations

from pydantic import SecretStr

from core.config.settings import Settings
from core.errors import ConfigError

MIN_SECRET_LENGTH = 24


def weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak for production, or None."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"shorter than {MIN_SECRET_LENGTH} characters"
    if len(set(secret)) == 1:
        return "a single repeated character"
    return None


def production_problems(settings: Settings) -> list[str]:
    """Every reason these settings are not fit for production, one line each."""
    problems: list[str] = []
    if settings.api_tokens is None:
        problems.append("API_TOKENS: not set (a generated token is not allowed in production)")
    for token in settings.configured_api_tokens():
        why = weakness(token.token)
        if why:
            problems.append(f"API_TOKENS: token {token.name} is weak ({why})")
    named: dict[str, SecretStr | None] = {
        "ALERT_WEBHOOK_TOKEN": settings.alert_webhook_token,
        "TELEGRAM_WEBHOOK_SECRET": settings.telegram_webhook_secret,
        "CALLBACK_SIGNING_KEY": settings.callback_signing_key,
        "METRICS_TOKEN": settings.metrics_token,
    }
    for name, secret in named.items():
        if secret is None:
            if name == "ALERT_WEBHOOK_TOKEN":
                problems.append(f"{name}: not set (a generated token is not allowed in production)")
            continue
        why = weakness(secret.get_secret_value())
        if why:
            problems.append(f"{name}: weak ({why})")
    return problems


def check_production(settings: Settings) -> None:
    """With ``INFRA_PROD_ENABLED`` on, raise ``ConfigError`` with the first problem found."""
    if not settings.infra_prod_enabled:
        return
    problems = production_problems(settings)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"INFRA_PROD_ENABLED is on: {problems[0]}{more}")
