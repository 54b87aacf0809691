"""Runbook §7: SANDBOX_ENABLED moves every venue to sandbox (or paper) in one confirmed step."""

from __future__ import annotations

import pytest

from core.errors import ConfirmationRequired
from core.models import Actor, ActorKind, Role
from core.models.venues import VenueMode
from tests.conftest import PlaneFactory

ANN = Actor(kind=ActorKind.TELEGRAM, id="1", name="ann", role=Role.ADMIN)


async def test_sandbox_switches_every_venue_in_one_confirmed_step(
    make_plane: PlaneFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for venue in ("BINANCE", "OKX"):
        monkeypatch.setenv(f"{venue}_API_KEY", f"{venue.lower()}-key-for-tests")
        monkeypatch.setenv(f"{venue}_SECRET", f"{venue.lower()}-secret-for-tests")
    monkeypatch.setenv("OKX_PASSWORD", "okx-pass-for-tests")
    plane = await make_plane()
    assert {plane.venues.mode_of(v)[0] for v in ("binance", "okx")} == {VenueMode.LIVE}
    with pytest.raises(ConfirmationRequired):
        await plane.flags.set("SANDBOX_ENABLED", True, ANN)
    assert plane.venues.mode_of("binance")[0] is VenueMode.LIVE
    await plane.flags.set("SANDBOX_ENABLED", True, ANN, confirm=True)
    assert {plane.venues.mode_of(v)[0] for v in ("binance", "okx")} == {VenueMode.SANDBOX}
    await plane.flags.unset("SANDBOX_ENABLED", ANN, confirm=True)
    assert plane.venues.mode_of("okx")[0] is VenueMode.LIVE
