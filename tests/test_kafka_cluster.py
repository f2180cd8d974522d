"""The compose file's three-broker cluster, run for real (`deploy/kafka/cluster.py`), and the
ledger on it with the compose file's own ledger settings.

- The brokers' properties are what the apache/kafka image makes of their environment, moved
  onto this machine and nothing else.
- A publishing service outside the compose network reaches the brokers' SASL_SSL listener
  (TLS, SCRAM-SHA-512, the authorizer): refused until granted what `kafka-acls --publisher`
  lists, then its fact is recorded, and the ledger and rejected topics stay closed to it;
  revoked, it is refused again.
- The ledger creates its topics as compose configures them: 6 partitions, 3 replicas, at
  least 2 in sync; and checks topics just made whichever broker answers, one that has not
  heard of them yet included.
- A worker consuming intake while each broker in turn is SIGKILLed (the controller, the
  transaction and group coordinators and every partition leader among them) and started
  again loses and duplicates nothing, and keeps writing while one broker is down; then two
  at once (the quorum lost): it says so, retries, and goes on once they are back.
- A broker that hangs (SIGSTOP) and leads ledger partitions: writes go on once the others
  have fenced it, none refused; while the active controller hangs, the quorum is not said
  lost (two of three hung, it is).
- With one broker of three left, an append is refused, never acknowledged, and the wait
  costs next to no CPU; started again, the same facts land once.
- `/readyz` stays ready with one broker down, says the quorum lost with two, and ready again
  once they are back; a publish then is refused, the next at once, and the same fact is
  recorded once the cluster is back; for a ledger whose topics need both of two replicas
  in sync, it names the partitions one broker down leaves short.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import Fact, parse_fact
from ledger.kafka.clients import AdminClient, Producer, fenced_broker_connections_closed
from ledger.kafka.names import Topics, intake_group
from ledger.kafka.publish import intake_key
from ledger.kafka.publish import publish as publish_to_intake
from ledger.kafka.readiness import ask_quorum, quorum_problem
from ledger.kafka.reading import ANSWER_TIMEOUT_S, reader
from ledger.kafka.recorder import KafkaLedgerRecorder, LedgerUnavailable
from ledger.kafka.topics import _config, ensure_topics
from ledger.receipt import Receipt
from ledger.settings import Settings
from tests.cli_support import line_within, lines_until, run_with, start_with
from tests.facts import grant
from tests.kafka_support import (
    OVERSIZE_LIMIT,
    assert_no_batch_isolated,
    check_exactly_once,
    headers,
    intake_stream,
    publish,
    read_committed,
)
from tests.test_kafka_acls import taken_all
from tests.test_kafka_faults import Progress, stop_cleanly, where_it_waits

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "deploy" / "kafka" / "cluster.py"
MAKE_SECRETS = ROOT / "deploy" / "kafka" / "make_secrets.py"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _cluster_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_kafka_cluster", CLUSTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster_py = _cluster_module()


@dataclass
class ComposeCluster:
    root: Path
    bootstrap: str
    services: list[str]

    def command(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr

    def kill(self, service: str) -> None:
        self.command("stop-node", str(self.root), service, "--kill")

    def start(self, service: str) -> None:
        self.command("start-node", str(self.root), service)

    @contextlib.contextmanager
    def hung(self, *services: str) -> Iterator[float]:
        """SIGSTOP the brokers (their connections stay open and nothing is answered, as when
        a process, its disk or its VM freezes), and SIGCONT them on leaving, whatever
        happened; yields when the hang began (`time.monotonic`)."""
        stopped: list[str] = []
        try:
            for service in services:
                os.kill(self._pid(service), signal.SIGSTOP)
                stopped.append(service)
            yield time.monotonic()
        finally:
            for service in stopped:
                os.kill(self._pid(service), signal.SIGCONT)

    def _pid(self, service: str) -> int:
        return int((self.root / service / "broker.pid").read_text())

    def service_of(self, node_id: int) -> str:
        compose = yaml.safe_load(COMPOSE.read_text())
        for service in self.services:
            if str(compose["services"][service]["environment"]["KAFKA_NODE_ID"]) == str(node_id):
                return service
        raise AssertionError(f"no broker service has node id {node_id}")

    def wait_fully_replicated(self, topics: list[str], timeout: float = 180) -> None:
        """Until every partition of `topics` has all its replicas in sync again: a broker
        started again catches up before the next one may be stopped."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        deadline = time.monotonic() + timeout
        try:
            while True:
                lagging = [
                    (t["name"], p["partition_index"])
                    for t in admin.describe_topics(topics)
                    for p in t["partitions"]
                    if len(p["isr_nodes"]) < len(p["replica_nodes"]) or p["leader_id"] < 0
                ]
                if not lagging:
                    return
                assert time.monotonic() < deadline, f"not in sync: {lagging}"
                time.sleep(0.2)  # a condition poll: the brokers' metadata, asked each round
        finally:
            admin.close()


@pytest.fixture(scope="module")
def compose_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    root = tmp_path_factory.mktemp("compose-cluster")
    started = subprocess.run(
        [sys.executable, str(CLUSTER), "start", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert started.returncode == 0, started.stderr
    services = list(cluster_py.brokers(yaml.safe_load(COMPOSE.read_text())))
    try:
        yield ComposeCluster(root, started.stdout.strip().splitlines()[-1], services)
    finally:
        # Killed: its files are thrown away, and a stop of all three at once (each broker's
        # controlled shutdown) waited out STOP_TIMEOUT_S for one of them (32 s, in a run).
        subprocess.run([sys.executable, str(CLUSTER), "stop", str(root), "--kill"], timeout=300)


def compose_ledger_env(cluster: ComposeCluster, data_dir: Path) -> dict[str, str]:
    """The compose file's ledger service's environment, pointed at these brokers, a data
    directory and topics of its own, with a master key of its own."""
    compose = yaml.safe_load(COMPOSE.read_text())
    env = {k: str(v) for k, v in compose["services"]["ledger"]["environment"].items()}
    env.update(
        KAFKA_BOOTSTRAP=cluster.bootstrap,
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_TOPIC_PREFIX=f"c{uuid.uuid4().hex[:12]}",
        LEDGER_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    return env


def replicated_topics(settings: Settings) -> list[str]:
    topics = Topics.of(settings.topic_prefix)
    return [
        topics.intake,
        topics.ledger,
        topics.rejected,
        "__consumer_offsets",
        "__transaction_state",
    ]


def test_the_image_s_rule_names_each_property() -> None:
    name = cluster_py.property_name
    assert name("KAFKA_NODE_ID") == "node.id"
    assert name("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP") == "listener.security.protocol.map"
    assert (
        name("KAFKA_LISTENER_NAME_SASL__SSL_SCRAM___SHA___512_SASL_JAAS_CONFIG")
        == "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"
    )


def test_each_broker_s_properties_are_its_compose_environment_moved_onto_this_machine(
    tmp_path: Path,
) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = cluster_py.brokers(compose, {"KAFKA_EXTERNAL_HOST": "kafka.example.com"})
    assert list(services) == ["kafka-1", "kafka-2", "kafka-3"]
    ports = {
        (s, port): 10000 + 10 * i + port % 10
        for i, s in enumerate(services)
        for port in cluster_py.container_ports(services[s])
    }
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "broker.p12").write_bytes(b"\x30\x82")
    (secrets / "broker-keystore-password").write_text("its-password\n\n")
    props = cluster_py.render(compose, "kafka-2", ports, tmp_path / "data", secrets)
    env = services["kafka-2"]
    # Every KAFKA_ variable became a property but KAFKA_OPTS (the JVM's), and nothing else
    # did but the three the image derives for an SSL listener.
    derived = {"ssl.keystore.location", "ssl.keystore.password", "ssl.key.password"}
    assert len(props) == len([v for v in env if v.startswith("KAFKA_")]) - 1 + len(derived)
    assert props["node.id"] == "2"
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:10012,CONTROLLER://127.0.0.1:10013,SASL_SSL://127.0.0.1:10014"
    )
    # The port it publishes (29094) is its port 9094, whatever name it is advertised by.
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:10012,SASL_SSL://127.0.0.1:10014"
    )
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:10003,2@127.0.0.1:10013,3@127.0.0.1:10023"
    )
    assert props["log.dirs"] == str(tmp_path / "data")
    # The settings that make the cluster durable pass through unchanged.
    assert props["min.insync.replicas"] == "2"
    assert props["default.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["auto.create.topics.enable"] == "false"
    # The SASL_SSL listener's keystore, as the image sets it from /etc/kafka/secrets.
    assert props["ssl.keystore.location"] == str(secrets / "broker.p12")
    assert props["ssl.keystore.password"] == props["ssl.key.password"] == "its-password"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"] == "User:ANONYMOUS"
    assert cluster_py.jvm_options(compose, "kafka-2", secrets) == [
        f"-Djava.security.auth.login.config={secrets}/kafka_server_jaas.conf"
    ]


def test_the_image_s_refusals_and_compose_s_variables_are_kept(tmp_path: Path) -> None:
    """A broker that cluster.py started where the image would refuse to start it would test
    a deployment that cannot run; and a variable compose would replace must be replaced."""
    compose = yaml.safe_load(COMPOSE.read_text())
    ports = {
        (s, port): 10000 + 10 * i + port % 10
        for i, s in enumerate(cluster_py.brokers(compose))
        for port in cluster_py.container_ports(cluster_py.brokers(compose)[s])
    }
    with pytest.raises(SystemExit, match=r"/etc/kafka/secrets/broker\.p12 file does not exist"):
        cluster_py.render(compose, "kafka-1", ports, tmp_path / "data", tmp_path)
    (tmp_path / "broker.p12").write_bytes(b"")
    with pytest.raises(SystemExit, match="broker-keystore-password file does not exist"):
        cluster_py.render(compose, "kafka-1", ports, tmp_path / "data", tmp_path)
    without = yaml.safe_load(COMPOSE.read_text())
    del without["services"]["kafka-1"]["environment"]["KAFKA_OPTS"]
    (tmp_path / "broker-keystore-password").write_text("p")
    with pytest.raises(SystemExit, match="KAFKA_OPTS environment variable not set"):
        cluster_py.render(without, "kafka-1", ports, tmp_path / "data", tmp_path)

    given = {"SET": "x", "EMPTY": ""}
    assert cluster_py.interpolate("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}", given) == (
        "x/d//d"
    )
    assert cluster_py.interpolate("$${SET} ${SET}${UNSET}", given) == "${SET} x"
    with pytest.raises(SystemExit, match="UNSET: say what it is"):
        cluster_py.interpolate("${UNSET:?say what it is}", given)
    assert cluster_py.published(compose, "kafka-3") == {39094: 9094}


def test_the_ledger_makes_its_topics_as_the_compose_file_configures_them(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    init = run_with({**os.environ, **env}, "init")
    assert init.returncode == 0, init.stderr
    settings = Settings.from_env(env)
    assert (settings.partitions, settings.replication, settings.min_insync) == (6, 3, 2)
    topics = Topics.of(settings.topic_prefix)
    names = [topics.intake, topics.ledger, topics.rejected]
    admin = KafkaAdminClient(bootstrap_servers=compose_cluster.bootstrap)
    try:
        # The broker asked may not have heard of the topics yet (they were made a moment
        # ago): asked again until it has, as the ledger's own check does.
        ledger_config = _config(admin, topics.ledger)
        deadline = time.monotonic() + 10
        while True:
            described = {t["name"]: t for t in admin.describe_topics(names) if t["partitions"]}
            if len(described) == len(names) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # a condition poll: the broker's metadata, asked again
    finally:
        admin.close()
    for topic in names:
        partitions = described[topic]["partitions"]
        assert len(partitions) == 6, topic
        # Spread over the three brokers, each partition on all three.
        assert all(sorted(p["replica_nodes"]) == [1, 2, 3] for p in partitions), topic
        assert len({p["leader_id"] for p in partitions}) == 3, topic
    assert ledger_config["min.insync.replicas"] == "2"
    assert ledger_config["retention.ms"] == "-1"
    assert ledger_config["cleanup.policy"] == "delete"


def test_topics_just_made_are_checked_whichever_broker_answers(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    # A broker asked for the settings of a topic made a moment before may not know it yet
    # (8 times in 10 here): the check waits for it rather than refusing the topics.
    for _ in range(5):
        settings = Settings.from_env(compose_ledger_env(compose_cluster, tmp_path / "data"))
        assert ensure_topics(settings) == Topics.of(settings.topic_prefix)


def test_a_publishing_service_elsewhere_reaches_the_intake_topic_and_nothing_else(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """The compose file's SASL_SSL listener as a service outside the compose network meets
    it: TLS under the CA make_secrets.py made, a SCRAM-SHA-512 login added as kafka-configs.sh
    adds one, and the authorizer granting nothing but what `kafka-acls --publisher --apply`
    creates.
    The ledger, on the compose network's PLAINTEXT listener, records what it publishes."""
    env = {**os.environ, **compose_ledger_env(compose_cluster, tmp_path / "data")}
    topics = Topics.of(env["LEDGER_TOPIC_PREFIX"])
    assert run_with(env, "init").returncode == 0
    user, password = f"crm-{uuid.uuid4().hex[:8]}", base64.b64encode(os.urandom(12)).decode()
    added = subprocess.run(
        [sys.executable, str(CLUSTER), "scram-user", str(compose_cluster.root), user],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    external = (compose_cluster.root / "bootstrap-external").read_text().strip()
    assert external and set(external.split(",")).isdisjoint(compose_cluster.bootstrap.split(","))

    def crm(secret: str, wait_ms: int = 30_000, **tls: Any) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=external,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=user,
            sasl_plain_password=secret,
            acks="all",
            max_block_ms=wait_ms,
            bootstrap_timeout_ms=wait_ms,
            **(tls or {"ssl_cafile": str(compose_cluster.root / "secrets" / "ca.pem")}),
        )

    fact = grant("compose-crm-1", event_id="compose-crm-g1")
    key = intake_key(b"crm's own key", "demo", "compose-crm-1")
    refused = crm(password)
    try:  # logged in, and refused: no ACL yet
        with pytest.raises((TopicAuthorizationFailedError, ClusterAuthorizationFailedError)):
            refused.send(topics.intake, key=key, value=orjson.dumps(fact)).get(timeout=60)
    finally:
        refused.close()
    # As the compose file says: the ledger, a super user on the compose network, grants it.
    applied = run_with(env, "kafka-acls", "--principal", f"User:{user}", "--publisher", "--apply")
    assert applied.returncode == 0, applied.stderr
    producer = crm(password)  # its idempotent producer's id refused, the first one is spent
    try:
        producer.send(topics.intake, key=key, value=orjson.dumps(fact)).get(timeout=60)
        for closed in (topics.ledger, topics.rejected):
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(closed, key=key, value=b"{}").get(timeout=60)
    finally:
        producer.close()
    # A wrong password, or a CA other than the brokers', gets no connection at all.
    with pytest.raises(KafkaTimeoutError):
        crm("not-" + password, 5_000)
    other_ca = tmp_path / "other"
    made = subprocess.run([sys.executable, str(MAKE_SECRETS), str(other_ca)], capture_output=True)
    assert made.returncode == 0, made.stderr
    with pytest.raises(KafkaTimeoutError):
        crm(password, 5_000, ssl_cafile=str(other_ca / "ca.pem"))

    worker = start_with(env, "worker")
    try:
        assert worker.stdout is not None
        said = line_within(worker.stdout)
        assert said.startswith("worker: consuming"), said
        taken_all(compose_cluster.bootstrap, topics)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0
    answer = run_with(env, "consents", "--tenant", "demo", "compose-crm-1", "--json")
    assert answer.returncode == 0, answer.stderr
    purposes = orjson.loads(answer.stdout)["purposes"]
    marketing = next(c for c in purposes if c["purpose"] == "marketing")
    assert (marketing["state"], marketing["event_id"]) == ("granted", "compose-crm-g1")

    # Cut off again (its login leaked, say): refused from the next send.
    revoked = run_with(env, "kafka-acls", "--principal", f"User:{user}", "--publisher", "--revoke")
    assert revoked.returncode == 0, revoked.stderr
    cut_off = crm(password)
    try:
        with pytest.raises((TopicAuthorizationFailedError, ClusterAuthorizationFailedError)):
            cut_off.send(topics.intake, key=key, value=orjson.dumps(fact)).get(timeout=60)
    finally:
        cut_off.close()


def test_a_worker_loses_and_duplicates_nothing_while_each_broker_in_turn_is_killed(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    assert run_with({**os.environ, **env}, "init").returncode == 0
    settings = Settings.from_env(env)
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=3_000, bad=150, seed=17)
    most = len(items) * 3 // 4
    # A first part before the writer starts, then one part after each broker is killed: the
    # writer has work through every outage however fast it took what came before. (A run
    # that published all of `most` first saw the writer finish it before the last kill.)
    bounds = [0, most // 4, most // 2, most * 3 // 4, most]
    parts = [items[start:end] for start, end in pairwise(bounds)]
    bootstrap = compose_cluster.bootstrap
    publish(bootstrap, topics.intake, [(i.key, i.value) for i in parts[0]])  # type: ignore[misc]
    # Small transactions, so that the stream is still being consumed through every kill.
    worker = start_with(
        {
            **os.environ,
            **env,
            "LEDGER_INTAKE_BATCH": "10",
            "LEDGER_INTAKE_MAX_BYTES": str(OVERSIZE_LIMIT),
        },
        "worker",
        "--interval",
        "0.1",
    )
    progress = Progress(settings)
    try:
        progress.wait_for(200, worker, timeout=120)
        for service, part in zip(compose_cluster.services, parts[1:], strict=True):
            compose_cluster.kill(service)
            # While it is down, the writer goes on with the other two: it commits 200 more
            # before the broker is back (the part published now makes sure there are).
            at_kill = progress.committed()
            publish(bootstrap, topics.intake, [(i.key, i.value) for i in part])  # type: ignore[misc]
            progress.wait_for(at_kill + 200, worker, timeout=180)
            compose_cluster.start(service)
            compose_cluster.wait_fully_replicated(replicated_topics(settings))
        progress.wait_for(most, worker, timeout=300)
        # Then two at once, while it takes the rest: the controllers lose their quorum and
        # no transaction commits until they are back. The writer says so and retries, and
        # goes on by itself. (With nothing left to take it had nothing to say: a first run
        # of this test killed them after the writer had finished.)
        assert worker.stderr is not None
        said = available(worker.stderr)  # what it printed before: not this outage
        # With one broker down, no write was refused: a commit whose transaction coordinator
        # was killed under it waited out its 30 s answer timeout, its EndTxn lost by
        # kafka-python (`ledger.kafka.clients._PacedNetClient.await_ready`).
        assert "ledger unavailable" not in said, said[-3000:]
        publish(bootstrap, topics.intake, [(i.key, i.value) for i in items[most:]])  # type: ignore[misc]
        down = compose_cluster.services[:2]
        for service in down:
            compose_cluster.kill(service)
        try:
            said += "\n".join(
                lines_until(worker.stderr, lambda line: "ledger unavailable" in line, 180)
            )
        except AssertionError as silent:  # where it waits instead, for the failure
            raise AssertionError(f"{silent}\n{where_it_waits(worker)}") from None
        finally:
            with ThreadPoolExecutor(len(down)) as pool:  # side by side: each takes seconds
                list(pool.map(compose_cluster.start, down))
        compose_cluster.wait_fully_replicated(replicated_topics(settings))
        progress.wait_for(len(items), worker, timeout=300)
        assert worker.poll() is None, "the worker did not survive the brokers' deaths"
        printed = said + stop_cleanly(worker)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
        progress.close()
    for item in items:
        if item.subject is not None:
            assert item.subject not in printed
    assert_no_batch_isolated(printed)
    check_exactly_once(
        items,
        read_committed(bootstrap, topics.ledger),
        read_committed(bootstrap, topics.rejected),
        said=printed,
    )
    verified = run_with({**os.environ, **env}, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def available(stream: IO[str]) -> str:
    """What a process has printed to `stream` and nobody read yet, read from the pipe itself
    without waiting (as `lines_until` reads it)."""
    held = b""
    while select.select([stream], [], [], 0)[0]:
        chunk = os.read(stream.fileno(), 65_536)
        if not chunk:
            break
        held += chunk
    return held.decode()


def test_with_one_broker_of_three_left_an_append_is_refused_then_lands_once(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    settings = Settings.from_env(env)
    ledger = ConsentLedger(settings)
    try:
        ledger.init_demo()
        before = [grant(subject=f"before-{i}", event_id=f"before-{i}") for i in range(50)]
        ledger.record([parse_fact(f) for f in before])
        down = compose_cluster.services[:2]
        for service in down:
            compose_cluster.kill(service)
        during = [grant(subject=f"during-{i}", event_id=f"during-{i}") for i in range(50)]
        try:
            began, cpu = time.monotonic(), time.process_time()
            with pytest.raises(LedgerUnavailable):
                ledger.record([parse_fact(f) for f in during])
            waited, used = time.monotonic() - began, time.process_time() - cpu
            # Waiting for brokers that are down costs next to no CPU: kafka-python's sender
            # spun a core for the whole wait (29-32 s of CPU in 30 s) before
            # `ledger.kafka.clients._PacedNetClient` (0.5 s).
            assert used < waited / 4, f"{used:.1f} s of CPU in {waited:.1f} s of waiting"
            # And ends once the quorum is said lost twice (`ledger.kafka.write_watch`), not
            # at the answer timeout (30 s).
            assert waited < ANSWER_TIMEOUT_S * 2 / 3, f"refused after {waited:.1f} s"
            # As does a publish to the intake topic (`consent-ledger publish`), whose
            # records the broker left alive takes and confirms none of.
            began = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                publish_to_intake(ledger, [grant(subject="intake-0", event_id="intake-0")], None)
            waited = time.monotonic() - began
            assert waited < ANSWER_TIMEOUT_S * 2 / 3, f"publish refused after {waited:.1f} s"
        finally:
            with ThreadPoolExecutor(len(down)) as pool:  # side by side: each takes seconds
                list(pool.map(compose_cluster.start, down))
        compose_cluster.wait_fully_replicated(replicated_topics(settings))
        # The same facts again: whatever the refused attempt left undecided is settled,
        # and each lands once.
        receipts = ledger.record([parse_fact(f) for f in during])
        assert all(isinstance(r, Receipt) for r in receipts), receipts
        assert [getattr(r, "event_id", None) for r in receipts] == [f["event_id"] for f in during]
    finally:
        ledger.close()
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    landed = [
        headers(r).get("event_id", "seed-policy-")
        for r in read_committed(compose_cluster.bootstrap, ledger_topic)
    ]
    wanted = [f["event_id"] for f in before + during]
    assert sorted(e for e in landed if not e.startswith("seed-policy-")) == sorted(wanted)


def test_a_writer_whose_quorum_is_lost_as_it_takes_ownership_is_refused_as_a_write_is(
    tmp_path: Path, compose_cluster: ComposeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two brokers of three SIGKILLed between the fence (the transactional id registered)
    and the catch-up that follows it: the catch-up waited out its 30 s answer timeout, and
    every write of the process queued behind it. It is a write's wait now, ended once the
    quorum is said lost, as a commit's is."""
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    settings = Settings.from_env(env)
    ledger = ConsentLedger(settings)
    down = compose_cluster.services[:2]
    registered = KafkaLedgerRecorder._initialised_producer

    def registered_then_quorum_lost(self: KafkaLedgerRecorder, stopping: Any) -> Any:
        producer = registered(self, stopping)
        for service in down:
            compose_cluster.kill(service)
        return producer

    try:
        monkeypatch.setattr(
            KafkaLedgerRecorder, "_initialised_producer", registered_then_quorum_lost
        )
        began = time.monotonic()
        try:
            with pytest.raises(LedgerUnavailable, match="quorum"):
                ledger.init_demo()  # its first write takes ownership
            waited = time.monotonic() - began
        finally:
            with ThreadPoolExecutor(len(down)) as pool:  # side by side: each takes seconds
                list(pool.map(compose_cluster.start, down))
        assert waited < ANSWER_TIMEOUT_S * 2 / 3, f"refused after {waited:.1f} s"
        monkeypatch.undo()
        compose_cluster.wait_fully_replicated(replicated_topics(settings))
        ledger.init_demo()  # and once they are back, it owns and writes
    finally:
        ledger.close()


# How long the test keeps a broker hung: longer than the controller takes to fence it (9 s)
# and move its partitions and coordinators (writes went on after 8 to 15 s in a throwaway
# probe), shorter than the clients' request timeout (30 s), which ended the wait before.
HANG_S = 25.0


def quorum_leader(bootstrap: str) -> int:
    admin = AdminClient(bootstrap_servers=bootstrap)
    try:
        answers = ask_quorum(admin).answers
    finally:
        admin.close()
    described = next(a for a in answers if isinstance(a, dict))
    leader: int = described["topics"][0]["partitions"][0]["leader_id"]
    return leader


def described_topics(bootstrap: str, topics: list[str]) -> dict[str, Any]:
    admin = AdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: t for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def ten_grants(run: str, first: int) -> list[Fact]:
    """Ten new subjects' grants, numbered from `first`: the writes made while a broker hangs."""
    return [
        parse_fact(grant(subject=f"{run}-{first + k}", event_id=f"{run}-{first + k}"))
        for k in range(10)
    ]


def test_a_writer_goes_on_while_a_broker_it_writes_to_hangs(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """One broker of three SIGSTOPped (a frozen process: connections open, nothing
    answered), the writer's transaction coordinator (and a leader of ledger partitions):
    the controller fences it and moves them, and writes go on. They waited on the requests
    already sent to it until it came back or the request timeout (30 s) passed, after which
    kafka-python failed the transaction of a transactional request:
    `ledger.kafka.clients._PacedNetClient` now lets go of a broker the cluster fenced. The
    active controller is left running: its hang is a later test's, and the cluster's own
    failover from it takes longer."""
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    settings = Settings.from_env(env)
    ledger = ConsentLedger(settings)
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    run = uuid.uuid4().hex[:6]
    try:
        ledger.init_demo()
        controller = quorum_leader(compose_cluster.bootstrap)
        recorder = ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        described = described_topics(
            compose_cluster.bootstrap, [ledger_topic, "__transaction_state"]
        )
        # The writer's transaction coordinator, unless it is the active controller: then a
        # broker leading the most ledger partitions. Kafka keeps a transactional id's state
        # in partition abs(Java hashCode) % 50 of __transaction_state, whose leader is the
        # coordinator.
        txn_id = recorder.link.transactional_id
        java_hash = 0
        for char in txn_id:
            java_hash = (31 * java_hash + ord(char)) & 0xFFFFFFFF
        states = described["__transaction_state"]["partitions"]
        state = (java_hash & 0x7FFFFFFF) % len(states)
        coordinator = next(p["leader_id"] for p in states if p["partition_index"] == state)
        leaders = Counter(p["leader_id"] for p in described[ledger_topic]["partitions"])
        candidates = [coordinator] + [n for n, _ in leaders.most_common()]
        hung = compose_cluster.service_of(next(n for n in candidates if n != controller))
        written: list[tuple[float, float]] = []  # each write's start and end, from the hang
        refused: list[str] = []
        # Once every transaction's markers are written (read_committed reads to the end):
        # markers on their way to the broker as it hangs hold the next transaction until
        # the brokers' own request timeout (30 s), which no client can shorten.
        read_committed(compose_cluster.bootstrap, ledger_topic)
        try:
            with compose_cluster.hung(hung) as began:
                i = 0
                while time.monotonic() - began < HANG_S:
                    facts = ten_grants(run, i)
                    start = time.monotonic() - began
                    try:
                        ledger.record(facts)
                    except LedgerUnavailable as error:
                        refused.append(f"{start:.1f} s in: {error}")
                        continue  # the same facts again
                    written.append((start, time.monotonic() - began))
                    i += 10
        finally:
            compose_cluster.wait_fully_replicated(replicated_topics(settings))
        assert not refused, refused
        # The first write to wait on the hung broker ends while it still hangs, and others
        # are made after it: waiting on the hung broker itself, it ended at the resume.
        first_stall = min((end for start, end in written if end - start > 2), default=0.0)
        went_on = [end for start, end in written if first_stall <= start and end < HANG_S]
        assert went_on, f"no write after the stall that ended {first_stall:.1f} s in: {written}"
    finally:
        ledger.close()
    landed = [
        headers(r).get("event_id", "")
        for r in read_committed(compose_cluster.bootstrap, ledger_topic)
    ]
    assert len([e for e in landed if e.startswith(run)]) == i  # each once


def hung_leader(bootstrap: str, topic: str) -> tuple[int, set[int]]:
    """The broker to hang: the one leading the most partitions of `topic` but the active
    controller (whose hang is another test's), and the partitions it leads."""
    controller = quorum_leader(bootstrap)
    described = described_topics(bootstrap, [topic])[topic]
    leaders = Counter(p["leader_id"] for p in described["partitions"])
    node = next(n for n, _ in leaders.most_common() if n != controller)
    return node, {p["partition_index"] for p in described["partitions"] if p["leader_id"] == node}


def reader_at_end(bootstrap: str, topic: str) -> KafkaConsumer:
    """A read_committed reader (`ledger.kafka.reading.reader`) of every partition of
    `topic`, from its end, once every transaction's markers are written."""
    read_committed(bootstrap, topic)
    consumer = reader(bootstrap, "hang-reader", timeout_s=30)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # its fetches start at the end, before the hang
    return consumer


def event_ids_read(consumer: KafkaConsumer) -> set[str]:
    return {headers(r)["event_id"] for b in consumer.poll(timeout_ms=200).values() for r in b}


def test_a_reader_goes_on_while_the_leader_of_its_partitions_hangs(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """A read_committed reader of the ledger topic (as the projections, replay and verify
    read it), and the broker leading the most of its partitions SIGSTOPped while the writer
    appends: the controller moves those partitions and the writer goes on, and the reader
    reads what is appended to them while the broker still hangs. Its fetch to that broker
    waited until the broker came back (none of their facts read in a 40 s hang, a throwaway
    probe): `ledger.kafka.clients.Consumer` now lets go of a broker the cluster fenced."""
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    settings = Settings.from_env(env)
    ledger = ConsentLedger(settings)
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    run = uuid.uuid4().hex[:6]
    written: dict[str, int] = {}  # event_id -> ledger partition
    read_while_hung: set[str] = set()
    closed_before = fenced_broker_connections_closed()
    try:
        ledger.init_demo()
        hung_id, led = hung_leader(compose_cluster.bootstrap, ledger_topic)
        consumer = reader_at_end(compose_cluster.bootstrap, ledger_topic)
        try:
            with compose_cluster.hung(compose_cluster.service_of(hung_id)) as began:
                i = 0
                while time.monotonic() - began < HANG_S:
                    with contextlib.suppress(LedgerUnavailable):  # the same facts again
                        for receipt in ledger.record(ten_grants(run, i)):
                            assert isinstance(receipt, Receipt) and receipt.partition is not None
                            written[receipt.event_id] = receipt.partition
                        i += 10
                    read = event_ids_read(consumer)
                    if time.monotonic() - began < HANG_S:
                        read_while_hung |= read
        finally:
            consumer.close()
        compose_cluster.wait_fully_replicated(replicated_topics(settings))
    finally:
        ledger.close()
    of_moved = {e for e, partition in written.items() if partition in led}
    assert of_moved, f"nothing was written to partitions {sorted(led)} while they moved"
    assert of_moved & read_while_hung, (
        f"of {len(of_moved)} facts written to partitions {sorted(led)} while their leader "
        "hung, none was read before it came back"
    )
    assert fenced_broker_connections_closed() > closed_before  # what /metrics counts


def transactions_complete(bootstrap: str, topics: Topics) -> None:
    """Until the worker's transactions are complete: their markers written on the ledger
    partitions (read_committed reads to the end) and on the intake group's offsets (a
    read_committed consumer's committed offsets, which the broker gives only once stable)."""
    read_committed(bootstrap, topics.ledger)
    offsets = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=intake_group(topics),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    try:
        for partition in offsets.partitions_for_topic(topics.intake) or ():
            offsets.committed(TopicPartition(topics.intake, partition), timeout_ms=60_000)
    finally:
        offsets.close()


def test_the_intake_writer_goes_on_while_the_leader_of_intake_partitions_hangs(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """The worker consuming the intake topic, and the broker leading the most intake
    partitions SIGSTOPped while a service publishes: once the controller has moved them,
    what is published to them reaches the ledger while the broker still hangs. The intake
    consumer's fetch waited on the hung broker, and the whole intake stalled: facts of
    every partition 23 to 25 s late in a 40 s hang, in 2 runs of a throwaway probe, those
    of the hung broker's partitions not taken until it came back in one; 0.6 s at most in
    2 runs with `ledger.kafka.clients.Consumer` letting go of a broker the cluster fenced.
    The hang begins once the worker's first transaction is complete, its markers written on
    the ledger partitions and on the group's offsets: begun as it committed, with markers on
    their way to the broker, the worker's next transaction waited for them until the broker
    came back (3 clean-clone runs of `make test` of some 40, 2026-12-07): Kafka's own
    `request.timeout.ms` (30 s), as in the writer's test."""
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    assert run_with({**os.environ, **env}, "init").returncode == 0
    topics = Topics.of(Settings.from_env(env).topic_prefix)
    bootstrap = compose_cluster.bootstrap
    hung_id, led = hung_leader(bootstrap, topics.intake)
    secret = os.urandom(32)  # the publishing service's, for its keys
    published: dict[str, int] = {}  # event_id -> intake partition
    in_ledger_while_hung: set[str] = set()

    def publish_ten(first: int) -> set[str]:
        facts = [
            grant(subject=f"{run}-{first + k}", event_id=f"{run}-{first + k}") for k in range(10)
        ]
        sent = [
            (
                f["event_id"],
                producer.send(
                    topics.intake,
                    key=intake_key(secret, f["tenant"], f["subject"]),
                    value=orjson.dumps(f),
                ),
            )
            for f in facts
        ]
        producer.flush(timeout=60)
        published.update((e, future.get(timeout=0).partition) for e, future in sent)
        return {e for e, _ in sent}

    run = uuid.uuid4().hex[:6]
    consumer = reader_at_end(bootstrap, topics.ledger)
    producer = Producer(bootstrap_servers=bootstrap, acks="all")
    worker = start_with({**os.environ, **env}, "worker", "--interval", "0.1")
    try:
        first, seen = publish_ten(0), set[str]()
        deadline = time.monotonic() + 60
        while not first <= seen:  # the worker runs and takes what is published
            assert time.monotonic() < deadline and worker.poll() is None, "the worker took nothing"
            seen |= event_ids_read(consumer)
        transactions_complete(bootstrap, topics)
        # What a failure needs to say why: how long each publish took, and when the first
        # fact of a moved partition reached the ledger (seconds into the hang).
        publishes: list[tuple[float, float]] = []
        moved_at: float | None = None
        with compose_cluster.hung(compose_cluster.service_of(hung_id)) as began:
            i = 10
            while time.monotonic() - began < HANG_S:
                at = time.monotonic()
                publish_ten(i)
                publishes.append((at - began, time.monotonic() - at))
                i += 10
                read = event_ids_read(consumer)
                if time.monotonic() - began < HANG_S:
                    in_ledger_while_hung |= read
                if moved_at is None and any(published.get(e) in led for e in read):
                    moved_at = time.monotonic() - began
        compose_cluster.wait_fully_replicated(replicated_topics(Settings.from_env(env)))
        said = stop_cleanly(worker)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
        producer.close()
        consumer.close()
    of_moved = {e for e, partition in published.items() if partition in led and e not in first}
    assert of_moved, f"nothing was published to intake partitions {sorted(led)} while they moved"
    slowest = [(round(b, 1), round(t, 2)) for b, t in sorted(publishes, key=lambda p: p[1])[-3:]]
    first_moved = "never" if moved_at is None else f"{moved_at:.1f} s into it"
    assert of_moved & in_ledger_while_hung, (
        f"of {len(of_moved)} facts published to intake partitions {sorted(led)} while their "
        f"leader hung ({HANG_S} s), none reached the ledger before it came back (the first: "
        f"{first_moved}); the slowest publishes (began, took s): {slowest}; the worker said:\n"
        + said[-3000:]
    )


def test_the_quorum_is_not_said_lost_while_its_active_controller_hangs(
    compose_cluster: ComposeCluster,
) -> None:
    """Every broker forwards the quorum question to the active controller: when that one
    hangs, every broker is silent (about 30 s), while the others elect a new leader within
    seconds. Asked of one broker, the silence read as a lost quorum, and a write waiting on
    the hung broker was refused so; `/readyz` said 503. The brokers answering otherwise
    tell that most voters run (`ledger.kafka.readiness.quorum_verdict`)."""
    admin = AdminClient(bootstrap_servers=compose_cluster.bootstrap, request_timeout_ms=3000)
    try:
        assert quorum_problem(admin) is None  # learns the voters, as a writer does
        hung = compose_cluster.service_of(quorum_leader(compose_cluster.bootstrap))
        with compose_cluster.hung(hung):
            said = [quorum_problem(admin) for _ in range(2)]
        assert said == [None, None], said
        # And two of three do lose it. The controller just let go of may still be the
        # quorum's leader (no election finished while it hung: in a loaded run it answered
        # leader, epoch 1, both times), and a leader answers as one until it has gone
        # `controller.quorum.fetch.timeout.ms` (2 s) without hearing from a majority; what
        # it says then is Kafka's answer. So it is asked until two answers in a row say
        # lost, within 30 s, each answer waiting at most the 3 s request timeout.
        lost = ["kafka_quorum_lost"] * 2
        said = []
        deadline = time.monotonic() + 30
        with compose_cluster.hung(*[s for s in compose_cluster.services if s != hung]):
            while [s and s[0] for s in said[-2:]] != lost and time.monotonic() < deadline:
                said.append(quorum_problem(admin))
        assert [s and s[0] for s in said[-2:]] == lost, said
    finally:
        admin.close()
    compose_cluster.wait_fully_replicated(["__consumer_offsets", "__transaction_state"])


def test_readyz_says_a_lost_quorum_and_ready_again_once_it_is_back(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """With two brokers of three SIGKILLed the one left answers metadata from its cache,
    naming the dead as leaders and in sync: `/readyz` said ready while every write waited
    out its 30 s and was refused. It asks the controllers' quorum too now.

    A publish then is refused once the broker has had its time to answer; the next, within
    the `Retry-After` it names, at once (it waited its own 30 s, behind the first); and the
    same fact, published again once the cluster is back, is recorded."""
    settings = Settings.from_env(compose_ledger_env(compose_cluster, tmp_path / "data"))
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    keys = ApiKeys(keys_path(settings))
    auth = {"Authorization": f"Bearer {keys.create('demo', {'publisher'})[1]}"}
    keys.close()
    fact = {k: v for k, v in grant("quorum-1", event_id="quorum-1").items() if k != "tenant"}
    first, second = compose_cluster.services[:2]
    with TestClient(create_app(settings)) as client:
        # Within moments: a broker other than the one that made the topics may not have
        # them in its metadata yet, and is right to say so (`topics_missing`).
        ready_within(client, 10)
        killed = []
        try:
            compose_cluster.kill(first)
            killed.append(first)
            # One down: the quorum stands and the partitions move their leaders.
            ready_within(client, 60)
            compose_cluster.kill(second)
            killed.append(second)
            deadline = time.monotonic() + 60
            while (answer := client.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "still ready with two brokers of three down"
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "kafka_quorum_lost", answer.text
            # And stays so, whichever broker each probe asks first.
            for _ in range(2):
                assert client.get("/readyz").json()["code"] == "kafka_quorum_lost"
            refused = client.post("/v1/facts", json=fact, headers=auth)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "ledger_unavailable"
            retry_after = int(refused.headers["Retry-After"])
            began = time.monotonic()
            again = client.post("/v1/facts", json=fact, headers=auth)
            assert again.status_code == 503 and again.json()["code"] == "ledger_unavailable"
            assert time.monotonic() - began < retry_after, "the broker was asked again"
        finally:
            with ThreadPoolExecutor(2) as pool:  # side by side: each takes seconds
                list(pool.map(compose_cluster.start, killed))
        ready_within(client, 120)
        # Published again as `Retry-After` says, until the window has passed.
        deadline = time.monotonic() + 60
        while (taken := client.post("/v1/facts", json=fact, headers=auth)).status_code == 503:
            assert time.monotonic() < deadline, taken.text
            time.sleep(0.05)  # a condition poll: the service's window, asked again
        assert taken.status_code == 201, taken.text
    compose_cluster.wait_fully_replicated(replicated_topics(settings))


def test_readyz_names_ledger_partitions_with_too_few_replicas_in_sync(
    tmp_path: Path, compose_cluster: ComposeCluster
) -> None:
    """A ledger whose topics have two replicas, both needed in sync (LEDGER_REPLICATION=2,
    LEDGER_MIN_INSYNC=2): with one broker of three down the quorum stands, and the partitions
    with a replica on it take no write once the controller drops it from their in-sync
    replicas. The metadata says so, and `/readyz` names them."""
    env = compose_ledger_env(compose_cluster, tmp_path / "data")
    env.update(LEDGER_REPLICATION="2", LEDGER_MIN_INSYNC="2")
    settings = Settings.from_env(env)
    down = compose_cluster.services[0]
    with TestClient(create_app(settings)) as client:
        # Within moments: a broker other than the one that made the topics may not have
        # them in its metadata yet, and is right to say so (`topics_missing`).
        ready_within(client, 10)
        compose_cluster.kill(down)
        try:
            deadline = time.monotonic() + 60
            while (answer := client.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "still ready with partitions short of replicas"
            assert answer.json()["code"] == "kafka_partitions_unwritable", answer.text
            detail = answer.json()["detail"]
            ledger_topic = Topics.of(settings.topic_prefix).ledger
            assert detail.startswith(f"topic {ledger_topic}: partitions "), detail
            assert detail.endswith("have fewer than 2 replicas in sync (LEDGER_MIN_INSYNC)"), detail
        finally:
            compose_cluster.start(down)
        ready_within(client, 120)
    compose_cluster.wait_fully_replicated(replicated_topics(settings))


def ready_within(client: TestClient, seconds: float) -> None:
    """Until `/readyz` answers 200; each probe's own round trip paces the next."""
    deadline = time.monotonic() + seconds
    while (answer := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, answer.text
