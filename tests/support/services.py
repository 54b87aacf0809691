"""Real Debian services for tests: redis-server, Prometheus and Alertmanager on loopback.

This module owns the processes it starts: each runs on a free 127.0.0.1 port in its own temp
dir, logs to a file there, is ready only once its probe answers, and is stopped by pid
(terminate, wait, kill). Anything still running when the interpreter exits is stopped too.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_PROBE_INTERVAL = 0.05
_PORT_ATTEMPTS = 3

# Strong references: a started service is reachable (and stoppable at exit) until stopped.
_running: set[ManagedProcess] = set()


class ServiceStartError(RuntimeError):
    """A service exited or never became ready; the message carries its log tail."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ready(port: int, path: str) -> bool:
    """Whether GET http://127.0.0.1:port/path answers 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def redis_ping(port: int, password: str | None = None) -> bool:
    """Whether a Redis on 127.0.0.1:port answers PING with PONG (not LOADING or an error),
    after AUTH with ``password`` when one is given."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            if password is not None:
                secret = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class ManagedProcess:
    """One server process on a fixed loopback port, with a log file and a readiness probe."""

    name = "service"

    def __init__(self, workdir: Path, port: int) -> None:
        """Prepare (but do not start) the service in ``workdir`` on ``port``."""
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line that runs the server in the foreground."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers its readiness probe."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server's pid while it is running."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and block until it is ready, or raise ``ServiceStartError``."""
        if self.running:
            raise RuntimeError(f"{self.name} on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor; ours closes right away.
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while not self.ready():
            code = self._process.poll()
            if code is not None:
                self._process = None
                _running.discard(self)
                raise ServiceStartError(
                    f"{self.name} exited with {code} before it was ready:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(
                    f"{self.name} on port {self.port} not ready after {timeout:.0f}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_PROBE_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Terminate the server, kill it if it outlives ``timeout``; return its exit code."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def kill(self) -> int | None:
        """Kill the server with SIGKILL (a crash, not a shutdown); return its exit code."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        """Use an already started service as a context manager that stops it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the service."""
        self.stop()

    def __repr__(self) -> str:
        """Name, port and pid, for test output."""
        return f"<{type(self).__name__} port={self.port} pid={self.pid}>"


class RedisServer(ManagedProcess):
    """A redis-server, restartable on the same port and dir: without persistence by default, or
    with an append-only file fsynced on every write (``durable``), as docs/DEPLOY.md asks for."""

    name = "redis"

    def __init__(
        self, workdir: Path, port: int, *, durable: bool = False, password: str | None = None
    ) -> None:
        """``durable``: AOF with ``appendfsync always`` (a killed server loses no write);
        ``password``: clients must AUTH with it (``requirepass``), as in the compose stack."""
        super().__init__(workdir, port)
        self.durable = durable
        self.password = password

    @property
    def url(self) -> str:
        """The redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        """redis-server in the foreground, loopback only, no RDB; AOF only when durable."""
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        return [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            *aof,
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *(["--requirepass", self.password] if self.password is not None else []),
        ]  # fmt: skip

    def ready(self) -> bool:
        """PING answers PONG."""
        return redis_ping(self.port, self.password)


class _ConfiguredService(ManagedProcess):
    """A service that reads a config file written into its workdir."""

    config_name = "config.yml"

    def __init__(
        self, workdir: Path, port: int, config_text: str, files: Mapping[str, str] | None = None
    ) -> None:
        """Write ``config_text`` and any extra ``files`` (relative paths) into ``workdir``."""
        super().__init__(workdir, port)
        self.config_path = workdir / self.config_name
        for relative, text in {**(files or {}), self.config_name: config_text}.items():
            path = workdir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    @property
    def url(self) -> str:
        """The base http:// URL."""
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """GET /-/ready answers 200."""
        return http_ready(self.port, "/-/ready")


class Alertmanager(_ConfiguredService):
    """prometheus-alertmanager with gossip disabled."""

    name = "alertmanager"
    config_name = "alertmanager.yml"

    def argv(self) -> list[str]:
        """Alertmanager on loopback, storage in the workdir, no cluster listener."""
        return [
            "prometheus-alertmanager",
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]


class Prometheus(_ConfiguredService):
    """prometheus with its TSDB in the workdir."""

    name = "prometheus"
    config_name = "prometheus.yml"

    def argv(self) -> list[str]:
        """Prometheus on loopback; rule files resolve relative to the config in the workdir."""
        return [
            "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",
            "--log.level=warn",
        ]


_Service = TypeVar("_Service", bound=ManagedProcess)


def _start_on_free_port(build: Callable[[int], _Service], timeout: float) -> _Service:
    """Build and start a service, retrying on another port if someone took the chosen one."""
    for attempt in range(_PORT_ATTEMPTS):
        service = build(free_port())
        try:
            service.start(timeout)
        except ServiceStartError:
            taken = "address already in use" in service.log_tail().lower()
            if not taken or attempt == _PORT_ATTEMPTS - 1:
                raise
        else:
            return service
    raise AssertionError("unreachable")  # pragma: no cover


def _workdir(tmp_path: Path, prefix: str) -> Path:
    """A fresh directory under ``tmp_path``, so one test can start several of a kind."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=tmp_path))


def start_redis(
    tmp_path: Path,
    timeout: float = START_TIMEOUT,
    *,
    durable: bool = False,
    password: str | None = None,
) -> RedisServer:
    """Start redis-server on a free port under ``tmp_path`` and wait for PONG."""
    workdir = _workdir(tmp_path, "redis")
    return _start_on_free_port(
        lambda port: RedisServer(workdir, port, durable=durable, password=password), timeout
    )


def start_alertmanager(
    tmp_path: Path,
    config_text: str,
    files: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Alertmanager:
    """Start Alertmanager with ``config_text`` (plus extra ``files``) and wait for /-/ready."""
    workdir = _workdir(tmp_path, "alertmanager")
    return _start_on_free_port(
        lambda port: Alertmanager(workdir, port, config_text, files), timeout
    )


def start_prometheus(
    tmp_path: Path,
    config_text: str,
    files: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Prometheus:
    """Start Prometheus with ``config_text`` (plus e.g. rule ``files``) and wait for /-/ready."""
    workdir = _workdir(tmp_path, "prometheus")
    return _start_on_free_port(lambda port: Prometheus(workdir, port, config_text, files), timeout)


def stop_all(services: Sequence[ManagedProcess] | None = None) -> None:
    """Stop the given services (default: every one still running), carrying on past errors."""
    for service in list(services if services is not None else _running):
        with contextlib.suppress(Exception):
            service.stop()


# A test run that dies between start and stop must not leave servers behind.
atexit.register(stop_all)
