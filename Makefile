# Development tasks. `make test` starts its own emulators and always stops
# them; `make emulators` starts a separate set for local work.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# One shell per recipe, so that a trap set on its first line covers the rest.
.ONESHELL:
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_STAMP := $(VENV)/.installed
EMULATORS := $(VENV)/bin/python -m infra.emulators
TEST_STATE := .emulators/test
LOCAL_STATE := .emulators/local
BENCH_STATE := .emulators/bench

.PHONY: venv browser test emulators emulators-stop demo bench bench-e2e lint

venv: $(VENV_STAMP)

# Reinstall only when the dependencies may have changed.
$(VENV_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

# The status page tests drive headless Chromium. A fresh clone on a Debian
# or Ubuntu machine gets it here, once; with it in place this does nothing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x /usr/bin/chromium && exit 0
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null

# The trap stops the emulators whether pytest passes, fails or is
# interrupted; the recipe then exits with pytest's status. Here a missing
# browser fails its tests rather than skipping them.
test: venv browser
	trap '$(EMULATORS) stop --state-dir $(TEST_STATE)' EXIT
	$(EMULATORS) start --state-dir $(TEST_STATE) >/dev/null
	source $(TEST_STATE)/env
	RULES_ENGINE_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q

# With .ONESHELL, the "@" on the first line silences the whole recipe.
emulators: venv
	@$(EMULATORS) start --state-dir $(LOCAL_STATE) >/dev/null
	echo "# Point clients at the emulators with: source $(LOCAL_STATE)/env"
	cat $(LOCAL_STATE)/env

emulators-stop: venv
	$(EMULATORS) stop --state-dir $(LOCAL_STATE)

out/demo-events.jsonl.gz: | venv
	mkdir -p out
	$(VENV)/bin/rules-engine build-demo --out $@

demo: venv out/demo-events.jsonl.gz
	$(VENV)/bin/rules-engine replay out/demo-events.jsonl.gz --rules rules \
		--actions-out out/demo-actions.jsonl \
		--dead-letter-out out/demo-dead-letter.jsonl

bench: venv
	$(VENV)/bin/python bench/bench_replay.py

bench-e2e: venv
	trap '$(EMULATORS) stop --state-dir $(BENCH_STATE)' EXIT
	$(EMULATORS) start --state-dir $(BENCH_STATE) >/dev/null
	source $(BENCH_STATE)/env
	$(VENV)/bin/python bench/bench_e2e.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
