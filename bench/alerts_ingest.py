"""Alert ingestion throughput and webhook → notification latency.

Serves the real app (SQLite on a temp dir, and Redis with AOF fsync always and everysec, all
durable before the 2xx) with uvicorn on loopback and drives it with an HTTP client in the same
run, beside the reference of issue 18: a bare FastAPI endpoint that parses the body and upserts
the alerts into SQLite in one transaction (WAL, synchronous=NORMAL), so the figures read as ratios
on this machine (ours / reference). ``--history`` instead ingests rounds of new alerts while open
incidents pile up and prints each round's rate against the first (cost flat with history).

Two latencies per store: webhook → the 'opened' event delivered by the bus, on an idle system;
and webhook → the incident message arriving at the Bot API (the real bot, outbox and pacing
against the loopback fake Telegram), one alert every few seconds as Telegram's 20/min per group
allows. Prints a small table; no asserts.

    .venv/bin/python bench/alerts_ingest.py [--batches 100] [--concurrency 8] [--store both]
    .venv/bin/python bench/alerts_ingest.py --history 5 --pages 0   # 5 rounds of 40k alerts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis as redis_client
import uvicorn
from fastapi import FastAPI, Request
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app  # noqa: E402
from api.runner import EmbeddedServer  # noqa: E402
from bot.app import TelegramBot  # noqa: E402
from core.config.settings import Settings  # noqa: E402
from core.control_plane import ControlPlane  # noqa: E402
from core.models.incidents import EventKind, IncidentEvent  # noqa: E402
from core.platform import heap  # noqa: E402
from tests.fakes.telegram import Call, FakeTelegram  # noqa: E402
from tests.support.payloads import am_alert, am_payload  # noqa: E402
from tests.support.services import free_port, start_redis  # noqa: E402

TOKEN = "bench-webhook-token"
OPS = -1001000000001


def bare_app(path: Path) -> FastAPI:
    """The reference: parse the body and upsert its alerts into SQLite in one transaction."""
    app = FastAPI()
    writer = ThreadPoolExecutor(max_workers=1)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE alerts (fingerprint TEXT PRIMARY KEY, status TEXT, doc TEXT)")

    def upsert(alerts: list[dict[str, Any]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO alerts VALUES (?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE"
            " SET status = excluded.status, doc = excluded.doc",
            [(a["fingerprint"], a["status"], json.dumps(a)) for a in alerts],
        )
        conn.execute("COMMIT")

    @app.post("/api/v1/alerts/alertmanager")
    async def receive(request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        await asyncio.get_running_loop().run_in_executor(writer, upsert, body["alerts"])
        return {"accepted": len(body["alerts"])}

    return app


async def serving(app: Any) -> tuple[EmbeddedServer, asyncio.Task[None], str]:
    heap.settle()  # as `lunia run` does before serving (the reference gets the same)
    port = free_port()
    server = EmbeddedServer(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{port}"


def batch(index: int, size: int) -> bytes:
    """A webhook of ``size`` new alerts forming one notification group of their own (its
    ``job``), as Alertmanager sends a group, encoded up front so the client's own cost stays
    small beside the servers'."""
    job = f"bench{index}"
    body = am_payload(
        *[am_alert(f"Bench{index}_{i}", fingerprint=f"b{index}-{i}", job=job) for i in range(size)]
    )
    return json.dumps(body).encode()


async def drive(
    url: str, batches: int, size: int, concurrency: int, sent_at: dict[str, float], offset: int = 0
) -> float:
    """Post ``batches`` webhooks from ``concurrency`` workers; returns the elapsed seconds."""
    bodies = {offset + i: batch(offset + i, size) for i in range(batches)}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(batches):
        queue.put_nowait(offset + i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            sent_at[f"b{index}-0"] = time.perf_counter()
            response = await client.post("/api/v1/alerts/alertmanager", content=bodies[index])
            response.raise_for_status()

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started


async def history(settings: Settings, rounds: int, size: int, concurrency: int) -> list[float]:
    """Alerts/s of each round of 40k new alerts, each an incident of its own (ALERT_GROUP_BY
    alertname: every alert is named apart), so 5 rounds leave 200k incidents stored."""
    plane = ControlPlane(settings.model_copy(update={"alert_group_by": ["alertname"]}))
    await plane.start()
    server, task, url = await serving(create_app(plane))
    per_round = 40_000 // size
    rates: list[float] = []
    for number in range(rounds):
        seconds = await drive(url, per_round, size, concurrency, {}, offset=number * per_round)
        rates.append(per_round * size / seconds)
        open_now = sum((await plane.incidents.count_open()).values())
        print(
            f"  {settings_label(settings)} round {number + 1}: {rates[-1]:8.0f} alerts/s"
            f"  ({open_now} open incidents after it)"
        )
    server.should_exit = True
    await task
    await plane.close()
    return rates


async def measure(
    settings: Settings, batches: int, size: int, concurrency: int
) -> tuple[float, list[float]]:
    """Seconds for the throughput run, and single-alert webhook -> bus event latencies."""
    plane = ControlPlane(settings)
    await plane.start()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    delivered = 0  # one event per webhook: its group's incident opened (all alerts at once)

    async def on_event(event: IncidentEvent) -> None:
        nonlocal delivered
        delivered += 1
        if event.kind is EventKind.OPENED and event.incident.fingerprint in sent_at:
            latencies.append(time.perf_counter() - sent_at[event.incident.fingerprint])

    plane.bus.subscribe("bench", on_event)
    server, task, url = await serving(create_app(plane))
    await drive(url, 5, size, concurrency, {})  # warm up (and lets a Redis group join)
    started = time.perf_counter()
    real = await drive(url, batches, size, concurrency, {}, offset=5)  # new conditions
    # Let the bus deliver the backlog, so the latency run measures an idle system.
    expected = 5 + batches
    while delivered < expected and time.perf_counter() - started < 300:
        await asyncio.sleep(0.05)
    print(
        f"  ({settings_label(settings)}: the bus delivered {delivered} incident events "
        f"{time.perf_counter() - started:.1f} s after the run began; ingestion took {real:.1f} s)"
    )
    # Latency: one alert per webhook, one at a time (what on-call feels at 3 a.m.).
    await drive(url, 200, 1, 1, sent_at, offset=10_000)
    await asyncio.sleep(1.0)
    server.should_exit = True
    await task
    await plane.close()
    return real, latencies


def sent_message(fake: FakeTelegram, text: str) -> list[Call] | None:
    """The sendMessage calls whose text holds ``text``, or None while there are none."""
    calls = [c for c in fake.calls_to("sendMessage") if text in c.params.get("text", "")]
    return calls or None


async def to_telegram(settings: Settings, samples: int, spacing: float) -> list[float]:
    """Seconds from a one-alert webhook's 2xx to its incident message reaching the Bot API (the
    alert is durable by then; what follows is the bus, the notifier, the outbox and the pacer)."""
    latencies: list[float] = []
    async with FakeTelegram() as fake:
        settings = settings.model_copy(
            update={
                "telegram_bot_token": SecretStr(fake.token),
                "telegram_api_base": fake.base,
                "telegram_ops_chat_id": OPS,
            }
        )
        plane = ControlPlane(settings)
        bot = TelegramBot(plane)
        plane.duties.add("telegram", bot.start, bot.stop)  # as `lunia run` wires it
        await plane.start()
        server, task, url = await serving(create_app(plane, telegram=bot))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            for index in range(samples):
                name = f"Page{index}"
                sent = time.monotonic()
                response = await client.post(
                    "/api/v1/alerts/alertmanager",
                    json=am_payload(am_alert(name, fingerprint=f"page-{index}")),
                )
                response.raise_for_status()
                answered = time.monotonic()
                [call] = await fake.wait_for(partial(sent_message, fake, name), timeout=30)
                latencies.append(call.at - answered)
                await asyncio.sleep(max(0.0, sent + spacing - time.monotonic()))
        server.should_exit = True
        await task
        await plane.close()  # stops the duties, the bot among them
        await bot.bot.session.close()
    return latencies


def settings_label(settings: Settings) -> str:
    return "Redis" if settings.enable_redis else "SQLite"


def fsync_everysec(url: str) -> None:
    """Relax a durable test Redis from fsync on every write to fsync once a second."""
    client = redis_client.Redis.from_url(url)
    client.config_set("appendfsync", "everysec")
    client.close()


def settings_for(state: Path, redis_url: str | None) -> Settings:
    return Settings(
        _env_file=None,
        lunia_state_dir=state,  # type: ignore[call-arg]
        alert_webhook_token=TOKEN,
        api_tokens="admin:bench-admin-token",
        log_level="WARNING",
        enable_redis=redis_url is not None,
        redis_url=redis_url or "redis://127.0.0.1:6379/0",
        core_tick_seconds=3600,
        venue_probe_seconds=3600,
    )


def spread(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"(n={len(ordered)}): p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def report(
    label: str,
    alerts: int,
    batches: int,
    seconds: float,
    latencies: list[float],
    telegram: list[float] | None = None,
) -> None:
    print(f"  {label:<34}: {alerts / seconds:9.0f} alerts/s ({batches / seconds:6.1f} webhooks/s)")
    if latencies:
        print(f"  {'':<34}  webhook -> 'opened' event delivered by the bus {spread(latencies)}")
    if telegram:
        print(f"  {'':<34}  webhook 2xx -> incident message at the Bot API {spread(telegram)}")


async def reference(root: Path, batches: int, size: int, concurrency: int) -> float:
    """Seconds the bare FastAPI + SQLite reference takes for the same webhooks."""
    server, task, url = await serving(bare_app(root / "reference.db"))
    await drive(url, 5, size, concurrency, {})
    seconds = await drive(url, batches, size, concurrency, {}, offset=5)
    server.should_exit = True
    await task
    return seconds


async def main(
    batches: int, size: int, concurrency: int, stores: list[str], pages: int, spacing: float
) -> None:
    results: dict[str, tuple[float, list[float]]] = {}
    telegram: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = await reference(root, batches, size, concurrency)
        if "sqlite" in stores:
            label = "control plane (SQLite, durable)"
            results[label] = await measure(
                settings_for(root / "sqlite", None), batches, size, concurrency
            )
            if pages:
                telegram[label] = await to_telegram(
                    settings_for(root / "sqlite-bot", None), pages, spacing
                )
        if "redis" in stores:
            # Durable like production: append-only file, fsync on every write.
            label = "control plane (Redis AOF always)"
            with start_redis(root / "redis", durable=True) as redis:
                results[label] = await measure(
                    settings_for(root / "redis-state", redis.url), batches, size, concurrency
                )
            if pages:
                with start_redis(root / "redis-bot", durable=True) as redis:
                    telegram[label] = await to_telegram(
                        settings_for(root / "redis-bot-state", redis.url), pages, spacing
                    )
            label = "control plane (Redis AOF everysec)"
            with start_redis(root / "redis-everysec", durable=True) as redis:
                fsync_everysec(redis.url)
                results[label] = await measure(
                    settings_for(root / "redis-everysec-state", redis.url),
                    batches,
                    size,
                    concurrency,
                )

    alerts = batches * size
    print(f"alert ingestion: {batches} webhooks x {size} alerts, concurrency {concurrency}")
    report("reference (FastAPI + SQLite upsert)", alerts, batches, bare, [])
    for label, (seconds, latencies) in results.items():
        report(label, alerts, batches, seconds, latencies, telegram.get(label))
    for label, (seconds, _) in results.items():
        print(f"  {label}: {bare / seconds:.2f}x the reference")


async def main_history(rounds: int, size: int, concurrency: int, stores: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ratios: dict[str, float] = {}
        if "sqlite" in stores:
            rates = await history(settings_for(root / "sqlite", None), rounds, size, concurrency)
            ratios["SQLite"] = rates[-1] / rates[0]
        if "redis" in stores:
            with start_redis(root / "redis", durable=True) as redis:
                fsync_everysec(redis.url)  # the fsync policy is not what grows with history
                rates = await history(
                    settings_for(root / "redis-state", redis.url), rounds, size, concurrency
                )
                # Redis's own work that grows with the data: each AOF rewrite forks and writes
                # the whole dataset (over 1 GB by 200k incidents) on the same cores.
                info = redis_client.Redis.from_url(redis.url).info("persistence")
                print(f"  (Redis rewrote its AOF {info.get('aof_rewrites', 0)} times meanwhile)")
            ratios["Redis (AOF everysec)"] = rates[-1] / rates[0]
    for label, ratio in ratios.items():
        print(f"  {label}: last round / first round = {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--store", choices=["sqlite", "redis", "both"], default="both", help="which store(s)"
    )
    parser.add_argument(
        "--pages", type=int, default=15, help="alerts timed through to Telegram (0: skip)"
    )
    parser.add_argument(
        "--spacing", type=float, default=3.1, help="seconds between them (20/min per group)"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="instead: this many rounds of 40k new alerts, each round's rate vs the first",
    )
    args = parser.parse_args()
    stores = ["sqlite", "redis"] if args.store == "both" else [args.store]
    if args.history:
        asyncio.run(main_history(args.history, args.size, args.concurrency, stores))
    else:
        asyncio.run(
            main(args.batches, args.size, args.concurrency, stores, args.pages, args.spacing)
        )
