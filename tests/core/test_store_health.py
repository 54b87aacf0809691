"""The store, Redis and Telegram health checks in embedded mode (``ENABLE_REDIS=false``)."""

from __future__ import annotations

from core.control_plane import ControlPlane
from core.platform.health import Status


async def test_embedded_store_is_checked_and_redis_and_telegram_say_why_they_are_off(
    plane: ControlPlane,
) -> None:
    await plane.health.refresh()
    components = plane.health.snapshot().components
    assert components["store"].status is Status.OK
    assert components["store"].detail == f"sqlite {plane.settings.db_path}"
    assert components["redis"].status is Status.DISABLED
    assert components["redis"].detail == "ENABLE_REDIS=false: embedded mode"
    assert components["telegram"].status is Status.DISABLED
    assert plane.health.snapshot().status is Status.OK  # neither of those is critical
