"""Shared fixtures: a fresh data directory per test, and one real Kafka broker per session
(per test process under `pytest -n`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from ledger.application import ConsentLedger
from ledger.settings import Settings
from tests.cli_support import BACKEND_ENV, run
from tests.examples import REFUSED, examples

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "deploy" / "kafka" / "broker.sh"

# The property-based tests that name no number of examples take hypothesis's 100, scaled like
# the others (`tests.examples`). No example's time is held to hypothesis's deadline (200 ms by
# default): that is a timed unit test, which a loaded machine fails. A trivial example (a
# UUID's replay range) took 307 ms under `make coverage` on 2 cores beside the brokers, and
# hypothesis called it a failure; how fast the rules and queries are is `bench/`'s to say.
# Nor is the time taken to generate examples (the `too_slow` health check), for that reason.
hypothesis_settings.register_profile(
    "ledger",
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile("ledger")


def pytest_configure(config: pytest.Config) -> None:
    if REFUSED:  # a TEST_EXAMPLES_SCALE that is not a positive number
        raise pytest.UsageError(REFUSED)


# Run first: the compose cluster's tests (three brokers of their own, about 400 of a run's
# 1,300 test-process seconds). pytest-xdist's worksteal gives each test process a run of the
# collected order and lets an idle one take the later half of another's queue, so tests at the
# front stay on the first process, and this module's cluster starts once. Where it fell at
# the boundary between two processes, each started one: two clusters, in a run on three.
FIRST = ("tests/test_kafka_cluster.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in FIRST)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def ledger(settings: Settings) -> Iterator[ConsentLedger]:
    app = ConsentLedger(settings)
    app.init_demo()
    yield app
    app.close()


@pytest.fixture(params=["embedded", "kafka"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of a fresh ledger on each backend: the domain and CLI tests run on both."""
    if request.param == "kafka":
        from tests.kafka_support import kafka_settings

        return kafka_settings(tmp_path / "data", request.getfixturevalue("kafka_bootstrap"))
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def backend_ledger(backend_settings: Settings) -> Iterator[ConsentLedger]:
    app = ConsentLedger(backend_settings)
    app.init_demo()
    yield app
    app.close()


@pytest.fixture
def data(backend_settings: Settings) -> Iterator[Path]:
    """An initialised data directory on each backend, for `tests.cli_support.run`."""
    path = backend_settings.data_dir
    if backend_settings.backend == "kafka":
        from tests.kafka_support import kafka_env

        BACKEND_ENV[path] = kafka_env(backend_settings)
    out = run(path, "init")
    assert out.returncode == 0, out.stderr
    yield path
    BACKEND_ENV.pop(path, None)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node KRaft broker, fetched from Maven Central by deploy/kafka/broker.sh.

    Set KAFKA_BOOTSTRAP to use a broker that is already running instead.
    """
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    with started_broker(tmp_path_factory.mktemp("kafka")) as run_dir:
        bootstrap = (run_dir / "bootstrap").read_text().strip()
        _BROKER_DIRS[bootstrap] = run_dir
        yield bootstrap


_BROKER_DIRS: dict[str, Path] = {}  # bootstrap -> the directory broker.sh started it in


class SecuredBroker(NamedTuple):
    sasl_ssl: str  # the address of its SASL_SSL listener
    ca: Path  # the certificate to trust
    plaintext: str  # the address of the same broker's PLAINTEXT listener
    ssl: str  # the address of its SSL listener, which asks for a client certificate
    client: Path  # one its CA signed, with its key (PKCS12, password `broker-keystore`)


@pytest.fixture(scope="session")
def kafka_sasl_ssl(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredBroker]:
    """A broker's secured listeners (SASL_SSL: TLS, then SASL PLAIN or SCRAM as `ledger` with
    password `ledger-secret`; SSL: mutual TLS): the session's broker's, or, where
    KAFKA_BOOTSTRAP named a broker of its own, a broker started for it."""
    run_dir = _BROKER_DIRS.get(kafka_bootstrap)
    if run_dir is not None:
        yield _secured(run_dir)
        return
    with started_broker(tmp_path_factory.mktemp("kafka-secured")) as own:
        yield _secured(own)


def _secured(run_dir: Path) -> SecuredBroker:
    def read(name: str) -> str:
        return (run_dir / name).read_text().strip()

    return SecuredBroker(
        read("bootstrap-sasl-ssl"),
        run_dir / "ca.pem",
        read("bootstrap"),
        read("bootstrap-ssl"),
        run_dir / "client.p12",
    )


@contextlib.contextmanager
def started_broker(run_dir: Path, properties: str = "") -> Iterator[Path]:
    """`properties`: lines of key=value the broker is started with besides its own
    (`KAFKA_BROKER_PROPERTIES` of deploy/kafka/broker.sh)."""
    started = subprocess.run(
        [str(BROKER), "start", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KAFKA_BROKER_PROPERTIES": properties},
    )
    if started.returncode != 0:
        raise RuntimeError(f"the Kafka broker did not start:\n{started.stderr}")
    try:
        yield run_dir
    finally:
        subprocess.run([str(BROKER), "stop", str(run_dir)], timeout=120, check=False)
