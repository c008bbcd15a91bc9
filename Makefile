# Two entry points for a fresh machine: `make run` (the service on embedded defaults: API and
# worker on http://127.0.0.1:8000, data in ./amseg-data) and `make test` (lint + the whole test
# suite, after making sure redis-server, PostgreSQL and chromium are here). Both create .venv first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test test-services test-browser lint format venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "amseg needs Python >= 3.11"'
	@$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || { \
		echo "python3-venv is missing; installing it (Debian/Ubuntu)"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[torch,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/amseg up

demo: $(STAMP)
	$(BIN)/amseg demo

test-services:
	@scripts/ensure-test-services.sh

test-browser:
	@scripts/ensure-browser.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) lint test-services test-browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis demo
