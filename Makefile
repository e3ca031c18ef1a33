# Everything a newcomer needs, in a private virtualenv (.venv) that make creates and keeps
# up to date: it reinstalls only when pyproject.toml changes. `make run` installs only what
# running needs (pip install -e .); `make test` adds the test tools ('.[test]': pytest,
# Playwright, Hypothesis...), and `make lint` the linters ('.[dev]').
#
#   make run     migrate, create an admin, run web + worker + cron (Ctrl-C stops them)
#   make test    start Redis and PostgreSQL if needed, then run the tests (PYTEST_ARGS=...)

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
INSTALLED_RUN := $(VENV)/.installed-run
INSTALLED_TEST := $(VENV)/.installed-test
INSTALLED_DEV := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip --disable-pip-version-check
# --no-compile: pip would byte-compile every module of every package (about 40% of the
# install's CPU); Python compiles the ones that are imported, once, when first imported.
PIP_INSTALL := $(PIP) install --no-compile
PORT ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint web worker cron clean

help:
	@echo "make run     run the whole system on http://127.0.0.1:$${PORT:-5000} (Ctrl-C stops it)"
	@echo "make test    run the tests (starts Redis and PostgreSQL if needed; PYTEST_ARGS=...)"
	@echo "make lint    ruff check"
	@echo "make web | make worker | make cron    one process on its own"
	@echo "make clean   delete .venv and instance/ (the local database, outbox and secret key)"

$(BIN)/python:
	@py="$$(bash scripts/find-python.sh)" && echo "Creating $(VENV) with $$py" \
	  && "$$py" -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# Each stamp says "this set is installed for this pyproject.toml"; the test and dev sets
# include the running one, so they renew its stamp too.
$(INSTALLED_RUN): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	@touch $@

$(INSTALLED_TEST): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(INSTALLED_RUN)

$(INSTALLED_DEV): pyproject.toml $(INSTALLED_TEST)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@

run: $(INSTALLED_RUN)
	$(BIN)/flask --app wsgi dev $(if $(PORT),--port $(PORT))

test: $(INSTALLED_TEST)
	@bash scripts/services.sh
	@$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests, which counts as a failure" >&2; fi; \
	  exit $$rc; }

lint: $(INSTALLED_DEV)
	$(BIN)/ruff check .

web: $(INSTALLED_RUN)
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi run --host 127.0.0.1 --port $(or $(PORT),5000)

worker: $(INSTALLED_RUN)
	$(BIN)/python -m workers.worker

cron: $(INSTALLED_RUN)
	$(BIN)/rq cron workers/cron.py --url "$${REDIS_URL:-redis://127.0.0.1:6379/0}"

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache
