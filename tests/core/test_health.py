"""Component health: cached results, and a check that takes over from another under its name."""

from __future__ import annotations

from core.platform.health import ComponentHealth, HealthService, Status
from core.platform.metrics import Metrics


async def test_a_check_registered_again_shows_the_last_result_until_it_runs() -> None:
    health = HealthService(Metrics())

    async def placeholder() -> ComponentHealth:
        return ComponentHealth(status=Status.DEGRADED, detail="starting: loading")

    async def real() -> ComponentHealth:
        return ComponentHealth(status=Status.OK, detail="polling")

    health.register("telegram", placeholder, critical=False)
    assert health.snapshot().components["telegram"].detail == "not checked yet"
    await health.refresh()
    health.register("telegram", real, critical=False)  # e.g. the bot, once it is built
    # Not back to "not checked yet": what was last known stays until the new check runs.
    assert health.snapshot().components["telegram"].detail == "starting: loading"
    await health.refresh()
    assert health.snapshot().components["telegram"].status is Status.OK
