"""Start-up time: from exec of ``lunia run`` to a 200 from ``/readyz``, with and without the bot.

Each figure is the median of ``--runs`` cold starts (a fresh state dir each time, after one
uncounted warm-up so every run finds Python's bytecode cache), beside a reference measured the
same way in the same run: a bare FastAPI app with a ``/readyz`` route served by uvicorn
(``python -c "import fastapi, uvicorn; ..."``). "Bot on" points ``TELEGRAM_API_BASE`` at the
loopback fake Bot API (tests/fakes/telegram.py), so ready includes the bot's getMe,
setMyCommands and deleteWebhook calls. Beside the wall time, the CPU time the process had used
by then (user + system, from /proc): on a busy shared machine wall time mostly measures the
neighbours, CPU time mostly the start path. Prints a table (``--markdown``: Markdown); no asserts.

    .venv/bin/python bench/startup.py [--runs 5] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.telegram import FakeTelegram  # noqa: E402
from tests.support.services import free_port  # noqa: E402

LUNIA = str(Path(sys.executable).with_name("lunia"))
OPS = -1001000000001
READY_WITHIN = 60.0  # seconds; a start slower than this is a failure, not a figure
POLL = 0.01  # seconds between readiness polls

# The reference: what any FastAPI service pays to import its framework and start serving.
BARE = """
import sys
import fastapi, uvicorn
app = fastapi.FastAPI()
@app.get("/readyz")
async def readyz() -> dict[str, bool]:
    return {"ready": True}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="auto", http="auto",
            log_config=None, access_log=False)
"""

# Settings a developer's shell may carry that would change what ``lunia run`` starts.
FOREIGN = ("API_", "TELEGRAM_", "OPENAI_", "REDIS_", "ENABLE_REDIS", "LUNIA_", "PAGERDUTY_")


@dataclass(frozen=True)
class Case:
    """One way of starting a server: its argv and extra environment (``{port}``, ``{state}``)."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


def fill(template: str, port: int, state: Path) -> str:
    """``template`` with ``{port}`` and ``{state}`` put in (other braces are left alone)."""
    return template.replace("{port}", str(port)).replace("{state}", str(state))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ready_after(case: Case, workdir: Path) -> tuple[float, float]:
    """Wall and CPU seconds from exec to the first 200 from ``/readyz``; then stops it."""
    port = free_port()
    state = workdir / f"state-{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update({k: fill(v, port, state) for k, v in case.env.items()})
    argv = [fill(a, port, state) for a in case.argv]
    url = f"http://127.0.0.1:{port}/readyz"
    with (workdir / f"{port}.log").open("w+b") as log:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=workdir, env=env, stdout=log, stderr=log
        )
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                while time.perf_counter() - started < READY_WITHIN:
                    if proc.returncode is not None:
                        break
                    try:
                        if (await client.get(url)).status_code == 200:
                            return time.perf_counter() - started, cpu_seconds(proc.pid)
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(POLL)
            log.seek(0)
            raise RuntimeError(f"{case.name}: not ready: {log.read().decode()[-2000:]}")
        finally:
            await stop(proc)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited in 20 s."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def cases(fake: FakeTelegram) -> list[Case]:
    """The reference, then ``lunia run`` on the embedded defaults without and with the bot."""
    ours = {"LUNIA_STATE_DIR": "{state}", "API_PORT": "{port}"}
    bot = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE": fake.base,
        "TELEGRAM_OPS_CHAT_ID": str(OPS),
        "TELEGRAM_ADMINS": "1",
    }
    return [
        Case("bare FastAPI + uvicorn (reference)", (sys.executable, "-c", BARE, "{port}"), {}),
        Case("lunia run, bot off", (LUNIA, "run"), ours),
        Case("lunia run, bot on (fake Bot API)", (LUNIA, "run"), {**ours, **bot}),
    ]


def report(results: dict[str, list[tuple[float, float]]], markdown: bool) -> None:
    """Medians, range and ratios to the reference, one row per case."""
    walls = {name: [w for w, _ in runs] for name, runs in results.items()}
    cpus = {name: [c for _, c in runs] for name, runs in results.items()}
    wall_ref = statistics.median(next(iter(walls.values())))
    cpu_ref = statistics.median(next(iter(cpus.values())))
    header = ("start", "ready (wall), median", "min–max", "vs reference", "CPU by ready", "vs ref")
    rows = [
        (
            name,
            f"{statistics.median(walls[name]):.2f} s",
            f"{min(walls[name]):.2f}–{max(walls[name]):.2f} s",
            f"{statistics.median(walls[name]) / wall_ref:.1f}x",
            f"{statistics.median(cpus[name]):.2f} s",
            f"{statistics.median(cpus[name]) / cpu_ref:.1f}x",
        )
        for name in results
    ]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


async def main(runs: int, markdown: bool) -> None:
    async with FakeTelegram() as fake:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            started = cases(fake)
            results: dict[str, list[tuple[float, float]]] = {case.name: [] for case in started}
            for case in started:
                await ready_after(case, workdir)  # warm-up: bytecode cache, page cache
            for _ in range(runs):  # interleaved, so drifting load on a shared machine hits all
                for case in started:
                    results[case.name].append(await ready_after(case, workdir))
            if not markdown:
                print(f"runs per case: {runs} (median shown)")
            report(results, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.markdown))
