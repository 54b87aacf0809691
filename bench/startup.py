"""Start-up: from exec of ``lunia run`` to a 200 from ``/readyz``, and to the bot polling.

Each figure is the median of ``--runs`` cold starts (a fresh state dir each time, after one
uncounted warm-up so every run finds Python's bytecode cache, as an installed image has it),
beside a reference measured the same way in the same run: a bare FastAPI app with a ``/readyz``
route served by uvicorn (``python -c "import fastapi, uvicorn; ..."``). "Bot on" points
``TELEGRAM_API_BASE`` at the loopback fake Bot API (tests/fakes/telegram.py). Two moments count:
*ready*, what an orchestrator waits on (the API answers ``/readyz``; the bot is brought up after
it, in the background), and *bot polling*, when the fake receives the bot's first ``getUpdates``
(after its getMe, setMyCommands and deleteWebhook). Beside each wall time, the CPU time the
process had used by then (user + system, from /proc): on a busy shared machine wall time mostly
measures the neighbours, CPU time mostly the start path. Prints a table (``--markdown``:
Markdown); no asserts.

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

# Settings a developer's shell may carry that would change what ``lunia run`` starts, and
# PYTHONDONTWRITEBYTECODE: with it the warm-up would write no bytecode cache and every run
# would compile its imports from source, which an installed image never does (pip compiles).
FOREIGN = (
    "API_",
    "TELEGRAM_",
    "OPENAI_",
    "REDIS_",
    "ENABLE_REDIS",
    "LUNIA_",
    "PAGERDUTY_",
    "PYTHONDONTWRITEBYTECODE",
)


@dataclass(frozen=True)
class Case:
    """One way of starting a server: its argv and extra environment (``{port}``, ``{state}``),
    and whether it runs the bot against the fake Bot API."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    bot: bool = False


@dataclass(frozen=True)
class Sample:
    """One start: wall and CPU seconds from exec to ready, and to the first getUpdates."""

    ready: float
    ready_cpu: float
    polling: float | None = None
    polling_cpu: float | None = None


def fill(template: str, port: int, state: Path) -> str:
    """``template`` with ``{port}`` and ``{state}`` put in (other braces are left alone)."""
    return template.replace("{port}", str(port)).replace("{state}", str(state))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_once(case: Case, workdir: Path, fake: FakeTelegram) -> Sample:
    """Exec ``case``, time it to ready (and to the bot's first getUpdates); then stop it."""
    port = free_port()
    state = workdir / f"state-{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update({k: fill(v, port, state) for k, v in case.env.items()})
    argv = [fill(a, port, state) for a in case.argv]
    with (workdir / f"{port}.log").open("w+b") as log:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=workdir, env=env, stdout=log, stderr=log
        )
        try:
            ready, ready_cpu = await until_ready(proc, port, started)
            if ready is None:
                log.seek(0)
                raise RuntimeError(f"{case.name}: not ready: {log.read().decode()[-2000:]}")
            if not case.bot:
                return Sample(ready, ready_cpu)

            def first_poll() -> float | None:
                return next((c.at for c in fake.calls_to("getUpdates") if c.at >= started), None)

            polled_at = await fake.wait_for(first_poll, timeout=READY_WITHIN)
            return Sample(ready, ready_cpu, polled_at - started, cpu_seconds(proc.pid))
        finally:
            await stop(proc)


async def until_ready(
    proc: asyncio.subprocess.Process, port: int, started: float
) -> tuple[float | None, float]:
    """Wall and CPU seconds from ``started`` to the first 200 from ``/readyz`` (None: never)."""
    url = f"http://127.0.0.1:{port}/readyz"
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() - started < READY_WITHIN and proc.returncode is None:
            try:
                if (await client.get(url)).status_code == 200:
                    return time.monotonic() - started, cpu_seconds(proc.pid)
            except httpx.TransportError:
                pass
            await asyncio.sleep(POLL)
    return None, 0.0


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
        Case("lunia run, bot on (fake Bot API)", (LUNIA, "run"), {**ours, **bot}, bot=True),
    ]


def report(results: dict[str, list[Sample]], markdown: bool) -> None:
    """Medians, range and ratios to the reference, one row per case."""
    reference = next(iter(results.values()))
    wall_ref = statistics.median(r.ready for r in reference)
    cpu_ref = statistics.median(r.ready_cpu for r in reference)
    header = (
        "start",
        "ready (wall), median",
        "min–max",
        "vs reference",
        "CPU by ready",
        "vs ref",
        "bot polling (wall)",
        "CPU by polling",
    )
    rows = []
    for name, runs in results.items():
        walls = [r.ready for r in runs]
        cpu = statistics.median(r.ready_cpu for r in runs)
        polls = [r.polling for r in runs if r.polling is not None]
        poll_cpus = [r.polling_cpu for r in runs if r.polling_cpu is not None]
        rows.append(
            (
                name,
                f"{statistics.median(walls):.2f} s",
                f"{min(walls):.2f}–{max(walls):.2f} s",
                f"{statistics.median(walls) / wall_ref:.1f}x",
                f"{cpu:.2f} s",
                f"{cpu / cpu_ref:.1f}x",
                f"{statistics.median(polls):.2f} s" if polls else "—",
                f"{statistics.median(poll_cpus):.2f} s" if poll_cpus else "—",
            )
        )
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
            results: dict[str, list[Sample]] = {case.name: [] for case in started}
            for case in started:
                await start_once(case, workdir, fake)  # warm-up: bytecode cache, page cache
            for _ in range(runs):  # interleaved, so drifting load on a shared machine hits all
                for case in started:
                    results[case.name].append(await start_once(case, workdir, fake))
            if not markdown:
                print(f"runs per case: {runs} (median shown)")
            report(results, markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.markdown))
