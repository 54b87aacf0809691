"""``lunia run`` as a real process: serves probes on the embedded defaults, exits 0 on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port

pytestmark = pytest.mark.slow  # lunia run as a real process

LUNIA = str(Path(sys.executable).with_name("lunia"))


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "TELEGRAM_"))}
    full_env.update(LUNIA_STATE_DIR=str(tmp_path / "var"), API_PORT=str(port), **env)
    proc = subprocess.Popen(
        [LUNIA, "run"], cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc, port


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lunia run exited early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("lunia run did not serve /healthz within 30 s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_probes_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, port = start(tmp_path)
    try:
        health = wait_healthy(proc, port)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert "request_duration_seconds_bucket" in metrics
        assert 'redis_status{redis_status="disabled"} 1.0' in metrics
        assert "feature_flag_info" in metrics
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    log = err.decode()
    assert "stopped cleanly" in log
    assert "api-admin-token" in log  # says where the generated token is...
    token = (tmp_path / "var" / "secrets" / "api-admin-token").read_text().strip()
    assert token not in log  # ...never what it is
    assert "TELEGRAM_BOT_TOKEN" in log


def test_run_with_a_bad_setting_exits_2_naming_it(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, TELEGRAM_OPERATORS="bob")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [
        "lunia: configuration error: TELEGRAM_OPERATORS: expected comma-separated numeric "
        "Telegram ids, got 'bob' (got 'bob')"
    ]


def test_run_on_a_busy_port_exits_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = start(tmp_path)
        proc.kill()
        proc.communicate()
        proc = subprocess.Popen(
            [LUNIA, "run"],
            cwd=tmp_path,
            env={**os.environ, "LUNIA_STATE_DIR": str(tmp_path / "v2"), "API_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"API_PORT: cannot listen on 127.0.0.1:{port}" in err.decode()
