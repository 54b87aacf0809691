"""``make stack-test``: docker-compose.prod.yml built and run for real, then driven end to end.

What it does, in order, each step timed:

1. A Docker engine: the host's when one answers; otherwise its own ``dockerd`` (Debian's
   ``docker.io``, installed when missing) with its own data root, socket and pidfile. At the end
   that daemon is stopped by its pid and the host put back as it was found: ``ip_forward`` and
   the iptables rules restored, the bridge it made removed. Its image cache stays in
   ``/var/lib/lunia-stack-test`` so that a second run is warm (``make stack-clean`` removes it).
2. Images: where no registry answers (``STACK_TEST_UPSTREAM`` unset), stand-ins for the upstream
   images built from Debian packages (deploy/standins/) on a debootstrapped base, passed to the
   compose file through its ``*_IMAGE`` variables; the lunia image from deploy/Dockerfile.
3. The stack: api, bot, two workers, Redis (password), Prometheus, Alertmanager under the
   project name ``lunia-stack-test``, with a throwaway .env and secrets in var/stack-test/, and
   the bot pointed at a loopback Telegram Bot API fake that this script serves on the Docker
   bridge (tests/fakes/telegram.py).
4. Checks, as an operator would run them: probes and health; Prometheus targets up; an alert
   through Alertmanager to an incident and its Telegram message; Acknowledge pressed in chat; a
   backup taken and verified; the daily checklist posted; the leading worker killed and the
   standby leading within its lease; Redis stopped (read-only, alerts spooled) and started
   (spool replayed); ``lunia smoke`` against the deployment.
5. ``docker-compose down -v`` and the engine as above, whatever happened.

Exit status 0 when every check passed; on a failure the roles' last log lines are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fakes.telegram import DEFAULT_TOKEN, FakeTelegram  # noqa: E402

WORK = ROOT / "var" / "stack-test"
PROJECT = "lunia-stack-test"
COMPOSE_FILES = ("docker-compose.prod.yml", "tests/stack/compose.stack-test.yml")
SERVICES = ("api", "bot", "worker", "redis", "prometheus", "alertmanager")  # not Grafana
ENGINE_HOME = Path("/var/lib/lunia-stack-test")
ENGINE_RUN = Path("/run/lunia-stack-test")
BASE_IMAGE = "local/debian:bookworm"
STANDINS = {
    "PYTHON_IMAGE": ("python", "lunia-standin/python:bookworm"),
    "REDIS_IMAGE": ("redis", "lunia-standin/redis:bookworm"),
    "PROMETHEUS_IMAGE": ("prometheus", "lunia-standin/prometheus:bookworm"),
    "ALERTMANAGER_IMAGE": ("alertmanager", "lunia-standin/alertmanager:bookworm"),
}
LUNIA_IMAGE = "lunia-control-plane:stack-test"
OPS_CHAT = -1001000000001
ADMIN_USER = 4242
LEASE_TTL = 10.0


class CheckFailed(AssertionError):
    """A check of the stack did not hold."""


class Broken(CheckFailed):
    """Something that waiting will not fix (a container crash-looping): stop polling."""


# Output -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What was checked, how long each step took, and what it found."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time one step; the caller appends details to the yielded list."""
        details: list[str] = []
        begun = time.monotonic()
        print(f"… {name}", flush=True)
        try:
            yield details
        except BaseException as exc:
            self._line("FAIL", name, time.monotonic() - begun, [*details, str(exc)])
            raise
        self._line("ok", name, time.monotonic() - begun, details)

    def _line(self, mark: str, name: str, took: float, details: list[str]) -> None:
        text = f"{mark:>4}  {took:6.1f} s  {name}"
        if details:
            text += f"  ({'; '.join(details)})"
        self.lines.append(text)
        print(text, flush=True)

    def summary(self) -> str:
        total = time.monotonic() - self.started
        return "\n".join(["", "stack-test summary:", *self.lines, f"total {total:.0f} s"])


def run(
    argv: list[str], *, env: dict[str, str] | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; raise with that output when it fails."""
    done = subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(argv[:4])} … exited {done.returncode}:\n{done.stdout[-2000:]}"
            f"{done.stderr[-2000:]}"
        )
    return done


async def eventually(
    what: str, probe: Callable[[], Awaitable[Any]], timeout: float, every: float = 0.5
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except Broken:
            raise
        except (httpx.HTTPError, CheckFailed, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(every)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s (last: {last!r:.300})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The engine -----------------------------------------------------------------------------------


class Engine:
    """A Docker engine for the run: the host's own if one answers, else a private dockerd that
    is stopped again with the host's network settings put back."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self._process: subprocess.Popen[bytes] | None = None
        self._ip_forward: str | None = None
        self._iptables: dict[str, str] = {}
        self._links_before: set[str] = set()

    def answers(self) -> bool:
        if shutil.which("docker") is None:
            return False
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return done.returncode == 0

    def start(self) -> str:
        if self.answers():
            return "the host's engine"
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        ENGINE_RUN.mkdir(parents=True, exist_ok=True)
        ENGINE_HOME.mkdir(parents=True, exist_ok=True)
        self._ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        for tool in ("iptables", "ip6tables"):
            saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
            if saved.returncode == 0:
                self._iptables[tool] = saved.stdout
        self._links_before = set(os.listdir("/sys/class/net"))
        sock = ENGINE_RUN / "docker.sock"
        log = (ENGINE_HOME / "dockerd.log").open("ab")
        self._process = subprocess.Popen(
            [
                "dockerd",
                "--data-root", str(ENGINE_HOME / "docker"),
                "--exec-root", str(ENGINE_RUN / "exec"),
                "--pidfile", str(ENGINE_RUN / "dockerd.pid"),
                "--host", f"unix://{sock}",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        deadline = time.monotonic() + 60
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"dockerd did not start; see {ENGINE_HOME / 'dockerd.log'}")
            time.sleep(0.3)
        return f"own dockerd (pid {self._process.pid})"

    def stop(self) -> list[str]:
        """Stop our daemon and undo what it changed on the host; what was undone."""
        if self._process is None:
            return []
        undone = [f"dockerd pid {self._process.pid} stopped"]
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        for link in set(os.listdir("/sys/class/net")) - self._links_before:
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
            undone.append(f"link {link} removed")
        for tool, rules in self._iptables.items():
            now = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
            restore = netfilter_restore(rules, now.stdout)
            subprocess.run([f"{tool}-restore"], input=restore, text=True, check=False)
            undone.append(f"{tool} rules restored")
        if self._ip_forward is not None:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self._ip_forward + "\n")
            undone.append(f"ip_forward={self._ip_forward}")
        self._process = None
        return undone

    def bridge_address(self) -> str:
        """The host's address on docker0, which containers reach as host-gateway."""
        shown = run(["ip", "-4", "-o", "addr", "show", "docker0"]).stdout
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", shown)
        if match is None:
            raise CheckFailed(f"docker0 has no IPv4 address: {shown!r}")
        return match.group(1)


BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


def netfilter_restore(before: str, now: str) -> str:
    """iptables-restore input putting back ``before``: its own tables as saved, and every table
    that appeared since (dockerd's filter and nat) emptied with ACCEPT policies, which is what a
    machine without them does. iptables-restore replaces each table it is given whole."""
    tables_before = set(re.findall(r"^\*(\w+)$", before, re.M))
    text = before
    for table in sorted(set(re.findall(r"^\*(\w+)$", now, re.M)) - tables_before):
        chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS.get(table, ()))
        text += f"*{table}\n{chains}COMMIT\n"
    return text


def apt_install(*packages: str) -> None:
    """Install Debian packages (the stack test runs as root on a Debian machine)."""
    run(["apt-get", "update", "-qq"])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "install", "-y", "-qq", *packages], env=env)


# Images ---------------------------------------------------------------------------------------


def image_exists(engine: Engine, tag: str) -> bool:
    done = subprocess.run(
        ["docker", "image", "inspect", tag], env=engine.env, capture_output=True, check=False
    )
    return done.returncode == 0


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (where debootstrap fetches the base)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        text = path.read_text() if path.is_file() else ""
        for match in re.finditer(r"^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            # Debian's own archive (…/debian), not its security suite or a vendor's repository.
            if uri.endswith("/debian") and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def build_standins(engine: Engine) -> list[str]:
    """The Debian base and a stand-in per upstream image, built where missing."""
    built = []
    if not image_exists(engine, BASE_IMAGE):
        if shutil.which("debootstrap") is None:
            apt_install("debootstrap")
        with tempfile.TemporaryDirectory(prefix="lunia-rootfs-") as rootfs:
            run(["debootstrap", "--variant=minbase", "bookworm", rootfs, debian_mirror()])
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            run_input(engine, ["docker", "import", "-", BASE_IMAGE], tar)
        built.append(BASE_IMAGE)
    with tempfile.TemporaryDirectory(prefix="lunia-standins-") as context:
        for dockerfile in (ROOT / "deploy/standins").glob("*.Dockerfile"):
            shutil.copy(dockerfile, context)
        # The host's extra CAs (a TLS-inspecting egress): pip in deploy/Dockerfile reaches the
        # index through it. Only the stand-in base trusts them; the real image never does.
        cas = Path(context, "host-ca")
        cas.mkdir()
        for cert in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
            shutil.copy(cert, cas / cert.name)
        for name, tag in STANDINS.values():
            if image_exists(engine, tag):
                continue
            run(
                ["docker", "build", "-q", "-f", f"{context}/{name}.Dockerfile", "-t", tag,
                 "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", context],
                env=engine.env,
            )  # fmt: skip
            built.append(tag)
    return built


def run_input(engine: Engine, argv: list[str], producer: subprocess.Popen[bytes]) -> None:
    done = subprocess.run(argv, env=engine.env, stdin=producer.stdout, capture_output=True)
    producer.wait()
    if done.returncode != 0 or producer.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} failed: {done.stderr.decode()[-1000:]}")


# The stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The compose project: its environment, secrets, ports and the commands to drive it."""

    engine: Engine
    telegram_base: str
    upstream: bool
    api_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(24))
    secret_values: dict[str, str] = field(default_factory=dict)
    checklist_at: str = "08:00"

    def schedule_checklist(self) -> None:
        """Set the daily checklist to the minute that starts 1–2 minutes from now (called just
        before ``up``, so a slow image build does not make the stack miss it)."""
        self.checklist_at = datetime.fromtimestamp(time.time() + 120, UTC).strftime("%H:%M")
        self.write_env()

    def prepare(self) -> None:
        """A throwaway .env and secrets folder under var/stack-test/ (never the user's)."""
        shutil.rmtree(WORK, ignore_errors=True)
        (WORK / "secrets").mkdir(parents=True)
        for name in (
            "alert_webhook_token", "callback_signing_key", "backup_signing_key",
            "metrics_token", "redis_password",
        ):  # fmt: skip
            value = secrets.token_hex(32)
            self.secret_values[name] = value
            path = WORK / "secrets" / name
            path.write_text(value + "\n")
            path.chmod(0o444)  # read by the containers' unprivileged users
        token = WORK / "admin_token"
        token.write_text(self.admin_token + "\n")
        token.chmod(0o600)
        self.write_env()

    def write_env(self) -> None:
        env = {
            "LOG_LEVEL": "INFO",
            "INFRA_PROD_ENABLED": "true",
            "API_TOKENS": f"admin:{self.admin_token}",
            "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN,
            "TELEGRAM_API_BASE": self.telegram_base,
            "TELEGRAM_OPS_CHAT_ID": str(OPS_CHAT),
            "TELEGRAM_ADMINS": str(ADMIN_USER),
            "LEASE_TTL_SECONDS": str(int(LEASE_TTL)),
            "HEALTH_CHECK_INTERVAL_SECONDS": "2",
            # The daily checklist fires for real, from the leading worker's scheduler, a few
            # minutes after start (the stack is up within a minute; other checks run meanwhile).
            "CHECKLIST_TIME_UTC": self.checklist_at,
        }
        (WORK / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    @property
    def compose_env(self) -> dict[str, str]:
        env = {
            **self.engine.env,
            "LUNIA_ENV_FILE": str(WORK / "stack.env"),
            "LUNIA_SECRETS_DIR": str(WORK / "secrets"),
            "LUNIA_IMAGE": LUNIA_IMAGE,
            "LUNIA_API_PORT": str(self.api_port),
            "PROMETHEUS_PORT": str(self.prometheus_port),
            "ALERTMANAGER_PORT": str(self.alertmanager_port),
            "GRAFANA_PORT": str(free_port()),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
        }
        if not self.upstream:
            env.update({variable: tag for variable, (_, tag) in STANDINS.items()})
        return env

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", path)]
        argv = [*compose_command(), "-p", PROJECT, *files, *args]
        return run(argv, env=self.compose_env, check=check, timeout=timeout).stdout

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service)
        return [line for line in out.split() if line]

    def docker(self, *args: str, check: bool = True) -> str:
        return run(["docker", *args], env=self.engine.env, check=check).stdout

    def health(self, container: str) -> str:
        return self.docker("inspect", "--format", "{{.State.Health.Status}}", container).strip()

    def lunia(self, container: str, *args: str) -> str:
        """``lunia ...`` inside a role's container (the deployment's own state)."""
        return self.docker("exec", container, "lunia", *args)

    def metrics_of(self, container: str) -> str:
        """A role's /metrics, fetched inside its container with the metrics token."""
        script = (
            "import urllib.request as u;"
            "t=open('/run/secrets/metrics_token').read().strip();"
            "r=u.Request('http://127.0.0.1:8000/metrics',headers={'Authorization':'Bearer '+t});"
            "print(u.urlopen(r,timeout=5).read().decode())"
        )
        return self.docker("exec", container, "python", "-c", script)

    def make(self, target: str) -> str:
        """A runbook make target run on this host against the deployment's API."""
        env = {
            **os.environ,
            "LUNIA_URL": self.api,
            "LUNIA_TOKEN_FILE": str(WORK / "admin_token"),
            "LUNIA_ALERT_WEBHOOK_TOKEN_FILE": str(WORK / "secrets" / "alert_webhook_token"),
            "LUNIA_METRICS_TOKEN_FILE": str(WORK / "secrets" / "metrics_token"),
        }
        env.pop("LUNIA_LOCAL", None)
        return run(["make", "--no-print-directory", target], env=env, timeout=300).stdout

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) where installed, else ``docker-compose`` (installed)."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        apt_install("docker-compose")
    return ["docker-compose"]


def leads(metrics: str, lease: str) -> bool:
    return re.search(rf'^lease_leader\{{lease="{lease}"\}} 1(\.0)?$', metrics, re.M) is not None


# The checks -----------------------------------------------------------------------------------


async def check_stack(stack: Stack, telegram: FakeTelegram, report: Report) -> None:
    http = httpx.AsyncClient(timeout=10)
    async with http:
        await check_health(stack, http, report)
        check_hardening(stack, report)
        await check_prometheus(stack, http, report)
        incident = await check_alert_to_incident(stack, http, report)
        await check_acknowledge_from_chat(stack, http, telegram, incident, report)
        await check_backup(stack, http, report)
        await check_worker_failover(stack, report)
        await check_redis_outage(stack, http, report)
        await check_smoke(stack, report)
        await check_checklist(stack, telegram, report)
        await check_redis_lost_for_good(stack, http, report)


async def check_health(stack: Stack, http: httpx.AsyncClient, report: Report) -> None:
    with report.step("every container healthy, /healthz answers") as details:
        containers = {s: stack.containers(s) for s in ("api", "bot", "worker", "redis")}
        if len(containers["worker"]) != 2:
            raise CheckFailed(f"expected 2 workers, got {containers['worker']}")

        async def all_healthy() -> bool:
            everyone = [c for cs in containers.values() for c in cs]
            for container in everyone:
                restarts = stack.docker("inspect", "--format", "{{.RestartCount}}", container)
                if int(restarts) > 2:
                    raise Broken(f"{container[:12]} restarted {restarts.strip()} times")
            return all(stack.health(c) == "healthy" for c in everyone)

        await eventually("all containers healthy", all_healthy, timeout=180, every=2)

        # The api replica reports the bot and the worker from their heartbeats (issue 19).
        with contextlib.suppress(CheckFailed):
            await eventually("/healthz ok", lambda: healthz_ok(stack, http), timeout=30)
        response = await http.get(f"{stack.api}/healthz")
        body = response.json()
        details.append(f"/healthz {response.status_code} {body['status']}")
        if response.status_code != 200 or body["status"] != "ok":
            raise CheckFailed(f"/healthz on the api replica: {response.status_code} {body}")
        details.append(f"{sum(map(len, containers.values()))} containers healthy")


def check_hardening(stack: Stack, report: Report) -> None:
    with report.step("hardening: non-root, read-only root, s3 extra, Redis password") as details:
        api = stack.containers("api")[0]
        uid = stack.docker("exec", api, "id", "-u").strip()
        if uid != "10001":
            raise CheckFailed(f"the api runs as uid {uid}, not the image's unprivileged 10001")
        probe = "open('/usr/lib/lunia-write-probe', 'w')"
        wrote = run(["docker", "exec", api, "python", "-c", probe], env=stack.engine.env,
                    check=False)  # fmt: skip
        if wrote.returncode == 0 or "Read-only file system" not in wrote.stderr:
            raise CheckFailed(f"the root filesystem is writable: {wrote.stderr[-300:]!r}")
        stack.docker("exec", api, "python", "-c", "import boto3")  # the s3 extra is installed
        redis = stack.containers("redis")[0]
        anonymous = stack.docker("exec", redis, "redis-cli", "ping", check=False)
        if "NOAUTH" not in anonymous:
            raise CheckFailed(f"Redis answered a client without the password: {anonymous!r}")
        details.append(f"uid {uid}, root read-only, boto3 importable, Redis NOAUTH without it")


async def check_prometheus(stack: Stack, http: httpx.AsyncClient, report: Report) -> None:
    with report.step("Prometheus scrapes api, bot and worker (with the metrics token)") as details:

        async def targets_up() -> list[str]:
            response = await http.get(f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets")
            active = response.json()["data"]["activeTargets"]
            lunia = [t for t in active if t["labels"].get("job") == "lunia"]
            up = [t["labels"]["role"] for t in lunia if t["health"] == "up"]
            return up if len(lunia) == 3 and len(up) == 3 else []

        roles = await eventually("3 lunia targets up", targets_up, timeout=90, every=2)
        details.append("up: " + ", ".join(sorted(roles)))


async def check_alert_to_incident(
    stack: Stack, http: httpx.AsyncClient, report: Report
) -> dict[str, Any]:
    with report.step("alert → Alertmanager → webhook → incident") as details:
        alert = {
            "labels": {"alertname": "StackTestAlert", "severity": "critical", "service": "stack"},
            "annotations": {"summary": "stack-test: an alert through the real Alertmanager"},
            "startsAt": datetime.now(UTC).isoformat(),
        }
        posted = await http.post(
            f"http://127.0.0.1:{stack.alertmanager_port}/api/v2/alerts", json=[alert]
        )
        if posted.status_code != 200:
            raise CheckFailed(f"Alertmanager refused the alert: {posted.status_code}")
        begun = time.monotonic()

        async def incident() -> dict[str, Any] | None:
            response = await http.get(f"{stack.api}/api/v1/incidents", headers=stack.auth)
            response.raise_for_status()
            for item in response.json()["items"]:
                if "StackTestAlert" in json.dumps(item):
                    return dict(item)
            return None

        found = await eventually("incident from Alertmanager", incident, timeout=60)
        details.append(f"incident #{found['id']} after {time.monotonic() - begun:.1f} s")
        return dict(found)


async def check_acknowledge_from_chat(
    stack: Stack,
    http: httpx.AsyncClient,
    telegram: FakeTelegram,
    incident: dict[str, Any],
    report: Report,
) -> None:
    with report.step("incident posted to Telegram, Acknowledge pressed in chat") as details:

        async def posted() -> Any:
            for message in telegram.messages(OPS_CHAT):
                if "StackTestAlert" in (message.text or "") and message.buttons:
                    return message
            return None

        message = await eventually("incident message in the ops chat", posted, timeout=30)
        ack = next((b for b in message.buttons if "ack" in b.get("text", "").lower()), None)
        if ack is None:
            raise CheckFailed(f"no Acknowledge button on {message.buttons}")
        telegram.push_callback(OPS_CHAT, ADMIN_USER, message.message_id, ack["callback_data"])

        async def acknowledged() -> bool:
            url = f"{stack.api}/api/v1/incidents/{incident['id']}"
            response = await http.get(url, headers=stack.auth)
            response.raise_for_status()
            return bool(response.json()["incident"]["state"] == "acknowledged")

        await eventually("incident acknowledged from chat", acknowledged, timeout=30)
        details.append(f"message {message.message_id}, buttons: {len(message.buttons)}")


async def check_backup(stack: Stack, http: httpx.AsyncClient, report: Report) -> None:
    title = "make create-emergency-backup (LUNIA_URL) backs up the deployment, verified"
    with report.step(title) as details:
        out = stack.make("create-emergency-backup")
        if f"on the deployment at {stack.api}" not in out:
            raise CheckFailed(f"not a backup of the deployment: {out!r}")
        taken = backup_id(out)
        # The field's symptom: the worker listed "no backups yet" after the host's backup.
        inside = stack.lunia(stack.containers("worker")[0], "backup", "list")
        if taken not in inside:
            raise CheckFailed(f"backup {taken} not seen inside the worker: {inside!r}")
        verified = await http.post(f"{stack.api}/api/v1/backups/{taken}/verify", headers=stack.auth)
        body = verified.json()
        if verified.status_code != 200 or not body.get("ok"):
            raise CheckFailed(f"verify {taken}: {verified.status_code} {body}")
        details.append(f"{taken} seen by the worker, verified by the api replica")


async def check_checklist(stack: Stack, telegram: FakeTelegram, report: Report) -> None:
    title = f"daily checklist posted by the scheduler at {stack.checklist_at} UTC"
    with report.step(title) as details:

        async def posted() -> Any:
            for message in telegram.messages(OPS_CHAT):
                if "checklist" in (message.text or "").lower():
                    return message
            return None

        message = await eventually("checklist in the ops chat", posted, timeout=240, every=2)
        details.append(f"message {message.message_id}")


async def check_worker_failover(stack: Stack, report: Report) -> None:
    with report.step("leading worker killed → standby leads within its lease") as details:
        workers = stack.containers("worker")

        async def leader() -> str | None:
            leading = [w for w in workers if leads(stack.metrics_of(w), "worker")]
            return leading[0] if len(leading) == 1 else None

        first = await eventually("one leading worker", leader, timeout=30)
        standby = next(w for w in workers if w != first)
        stack.docker("kill", first)
        killed = time.monotonic()

        async def standby_leads() -> bool:
            return leads(stack.metrics_of(standby), "worker")

        await eventually("standby leads", standby_leads, timeout=LEASE_TTL * 3, every=0.25)
        took = time.monotonic() - killed
        details.append(f"took {took:.1f} s (lease {LEASE_TTL:.0f} s)")
        # The documented bound: the lease's TTL plus a third of it (one renew interval), and a
        # little for the gauge's refresh and this poll.
        bound = LEASE_TTL * 4 / 3 + 3
        if took > bound:
            raise CheckFailed(f"standby took {took:.1f} s, more than {bound:.1f} s")
        stack.docker("start", first)


async def check_redis_outage(stack: Stack, http: httpx.AsyncClient, report: Report) -> None:
    with report.step("Redis stopped → read-only, alert spooled; started → replayed") as details:
        stack.compose("stop", "redis")

        async def degraded() -> bool:
            body = (await http.get(f"{stack.api}/healthz")).json()
            return bool(body["components"].get("redis", {}).get("status") != "ok")

        await eventually("api sees Redis down", degraded, timeout=30)
        response = await post_alert(stack, http, "SpooledDuringOutage", "5b0a7c1e9d2f3a44")
        details.append(f"webhook during outage: {response.status_code}")
        if not response.is_success:
            raise CheckFailed(f"alert during the outage refused: {response.status_code}")
        stack.compose("start", "redis")

        async def replayed() -> bool:
            return "SpooledDuringOutage" in await incident_titles(stack, http)

        await eventually("spooled alert replayed into an incident", replayed, timeout=60)
        details.append("replayed")
        back = time.monotonic()

        await eventually("/healthz ok again", lambda: healthz_ok(stack, http), timeout=60)
        details.append(f"whole again {time.monotonic() - back:.1f} s after the replay")


async def check_smoke(stack: Stack, report: Report) -> None:
    with report.step("make smoke against the deployment (LUNIA_URL, its tokens)") as details:
        out = stack.make("smoke")
        details.append(out.strip().splitlines()[-1] if out.strip() else "")


async def healthz_ok(stack: Stack, http: httpx.AsyncClient) -> bool:
    """Whether the api replica's /healthz says the whole deployment is ok."""
    return bool((await http.get(f"{stack.api}/healthz")).json()["status"] == "ok")


async def post_alert(
    stack: Stack, http: httpx.AsyncClient, alertname: str, fingerprint: str
) -> httpx.Response:
    """One firing alert straight to the api's Alertmanager webhook, with the stack's token."""
    token = stack.secret_values["alert_webhook_token"]
    return await http.post(
        f"{stack.api}/api/v1/alerts/alertmanager",
        headers={"Authorization": f"Bearer {token}"},
        json=webhook_body(alertname, fingerprint),
    )


async def incident_titles(stack: Stack, http: httpx.AsyncClient) -> str:
    response = await http.get(f"{stack.api}/api/v1/incidents", headers=stack.auth)
    response.raise_for_status()
    return response.text


async def wait_healthy(stack: Stack, services: tuple[str, ...], timeout: float = 120) -> None:
    async def healthy() -> bool:
        containers = [c for s in services for c in stack.containers(s)]
        return bool(containers) and all(stack.health(c) == "healthy" for c in containers)

    await eventually(f"{', '.join(services)} healthy", healthy, timeout=timeout, every=1)


def backup_id(out: str) -> str:
    match = re.search(r"backup (\d{8}T\d{6}Z)", out)
    if match is None:
        raise CheckFailed(f"no backup id in: {out!r}")
    return match.group(1)


async def check_redis_lost_for_good(stack: Stack, http: httpx.AsyncClient, report: Report) -> None:
    """Runbook §2.2 with the commands docs/RUNBOOK.md gives: to the embedded store and back."""
    with report.step("runbook §2.2: Redis lost for good → embedded SQLite → back") as details:
        worker = stack.containers("worker")[0]
        taken = backup_id(stack.lunia(worker, "backup", "create", "--reason", "emergency"))
        stack.compose("stop", "api", "bot", "worker", "redis")
        moved = stack.compose("run", "--rm", "--no-deps", "embedded", "backup", "restore",
                              taken, "--yes")  # fmt: skip
        if "into the sqlite store" not in moved:
            raise CheckFailed(f"restore into SQLite did not say it moved the state: {moved!r}")
        stack.compose("--profile", "embedded", "up", "-d", "embedded")
        await wait_healthy(stack, ("embedded",))
        if "StackTestAlert" not in await incident_titles(stack, http):
            raise CheckFailed("the embedded store lacks the incident taken over from Redis")
        details.append(f"{taken} → sqlite")
        # Work done while on SQLite must come back: an incident opened there.
        opened = await post_alert(stack, http, "WhileOnSqlite", "8c1d0e2f3a4b5c6d")
        opened.raise_for_status()
        embedded = stack.containers("embedded")[0]
        back = backup_id(stack.lunia(embedded, "backup", "create", "--reason", "manual"))
        stack.compose("stop", "embedded")
        stack.compose("up", "-d", "redis")
        await wait_healthy(stack, ("redis",))
        moved = stack.compose("run", "--rm", "api", "backup", "restore", back, "--yes")
        if "into the redis store" not in moved:
            raise CheckFailed(f"restore into Redis did not say it moved the state: {moved!r}")
        stack.compose("up", "-d", "--scale", "worker=2", "api", "bot", "worker")
        await wait_healthy(stack, ("api", "bot", "worker"))
        titles = await incident_titles(stack, http)
        if "StackTestAlert" not in titles or "WhileOnSqlite" not in titles:
            raise CheckFailed("back on Redis, an incident is missing")
        details.append(f"{back} → redis, both incidents there")


def webhook_body(alertname: str, fingerprint: str) -> dict[str, Any]:
    """An Alertmanager webhook body with one firing alert."""
    alert = {
        "status": "firing",
        "labels": {"alertname": alertname, "severity": "warning"},
        "annotations": {"summary": f"stack-test: {alertname}"},
        "startsAt": datetime.now(UTC).isoformat(),
        "fingerprint": fingerprint,
    }
    return {
        "version": "4", "status": "firing", "receiver": "lunia",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}', "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [alert],
    }  # fmt: skip


# Main -----------------------------------------------------------------------------------------


async def main() -> int:
    report = Report()
    engine = Engine()
    upstream = bool(os.environ.get("STACK_TEST_UPSTREAM"))
    stack: Stack | None = None
    failed = False
    try:
        with report.step("Docker engine") as details:
            details.append(engine.start())
        if not upstream:
            with report.step("stand-in images from Debian packages") as details:
                built = build_standins(engine)
                details.append("built " + ", ".join(built) if built else "cached")
        telegram = FakeTelegram(host=engine.bridge_address())
        await telegram.start()
        try:
            base = f"http://host.docker.internal:{telegram.port}"
            stack = Stack(engine, telegram_base=base, upstream=upstream)
            stack.prepare()
            with report.step("build the lunia image (deploy/Dockerfile, from uv.lock)"):
                stack.compose("build", "api")
            stack.schedule_checklist()
            with report.step("compose up: api, bot, 2 workers, redis, prometheus, alertmanager"):
                stack.compose("up", "-d", "--scale", "worker=2", *SERVICES)
            await check_stack(stack, telegram, report)
        finally:
            await telegram.stop()
    except (CheckFailed, subprocess.SubprocessError, OSError, httpx.HTTPError) as exc:
        failed = True
        print(f"\nstack-test FAILED: {exc}", file=sys.stderr)
        if stack is not None:
            print(stack.logs()[-12000:], file=sys.stderr)
    finally:
        with report.step("teardown: compose down -v, host put back") as details:
            if stack is not None:
                stack.compose("down", "-v", "--remove-orphans", check=False)
            details.extend(engine.stop())
    print(report.summary())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
