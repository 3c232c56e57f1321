# The two commands a new machine needs: `make run` and `make test`. Both install what they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: install run migrate serve consume sweep services test unit integration e2e lint bench clean

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/allocation migrate

# Embedded by default (SQLite file + a Redis of its own); set DATABASE_URL and REDIS_URL for
# PostgreSQL and Redis.
run: migrate
	$(BIN)/allocation serve --host $(HOST) --port $(PORT)

consume: install
	$(BIN)/allocation consume

# Ends due holds on items nobody touches, every second (needs REDIS_URL).
sweep: install
	$(BIN)/allocation sweep

# Makes sure PostgreSQL and Redis answer, starting local ones that are installed but stopped.
services: install
	$(PY) scripts/ensure_services.py

# What tests need beyond Python: a browser for the dashboard, promtool for the alert rules.
tools:
	bash scripts/ensure_browser.sh
	bash scripts/ensure_promtool.sh

test: install services tools
	$(BIN)/pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

unit: install tools
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install services
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: install services tools
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports  # the layers and no-cycles contracts in pyproject.toml

# Every contender in one run on this machine, beside the ceilings measured in the same run: a
# table, bench/results.md (the same in Markdown), bench/results.json, bench/results.png.
# BENCH=full for the long sizes; BENCH_ONLY=hot,http,streams,flood,partition,refresh,...: a subset;
# BENCH_HTTP=ceiling-empty,ceiling-evalsha,allocation,allocation-sync,...: some HTTP contenders;
# BENCH_HTTP_SECONDS: each HTTP load's length. Needs wrk and redis-benchmark (apt-get install -y
# wrk redis-tools).
bench: install services
	bash scripts/ensure_bench_tools.sh
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .grimp_cache \
		.import_linter_cache
