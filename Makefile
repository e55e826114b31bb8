# One command sets everything up and runs the demo (`make demo`); one sets
# everything up and runs every check and test (`make test`). Both work on a
# fresh machine with Python 3.11+, Node.js and the package registries.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser wrk demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("eventtrail needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

NODE_STAMP := node_modules/.installed

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The web UI tests drive Debian's Chromium (never a downloaded browser build).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The gateway benchmark's load generator (Debian's wrk).
wrk:
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

setup: $(STAMP) $(NODE_STAMP)

demo: setup
	$(BIN)/eventtrail demo

lint: setup
	$(BIN)/ruff check src tests benchmarks infra
	$(BIN)/ruff format --check src tests benchmarks infra

typecheck: setup
	$(BIN)/mypy

unit: setup browser
	$(BIN)/pytest

test: lint typecheck unit

# Every benchmark: none needs more than this machine (the AWS ones count
# requests on a moto server they start themselves).
bench: setup wrk
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/queries.py
	$(BIN)/python benchmarks/aws_requests.py
	$(BIN)/python benchmarks/partition_load.py
	$(BIN)/python benchmarks/gateway.py

clean:
	rm -rf $(VENV) node_modules .eventtrail .mypy_cache .ruff_cache .pytest_cache infra/.asset
