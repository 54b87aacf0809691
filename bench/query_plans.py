"""The query plans of the SQLite hot paths, and the history figure they keep flat.

Runs tests/support/hot_paths.py's scenario (new groups, repeats, joins, resolutions, a
reopening, an acknowledgement, the escalation tick, open counts, the chat outbox) on a store
that already holds ``--history`` incidents, traces every statement with SQLite's own trace, and
prints SQLite's plan for each distinct query, flagging any that reads a growing table whole.
There is no reference run here: a plan is the same on every machine. Prints; no asserts (the
test tests/core/test_query_plans.py holds the plans to an index).

    .venv/bin/python bench/query_plans.py [--history 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app  # noqa: E402
from core.config.settings import Settings  # noqa: E402
from core.control_plane import ControlPlane  # noqa: E402
from core.store.sqlite import SqliteStore  # noqa: E402
from tests.support.hot_paths import exercise, full_scans, plans, seed  # noqa: E402

TOKEN = "bench-webhook-token"


async def main(history: int) -> None:
    statements: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            _env_file=None,
            lunia_state_dir=root / "state",  # type: ignore[call-arg]
            alert_webhook_token=TOKEN,
            log_level="WARNING",
        )
        db = root / "state.db"
        plane = ControlPlane(settings, store=SqliteStore(db, on_statement=statements.append))
        await plane.start()
        hook = {"Authorization": f"Bearer {TOKEN}"}
        transport = httpx.ASGITransport(app=create_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            await seed(client, hook, history)
            statements.clear()
            await exercise(plane, client, hook)
        await plane.close()
        found = plans(db, statements)
    print(f"SQLite hot-path queries with {history} incidents stored ({len(found)} distinct):")
    for query, plan in sorted(found.items()):
        flag = "  <-- reads a growing table whole" if full_scans(plan) else ""
        print(f"  {query}{flag}")
        for step in plan:
            print(f"      {step}")
    scans = sum(1 for plan in found.values() if full_scans(plan))
    print(f"full scans of a growing table: {scans}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=2000, help="incidents stored first")
    asyncio.run(main(parser.parse_args().history))
