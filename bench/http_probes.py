"""Probe and scrape speed: ``/healthz`` and ``/metrics`` of the real app beside a bare FastAPI app.

Each server runs in its own subprocess under the same uvicorn settings (``api.runner.
server_config``: uvloop and httptools when installed), so the load generator never shares their
event loop: ours is ``lunia run`` on SQLite in a temp state dir, the reference a bare FastAPI app
whose ``/healthz`` returns a tiny JSON and whose ``/metrics`` returns constant bytes of the same
size as ours (the framework's ceiling for that body). ``wrk`` (one thread, 16 and 64 connections)
measures throughput; a small open-loop client sends 500 req/s on a fixed schedule and measures
each latency from the time the request was due. Last, the event-loop time a scrape costs, in
process: answered from the snapshot, and rendering after every series changed. Prints a table
with ours, the reference and their ratio (wrk runs of the two alternate, medians kept);
about two minutes.

    .venv/bin/python bench/http_probes.py [--seconds 5] [--rounds 3] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import generate_latest
from uvicorn.loops.auto import auto_loop_factory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.runner import run, server_config  # noqa: E402
from core.config.settings import Settings  # noqa: E402
from core.control_plane import ControlPlane  # noqa: E402
from tests.support.services import free_port  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"  # noqa: S105


def bench_settings(state: Path, port: int) -> Settings:
    """``lunia run`` on SQLite, quiet, with the trading loop and venue probes out of the way."""
    return Settings(
        _env_file=None,
        lunia_state_dir=state,  # type: ignore[call-arg]
        api_host="127.0.0.1",
        api_port=port,
        api_tokens=f"admin:{ADMIN_TOKEN}",
        log_level="WARNING",
        core_tick_seconds=3600,
        venue_probe_seconds=3600,
    )


def bare_app(metrics_bytes: int) -> FastAPI:
    """The reference: a tiny JSON probe and a constant exposition of ``metrics_bytes``."""
    app = FastAPI()
    body = (b"# a constant exposition\nbare_metric 1.0\n" * (metrics_bytes // 40 + 1))[
        :metrics_bytes
    ]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def serve_child(kind: str, port: int, state: Path, metrics_bytes: int) -> None:
    """Subprocess entry point: serve ours or the bare reference until SIGTERM."""
    if kind == "ours":
        raise SystemExit(run(bench_settings(state, port)))
    config = server_config(bare_app(metrics_bytes), "127.0.0.1", port)
    uvicorn.Server(config).run()


@contextmanager
def server(kind: str, state: Path, metrics_bytes: int = 0) -> Iterator[str]:
    """Start a server subprocess, wait until it answers, and stop it afterwards."""
    port = free_port()
    args = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--state", str(state)]
    args += ["--metrics-bytes", str(metrics_bytes)]
    child = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {kind} server did not start")
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)


def wrk(url: str, connections: int, seconds: int) -> float:
    """Requests per second of ``wrk`` with one thread and ``connections`` connections."""
    wrk_bin = shutil.which("wrk")
    assert wrk_bin is not None  # noqa: S101 (checked in main)
    out = subprocess.run(  # noqa: S603
        [wrk_bin, "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None or "Non-2xx" in out:
        raise SystemExit(f"wrk on {url} failed:\n{out}")
    return float(found.group(1))


async def open_loop(url: str, rate: int, seconds: float) -> list[float]:
    """Send GET ``url`` ``rate`` times a second on a fixed schedule (never waiting for answers)
    over keep-alive sockets; each latency runs from the moment the request was due."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").partition("/")[2]
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []

    async def one(due: float) -> None:
        reader, writer = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        idle.append((reader, writer))

    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.2
    for index in range(int(rate * seconds)):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(due)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def longest_stall(stop: asyncio.Event) -> float:
    """The longest time the event loop could not run this task, until ``stop`` is set."""
    stall, last = 0.0, time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        stall, last = max(stall, now - last), now
    return stall


class ScrapeCost(NamedTuple):
    """Event-loop time of one scrape, in seconds (p50, p99 of the worst stall per scrape)."""

    snapshot_p50: float
    snapshot_p99: float
    render_p50: float
    render_p99: float
    render_cpu_p99: float  # CPU time: the wall-clock p99 includes preemption on a busy machine
    generate_latest: float  # prometheus_client's own renderer on the same registry (median)
    lines: int


async def stalls(
    call: Callable[[], object], before: Callable[[], object], n: int
) -> tuple[list[float], list[float]]:
    """The event loop's longest stall (a ticker task's lateness) around each of ``n`` calls, and
    the CPU time of each call."""
    worst: list[float] = []
    cpu: list[float] = []
    for _ in range(n):
        before()
        stop = asyncio.Event()
        task = asyncio.create_task(longest_stall(stop))
        await asyncio.sleep(0)
        started = time.thread_time()
        call()
        cpu.append(time.thread_time() - started)
        await asyncio.sleep(0)
        stop.set()
        worst.append(await task)
    return worst, cpu


async def scrape_loop_time(state: Path, scrapes: int = 300) -> ScrapeCost:
    """In process: the event-loop stall of a scrape answered from the snapshot, and of one that
    renders (what each Prometheus scrape pays, every few seconds) after every request series
    changed; beside prometheus_client's ``generate_latest`` of the same registry."""
    plane = ControlPlane(bench_settings(state, free_port()))
    await plane.start()
    metrics = plane.metrics
    try:
        series = [  # a realistic exposition: two dozen (route, method, status) series
            metrics.request_duration.labels(f"/api/v1/r{route}", "GET", status)
            for route in range(12)
            for status in ("200", "403")
        ]

        def traffic() -> None:
            for child in series:
                child.observe(0.01)

        metrics.render()
        from_snapshot, _ = await stalls(metrics.exposition, lambda: None, scrapes)
        rendering, rendering_cpu = await stalls(metrics.render, traffic, scrapes)
        reference = []
        for _ in range(50):
            started = time.perf_counter()
            generate_latest(metrics.registry)
            reference.append(time.perf_counter() - started)
        return ScrapeCost(
            statistics.median(from_snapshot),
            p99(from_snapshot),
            statistics.median(rendering),
            p99(rendering),
            p99(rendering_cpu),
            statistics.median(reference),
            metrics.render().count(b"\n"),
        )
    finally:
        await plane.close()


# Routes an operator's scripts read; with anonymous refusals they give /metrics its usual series.
WARM_UP_PATHS = ("/api/v1/flags", "/api/v1/incidents", "/api/v1/audit", "/api/v1/status")


def warm_up(url: str) -> None:
    """Some authenticated and anonymous traffic, so the exposition is not the empty one."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in WARM_UP_PATHS:
        httpx.get(url + path, headers=admin)
        httpx.get(url + path)  # 401
    httpx.get(url + "/no/such/path")  # 404


def row(what: str, ours: float, reference: float, ratio: float, unit: str) -> None:
    """One line of the table: the medians, and the median of the rounds' ratios."""
    print(f"  {what:<34} {ours:10.0f} {reference:10.0f} {ratio:6.2f}x  {unit}")


def main(seconds: int, rate: int, rounds: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian) and run again")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Both servers up at once, every wrk run of ours right beside the same run of the
        # reference, ``rounds`` times: a neighbour's burst on this shared machine then costs
        # one pair's ratio, not the whole comparison (the medians are printed).
        runs: dict[str, dict[str, list[float]]] = {"ours": {}, "bare": {}}
        latencies: dict[str, list[float]] = {}
        with server("ours", root / "ours") as ours_url:
            warm_up(ours_url)
            size = len(httpx.get(ours_url + "/metrics").content)
            with server("bare", root / "bare", size) as bare_url:
                urls = {"ours": ours_url, "bare": bare_url}
                for _ in range(rounds):
                    for c in (16, 64):
                        for path in ("healthz", "metrics"):
                            for name, url in urls.items():
                                found = runs[name].setdefault(f"{path}{c}", [])
                                found.append(wrk(f"{url}/{path}", c, seconds))
                for name, url in urls.items():
                    latencies[name] = asyncio.run(open_loop(url + "/healthz", rate, 10))
        runner = asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False))
        with runner:
            cost = runner.run(scrape_loop_time(root / "inproc"))
    ours = {key: statistics.median(values) for key, values in runs["ours"].items()}
    bare = {key: statistics.median(values) for key, values in runs["bare"].items()}
    ratios = {
        key: statistics.median(
            o / b for o, b in zip(runs["ours"][key], runs["bare"][key], strict=True)
        )
        for key in runs["ours"]
    }
    print(
        f"\nHTTP probes (wrk -t1, {seconds}s each, {rounds} rounds of ours beside the reference,"
        f" medians; /metrics body {size} bytes)"
    )
    print(f"  {'what':<34} {'ours':>10} {'reference':>10} {'ratio':>7}")
    for c in (16, 64):
        row(
            f"GET /healthz, {c} connections",
            ours[f"healthz{c}"],
            bare[f"healthz{c}"],
            ratios[f"healthz{c}"],
            "req/s",
        )
    for c in (16, 64):
        row(
            f"GET /metrics, {c} connections",
            ours[f"metrics{c}"],
            bare[f"metrics{c}"],
            ratios[f"metrics{c}"],
            "req/s",
        )
    print(f"  open loop {rate} req/s on /healthz for 10 s (latency from the scheduled time):")
    for name in ("ours", "bare"):
        values = latencies[name]
        print(
            f"    {name:<6} p50 {statistics.median(values) * 1000:6.2f} ms  "
            f"p99 {p99(values) * 1000:6.2f} ms  max {max(values) * 1000:6.2f} ms  (n={len(values)})"
        )
    print(
        f"  event loop per request at wrk 16 connections (1 / rate): /metrics"
        f" {1000 / ours['metrics16']:.2f} ms, /healthz {1000 / ours['healthz16']:.2f} ms"
    )
    ms = 1000
    print(f"  event loop stalled per scrape, in process ({cost.lines}-line exposition):")
    print(
        f"    from the snapshot      p50 {cost.snapshot_p50 * ms:6.3f} ms"
        f"  p99 {cost.snapshot_p99 * ms:6.3f} ms"
    )
    print(
        f"    rendering (all changed) p50 {cost.render_p50 * ms:6.3f} ms"
        f"  p99 {cost.render_p99 * ms:6.3f} ms (CPU p99 {cost.render_cpu_p99 * ms:.3f} ms)"
    )
    print(f"    prometheus_client generate_latest of the same: {cost.generate_latest * ms:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rate", type=int, default=500, help="open-loop requests per second")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs of each, alternated")
    parser.add_argument("--serve", choices=["ours", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-bytes", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve_child(options.serve, options.port, options.state, options.metrics_bytes)
    else:
        main(options.seconds, options.rate, options.rounds)
