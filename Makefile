# Developer entry points. `make test` builds the venv on first use (and again when
# setup.cfg changes), then runs the whole suite under gevent monkey-patching.
#
#   make test PYTEST_ARGS="-k scripts -x"     # pass options to pytest
#   make test PYTEST_ARGS="-m slow"           # only the slow fault/soak tests
#   JIGGLER_SLOW=1 make test                  # everything, slow tests included
#   make PYTHON=python3.12 venv               # build the venv with another interpreter

PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV).stamp
PYTEST_ARGS ?=
# Extra packages to install into the venv (none needed: setup.cfg's extras list them).
TEST_EXTRA_PACKAGES ?=

.PHONY: venv demo test lint bench bench-cluster bench-postgres clean

venv: $(VENV_STAMP)

$(VENV_STAMP): setup.cfg
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -q -e ".[test,demo]" $(TEST_EXTRA_PACKAGES)
	touch $@

# A real demo: 500 jobs doing blocking HTTP against a slow local endpoint, one worker
# at -c 100; starts its own Redis-compatible server unless REDIS_URL is set.
demo: venv
	$(VENV_PYTHON) demo/run_demo.py

test: venv
	$(VENV_PYTHON) tests/pytest_gevent.py -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

# Throughput, enqueue rates and RSS next to a raw redis-py BRPOP loop (BENCH_ARGS="--quick").
BENCH_ARGS ?=
bench: venv
	$(VENV_PYTHON) bench/throughput.py $(BENCH_ARGS)

# The same noop runs on one server and on a local 3-primary Redis Cluster, 1 and 4 queues,
# -p 2, each next to its raw BRPOP loop (about 4 minutes; BENCH_ARGS="--quick": 40 s).
bench-cluster: venv
	$(VENV_PYTHON) bench/cluster.py $(BENCH_ARGS)

# psycopg2 jobs (SELECT pg_sleep) at -c 100 next to a raw greenlet loop, and with
# --no-green-psycopg2; needs PostgreSQL's server binaries (apt-get install postgresql).
bench-postgres: venv
	$(VENV_PYTHON) bench/postgres.py $(BENCH_ARGS)

clean:
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis test-artifacts *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# The fault suite at length (tests/faults: SIGKILL, SIGSTOP, poison pill, retry storm,
# racing pollers, CPU-bound jobs) with more jobs and more faults; `make test` runs it short.
.PHONY: faults
faults: venv
	JIGGLER_FAULTS_SCALE=long $(VENV_PYTHON) tests/pytest_gevent.py -q tests/faults -m "slow or not slow" $(PYTEST_ARGS)
