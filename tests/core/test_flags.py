"""Feature flags: precedence, persistence, roles and confirmation (decided in core), audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfirmationRequired, Conflict, InvalidInput, NotFound, PermissionDenied
from core.flags import CATALOGUE, FlagService, Source
from core.models import Actor, ActorKind, Role
from core.platform.metrics import Metrics
from core.store.sqlite import SqliteStore
from tests.conftest import PlaneFactory, SettingsFactory


def actor(role: Role | None, name: str = "someone") -> Actor:
    return Actor(kind=ActorKind.TELEGRAM, id=name, name=name, role=role)


ADMIN, OPERATOR, VIEWER = (
    actor(Role.ADMIN, "ann"),
    actor(Role.OPERATOR, "otto"),
    actor(Role.VIEWER, "vic"),
)


def test_catalogue_has_every_runbook_flag() -> None:
    names = {d.name for d in CATALOGUE}
    assert names == {
        "FRONTEND_SIGNAL_HEALTH_ENABLED",
        "INFRA_PROD_ENABLED",
        "BINANCE_FORCE_MOCK",
        "BINANCE_LIVE_TRADING",
        "SELF_HEALING_ENABLED",
        "AUTO_BACKUP_ENABLED",
        "ENABLE_REDIS",
        "LLM_RATE_LIMITED",
        "SANDBOX_ENABLED",
        "EXCHANGE_FAILOVER",
    }


async def test_precedence_override_then_env_then_default(make_plane: PlaneFactory) -> None:
    plane = await make_plane(auto_backup_enabled=False)
    flags = plane.flags
    assert (flags.get("SELF_HEALING_ENABLED").value, flags.get("SELF_HEALING_ENABLED").source) == (
        True,
        Source.DEFAULT,
    )
    assert (flags.get("AUTO_BACKUP_ENABLED").value, flags.get("AUTO_BACKUP_ENABLED").source) == (
        False,
        Source.ENV,
    )

    state = await flags.set("auto_backup_enabled", "on", OPERATOR)
    assert (state.value, state.source) == (True, Source.OVERRIDE)
    assert state.override_set_by == "telegram:otto (otto)"

    cleared = await flags.unset("AUTO_BACKUP_ENABLED", OPERATOR)
    assert (cleared.value, cleared.source) == (False, Source.ENV)


async def test_overrides_survive_restart(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    first = await make_plane(settings=settings)
    await first.flags.set("EXCHANGE_FAILOVER", "Binance", OPERATOR)
    await first.close()
    second = await make_plane(settings=settings)
    state = second.flags.get("EXCHANGE_FAILOVER")
    assert (state.value, state.source) == ("binance", Source.OVERRIDE)


async def test_viewer_cannot_flip_and_the_refusal_is_audited(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    with pytest.raises(PermissionDenied, match="needs the operator role; you have viewer"):
        await plane.flags.set("SELF_HEALING_ENABLED", False, VIEWER)
    assert plane.flags.get("SELF_HEALING_ENABLED").value is True
    [entry] = await plane.audit.tail(1)
    assert (entry.action, entry.outcome, entry.actor.name) == ("flag.set", "denied", "vic")


async def test_actor_without_role_is_denied(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    with pytest.raises(PermissionDenied, match="you have no role"):
        await plane.flags.set("LLM_RATE_LIMITED", True, actor(None))


async def test_live_trading_needs_admin_and_confirmation(make_plane: PlaneFactory) -> None:
    plane = await make_plane(binance_live_trading=False)
    with pytest.raises(PermissionDenied, match="needs the admin role"):
        await plane.flags.set("BINANCE_LIVE_TRADING", True, OPERATOR, confirm=True)
    with pytest.raises(ConfirmationRequired, match="can move money"):
        await plane.flags.set("BINANCE_LIVE_TRADING", True, ADMIN)
    assert plane.flags.value("BINANCE_LIVE_TRADING") is False
    state = await plane.flags.set("BINANCE_LIVE_TRADING", True, ADMIN, confirm=True)
    assert state.value is True
    [entry] = await plane.audit.tail(1)
    assert entry.actor.name == "ann"
    assert entry.before == {"value": False, "source": "env"}
    assert entry.after == {"value": True, "source": "override"}


async def test_safe_direction_of_a_dangerous_flag_needs_only_operator(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    state = await plane.flags.set("BINANCE_LIVE_TRADING", False, OPERATOR)
    assert state.value is False
    # Clearing that override would turn live trading back on: admin + confirmation.
    with pytest.raises(PermissionDenied):
        await plane.flags.unset("BINANCE_LIVE_TRADING", OPERATOR)
    with pytest.raises(ConfirmationRequired):
        await plane.flags.unset("BINANCE_LIVE_TRADING", ADMIN)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BINANCE_FORCE_MOCK", False),
        ("INFRA_PROD_ENABLED", False),
        ("SANDBOX_ENABLED", True),
    ],
)
async def test_other_dangerous_changes_need_confirmation(
    make_plane: PlaneFactory, name: str, value: bool
) -> None:
    plane = await make_plane(binance_force_mock=True, infra_prod_enabled=True)
    with pytest.raises(ConfirmationRequired):
        await plane.flags.set(name, value, ADMIN)
    assert (await plane.flags.set(name, value, ADMIN, confirm=True)).value is value


async def test_bad_values_and_names_are_explained(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    with pytest.raises(InvalidInput, match="takes true or false"):
        await plane.flags.set("SELF_HEALING_ENABLED", "perhaps", OPERATOR)
    with pytest.raises(InvalidInput, match="ccxt exchange id"):
        await plane.flags.set("EXCHANGE_FAILOVER", "not a venue!", OPERATOR)
    with pytest.raises(NotFound, match="flags are: AUTO_BACKUP_ENABLED"):
        plane.flags.get("NO_SUCH_FLAG")


async def test_metrics_reflect_flips(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    await plane.flags.set("LLM_RATE_LIMITED", True, OPERATOR)
    text = plane.metrics.render().decode()
    assert 'feature_flag_enabled{flag="LLM_RATE_LIMITED"} 1.0' in text
    assert 'feature_flag_info{flag="LLM_RATE_LIMITED",source="override",value="true"} 1.0' in text
    assert 'feature_flag_changes_total{action="set",flag="LLM_RATE_LIMITED"} 1.0' in text


async def test_change_made_by_another_process_reaches_listeners(
    make_plane: PlaneFactory, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    running = await make_plane(settings=settings)
    seen: list[tuple[str, object, str]] = []

    async def listener(state, who):  # type: ignore[no-untyped-def]
        seen.append((state.name, state.value, who.name))

    running.flags.subscribe(listener)
    other = await make_plane(settings=settings)  # e.g. `lunia flags set` on the same state
    await other.flags.set("SELF_HEALING_ENABLED", False, OPERATOR)
    await running.flags.load()
    assert running.flags.value("SELF_HEALING_ENABLED") is False
    assert seen == [("SELF_HEALING_ENABLED", False, "otto")]


async def test_enable_redis_is_only_read_from_the_environment(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    admin = Actor.system("test")
    for change in (
        plane.flags.set("ENABLE_REDIS", True, admin, confirm=True),
        plane.flags.unset("ENABLE_REDIS", admin, confirm=True),
    ):
        with pytest.raises(InvalidInput, match="set ENABLE_REDIS in .env and restart"):
            await change
    state = plane.flags.get("ENABLE_REDIS")
    assert (state.value, state.source) == (False, Source.DEFAULT)


CHAOS_REFUSED = "chaos drills are refused while INFRA_PROD_ENABLED is on"


async def test_chaos_drills_are_refused_while_infra_prod_is_on_in_the_environment(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(infra_prod_enabled=True, core_tick_seconds=3600)
    with pytest.raises(Conflict, match=CHAOS_REFUSED):
        plane.flags.check_chaos_allowed()
    # A runtime override wins over the environment, for the rule as for every flag read.
    await plane.flags.set("INFRA_PROD_ENABLED", False, ADMIN, confirm=True)
    plane.flags.check_chaos_allowed()


async def test_chaos_drills_are_refused_while_infra_prod_is_on_at_runtime(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane(venue_probe_seconds=3600, core_tick_seconds=3600)
    plane.flags.check_chaos_allowed()  # off by default: drills allowed
    await plane.flags.set("INFRA_PROD_ENABLED", True, ADMIN)
    with pytest.raises(Conflict, match=CHAOS_REFUSED):
        plane.flags.check_chaos_allowed()
    with pytest.raises(Conflict, match=CHAOS_REFUSED):  # the venue service applies the same rule
        await plane.venues.chaos_exchange_outage(ADMIN, confirm=True)
    assert not plane.venues.failed_over
    await plane.flags.unset("INFRA_PROD_ENABLED", ADMIN, confirm=True)
    plane.flags.check_chaos_allowed()


async def test_a_flip_based_on_what_this_replica_last_read_is_refused_if_changed_since(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    store = SqliteStore(tmp_path / "shared.db")
    await store.open()
    try:
        here, there = (FlagService(settings, store, Metrics()) for _ in range(2))
        await here.load()
        await there.load()
        assert here.get("SELF_HEALING_ENABLED").version == 0
        changed = await there.set("SELF_HEALING_ENABLED", False, OPERATOR)
        assert changed.version == 1
        # `here` last read version 0 and has not reloaded: its flip would undo `there`'s.
        with pytest.raises(Conflict, match="changed meanwhile by telegram:otto .*version 1"):
            await here.set("SELF_HEALING_ENABLED", True, ADMIN)
        assert here.get("SELF_HEALING_ENABLED").value is False  # adopted on the refusal
        with pytest.raises(Conflict):
            await here.unset("SELF_HEALING_ENABLED", ADMIN, expected_version=0)
        assert (await here.set("SELF_HEALING_ENABLED", True, ADMIN)).version == 2
    finally:
        await store.close()
