# The two commands a new user needs are `make run` and `make test`; everything they need is
# installed from here (PyPI into .venv, the Kafka broker from Maven Central into a cache).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA_DIR ?= ./var/kafka

.PHONY: install run demo openapi test lint typecheck unit bench kafka-fetch kafka-up kafka-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/consent-ledger serve --demo

demo: install
	$(BIN)/consent-ledger demo

openapi: install
	$(BIN)/python -m api.openapi_dump

lint: install
	$(BIN)/ruff check ledger projections api tests bench
	$(BIN)/ruff format --check ledger projections api tests bench

typecheck: install
	$(BIN)/mypy

kafka-fetch:
	deploy/kafka/broker.sh fetch

unit: install
	$(BIN)/pytest -q

test: install kafka-fetch lint typecheck unit

bench: install kafka-fetch
	$(BIN)/python -m bench --phases

kafka-up: kafka-fetch
	deploy/kafka/broker.sh start $(KAFKA_DIR)

kafka-down:
	deploy/kafka/broker.sh stop $(KAFKA_DIR)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
