# Lunia Core control plane. `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# uv installs exactly what uv.lock pins; it is bootstrapped into the venv with pip, at this version.
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell { echo $(UV_VERSION); cat pyproject.toml uv.lock; } | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TEST_PACKAGES := redis-server prometheus prometheus-alertmanager chromium

.PHONY: setup lock run test lint format system-deps clean create-emergency-backup report enable-self-healing smoke verify bench test-fast up down stack-test stack-clean

# --locked: stop if pyproject.toml changed without `make lock`; --inexact: keep pip and uv itself.
# --compile-bytecode: as pip does in the image; where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile aiogram and the rest from source at each start.
$(STAMP): pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --quiet --locked --inexact --compile-bytecode --extra dev
	rm -f $(VENV)/.installed-*
	touch $@

## setup: create the virtualenv and install the project with its dev tools, as uv.lock pins them
setup: $(STAMP)

## lock: re-resolve uv.lock after changing dependencies in pyproject.toml (then `make setup`)
lock:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv lock

## run: start everything on the embedded defaults (SQLite, paper venues, no Telegram needed)
run: setup
	$(BIN)/lunia run

# The runbook targets below (create-emergency-backup, enable-self-healing, report, smoke) act on
# the deployment when LUNIA_URL is set: the CLI calls its API with the token in LUNIA_TOKEN_FILE
# (or LUNIA_TOKEN), read by the CLI, never put on a line make echoes (docs/DEPLOY.md, "Operating
# a deployment"). Unset, they act on this host's state, and refuse if no control plane ever
# served from it (LUNIA_LOCAL=1 on purpose).
ACTING_ON = @echo "lunia: acting on $(if $(LUNIA_URL),the deployment at $(LUNIA_URL),this host's state)" >&2
# The alert webhook token `make smoke` sends to a deployment, or to the stack on this host when
# the file exists: the stack's Docker secret file.
LUNIA_ALERT_WEBHOOK_TOKEN_FILE ?= secrets/alert_webhook_token
LUNIA_METRICS_TOKEN_FILE ?= secrets/metrics_token
# `make verify` checks this checkout's own state, never a deployment's.
LOCAL_LUNIA := env -u LUNIA_URL LUNIA_LOCAL=1 $(BIN)/lunia

## create-emergency-backup: take a backup of all state now (runbook §3), off-site too if set
create-emergency-backup: setup
	$(ACTING_ON)
	$(BIN)/lunia backup create --reason emergency

## enable-self-healing: turn SELF_HEALING_ENABLED on (a running instance picks it up in 2 s)
enable-self-healing: setup
	$(ACTING_ON)
	$(BIN)/lunia flags set SELF_HEALING_ENABLED on

## smoke: drive a running instance end to end (probes, a test alert, the bot); exit 1 on failure
smoke: setup
	$(ACTING_ON)
	$(if $(or $(LUNIA_URL),$(wildcard $(LUNIA_ALERT_WEBHOOK_TOKEN_FILE))),LUNIA_ALERT_WEBHOOK_TOKEN_FILE=$(LUNIA_ALERT_WEBHOOK_TOKEN_FILE) )$(if $(wildcard $(LUNIA_METRICS_TOKEN_FILE)),LUNIA_METRICS_TOKEN_FILE=$(LUNIA_METRICS_TOKEN_FILE) )$(BIN)/lunia smoke

## verify: the full verification: lint, every test (promtool checks the Prometheus config there,
## with a temp scrape token), known-vulnerable dependencies, schemathesis with every role's token,
## rule and Alertmanager config checks, audit chain, report
verify: test
	$(BIN)/uv export --quiet --frozen --format requirements-txt --no-hashes --no-emit-project \
	  --extra dev -o $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off \
	  --vulnerability-service pypi -r $(VENV)/audit-requirements.txt
	LUNIA_SCHEMATHESIS_EXAMPLES=25 $(BIN)/pytest -q tests/api/test_schemathesis.py
	promtool check rules deploy/prometheus/rules/lunia.rules.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	$(LOCAL_LUNIA) audit verify
	$(LOCAL_LUNIA) backup create --reason manual
	$(LOCAL_LUNIA) backup verify $$($(LOCAL_LUNIA) backup list --json | $(BIN)/python -c \
	  'import json,sys; print(json.load(sys.stdin)[0]["id"])')
	$(LOCAL_LUNIA) report --out docs/RELEASE_REPORT.md

## bench: run every bench in bench/ (under 10 min) and write the figures to docs/PERFORMANCE.md
bench: setup
	$(BIN)/python bench/run_all.py

## stack-test: build the images and run docker-compose.prod.yml for real, driven end to end
## (tests/stack/drive.py); starts its own dockerd when none answers and puts the host back after
stack-test: setup
	$(BIN)/python tests/stack/drive.py

## stack-clean: drop stack-test's image cache (its private engine's data root)
stack-clean:
	rm -rf /var/lib/lunia-stack-test var/stack-test

## up / down: start or stop the production stack with Compose (needs a Docker engine)
up:
	docker compose -f docker-compose.prod.yml up -d --build

down:
	docker compose -f docker-compose.prod.yml down

## report: write the access review to docs/RELEASE_REPORT.md (runbook §4, quarterly)
report: setup
	$(ACTING_ON)
	$(BIN)/lunia report --out docs/RELEASE_REPORT.md

## system-deps: install the Debian services the tests run for real (and Chromium), when missing
system-deps:
	@missing=""; for bin in redis-server prometheus prometheus-alertmanager promtool amtool chromium; do \
	  command -v $$bin >/dev/null || missing="$$missing $$bin"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(DEBIAN_TEST_PACKAGES); \
	fi

## lint: ruff (format + rules) everywhere, mypy --strict on bot/ core/ api/, import contracts
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## format: apply ruff's formatting and safe fixes
format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## test-fast: the fast lane while you work: every test not marked slow, on both cores (< 1 min)
test-fast: setup system-deps
	$(BIN)/pytest -q -m "not slow" -n 2

## test: set up everything the tests need, lint, then run the whole suite
test: setup system-deps lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
