"""Every command in docs/RUNBOOK.md exists, and is run here or by a test named in COVERAGE.

The acceptance criterion "every command in docs/RUNBOOK.md is exercised by a test or by
`make smoke`", made enforceable. ``tests/docs/runbook.py`` extracts the commands; this module:

Existence (fails when the runbook names something the product does not have)
* ``lunia ...``: the subcommand path resolves in the real Typer app and its arguments parse
  with the CLI's own (Typer) parser: unknown options, missing values, bad choices and types
  fail.
* ``make X``: ``make -n X`` succeeds in the project root and prints the recipe the runbook
  says it runs (MAKE_RECIPES).
* ``/x``: ``x`` is in ``bot.handlers.all_commands()``, the list /help and setMyCommands publish.
* HTTP: every method + path (and query parameter name) matches a route of ``create_app``.

Exercise (run for real, on 127.0.0.1 only, against uvicorn serving ``create_app``)
* curl lines run verbatim through ``bash -c`` after the runbook's own preamble, which reads
  TOKEN and HOOK from the secrets a fresh install generates under ``var/secrets``. Stated
  substitutions: API is the test server's URL; OPERATOR and VIEWER are temporary tokens of
  exactly those roles (the preamble's default is the admin token); placeholders (ID, NAME, the
  example ids) name real objects of the kind the command acts on (``drill_objects``). The shell
  runs with ``pipefail``; a curl line without ``-f`` gets ``--fail-with-body`` so an HTTP error
  cannot pass; ``| jq ...`` runs jq when it is installed, else ``python -m json.tool`` (which
  only checks that the answer is JSON).
* ``METHOD /path [body]`` spans are sent with the admin token and must answer 2xx.
* ``lunia`` lines run in-process (Typer's CliRunner) on the served instance's state dir in
  document order; the commands that act on a running instance reach it through API_PORT.
  Inline mentions of those (``lunia venues|failover|failback|chaos``, "end with `lunia
  failback`") and commands written without their required arguments name a command rather than
  run a step: their shape must be run elsewhere here or be in COVERAGE.
* Telegram commands are sent, in document order, through a loopback fake Bot API to the real
  bot, each from its own admin's private chat; a confirmation prompt is confirmed. A refusal
  (⛔️), "I don't know" or an internal error fails.

NOT_RUN lists what is deliberately not run here, with the reason; COVERAGE maps commands to the
test node ids that exercise them (checked to exist with ``ast``). A command the runbook gains
that is neither run here nor mapped fails ``test_every_command_is_run_here_or_mapped``.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
import typer.core
from fastapi import FastAPI
from starlette.routing import Match
from typer.testing import CliRunner, Result

from api.app import create_app
from api.cli import app as lunia_app
from bot.handlers import all_commands
from core.control_plane import ControlPlane
from core.incidents.receivers import parse_alertmanager
from core.models import Actor, Role
from core.security.secrets import ADMIN_TOKEN_FILE
from tests.bot.conftest import BotFactory
from tests.bot.test_bot import button
from tests.conftest import PlaneFactory
from tests.docs.runbook import (
    Command,
    Kind,
    Request,
    curl_has_fail_flag,
    curl_request,
    runbook_commands,
    span_requests,
)
from tests.fakes.telegram import FakeTelegram, StoredMessage
from tests.support.http import serve
from tests.support.payloads import am_alert, am_payload

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"

# What this module deliberately does not run, and why (each must still appear in the runbook).
# Runbook §2.2's move between Redis and SQLite on the compose stack: the lunia steps inside
# these lines run in tests/api/test_cli_store_move.py.
_STORE_MOVE = (
    "needs a Docker engine: `make stack-test` runs the sequence on the real stack "
    "(tests/stack/drive.py); its lunia steps run in tests/api/test_cli_store_move.py"
)
_STORE_MOVE_LINES = (
    "exec worker lunia backup create --reason emergency",
    "stop api bot worker",
    "run --rm --no-deps embedded backup list",
    "run --rm --no-deps embedded backup verify ID",
    "run --rm --no-deps embedded backup restore ID --yes",
    "--profile embedded up -d embedded",
    "exec embedded lunia checklist",
    "exec embedded lunia backup create",
    "stop embedded",
    "up -d redis",
    "run --rm api backup restore ID --yes",
    "up -d api bot worker",
)

NOT_RUN: dict[str, str] = {
    "docker compose -f docker-compose.prod.yml ps": "needs a Docker engine",
    "docker compose -f docker-compose.prod.yml restart redis": "needs a Docker engine",
    "docker compose -f docker-compose.prod.yml exec worker lunia backup list": "needs a Docker "
    "engine; the same command over the API is run (`--url URL --token TOKEN`)",
    "make up": "needs a Docker engine (`make -n` checks the recipe)",
    "make stack-test": "needs root and builds images (`make -n` checks the recipe); CI runs "
    "it after `make test` (.ci/run)",
    "make down": "needs a Docker engine (`make -n` checks the recipe)",
    "make test": "runs this very suite, after lint (`make -n` checks the recipe)",
    "make lint": "the lint gate `make test` runs first (`make -n` checks the recipe)",
    "POST /api/v1/alerts/alertmanager": "written without its body; the runbook's full "
    "'Send a test alert' curl line is run",
    "POST /api/v1/assistant/ask": 'written without its {"question"} body',
    "lunia audit export --dest s3://lunia-audit/prod": "needs an S3 endpoint",
    "lunia audit verify --file audit-20261116T040000Z.jsonl": "names example export files",
    "lunia audit verify --file audit-20261116T040000Z.jsonl --file "
    "audit-20261123T040000Z.jsonl": "names example export files",
    "lunia report --out /tmp/access-review-2026Q4.md": "writes outside the test's directory",
    "lunia run": "serves until stopped",
    "API_TOKENS_FILE=/run/secrets/api_tokens ALERT_WEBHOOK_TOKEN_FILE=/run/secrets/webhook "
    "lunia run": "serves until stopped; reads /run/secrets",
    "INFRA_PROD_ENABLED=true lunia run": "serves until stopped",
    "ENABLE_REDIS=false lunia run": "serves until stopped",
    "ENABLE_REDIS=false lunia backup restore ID --yes": "moves the state to another kind of "
    "store; tests/api/test_cli_store_move.py runs it",
    **{
        f"docker compose -f docker-compose.prod.yml {line}": _STORE_MOVE
        for line in _STORE_MOVE_LINES
    },
}

# Command (a lunia command's shape: env names, path, option names; otherwise its text) -> the
# tests that exercise it. Required for everything not run here; may add depth to what is.
COVERAGE: dict[str, tuple[str, ...]] = {
    # lunia
    "lunia run": ("tests/api/test_run.py::test_run_serves_probes_and_stops_cleanly",),
    "API_TOKENS_FILE=… ALERT_WEBHOOK_TOKEN_FILE=… lunia run": (
        "tests/core/test_hardening.py::test_file_variables_supply_secrets_stripped",
        "tests/core/test_hardening.py::test_file_secret_reaches_the_running_api",
    ),
    "INFRA_PROD_ENABLED=… lunia run": (
        "tests/core/test_hardening.py::test_lunia_run_in_prod_with_a_generated_secret_exits_2_with_one_line",
    ),
    "lunia audit export --dest": (
        "tests/api/test_cli.py::test_audit_export_then_offline_verify",
        "tests/core/test_exports.py::test_export_to_s3_verifies_offline",
    ),
    "lunia audit verify --file": (
        "tests/api/test_cli.py::test_audit_export_then_offline_verify",
        "tests/core/test_exports.py::test_scheduled_exports_cover_consecutive_ranges_that_chain",
        "tests/core/test_exports.py::test_a_gap_between_exports_is_detected",
    ),
    "lunia report --out": (
        "tests/api/test_cli_backups.py::test_report_writes_the_access_review_without_tokens",
    ),
    "lunia status": (
        "tests/api/test_cli_remote.py::test_halt_resume_and_status_over_the_url_act_on_the_served_engine",
    ),
    "lunia halt": (
        "tests/api/test_cli_remote.py::test_halt_resume_and_status_over_the_url_act_on_the_served_engine",
    ),
    "lunia resume": (
        "tests/api/test_cli_remote.py::test_halt_resume_and_status_over_the_url_act_on_the_served_engine",
    ),
    "lunia chaos": (
        "tests/api/test_engine_api.py::test_cli_chaos_drill_fails_over_a_running_instance_and_failback_ends_it",
    ),
    "lunia backup restore": (
        "tests/api/test_cli_backups.py::test_backup_create_list_verify_restore",
    ),
    "lunia checklist": (
        "tests/api/test_status_api.py::test_lunia_checklist_exits_1_on_a_failed_line",
    ),
    "lunia smoke --token --url": (
        "tests/api/test_smoke.py::test_smoke_passes_against_a_running_instance",
        "tests/api/test_smoke.py::test_smoke_fails_with_a_bad_token_or_no_instance",
    ),
    # make: the recipe is checked with `make -n` here; these run what it runs
    "make run": ("tests/api/test_run.py::test_run_serves_probes_and_stops_cleanly",),
    "make create-emergency-backup": (
        "tests/api/test_cli_backups.py::test_backup_create_list_verify_restore",
    ),
    "make report": (
        "tests/api/test_cli_backups.py::test_report_writes_the_access_review_without_tokens",
    ),
    "make enable-self-healing": (
        "tests/api/test_cli.py::test_flags_set_and_unset_persist_and_audit",
        "tests/core/test_self_healing.py::test_flag_off_means_no_remedy",
    ),
    "make verify": (
        "tests/deploy/test_deploy_configs.py::test_prometheus_config_passes_promtool_with_its_rule_files",
        "tests/deploy/test_deploy_configs.py::test_rule_file_passes_promtool_check_rules",
        "tests/deploy/test_deploy_configs.py::test_alertmanager_config_passes_amtool",
        "tests/api/test_cli.py::test_audit_verify_fails_naming_the_edited_entry",
        "tests/api/test_cli_backups.py::test_backup_create_list_verify_restore",
    ),
    "ENABLE_REDIS=… lunia backup restore --yes": (
        "tests/api/test_cli_store_move.py::"
        "test_runbook_2_2_moves_the_state_to_sqlite_and_back_with_the_cli",
    ),
    "ENABLE_REDIS=… lunia run": (
        "tests/core/test_store_migration.py::"
        "test_a_redis_backup_restores_into_the_embedded_sqlite_store",
    ),
    "make smoke": ("tests/api/test_smoke.py::test_smoke_passes_against_a_running_instance",),
    "make up": (
        "tests/deploy/test_stack.py::test_compose_file_stays_valid_for_docker_compose_1_29",
        "tests/deploy/test_stack.py::test_each_role_builds_from_the_dockerfile_runs_and_is_healthchecked",
    ),
    # HTTP requests not run here, and paths named without a method
    "POST /api/v1/alerts/alertmanager": (
        "tests/api/test_alerts_api.py::test_alertmanager_delivery_and_redelivery",
    ),
    "/api/v1/alerts/grafana": (
        "tests/api/test_alerts_api.py::test_grafana_and_falco_deliveries_create_incidents",
    ),
    "/api/v1/alerts/falco": (
        "tests/api/test_alerts_api.py::test_grafana_and_falco_deliveries_create_incidents",
    ),
    "POST /api/v1/assistant/ask": (
        "tests/api/test_assistant_api.py::test_ask_answers_from_the_fallback_without_an_llm",
    ),
    "/docs": ("tests/api/test_tokens.py::test_every_response_carries_security_headers",),
    "/api/v1": (
        "tests/api/test_tokens.py::test_rate_limit_answers_429_with_retry_after_per_token",
    ),
    # Telegram: all are run here; these go deeper (buttons, roles, confirmations)
    "/ack ID": (
        "tests/bot/test_bot.py::test_incident_message_ack_button_edits_it_and_stops_escalation",
    ),
    "/silence ID 4h": ("tests/bot/test_bot.py::test_operator_acts_by_command",),
    "/flag SANDBOX_ENABLED on": (
        "tests/bot/test_bot.py::test_dangerous_flag_needs_the_askers_confirmation",
    ),
    "/failover [VENUE]": (
        "tests/bot/test_bot_trading.py::test_failover_shows_the_precheck_and_needs_confirmation",
    ),
    "/restore ID": (
        "tests/bot/test_bot_backups.py::test_backup_list_verify_and_confirmed_restore",
    ),
    "/token issue ci-deploy viewer 8h": (
        "tests/bot/test_bot_tokens.py::test_token_issue_list_revoke",
    ),
    "/halt": (
        "tests/bot/test_bot_trading.py::test_an_operator_halts_confirmed_and_only_an_admin_resumes",
    ),
}

# What each make target must run (the runbook's "= ..." and comments).
MAKE_RECIPES: dict[str, str] = {
    "run": "lunia run",
    "test": "pytest",
    "lint": "mypy",
    "create-emergency-backup": ".venv/bin/lunia backup create --reason emergency",
    "report": ".venv/bin/lunia report --out docs/RELEASE_REPORT.md",
    "enable-self-healing": "lunia flags set SELF_HEALING_ENABLED on",
    "verify": "lunia audit verify",
    "smoke": "lunia smoke",
    "up": "docker compose -f docker-compose.prod.yml up -d --build",
    "stack-test": "tests/stack/drive.py",
    "down": "docker compose -f docker-compose.prod.yml down",
}

# `lunia` commands that act on the running instance over its API (api/cli/venues.py, engine.py).
REMOTE = frozenset({"venues", "failover", "failback", "chaos", "status", "halt", "resume"})

# Exit codes the runbook promises other than 0.
LUNIA_EXIT: dict[str, int] = {"lunia failover": 2}  # "Without --yes it only shows the pre-check"

TELEGRAM_RESOURCE = {
    "ack": "incidents",
    "unack": "incidents",
    "silence": "incidents",
    "unsilence": "incidents",
    "resolve": "incidents",
    "incident": "incidents",
    "verify": "backups",
    "restore": "backups",
    "toggle": "cores",
    "jobs": "jobs",
    "token": "tokens",
    "flag": "flags",
    "failover": "venues",
    "ask": "question",
}
LUNIA_RESOURCE = {"backup": "backups", "token": "tokens", "flags": "flags"}

_EXAMPLE = r"ID|NAME|\[VENUE\]|QUESTION|URL|TOKEN|\{\w+\}|20261128T093000Z|3f9a1c2e"
_PATH_PLACEHOLDER = re.compile(
    rf"/(incidents|backups|tokens|cores|jobs|flags)/(?:{_EXAMPLE})(?=[/?\s\"']|$)"
)
_WORD_PLACEHOLDER = re.compile(rf"(?<![\w$/.-])(?:{_EXAMPLE})(?![\w-])")


# ---------------------------------------------------------------------------------------------
# helpers


def commands_of(*kinds: Kind) -> list[Command]:
    """The runbook's commands of these kinds, in document order."""
    return [c for c in runbook_commands()[1] if c.kind in kinds]


def fill(text: str, resource: str | None, values: dict[str, str]) -> str:
    """Replace placeholders and example ids with real objects of the kind the command acts on."""
    text = _PATH_PLACEHOLDER.sub(lambda m: f"/{m.group(1)}/{values[m.group(1)]}", text)

    def word(m: re.Match[str]) -> str:
        key = m.group(0)
        return values[key] if key in values else values[resource or ""]

    filled = _WORD_PLACEHOLDER.sub(word, text) if resource is not None else text
    assert not _PATH_PLACEHOLDER.search(filled), f"unfilled placeholder in {filled!r}"
    return filled


def lunia_argv(text: str) -> tuple[list[str], list[str]]:
    """(environment assignments, arguments after ``lunia``) of a lunia command."""
    words = shlex.split(text)
    at = words.index("lunia")
    return words[:at], words[at + 1 :]


@functools.cache
def lunia_root() -> typer.core.TyperGroup:
    """The real ``lunia`` command tree, as Typer builds it to parse a command line."""
    root = typer.main.get_command(lunia_app)
    assert isinstance(root, typer.core.TyperGroup)
    return root


@dataclass
class Resolved:
    """A lunia command looked up in the real CLI."""

    path: list[str]
    command: typer.core.TyperCommand | typer.core.TyperGroup
    context: typer.Context
    rest: list[str]

    @property
    def needs_arguments(self) -> bool:
        """A leaf written without its required arguments: a mention, not a step."""
        params = self.command.params
        required = any(isinstance(p, typer.core.TyperArgument) and p.required for p in params)
        return not isinstance(self.command, typer.core.TyperGroup) and required and not self.rest


def resolve(args: list[str]) -> Resolved:
    """Walk the subcommand path; raise LookupError naming the first unknown word."""
    command: typer.core.TyperCommand | typer.core.TyperGroup = lunia_root()
    context = typer.Context(command, info_name="lunia")
    path: list[str] = []
    rest = list(args)
    while isinstance(command, typer.core.TyperGroup) and rest and not rest[0].startswith("-"):
        sub = command.get_command(context, rest[0])
        if sub is None:
            raise LookupError(f"`lunia {' '.join([*path, rest[0]])}`: no such command")
        path.append(rest.pop(0))
        command = sub
        context = typer.Context(command, info_name=path[-1], parent=context)
    return Resolved(path, command, context, rest)


def existing_files(found: Resolved, home: Path) -> list[str]:
    """The arguments, with files that must exist (``--file``) created empty under ``home``:
    the parser checks existence, and the runbook's examples name export files."""
    args = list(found.rest)
    for param in found.command.params:
        info = param.type_descriptor.parameter_info
        if isinstance(param, typer.core.TyperOption) and getattr(info, "exists", False):
            for i, word in enumerate(args[:-1]):
                if word in param.opts:
                    args[i + 1] = str(home / Path(args[i + 1]).name)
                    Path(args[i + 1]).touch()
    return args


def lunia_shape(command: Command) -> str:
    """A lunia command's shape: env names, subcommand path, option names (sorted)."""
    env, args = lunia_argv(command.text)
    found = resolve(args)
    options = sorted({w.split("=")[0] for w in found.rest if w.startswith("-")})
    return " ".join([*(f"{e.split('=')[0]}=…" for e in env), "lunia", *found.path, *options])


def is_mention(command: Command) -> bool:
    """Names a lunia command rather than running a step (see the module docstring)."""
    _, args = lunia_argv(command.text)
    found = resolve(args)
    return (
        command.alternative
        or isinstance(found.command, typer.core.TyperGroup)
        or (found.needs_arguments and not command.fenced)
        or (found.path[0] in REMOTE and not command.fenced)
    )


def lunia_steps() -> list[Command]:
    """The lunia commands this module runs, in document order."""
    return [c for c in commands_of(Kind.LUNIA) if c.text not in NOT_RUN and not is_mention(c)]


def http_requests(command: Command) -> list[Request]:
    """The requests a curl line, a METHOD span or a bare path stands for."""
    if command.kind is Kind.CURL:
        return [curl_request(command.text)]
    if command.kind is Kind.HTTP:
        return span_requests(command.text)
    return [Request("", command.text, command.text, (), None)]


def is_routed(app: FastAPI, request: Request) -> bool:
    """Whether the app's router takes the request (for a bare path: any method, or a prefix)."""
    scope = {"type": "http", "path": request.path, "method": request.method or "GET"}
    wanted = {Match.FULL} if request.method else {Match.FULL, Match.PARTIAL}
    if any(route.matches(scope)[0] in wanted for route in app.router.routes):
        return True
    prefix = request.path.rstrip("/") + "/"
    return not request.method and any(p.startswith(prefix) for p in app.openapi()["paths"])


def query_names(app: FastAPI, request: Request) -> set[str] | None:
    """The query parameters the OpenAPI schema documents for the request's operation."""
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\{[^/]+\}", "[^/]+", template)
        operation = operations.get(request.method.lower())
        if operation and re.fullmatch(pattern, request.path):
            return {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    return None


def node_exists(node: str) -> bool:
    """Whether ``path::function`` names a top-level test function in an existing file."""
    path, _, name = node.partition("::")
    file = ROOT / path
    if not file.is_file():
        return False
    tree = ast.parse(file.read_text())
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body
    )


async def drill_objects(plane: ControlPlane) -> dict[str, str]:
    """Real objects for the runbook's placeholders: an incident, tokens, a core, a backup."""
    admin = Actor.system("runbook-drill")
    ingested = await plane.incidents.ingest(parse_alertmanager(am_payload(am_alert("Drill"))))
    tokens = plane.temporary_tokens
    revoke = await tokens.issue(admin, name="to-revoke", role=Role.VIEWER, ttl="1h")
    operator = await tokens.issue(admin, name="drill-operator", role=Role.OPERATOR, ttl="1h")
    viewer = await tokens.issue(admin, name="drill-viewer", role=Role.VIEWER, ttl="1h")
    backup = await plane.backups.create(admin)  # last: restoring it keeps everything above
    return {
        "incidents": str(ingested.incidents[0]),
        "tokens": revoke.token.id,
        "cores": next(c.name for c in plane.trading.cores() if not c.essential),
        "jobs": "slo-check",
        "flags": "LLM_RATE_LIMITED",
        "venues": "okx",
        "backups": backup.id,
        "question": "is redis ok?",
        "[VENUE]": "okx",
        "QUESTION": "is redis ok?",
        "operator_token": operator.value.get_secret_value(),
        "viewer_token": viewer.value.get_secret_value(),
    }


async def start_drill(make_plane: PlaneFactory, home: Path) -> tuple[ControlPlane, dict[str, str]]:
    """A plane as a fresh install runs it: state in ``home/var``, secrets generated there."""
    plane = await make_plane(
        lunia_state_dir=home / "var", api_tokens=None, alert_webhook_token=None
    )
    return plane, await drill_objects(plane)


def curl_script(preamble: str, line: str, url: str, values: dict[str, str]) -> str:
    """The bash script that runs one curl line the way the module docstring says."""
    if not curl_has_fail_flag(line):
        line = re.sub(r"^curl ", "curl --fail-with-body ", line)
    if shutil.which("jq") is None:
        line = re.sub(r"\|\s*jq\b.*$", f"| {sys.executable} -m json.tool", line)
    return "\n".join(
        [
            "set -o pipefail",
            preamble,
            f"API={url}",
            f"OPERATOR={values['operator_token']}",
            f"VIEWER={values['viewer_token']}",
            line,
        ]
    )


async def run_bash(script: str, cwd: Path) -> tuple[int, str]:
    """Run a script with bash (without blocking the server in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=cwd,
        env={"PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


def invoke_lunia(argv: list[str], env: dict[str, str]) -> Result:
    """Run ``lunia`` in-process; afterwards put back the logging the CLI reconfigured (it logs
    to the runner's captured stderr, closed once the command returns)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(lunia_app, argv, env=env)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# extraction


def test_extraction_finds_every_kind_of_command() -> None:
    kinds = {c.kind for c in runbook_commands()[1]}
    assert kinds == set(Kind)
    texts = {c.text for c in runbook_commands()[1]}
    assert "lunia backup create --reason emergency" in texts  # from a `# = ...` comment
    assert "/incidents all" in texts and "make smoke" in texts
    assert any(t.startswith("curl -X POST") and t.endswith("/api/v1/failover") for t in texts)


# ---------------------------------------------------------------------------------------------
# existence


def test_every_lunia_command_resolves_and_parses_in_the_real_cli(tmp_path: Path) -> None:
    problems = []
    for command in commands_of(Kind.LUNIA):
        _, args = lunia_argv(command.text)
        try:
            found = resolve(args)
            if found.needs_arguments and command.fenced:
                problems.append(f"line {command.line}: `{command.text}`: arguments missing")
            if found.rest:
                args = existing_files(found, tmp_path)
                found.command.make_context(
                    " ".join(["lunia", *found.path]), args, parent=found.context
                )
        except (LookupError, typer.TyperException) as exc:
            problems.append(f"line {command.line}: `{command.text}`: {exc}")
    assert not problems, "\n".join(problems)


def test_every_make_target_exists_and_runs_what_the_runbook_says() -> None:
    targets = {c.text.split()[1] for c in commands_of(Kind.MAKE)}
    rules = re.findall(r"^([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", MAKEFILE.read_text(), re.M)
    declared = {name for line in rules for name in line.split()}
    problems = [
        f"MAKE_RECIPES names a target the runbook no longer has: {t}"
        for t in set(MAKE_RECIPES) - targets
    ]
    for target in sorted(targets):
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        recipe = MAKE_RECIPES.get(target)
        if target not in declared:  # `make -n deploy` succeeds too: deploy/ is a directory
            problems.append(f"`make {target}`: no rule in the Makefile")
        elif dry.returncode != 0:
            problems.append(f"`make {target}`: {dry.stderr.strip()}")
        elif recipe is None:
            problems.append(f"`make {target}`: say in MAKE_RECIPES what the runbook says it runs")
        elif recipe not in dry.stdout:
            problems.append(f"`make {target}` does not run `{recipe}`:\n{dry.stdout}")
    assert not problems, "\n".join(problems)


def test_every_telegram_command_is_registered_with_the_bot() -> None:
    registered = {name for name, _ in all_commands()}
    named = {c.text.split()[0].lstrip("/") for c in commands_of(Kind.TELEGRAM)}
    assert named - registered == set(), f"not registered by the bot: {named - registered}"


def test_every_http_request_matches_a_route_and_its_query(plane: ControlPlane) -> None:
    app = create_app(plane)
    problems = []
    for command in commands_of(Kind.CURL, Kind.HTTP, Kind.PATH):
        for request in http_requests(command):
            if not is_routed(app, request):
                problems.append(f"line {command.line}: no route for {request}")
            elif request.query:
                known = query_names(app, request) or set()
                if unknown := set(request.query) - known:
                    problems.append(f"line {command.line}: {request.path} has no query {unknown}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# coverage accounting


def test_coverage_map_names_existing_tests() -> None:
    missing = [node for nodes in COVERAGE.values() for node in nodes if not node_exists(node)]
    assert not missing, f"COVERAGE names tests that do not exist: {missing}"
    assert all(COVERAGE.values()), "every COVERAGE entry names at least one test"


def test_maps_hold_no_stale_entries() -> None:
    commands = runbook_commands()[1]
    keys = {c.text for c in commands} | {lunia_shape(c) for c in commands_of(Kind.LUNIA)}
    assert set(COVERAGE) - keys == set(), "COVERAGE keys no longer in the runbook"
    assert set(NOT_RUN) - keys == set(), "NOT_RUN entries no longer in the runbook"


def test_every_command_is_run_here_or_mapped() -> None:
    run_shapes = {lunia_shape(c) for c in lunia_steps()}
    unaccounted = []
    for command in runbook_commands()[1]:
        text = command.text
        match command.kind:
            case Kind.LUNIA:
                shape = lunia_shape(command)
                ok = shape in run_shapes or shape in COVERAGE
                key = f"{text} (shape `{shape}`)"
            case Kind.TELEGRAM | Kind.CURL | Kind.HTTP:  # run here unless in NOT_RUN
                ok, key = text not in NOT_RUN or text in COVERAGE, text
            case Kind.PATH:
                ok, key = text in COVERAGE or _path_is_run(command), text
            case Kind.MAKE | Kind.SHELL:
                ok, key = text in NOT_RUN or text in COVERAGE, text
        if not ok:
            unaccounted.append(f"line {command.line}: {key}")
    assert not unaccounted, "neither run here nor in COVERAGE:\n" + "\n".join(unaccounted)


def _path_is_run(command: Command) -> bool:
    """A bare path some curl line or METHOD span of the runbook requests (and so is run)."""
    if command.kind is not Kind.PATH:
        return False
    requested = {r.path for c in commands_of(Kind.CURL, Kind.HTTP) for r in http_requests(c)}
    return command.text in requested


# ---------------------------------------------------------------------------------------------
# exercise


@pytest.mark.slow
async def test_http_lines_of_the_runbook_succeed_against_a_served_instance(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    plane, values = await start_drill(make_plane, tmp_path)
    preamble = runbook_commands()[0]
    admin_token = (tmp_path / "var" / "secrets" / ADMIN_TOKEN_FILE).read_text().strip()
    failures = []
    ran = 0
    async with (
        serve(plane) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}) as api,
    ):
        for command in commands_of(Kind.CURL, Kind.HTTP):
            if command.text in NOT_RUN:
                continue
            ran += 1
            if command.kind is Kind.CURL:
                script = curl_script(preamble, fill(command.text, None, values), url, values)
                code, out = await run_bash(script, tmp_path)
                if code != 0:
                    failures.append(f"line {command.line}: exit {code}: {command.text}\n{out}")
                continue
            for request in span_requests(fill(command.text, None, values)):
                body = None if request.body is None else request.body.encode()
                headers = {"content-type": "application/json"} if body else {}
                response = await api.request(
                    request.method, request.target, content=body, headers=headers
                )
                if not response.is_success:
                    failures.append(
                        f"line {command.line}: {request.method} {request.target} -> "
                        f"{response.status_code} {response.text}"
                    )
    assert ran, "the runbook has no HTTP requests to run?"
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
async def test_lunia_lines_of_the_runbook_run_on_a_served_instance(
    make_plane: PlaneFactory, tmp_path: Path
) -> None:
    plane, values = await start_drill(make_plane, tmp_path)
    admin_token = (tmp_path / "var" / "secrets" / ADMIN_TOKEN_FILE).read_text().strip()
    failures = []
    async with serve(plane) as url:
        env = {"LUNIA_STATE_DIR": str(tmp_path / "var"), "API_PORT": url.rsplit(":", 1)[1]}
        words = {**values, "URL": url, "TOKEN": admin_token}
        for command in lunia_steps():
            env_words, args = lunia_argv(command.text)
            assert not env_words, f"{command.text}: environment prefixes are not run here"
            resource = LUNIA_RESOURCE.get(args[0], "")
            argv = [fill(a, resource, words) for a in args]
            result = await asyncio.to_thread(invoke_lunia, argv, env)
            shape = lunia_shape(command)
            expected = LUNIA_EXIT.get(shape, 0)
            if argv[0] == "checklist":  # "exit 1 on any ❌"
                expected = 1 if "❌" in result.stdout else 0
            if result.exit_code != expected or "Traceback" in result.stderr:
                failures.append(
                    f"line {command.line}: `lunia {' '.join(argv)}` exited {result.exit_code}, "
                    f"expected {expected}\n{result.stdout}{result.stderr}"
                )
            if shape == "lunia failover":
                assert "pre-check of okx" in result.stderr, result.stderr
    assert not failures, "\n\n".join(failures)


async def _reply(fake: FakeTelegram, chat: int, count: int) -> StoredMessage:
    def nth() -> StoredMessage | None:
        found = fake.messages(chat)
        return found[count - 1] if len(found) >= count else None

    return await fake.wait_for(nth, timeout=10)


@pytest.mark.slow
async def test_telegram_commands_of_the_runbook_work_through_the_bot(
    make_bot: BotFactory, fake_telegram: FakeTelegram
) -> None:
    texts = list(dict.fromkeys(c.text for c in commands_of(Kind.TELEGRAM)))
    admins = [9001 + i for i in range(len(texts))]
    telegram = await make_bot(telegram_admins=admins)
    values = await drill_objects(telegram.plane)
    failures = []
    for admin, text in zip(admins, texts, strict=True):
        name = text.split()[0].lstrip("/")
        sent = fill(text, TELEGRAM_RESOURCE.get(name, ""), values)
        fake_telegram.push_message(admin, admin, sent)
        reply = await _reply(fake_telegram, admin, 1)
        answer = reply.text or reply.caption or ""
        if "Only you can confirm" in answer:
            fake_telegram.push_callback(admin, admin, reply.message_id, button(reply, "Confirm"))
            reply = await _reply(fake_telegram, admin, 2)
            answer = reply.text or reply.caption or ""
        if answer.startswith(("⛔️", "I don't know", "⚠️ Internal error")):
            failures.append(f"{sent!r} (runbook `{text}`): {answer}")
    assert not failures, "\n".join(failures)
