# The two commands a new user needs are `make run` and `make test`; everything they need is
# installed from here (PyPI into .venv, the Kafka broker from Maven Central into a cache).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA_DIR ?= ./var/kafka
CLUSTER_DIR ?= ./var/cluster

# Machines of this kind set PYTHONDONTWRITEBYTECODE (CI's may too), so every Python process
# compiled the project's modules afresh, and the tests start one for each benchmark, each
# command with a failpoint and each test process's forker (and for every CLI command, worker
# and server, before tests/cli_forker.py forked them). With the compiled modules kept,
# `pytest -n 2 tests/test_cli.py -k embedded` took 51 s against 71 s, and 58 s against 85 s
# in a second pair (28-32% less). The __pycache__ directories this writes are ignored by git.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install constraints run demo openapi test coverage lint typecheck unit bench kafka-fetch kafka-up kafka-down cluster-up cluster-down clean

install: $(STAMP)

# Exact versions from constraints.txt, so a clean clone installs what `make test` passed with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip -c constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt --build-constraint constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges (the build system's too, which pip's isolated build of
# the project installs) in a throwaway venv and pin what they give today, keeping
# constraints.txt's header; run `make test` before committing the result.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet -e '.[dev]'
	.venv-constraints/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", \
	    "rb"))["build-system"]["requires"], sep="\n")' \
	  | xargs -d '\n' .venv-constraints/bin/pip install --quiet --upgrade
	{ sed -n '/^#/p' constraints.txt; \
	  .venv-constraints/bin/pip freeze --all --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

run: install
	$(BIN)/consent-ledger serve --demo

demo: install
	$(BIN)/consent-ledger demo

openapi: install
	$(BIN)/python -m api.openapi_dump

lint: install
	$(BIN)/ruff check ledger projections api tests bench deploy
	$(BIN)/ruff format --check ledger projections api tests bench deploy

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy deploy/kafka/cluster.py deploy/kafka/make_secrets.py

kafka-fetch:
	deploy/kafka/broker.sh fetch

# Three test processes on CI's two cores: the tests wait on brokers and subprocesses much of
# their time. Run one at a time, they left a core idle about half the time: 770 s on one,
# 490 s on two (an earlier suite). On two, the cores were still idle 23% of a run (vmstat);
# on three, 9%. Whole runs one after another (2026-12-07, 02:25-03:57 UTC): 657 and 668 s on
# two, 606 s on three; with the compose cluster's tests first (tests/conftest.py) 691 s on
# two, 580 s on three, and 539 and 540 s once its teardown killed it. Each process starts a
# broker of its own.
# The schemathesis tests run among the others: each operation's checks its own cases reached
# behind the key, in whichever process ran it.
TEST_PROCESSES ?= 3

# The tests' files (every SQLite store, key file and broker log they make) go to memory when
# the machine has a tmpfs with room (/dev/shm, 24 GiB on this machine kind): real files all
# the same, but a commit's fsync waits on no disk. The disk of this machine kind stalls for
# seconds in some hours; in one, the embedded CLI, erasure and backup tests on two processes
# took 67 and 49 s with their files on disk and 33 and 36 s in memory, the runs alternating.
# `make test TEST_TMPDIR=` keeps them on disk (under $TMPDIR).
TEST_TMPDIR ?= $(shell d=/dev/shm; [ -d $$d ] && [ -w $$d ] && \
	[ "$$(df -Pk $$d | awk 'NR == 2 { print $$4 }')" -gt 4000000 ] && echo $$d)
TEST_ENV := $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR))

unit: install
	$(TEST_ENV) $(BIN)/pytest -q -n $(TEST_PROCESSES) --dist worksteal

test: install kafka-fetch lint typecheck unit

# Which lines and branches the tests reach (not part of `make test`: about 25 minutes, the
# tests three to four times slower under measurement). Every Python process the tests start
# is measured: coverage's .pth starts it wherever COVERAGE_PROCESS_START is set, and each
# process writes a file of its own into var/coverage. A process killed by SIGKILL (the crash
# tests') or held under a file-size limit (the storage-failure tests') cannot write its file
# (coverage warns of it), so what only such processes reach reads as not reached.
coverage: install kafka-fetch
	rm -rf var/coverage && mkdir -p var/coverage
	$(TEST_ENV) COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml COVERAGE_FILE=$(CURDIR)/var/coverage/.coverage \
	  $(BIN)/pytest -q -n $(TEST_PROCESSES) --dist worksteal
	COVERAGE_FILE=$(CURDIR)/var/coverage/.coverage $(BIN)/coverage combine -q var/coverage
	COVERAGE_FILE=$(CURDIR)/var/coverage/.coverage $(BIN)/coverage report

bench: install kafka-fetch
	$(BIN)/python -m bench --phases

kafka-up: kafka-fetch
	deploy/kafka/broker.sh start $(KAFKA_DIR)

kafka-down:
	deploy/kafka/broker.sh stop $(KAFKA_DIR)

# deploy/compose.yaml's three brokers, each as the apache/kafka image would configure it from
# its environment, on this machine without Docker (deploy/kafka/cluster.py); prints the
# bootstrap list.
cluster-up: install kafka-fetch
	$(BIN)/python deploy/kafka/cluster.py start $(CLUSTER_DIR)

cluster-down: install
	$(BIN)/python deploy/kafka/cluster.py stop $(CLUSTER_DIR)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
