# One command sets everything up and runs the demo (`make demo`); one sets
# everything up and runs every check and test (`make test`). Both work on a
# fresh machine with Python 3.11+, Node.js and the package registries.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup node-version browser wrk gateways demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("eventtrail needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

NODE_STAMP := node_modules/.installed

# jsii and the CDK CLI support the Node.js releases that are not end-of-life
# (22 and 24 LTS); an older Node.js still runs everything, with a warning.
NODE_SUPPORTED_MAJOR := 22

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-version:
	@major=$$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'); \
	if [ -z "$$major" ]; then \
		echo "warning: node not found; install Node.js $(NODE_SUPPORTED_MAJOR) or newer (LTS)" >&2; \
	elif [ "$$major" -lt $(NODE_SUPPORTED_MAJOR) ]; then \
		echo "warning: Node.js $$(node --version) is end-of-life; use Node.js $(NODE_SUPPORTED_MAJOR) or 24 (LTS)" >&2; \
	fi

# The web UI tests drive Debian's Chromium (never a downloaded browser build).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The gateway benchmark's load generator (Debian's wrk).
wrk:
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

# The gateways people already run, whose logs `eventtrail ingest` reads: the
# tests start Debian's nginx and HAProxy on free ports (the benchmark compares
# against nginx).
gateways:
	{ command -v nginx && command -v haproxy; } >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq nginx-light haproxy >/dev/null; }

setup: node-version $(STAMP) $(NODE_STAMP)

# Options go through ARGS: make demo ARGS="--duration 30 --port 0"
demo: setup
	$(BIN)/eventtrail demo $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks infra
	$(BIN)/ruff format --check src tests benchmarks infra

typecheck: setup
	$(BIN)/mypy

# One test process per core (two on CI), at most four.
unit: setup browser gateways
	$(BIN)/pytest -n auto --maxprocesses 4

test: lint typecheck unit

# Every benchmark: none needs more than this machine (the AWS ones count
# requests on a moto server they start themselves).
bench: setup wrk gateways
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/queries.py
	$(BIN)/python benchmarks/aws_requests.py
	$(BIN)/python benchmarks/partition_load.py
	$(BIN)/python benchmarks/gateway.py
	$(BIN)/python benchmarks/read_models.py
	$(BIN)/python benchmarks/read_models_aws.py

clean:
	rm -rf $(VENV) node_modules .eventtrail .mypy_cache .ruff_cache .pytest_cache infra/.asset
