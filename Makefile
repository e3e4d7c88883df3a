# The README's commands. Everything installs into .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
DEMO_DB ?= $(CURDIR)/.schemad/demo.db
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench clean

$(BIN)/activate:
	@test -n "$(PYTHON)" || { echo "schemad needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## run: the daemon against a demo SQLite database with the shipped migrations
##      (watch it: curl localhost:8080/status, /metrics; stop with Ctrl-C)
run: $(VENV)/.installed
	@mkdir -p $(dir $(DEMO_DB))
	SCHEMAD_DATABASE_URL=$${SCHEMAD_DATABASE_URL:-sqlite:///$(DEMO_DB)} \
	SCHEMAD_LOG_FORMAT=$${SCHEMAD_LOG_FORMAT:-console} \
	$(BIN)/schemad run

## test: install the test dependencies and run the whole suite
test: $(VENV)/.test-installed
	$(BIN)/ruff check service tests migrations
	$(BIN)/ruff format --check service tests migrations
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check service tests migrations
	$(BIN)/ruff format --check service tests migrations

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

## bench: schemad vs `alembic upgrade head` vs the raw-SQL floor, on SQLite and the
##        local PostgreSQL and MariaDB; prints every issue-6 target (full: 10-20
##        minutes; QUICK=1: the smoke run; BENCH_ARGS="--backends sqlite ..." narrows it)
bench: $(VENV)/.installed
	$(BIN)/python -m bench $(if $(filter 1 yes true,$(QUICK)),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .schemad .pytest_cache .mypy_cache .ruff_cache
