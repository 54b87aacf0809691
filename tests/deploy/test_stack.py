"""The production stack files hang together: compose, Dockerfile, Grafana provisioning.

No Docker engine runs here, so these are structural checks across files: every name one file
refers to (a service, a network alias, a mounted path, a secret, a datasource uid, a metric) is
defined by the file it points at, and every metric the dashboard plots is one the control plane
really exports.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.config.settings import Settings
from core.control_plane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.prod.yml"
DOCKERFILE = ROOT / "deploy/Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
RULES = ROOT / "deploy/prometheus/rules/lunia.rules.yml"
RULES_TESTS = [ROOT / "tests/deploy" / n for n in ("rules_test.yml", "rules_test_days.yml")]
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
GRAFANA = ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/lunia.json"
DATASOURCES = GRAFANA / "provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning/dashboards/lunia.yml"

ROLES = ("api", "bot", "worker")  # the control plane, one service per role over Redis
SERVICES = {*ROLES, "redis", "prometheus", "alertmanager", "grafana"}
# PromQL words that look like metric names but are not (functions are followed by "(").
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def at_defaults(text: str) -> str:
    """Compose's interpolation with no variable set: ``${VAR:-default}`` -> default, ``$$`` -> $,
    which is the file as a user's ``make up`` reads it (tests/stack/drive.py sets some)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    text = re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1 from .env>", text)  # required: no default
    assert not re.search(r"(?<!\$)\$\{?\w", text.replace("$$", "")), "a variable without a default"
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(at_defaults(COMPOSE.read_text()))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume!r}"
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside the container comes from on the host, if from a bind mount."""
    wanted = PurePosixPath(container_path)
    for target, source in bind_mounts(service).items():
        if wanted == PurePosixPath(target) or PurePosixPath(target) in wanted.parents:
            return source / wanted.relative_to(target)
    return None


def flag_value(service: dict[str, Any], flag: str) -> str:
    command = service["command"]
    args = shlex.split(command) if isinstance(command, str) else command
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    assert len(values) == 1, (flag, args)
    return values[0]


def network_names(compose: dict[str, Any], name: str) -> dict[str, set[str]]:
    """Network -> the names a service answers to on it (service name plus aliases)."""
    networks = compose["services"][name].get("networks", {})
    if isinstance(networks, list):
        networks = dict.fromkeys(networks)
    return {net: {name, *((cfg or {}).get("aliases") or [])} for net, cfg in networks.items()}


def reachable(compose: dict[str, Any], client: str, host: str) -> bool:
    """Whether service ``client`` can resolve ``host`` on a network they share."""
    client_nets = set(network_names(compose, client))
    return any(
        host in names and net in client_nets
        for other in compose["services"]
        for net, names in network_names(compose, other).items()
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names and functions stripped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*(\()?", expr)
    return {m.group(1) for m in found if not m.group(2)} - PROMQL_WORDS


# Compose ------------------------------------------------------------------------------------


def test_compose_file_stays_valid_for_docker_compose_1_29(compose: dict[str, Any]) -> None:
    assert compose["version"] == "3.8"
    assert "name" not in compose
    assert compose["services"].keys() >= SERVICES
    for name, service in compose["services"].items():
        assert "start_interval" not in service.get("healthcheck", {}), name
        for net in network_names(compose, name):
            assert net in compose["networks"], (name, net)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], (name, volume)
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], (name, secret)


def test_every_service_is_on_a_user_defined_network(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        assert network_names(compose, name), name
        assert "network_mode" not in compose["services"][name], name


@pytest.mark.parametrize("role", ROLES)
def test_each_role_builds_from_the_dockerfile_runs_and_is_healthchecked(
    compose: dict[str, Any], role: str
) -> None:
    service = compose["services"][role]
    build = service["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert service["command"] in (role, [role])
    assert service["env_file"] in (".env", [".env"])
    assert service["restart"] == "unless-stopped"
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    env = service["environment"]
    # .env (a copy of .env.example) says 127.0.0.1, ./var and no Redis; the containers need these.
    assert env["API_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container only
    assert env["LUNIA_STATE_DIR"] == "/var/lib/lunia"
    assert env["ENABLE_REDIS"] == "true"  # split roles share state through Redis
    assert reachable(compose, role, env["REDIS_URL"].split("//")[1].split(":")[0])
    state = [v for v in service["volumes"] if v.split(":")[1] == "/var/lib/lunia"]
    assert state and state[0].split(":")[0] in compose["volumes"]
    # Backups are on one volume every role mounts: any of them lists, verifies, restores.
    backups = [v for v in service["volumes"] if v.split(":")[1] == env["BACKUP_DIR"]]
    assert backups and backups[0].split(":")[0] == "lunia-backups"


def test_roles_have_their_own_state_and_only_the_api_is_published(
    compose: dict[str, Any],
) -> None:
    states = {
        v.split(":")[0]
        for role in ROLES
        for v in compose["services"][role]["volumes"]
        if v.split(":")[1] == "/var/lib/lunia"
    }
    assert len(states) == len(ROLES)  # each its own spool and generated files
    assert "127.0.0.1:8000:8000" in compose["services"]["api"]["ports"]
    assert (
        "ports" not in compose["services"]["bot"] and "ports" not in compose["services"]["worker"]
    )


def test_the_callback_signing_key_is_shared_by_every_role(compose: dict[str, Any]) -> None:
    assert compose["secrets"]["callback_signing_key"]["file"] == "./secrets/callback_signing_key"
    for role in ROLES:
        service = compose["services"][role]
        assert "callback_signing_key" in service["secrets"], role
        assert service["environment"]["CALLBACK_SIGNING_KEY_FILE"] == (
            "/run/secrets/callback_signing_key"
        )


def test_the_backup_signing_key_is_shared_by_every_role(compose: dict[str, Any]) -> None:
    # Every role mounts the shared backups volume: a backup one signs, all must verify.
    assert compose["secrets"]["backup_signing_key"]["file"] == "./secrets/backup_signing_key"
    for role in ROLES:
        service = compose["services"][role]
        assert "backup_signing_key" in service["secrets"], role
        assert service["environment"]["BACKUP_SIGNING_KEY_FILE"] == (
            "/run/secrets/backup_signing_key"
        )


def test_prometheus_and_alertmanager_reach_the_control_plane_by_their_configured_name(
    compose: dict[str, Any],
) -> None:
    prometheus = load_yaml(PROMETHEUS_CONFIG)
    targets = [
        target
        for job in prometheus["scrape_configs"]
        for config in job["static_configs"]
        for target in config["targets"]
    ]
    assert {"lunia-api:8000", "lunia-bot:8000", "lunia-worker:8000"} <= set(targets)
    for target in targets:
        assert reachable(compose, "prometheus", target.split(":")[0]), target
    assert "lunia-api" in network_names(compose, "api")["lunia"]
    for manager in prometheus["alerting"]["alertmanagers"]:
        for target in manager["static_configs"][0]["targets"]:
            assert reachable(compose, "prometheus", target.split(":")[0]), target
    alertmanager = load_yaml(ALERTMANAGER_CONFIG)
    for receiver in alertmanager["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            host = re.match(r"https?://([^:/]+)", hook["url"]).group(1)  # type: ignore[union-attr]
            assert reachable(compose, "alertmanager", host), hook["url"]


def test_prometheus_scrapes_with_the_metrics_token_the_control_plane_reads(
    compose: dict[str, Any],
) -> None:
    [job] = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert compose["secrets"]["metrics_token"]["file"] == "./secrets/metrics_token"
    assert "metrics_token" in compose["services"]["prometheus"]["secrets"]
    for name in ROLES:
        service = compose["services"][name]
        assert "metrics_token" in service["secrets"], name
        assert service["environment"]["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"


def test_the_webhook_token_secret_is_where_alertmanager_reads_it(compose: dict[str, Any]) -> None:
    alertmanager = load_yaml(ALERTMANAGER_CONFIG)
    files = {
        hook["http_config"]["authorization"]["credentials_file"]
        for receiver in alertmanager["receivers"]
        for hook in receiver.get("webhook_configs", [])
    }
    assert files == {"/run/secrets/alert_webhook_token"}
    assert compose["secrets"]["alert_webhook_token"]["file"] == "./secrets/alert_webhook_token"
    for name in (*ROLES, "alertmanager"):
        assert "alert_webhook_token" in compose["services"][name]["secrets"], name
    # The token is never part of the repository or the image.
    ignored = DOCKERIGNORE.read_text().split()
    assert "secrets" in ignored and ".env" in ignored


def test_the_control_plane_reads_the_same_webhook_token_file(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = compose["services"]["api"]["environment"]
    path = environment["ALERT_WEBHOOK_TOKEN_FILE"]
    assert path == "/run/secrets/alert_webhook_token"
    # Load settings exactly as the container would, with the secret file at a local path.
    secret = tmp_path / "alert_webhook_token"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN_FILE", str(secret))
    monkeypatch.setenv("LUNIA_STATE_DIR", str(tmp_path / "state"))
    settings = Settings.load(_env_file=None)
    token = settings.alert_webhook_token
    assert token is not None and token.get_secret_value() == "0123456789abcdef0123456789abcdef"


def test_redis_persists_with_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:8")
    command = redis["command"]
    assert command[:2] == ["sh", "-c"]
    args = shlex.split(command[2].split("exec ", 1)[1])
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--dir") + 1] == "/data"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])


def test_redis_asks_for_the_password_every_role_sends(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    script = redis["command"][2]
    # requirepass from the secret, written to a file: never on the command line (ps shows it).
    assert "requirepass" in script and "cat /run/secrets/redis_password" in script
    assert "--requirepass" not in script
    assert "redis_password" in redis["secrets"]
    assert "redis_password" in " ".join(redis["healthcheck"]["test"])
    for role in ROLES:
        service = compose["services"][role]
        assert service["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
        assert "redis_password" in service["secrets"]


def test_roles_run_read_only_without_capabilities(compose: dict[str, Any]) -> None:
    for role in ROLES:
        service = compose["services"][role]
        assert service["read_only"] is True, role
        assert service["tmpfs"] == ["/tmp"], role
        assert service["cap_drop"] == ["ALL"], role
        assert "no-new-privileges:true" in service["security_opt"], role
        # What a read-only root leaves writable must be volumes: state and shared backups.
        targets = {v.split(":")[1] for v in service["volumes"]}
        assert targets == {"/var/lib/lunia", "/var/lib/lunia-backups"}, role


def test_upstream_images_are_pinned_maintained_releases(compose: dict[str, Any]) -> None:
    images = {name: compose["services"][name]["image"] for name in SERVICES - set(ROLES)}
    assert images == {
        "redis": "redis:8.2",
        "prometheus": "prom/prometheus:v3.13.2",
        "alertmanager": "prom/alertmanager:v0.35.1",
        "grafana": "grafana/grafana:12.3.1",
    }
    args = compose["services"]["api"]["build"]["args"]
    assert args == {"PYTHON_IMAGE": "python:3.11-slim-bookworm"}


def test_every_bind_mounted_host_path_exists(compose: dict[str, Any]) -> None:
    mounts = [(n, p) for n, s in compose["services"].items() for p in bind_mounts(s).values()]
    assert len(mounts) >= 4
    for name, path in mounts:
        assert path.exists(), (name, path)
        assert ROOT in path.parents, (name, path)


def test_config_files_named_on_command_lines_are_mounted(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, expected in (
        ("prometheus", PROMETHEUS_CONFIG),
        ("alertmanager", ALERTMANAGER_CONFIG),
    ):
        config = flag_value(services[name], "--config.file")
        assert host_path(services[name], config) == expected, name
    # rule_files: resolved next to the config inside the container.
    rules_dir = host_path(services["prometheus"], "/etc/prometheus/rules")
    assert rules_dir is not None and any(rules_dir.glob("*.yml"))


def test_grafana_provisioning_is_mounted_and_points_at_the_dashboard(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None
    assert provisioning / "datasources/prometheus.yml" == DATASOURCES
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    dashboards_dir = host_path(grafana, providers[0]["options"]["path"])
    assert dashboards_dir is not None
    assert json.loads((dashboards_dir / "lunia.json").read_text())["uid"] == dashboard["uid"]
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    host = re.match(r"http://([^:/]+):9090$", source["url"]).group(1)  # type: ignore[union-attr]
    assert reachable(compose, "grafana", host)


# Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_lunia_as_non_root_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    kinds = [kind for kind, _ in steps]
    # The base is a build argument defaulting to the upstream image (stack-test's stand-in).
    assert steps[:2] == [
        ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm"),
        ("FROM", "${PYTHON_IMAGE}"),
    ]
    # The backups volume's mount point exists, owned by the unprivileged user (a fresh named
    # volume copies that ownership; without it every role crash-looped on PermissionError).
    runs = " ".join(arg for kind, arg in steps if kind == "RUN")
    assert "install -d -o lunia -g lunia -m 0700 /var/lib/lunia /var/lib/lunia-backups" in runs
    users = [arg for kind, arg in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # USER comes after the root-only steps, before the process starts.
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert "8000" in [arg for kind, arg in steps if kind == "EXPOSE"]
    (healthcheck,) = [arg for kind, arg in steps if kind == "HEALTHCHECK"]
    # Exec form must be valid JSON, or Docker silently runs it through a shell instead.
    probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert probe[:2] == ["python", "-c"] and "curl" not in healthcheck
    assert "urllib" in probe[2] and "127.0.0.1:8000/healthz" in probe[2]
    env = " ".join(arg for kind, arg in steps if kind == "ENV")
    assert "LUNIA_STATE_DIR=/var/lib/lunia" in env and "API_HOST=0.0.0.0" in env
    assert [arg for kind, arg in steps if kind == "ENTRYPOINT"] == ['["lunia"]']
    assert [arg for kind, arg in steps if kind == "CMD"] == ['["run"]']
    assert any("pip install --no-cache-dir ." in arg for kind, arg in steps if kind == "RUN")


def test_dockerfile_copies_every_package_the_wheel_needs_and_none_is_ignored() -> None:
    copies = [arg.split() for kind, arg in dockerfile_instructions() if kind == "COPY"]
    copied = {source.rstrip("/") for words in copies for source in words[:-1]}
    # pyproject's readme and [tool.setuptools.packages.find] include list.
    needed = {"pyproject.toml", "README.md", "api", "bot", "core"}
    assert needed <= copied
    ignored = set(DOCKERIGNORE.read_text().split())
    assert not needed & ignored
    assert {".venv", "var", ".git"} <= ignored
    for name in needed:
        assert (ROOT / name).exists(), name


# Dashboard ----------------------------------------------------------------------------------


def test_dashboard_is_provisionable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "lunia-control-plane"
    assert dashboard["schemaVersion"] == 38
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus"


def test_dashboard_plots_what_the_runbook_watches(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    plotted = metric_names(exprs)
    assert {
        "core_pnl",
        "risk_exposure",
        "request_duration_seconds_bucket",
        "exchange_failover",
        "incidents_open",
        "alerts_received_total",
        "outbox_depth",
        "telegram_sends_total",
        "llm_requests_total",
        "backup_last_success_timestamp_seconds",
        "redis_status",
        # what the runbook's alert rules watch (lunia.rules.yml, group lunia.runbook)
        "orders_total",
        "lease_leader",
        "outbox_oldest_age_seconds",
        "audit_export_last_success_timestamp_seconds",
        "bus_lag",
        "request_duration_seconds_count",
    } <= plotted
    assert "histogram_quantile(0.99, sum by (le, route)" in exprs


def test_every_dashboard_expression_is_valid_promql(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = [{"record": f"lunia:panel_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exprs)} rules found" in done.stdout


def exported_series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can contain."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_plotted_metric_is_exported_by_the_control_plane(
    plane: ControlPlane, dashboard: dict[str, Any]
) -> None:
    exported = exported_series_names(plane.metrics.render().decode())
    assert "request_duration_seconds_bucket" in exported  # the parse found the real families
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - exported
            assert not unknown, (panel["title"], target["expr"], unknown)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


async def test_every_metric_an_alert_rule_reads_is_exported_by_the_control_plane(
    plane: ControlPlane,
) -> None:
    exported = exported_series_names(plane.metrics.render().decode())
    # "up" is Prometheus' own series for each scrape target.
    exported.add("up")
    rules = alert_rules()
    assert len(rules) >= 13
    for rule in rules:
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, (rule["alert"], unknown)


def test_every_alert_rule_has_promtool_cases_that_fire_and_that_stay_quiet() -> None:
    cases = [case for path in RULES_TESTS for case in load_yaml(path)["tests"]]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    for rule in alert_rules():
        mine = [check for check in checks if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in mine), f"{rule['alert']} never fires"
        assert any(not check["exp_alerts"] for check in mine), f"{rule['alert']} never quiet"


def test_alert_rules_name_a_runbook_section_that_exists() -> None:
    runbook = (ROOT / "docs/RUNBOOK.md").read_text()
    anchors = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        link = rule["annotations"]["runbook"]
        assert link.startswith("RUNBOOK.md#"), rule["alert"]
        assert link.removeprefix("RUNBOOK.md#") in anchors, (rule["alert"], link)


def test_metric_name_extraction_ignores_functions_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route="/a b"}[5m])))'
        " and on(job) time() - y_seconds offset 5m > bool 1e3"
    )
    assert metric_names(expr) == {"x_bucket", "y_seconds"}


def test_embedded_service_stands_in_for_every_role_on_sqlite(compose: dict[str, Any]) -> None:
    # Runbook §2.2 (Redis lost for good): one `lunia run` on SQLite, not started by `make up`.
    embedded = compose["services"]["embedded"]
    assert embedded["profiles"] == ["embedded"]
    assert embedded["command"] == ["run"]
    env = embedded["environment"]
    assert env["ENABLE_REDIS"] == "false"
    # The §2.2 restore is the first command on its fresh state volume (the guard allows it).
    assert env["LUNIA_LOCAL"] == "1"
    assert not any(name.startswith("REDIS_") for name in env)
    assert "redis_password" not in embedded["secrets"]
    assert not embedded["depends_on"]
    # It restores from the same backups, signed with the same key, and keeps its own state.
    targets = dict(reversed(v.split(":")[:2]) for v in embedded["volumes"])
    assert targets["/var/lib/lunia-backups"] == "lunia-backups"
    assert targets["/var/lib/lunia"] not in {
        dict(reversed(v.split(":")[:2]) for v in compose["services"][r]["volumes"])[
            "/var/lib/lunia"
        ]
        for r in ROLES
    }
    assert env["BACKUP_SIGNING_KEY_FILE"] == "/run/secrets/backup_signing_key"
    # Prometheus and Alertmanager reach it under the roles' names, unchanged.
    aliases = set(embedded["networks"]["lunia"]["aliases"])
    assert {"lunia-api", "lunia-bot", "lunia-worker"} <= aliases
    assert embedded["ports"] == compose["services"]["api"]["ports"]
