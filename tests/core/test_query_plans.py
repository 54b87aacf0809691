"""Every statement the hot paths run on SQLite reads the growing tables through an index or a
running count, never whole (issue 18 point 2): the cost of one alert must not grow with what
is stored. SQLite's own trace names the statements; its planner says how it runs them."""

from __future__ import annotations

from pathlib import Path

import httpx

from api.app import create_app
from core.control_plane import ControlPlane
from core.store.sqlite import SqliteStore
from tests.conftest import WEBHOOK_TOKEN, SettingsFactory, auth
from tests.support.hot_paths import exercise, full_scans, plans, seed


async def test_hot_path_queries_never_read_a_growing_table_whole(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    statements: list[str] = []
    db = tmp_path / "state.db"
    plane = ControlPlane(make_settings(), store=SqliteStore(db, on_statement=statements.append))
    await plane.start()
    try:
        hook = auth(WEBHOOK_TOKEN)
        transport = httpx.ASGITransport(app=create_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://lunia.test") as client:
            await seed(client, hook, 30)
            statements.clear()
            await exercise(plane, client, hook)
    finally:
        await plane.close()

    found = plans(db, statements)
    tables = " ".join(found)
    for table in ("incidents", "alerts", "incident_events", "outbox", "incident_counts"):
        assert table in tables, f"the scenario ran no query on {table}"  # it exercised them
    scans = {query: full_scans(plan) for query, plan in found.items() if full_scans(plan)}
    assert scans == {}
