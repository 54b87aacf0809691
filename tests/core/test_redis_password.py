"""REDIS_PASSWORD: the compose stack's Redis asks for a password (a Docker secret), and every
role connects with it; a process without it is refused by Redis and says so at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config.settings import Settings
from core.control_plane import ControlPlane
from core.platform.roles import ProcessRole
from tests.conftest import RedisFactory, SettingsFactory

PASSWORD = "s3cret/with:odd@chars"


def test_password_goes_into_the_url_quoted_and_replaces_the_urls_own() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://old:pw@redis:6379/2",
        redis_password=PASSWORD,
    )
    assert settings.redis_dsn == "redis://old:s3cret%2Fwith%3Aodd%40chars@redis:6379/2"
    plain = Settings(_env_file=None, redis_url="redis://redis:6379/0")  # type: ignore[call-arg]
    assert plain.redis_dsn == "redis://redis:6379/0"


def test_password_is_read_from_its_file_and_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings)


@pytest.mark.slow
async def test_roles_work_against_a_redis_that_requires_the_password(
    make_redis: RedisFactory, make_settings: SettingsFactory
) -> None:
    redis = make_redis(password=PASSWORD)
    settings = make_settings(enable_redis=True, redis_url=redis.url, redis_password=PASSWORD)
    plane = ControlPlane(settings, role=ProcessRole.API)
    await plane.start()
    try:
        await plane.store.set_value("probe", {"ok": True})
        assert await plane.store.get_value("probe") == {"ok": True}
    finally:
        await plane.close()

    without = make_settings(enable_redis=True, redis_url=redis.url)
    refused = ControlPlane(without, role=ProcessRole.API)
    with pytest.raises(Exception, match="(?i)auth"):
        await refused.start()
    await refused.close()
