"""Kafka mode on a cluster with an authorizer (the development broker runs Kafka's
`StandardAuthorizer`; `deploy/kafka/broker.sh`): the ACLs `consent-ledger kafka-acls`
prints are enough for the ledger's principal and for a publishing service's, nothing less is,
and a refused ACL is said in one line that says where the list is."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import ClusterAuthorizationFailedError, TopicAuthorizationFailedError

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.kafka import readiness
from ledger.kafka.acls import Grant
from ledger.kafka.granting import acls_of as acls_of_grants
from ledger.kafka.names import Topics, intake_group
from ledger.settings import Settings
from tests.cli_support import line_within, run_with, start_with
from tests.conftest import SecuredBroker, started_broker
from tests.facts import grant
from tests.kafka_support import (
    committed_offsets,
    end_offsets,
    kafka_env,
    kafka_settings,
    read_committed,
)

pytestmark = pytest.mark.kafka

# Users of the development broker that are not super users (`deploy/kafka/broker.sh`).
LEDGER_USER = "acl-ledger"
PUBLISHER_USER = "acl-publisher"


def login(user: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": f"{user}-secret",
    }


def as_ledger(broker: SecuredBroker, settings: Settings) -> dict[str, str]:
    """The environment of a CLI process logged in as the ledger's restricted user."""
    return {
        **os.environ,
        **kafka_env(settings),
        **login(LEDGER_USER),
        "KAFKA_SSL_CAFILE": str(broker.ca),
    }


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a `serve` started in `env` reads."""
    return Settings.from_env({k: v for k, v in env.items() if k.startswith(("LEDGER_", "KAFKA_"))})


def acls_of(principal: str, resources: ResourcePatternFilter | None = None) -> ACLFilter:
    """Every ACL of the principal (on `resources`, if given)."""
    every = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    return ACLFilter(principal, "*", ACLOperation.ANY, ACLPermissionType.ANY, resources or every)


@pytest.fixture
def admin(kafka_sasl_ssl: SecuredBroker) -> Iterator[KafkaAdminClient]:
    """An admin client on the PLAINTEXT listener (a super user of the development broker);
    every ACL of the two restricted users is deleted again after the test."""
    client = KafkaAdminClient(bootstrap_servers=kafka_sasl_ssl.plaintext)
    try:
        yield client
    finally:
        client.delete_acls([acls_of(f"User:{user}") for user in (LEDGER_USER, PUBLISHER_USER)])
        client.close()


def listed(env: dict[str, str], principal: str, *options: str) -> list[dict[str, Any]]:
    """The grants `consent-ledger kafka-acls --json` lists."""
    out = run_with(env, "kafka-acls", "--principal", principal, "--json", *options)
    assert out.returncode == 0, out.stderr
    answer = orjson.loads(out.stdout)
    assert answer["principal"] == principal
    grants: list[dict[str, Any]] = answer["grants"]
    return grants


def granted(admin: KafkaAdminClient, principal: str, grants: list[dict[str, Any]]) -> None:
    """The grants as listed (`--json`), each made an ACL as `kafka-acls --apply` makes it."""
    acls = acls_of_grants(
        principal,
        [
            Grant(
                g["resource_type"],
                g["name"],
                g["pattern"] == "prefixed",
                tuple(g["operations"]),
                g["why"],
            )
            for g in grants
        ],
    )
    result = admin.create_acls(acls)
    assert not result["failed"], result["failed"]
    wanted = {_key(acl) for acl in acls}
    in_force(admin, principal, lambda held: wanted <= held)


PATTERN_LITERAL = ACLResourcePatternType.LITERAL
WRITE = ACLOperation.WRITE


def _key(acl: ACL) -> tuple[Any, str, Any, Any]:
    pattern = acl.resource_pattern
    return (pattern.resource_type, pattern.resource_name, pattern.pattern_type, acl.operation)


def in_force(admin: KafkaAdminClient, principal: str, settled: Callable[[set[Any]], bool]) -> None:
    """Wait until the broker's authorizer holds the principal's ACLs as `settled` wants.

    The controller commits a change before it answers; the broker's authorizer applies it
    from the metadata log a moment later, and describes what it enforces: a command started
    at once could meet the ACLs of before."""
    deadline = time.monotonic() + 30
    while True:  # each round trip to the broker paces the next look
        held, _ = admin.describe_acls(acls_of(principal))
        if settled({_key(acl) for acl in held}):
            return
        assert time.monotonic() < deadline, "the broker's authorizer did not take the change"


def producer(kafka_sasl_ssl: SecuredBroker, user: str) -> KafkaProducer:
    """A publishing service's own client: kafka-python, idempotent, as its defaults say."""
    return KafkaProducer(
        bootstrap_servers=kafka_sasl_ssl.sasl_ssl,
        security_protocol="SASL_SSL",
        ssl_cafile=str(kafka_sasl_ssl.ca),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=f"{user}-secret",
        enable_idempotence=True,
        acks="all",
    )


def taken_all(bootstrap: str, topics: Topics) -> None:
    """Wait until the intake writer's committed offsets reach the intake topic's ends as of
    now: every fact published so far recorded or refused."""
    ends = end_offsets(bootstrap, topics.intake)
    deadline = time.monotonic() + 120
    while True:  # each round trip to the broker paces the next look
        done = committed_offsets(bootstrap, intake_group(topics), topics.intake)
        if all((done.get(tp.partition) or 0) >= end for tp, end in ends.items()):
            return
        assert time.monotonic() < deadline, (done, ends)


@pytest.mark.parametrize("topics_made", [False, True], ids=["ledger-creates", "operator-made"])
def test_the_listed_acls_are_enough_for_the_ledger_and_a_publisher(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path, topics_made: bool
) -> None:
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    topics = Topics.of(settings.topic_prefix)
    env = as_ledger(kafka_sasl_ssl, settings)
    options = ("--topics-made",) if topics_made else ()
    writer = listed(env, f"User:{LEDGER_USER}", *options)
    assert all("Create" not in g["operations"] for g in writer) is topics_made
    granted(admin, f"User:{LEDGER_USER}", writer)
    granted(admin, f"User:{PUBLISHER_USER}", listed(env, f"User:{PUBLISHER_USER}", "--publisher"))
    if topics_made:  # by the operator, as a super user, as `kafka-topics --json` says
        printed = run_with(env, "kafka-topics", "--json")
        assert printed.returncode == 0, printed.stderr
        specs = orjson.loads(printed.stdout)["topics"]
        assert [t["name"] for t in specs] == [topics.intake, topics.ledger, topics.rejected]
        made = admin.create_topics(
            [
                NewTopic(
                    t["name"], t["partitions"], t["replication_factor"], topic_configs=t["configs"]
                )
                for t in specs
            ]
        )
        assert all(result["error_code"] == 0 for result in made["topics"]), made

    assert run_with(env, "init").returncode == 0
    fact = orjson.dumps(grant("acl-1", event_id="acl-g1")).decode()
    recorded = run_with(env, "record", stdin=fact)
    assert recorded.returncode == 0, recorded.stderr

    worker = start_with(env, "worker")
    try:
        assert worker.stdout is not None
        said = line_within(worker.stdout)
        assert said.startswith("worker: consuming"), said
        # A CRM's own client, with nothing but the publisher's ACL: a fact and a poison.
        crm = producer(kafka_sasl_ssl, PUBLISHER_USER)
        try:
            value = orjson.dumps(grant("acl-2", event_id="acl-g2"))
            crm.send(topics.intake, key=b"demo", value=value).get(timeout=60)
            crm.send(topics.intake, key=b"demo", value=b"{not json").get(timeout=60)
            # ... and no more: the ledger topic is the ledger's alone.
            with pytest.raises(TopicAuthorizationFailedError):
                crm.send(topics.ledger, value=b"{}").get(timeout=60)
        finally:
            crm.close()
        # `publish` as the ledger's principal: its producer, and its waits on the writer's
        # group offsets and the rejected topic.
        third = orjson.dumps(grant("acl-3", event_id="acl-g3")).decode()
        published = run_with(env, "publish", "--wait", "120", stdin=third)
        assert published.returncode == 0, published.stderr
        taken_all(kafka_sasl_ssl.plaintext, topics)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0

    # The HTTP service, as the same principal: its writer, its admin client's readiness
    # check and its own intake writer (the worker stopped: one writer at a time).
    served = settings_of(env)
    keys = ApiKeys(keys_path(served))
    key = keys.create("demo", {"publisher"})[1]
    keys.close()
    with TestClient(create_app(served)) as client:
        assert client.get("/readyz").status_code == 200
        # Readiness asked the controllers' quorum: the grant listed for it is enough.
        client.app.state.service.admin.describe_metadata_quorum()  # type: ignore[attr-defined]
        body = {k: v for k, v in grant("acl-4", event_id="acl-g4").items() if k != "tenant"}
        created = client.post("/v1/facts", json=body, headers={"Authorization": f"Bearer {key}"})
        assert created.status_code == 201, created.text

    asked = "acl-g1\nacl-g2\nacl-g3\nacl-g4\n"
    receipts = run_with(env, "receipts", "--tenant", "demo", stdin=asked)
    assert receipts.returncode == 0, receipts.stderr
    verified = run_with(env, "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("verify: OK"), verified.stderr
    consents = run_with(env, "consents", "acl-2", "--tenant", "demo", "--json")
    assert consents.returncode == 0, consents.stderr
    replayed = run_with(env, "replay", "--into", str(tmp_path / "inquiry"), "--json")
    assert replayed.returncode == 0, replayed.stderr
    # Its worker processes log in and read the topic as the ledger's principal too.
    split = run_with(env, "replay", "--into", str(tmp_path / "split"), "--workers", "2", "--json")
    assert split.returncode == 0, split.stderr
    assert orjson.loads(split.stdout) == {
        **orjson.loads(replayed.stdout),
        "into": str(tmp_path / "split" / "views.db"),
    }
    refused = read_committed(kafka_sasl_ssl.plaintext, topics.rejected)
    assert [orjson.loads(r.value)["code"] for r in refused] == ["invalid_json"]


@pytest.mark.parametrize("left_out", range(5), ids=["intake", "ledger", "rejected", "group", "id"])
def test_each_acl_left_out_is_said_in_one_line(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path, left_out: int
) -> None:
    """Every grant of the list is needed: without it `init` (or, for the group, the
    worker) exits 6 with one line naming what the cluster refused and where the list is,
    nothing written to the ledger topic. A refused transactional id read as fenced."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    env = as_ledger(kafka_sasl_ssl, settings)
    grants = listed(env, f"User:{LEDGER_USER}")
    assert len(grants) == 6 and grants[5]["resource_type"] == "cluster"  # readiness's
    granted(admin, f"User:{LEDGER_USER}", grants[:left_out] + grants[left_out + 1 :])
    out = run_with(env, "init")
    if grants[left_out]["resource_type"] == "group":
        assert out.returncode == 0, out.stderr
        worker = start_with(env, "worker")
        stdout, stderr = worker.communicate(timeout=120)
        out = type(out)(["worker"], worker.returncode, stdout, stderr)
    assert out.returncode == 6, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "consent-ledger kafka-acls" in out.stderr, out.stderr
    assert "refused this client the ACL Create" in out.stderr or (
        "refused this client an ACL" in out.stderr
    ), out.stderr
    assert "fenced" not in out.stderr
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    if grants[left_out]["resource_type"] == "group":
        return  # `init` wrote the demo tenant's policy; the worker wrote nothing
    if ledger_topic in admin.list_topics():
        assert read_committed(kafka_sasl_ssl.plaintext, ledger_topic) == []


def test_without_describe_on_the_cluster_the_service_is_ready_and_says_what_it_cannot_tell(
    kafka_sasl_ssl: SecuredBroker,
    admin: KafkaAdminClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one grant that writes do not need: an operator who granted the list of before
    (five grants) gets a ready service, and a warning that `/readyz` cannot tell a cluster
    whose controllers lost their quorum."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    env = as_ledger(kafka_sasl_ssl, settings)
    grants = listed(env, f"User:{LEDGER_USER}")
    granted(admin, f"User:{LEDGER_USER}", [g for g in grants if g["resource_type"] != "cluster"])
    assert run_with(env, "init").returncode == 0
    monkeypatch.setattr(readiness, "_refusal_logged", False)  # once a process: this test's
    with TestClient(create_app(settings_of(env))) as client:
        with caplog.at_level(logging.WARNING, logger=readiness.__name__):
            for _ in range(2):
                assert client.get("/readyz").status_code == 200
        with pytest.raises(ClusterAuthorizationFailedError):  # the question was refused
            client.app.state.service.admin.describe_metadata_quorum()  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if r.name == readiness.__name__]
    assert len(said) == 1 and "cannot tell" in said[0] and "kafka-acls" in said[0], said


def test_kafka_acls_prints_kafka_acls_commands_and_refuses_a_bad_principal(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "LEDGER_DATA_DIR": str(tmp_path), "LEDGER_TOPIC_PREFIX": "crm"}
    out = run_with(env, "kafka-acls", "--principal", "User:crm-service", "--publisher")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        "kafka-acls.sh --bootstrap-server BROKER:9092 --add --allow-principal "
        "User:crm-service --operation Write --topic crm.intake"
    )
    elsewhere = {**env, "KAFKA_BOOTSTRAP": "kafka-1:9093"}
    out = run_with(elsewhere, "kafka-acls", "--principal", "User:l")
    commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert commands[-2] == (
        "kafka-acls.sh --bootstrap-server kafka-1:9093 --add --allow-principal User:l "
        "--operation Write --transactional-id crm.ledger-writer-p --resource-pattern-type prefixed"
    )
    assert commands[-1] == (
        "kafka-acls.sh --bootstrap-server kafka-1:9093 --add --allow-principal User:l "
        "--operation Describe --cluster"
    )
    assert len(commands) == 6
    topics = run_with(elsewhere, "kafka-topics")
    assert topics.returncode == 0, topics.stderr
    assert topics.stdout.splitlines()[1] == (
        "kafka-topics.sh --bootstrap-server kafka-1:9093 --create --topic crm.ledger "
        "--partitions 3 --replication-factor 1 --config cleanup.policy=delete --config "
        "retention.ms=-1 --config retention.bytes=-1 --config min.insync.replicas=1 --config "
        "unclean.leader.election.enable=false --config max.message.bytes=2097152 --config "
        "message.timestamp.type=LogAppendTime"
    )
    for bad in ("ledger", "User:", "User:a b"):
        refused = run_with(env, "kafka-acls", "--principal", bad)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "kafka-acls: principal" in refused.stderr


def test_kafka_acls_apply_and_revoke_change_what_it_lists_where_the_ledger_may(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path
) -> None:
    """`--apply` creates exactly the listed ACLs, with the ledger's own principal, and ends
    once the cluster describes them: a publisher started at once may publish. `--revoke`
    deletes exactly those, the principal's others kept, and the publisher is refused from
    then on. Where the ledger's principal may not change ACLs, it says so in one line, and
    changes none."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.plaintext)  # a super user
    env = {**os.environ, **kafka_env(settings)}
    assert run_with(env, "init").returncode == 0
    principal = f"User:{PUBLISHER_USER}"
    grants = listed(env, principal, "--publisher")
    applied = run_with(env, "kafka-acls", "--principal", principal, "--publisher", "--apply")
    assert applied.returncode == 0, applied.stderr
    intake = Topics.of(settings.topic_prefix).intake
    assert applied.stdout == f"granted {principal}: Write on topic {intake}\n"
    held, _ = admin.describe_acls(acls_of(principal))
    assert sorted(map(_key, held)) == [(ResourceType.TOPIC, intake, PATTERN_LITERAL, WRITE)]
    assert [g["name"] for g in grants] == [intake]
    crm = producer(kafka_sasl_ssl, PUBLISHER_USER)
    try:
        crm.send(intake, key=b"demo", value=b"{}").get(timeout=60)
    finally:
        crm.close()
    again = run_with(
        env, "kafka-acls", "--principal", principal, "--publisher", "--apply", "--json"
    )
    assert again.returncode == 0, again.stderr  # held already: created again, the same
    assert orjson.loads(again.stdout) == {"principal": principal, "grants": grants, "applied": True}

    rejected = Topics.of(settings.topic_prefix).rejected
    granted(admin, principal, [{**grants[0], "name": rejected, "operations": ["Read"]}])
    revoked = run_with(env, "kafka-acls", "--principal", principal, "--publisher", "--revoke")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == f"revoked {principal}: Write on topic {intake}\n"
    held, _ = admin.describe_acls(acls_of(principal))
    read = ACLOperation.READ
    assert sorted(map(_key, held)) == [(ResourceType.TOPIC, rejected, PATTERN_LITERAL, read)]
    cut_off = producer(kafka_sasl_ssl, PUBLISHER_USER)
    try:
        with pytest.raises((TopicAuthorizationFailedError, ClusterAuthorizationFailedError)):
            cut_off.send(intake, key=b"demo", value=b"{}").get(timeout=60)
    finally:
        cut_off.close()
    gone = run_with(
        env, "kafka-acls", "--principal", principal, "--publisher", "--revoke", "--json"
    )
    assert gone.returncode == 0, gone.stderr  # none held: deleted again, the same
    assert orjson.loads(gone.stdout) == {"principal": principal, "grants": grants, "revoked": True}
    both = run_with(env, "kafka-acls", "--principal", principal, "--apply", "--revoke")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr

    # The restricted user, with no ACL at all (Alter least of all), on the SASL_SSL listener.
    secured = kafka_settings(tmp_path / "restricted", kafka_sasl_ssl.sasl_ssl)
    restricted = {
        **as_ledger(kafka_sasl_ssl, secured),
        "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
    }
    every = sum(len(g["operations"]) for g in listed(restricted, f"User:{LEDGER_USER}"))
    for change, done in (("apply", "created"), ("revoke", "deleted")):
        refused = run_with(
            restricted, "kafka-acls", "--principal", f"User:{LEDGER_USER}", f"--{change}"
        )
        assert refused.returncode == 6, refused.stderr
        assert refused.stderr == (
            f"consent-ledger: kafka-acls: the cluster {done} 0 of {every} ACLs and refused the "
            "rest (ClusterAuthorizationFailedError): the ledger's principal may not change ACLs "
            "(Alter on the cluster); an operator does it with the commands `kafka-acls` prints "
            f"without --{change}\n"
        )
    assert admin.describe_acls(acls_of(f"User:{LEDGER_USER}"))[0] == []
    embedded = {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "embedded")}
    nowhere = run_with(embedded, "kafka-acls", "--principal", principal, "--apply")
    assert nowhere.returncode == 2 and "needs LEDGER_BACKEND=kafka" in nowhere.stderr


def test_kafka_acls_apply_on_a_cluster_without_an_authorizer_says_there_is_nothing_to_grant(
    tmp_path: Path,
) -> None:
    """kafka-python's answer was "refused the rest (SecurityDisabledError)", exit 6 as if a
    retry could mend it."""
    with started_broker(tmp_path / "open", "authorizer.class.name=") as run_dir:
        bootstrap = (run_dir / "bootstrap").read_text().strip()
        env = {**os.environ, **kafka_env(kafka_settings(tmp_path / "data", bootstrap))}
        out = run_with(env, "kafka-acls", "--principal", "User:crm", "--publisher", "--apply")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "consent-ledger: kafka-acls: the cluster runs no authorizer (SecurityDisabledError): "
        "every client may do anything on it, so there is no ACL to create or delete; set the "
        "brokers' authorizer.class.name for ACLs to mean anything\n"
    )


def test_a_topic_whose_settings_the_cluster_does_not_describe_is_said_so(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path
) -> None:
    """kafka-python drops the error of a topic the broker would not describe: the ledger
    read it as a topic with no retention.ms and refused it for losing facts."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    env = as_ledger(kafka_sasl_ssl, settings)
    grants = listed(env, f"User:{LEDGER_USER}")
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    for g in grants:
        if g["name"] == ledger_topic:
            g["operations"] = [o for o in g["operations"] if o != "DescribeConfigs"]
    granted(admin, f"User:{LEDGER_USER}", grants)
    out = run_with(env, "init")
    assert out.returncode == 6, out.stderr
    assert out.stderr == (
        f"consent-ledger: kafka: the Kafka cluster gave no settings of topic {ledger_topic}: "
        "this client needs the ACL DescribeConfigs on it; `consent-ledger kafka-acls "
        "--principal User:NAME` lists what the ledger's principal needs\n"
    )


def test_a_worker_whose_transactional_id_is_revoked_waits_and_resumes_when_granted(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path
) -> None:
    """An ACL revoked under a running worker: its append is refused, which it says and
    retries (a refused transactional id used to read as fenced by another writer, and the
    worker exited 5 for good); granted again, it records the fact by itself."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    topics = Topics.of(settings.topic_prefix)
    env = as_ledger(kafka_sasl_ssl, settings)
    grants = listed(env, f"User:{LEDGER_USER}")
    granted(admin, f"User:{LEDGER_USER}", grants)
    assert run_with(env, "init").returncode == 0
    worker = start_with(env, "worker", "--no-projections")
    try:
        assert worker.stdout is not None and worker.stderr is not None
        assert line_within(worker.stdout).startswith("worker: consuming")
        the_id = [g for g in grants if g["resource_type"] == "transactional-id"]
        revoke(admin, ResourceType.TRANSACTIONAL_ID, the_id[0]["name"], prefixed=True)
        crm = KafkaProducer(bootstrap_servers=kafka_sasl_ssl.plaintext)
        value = orjson.dumps(grant("acl-late", event_id="acl-late"))
        crm.send(topics.intake, key=b"demo", value=value).get(timeout=60)
        crm.close()
        said = line_within(worker.stderr)
        assert "ledger unavailable (AccessRefused: " in said, said
        assert "TransactionalIdAuthorizationFailedError" in said and "kafka-acls" in said, said
        granted(admin, f"User:{LEDGER_USER}", the_id)
        taken_all(kafka_sasl_ssl.plaintext, topics)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0
    receipts = run_with(env, "receipts", "--tenant", "demo", stdin="acl-late\n")
    assert receipts.returncode == 0, receipts.stderr


def test_the_service_answers_an_acl_revoked_under_it_with_a_503_that_names_it(
    kafka_sasl_ssl: SecuredBroker, admin: KafkaAdminClient, tmp_path: Path
) -> None:
    """A publish whose transactional id was revoked answered 500 `internal_error`; now 503
    `kafka_access_refused` (nothing recorded, retry later), and once granted again the same
    service records. A topic the principal may no longer see made /readyz say
    `topics_missing`: the topic was there."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    rejected = Topics.of(settings.topic_prefix).rejected
    env = as_ledger(kafka_sasl_ssl, settings)
    grants = listed(env, f"User:{LEDGER_USER}")
    granted(admin, f"User:{LEDGER_USER}", grants)
    assert run_with(env, "init").returncode == 0
    served = settings_of(env)
    keys = ApiKeys(keys_path(served))
    auth = {"Authorization": f"Bearer {keys.create('demo', {'publisher'})[1]}"}
    keys.close()
    the_id = [g for g in grants if g["resource_type"] == "transactional-id"]
    with TestClient(create_app(served)) as client:
        assert client.get("/readyz").status_code == 200

        def publish(n: int) -> Any:
            body = grant(f"acl-h{n}", event_id=f"acl-h{n}")
            return client.post("/v1/facts", json=body, headers=auth)

        assert publish(0).status_code == 201
        revoke(admin, ResourceType.TRANSACTIONAL_ID, the_id[0]["name"], prefixed=True)
        # The broker's authorizer takes the change from its metadata a moment later.
        deadline = time.monotonic() + 30
        n = 1
        while (answer := publish(n)).status_code == 201:
            assert time.monotonic() < deadline, "the revoked transactional id still wrote"
            n += 1
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "kafka_access_refused", answer.text
        assert answer.headers["Retry-After"]
        # Not ready while no write can pass, though every topic is still described.
        unready = client.get("/readyz")
        assert unready.status_code == 503, unready.text
        assert unready.json()["code"] == "kafka_access_refused", unready.text
        assert "TransactionalIdAuthorizationFailedError" in unready.json()["detail"]
        granted(admin, f"User:{LEDGER_USER}", the_id)
        deadline = time.monotonic() + 30
        while (again := publish(n)).status_code != 201:
            assert again.json()["code"] == "kafka_access_refused", again.text
            assert time.monotonic() < deadline, "the granted transactional id was refused"
        assert client.get("/readyz").status_code == 200

        revoke(admin, ResourceType.TOPIC, rejected, prefixed=False)
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "the revoked topic was still described"
        assert ready.status_code == 503, ready.text
        assert ready.json()["code"] == "kafka_access_refused", ready.text
        assert ready.json()["detail"].startswith(
            f"the Kafka cluster refused this client the ACLs of topics {rejected}; "
        )


def revoke(admin: KafkaAdminClient, kind: ResourceType, name: str, *, prefixed: bool) -> None:
    pattern = ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL
    deleted = admin.delete_acls(
        [acls_of(f"User:{LEDGER_USER}", ResourcePatternFilter(kind, name, pattern))]
    )
    assert deleted[0][1], deleted
    gone = {_key(acl) for acl in deleted[0][1]}
    in_force(admin, f"User:{LEDGER_USER}", lambda held: not gone & held)


class _Stop:
    """The worker's stop event, as `follow_views` uses it: each pause it asks for is kept,
    and the sixth ends the loop."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def is_set(self) -> bool:
        return len(self.pauses) >= 6

    def wait(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        return self.is_set()


class _RefusedViews:
    """Views whose first five rounds the cluster refuses, then up to date."""

    def __init__(self) -> None:
        self.rounds = 0

    def refresh(self) -> int:
        self.rounds += 1
        if self.rounds <= 5:
            raise TopicAuthorizationFailedError({"crm.ledger"})
        return 0


def test_the_workers_views_say_a_refused_acl_and_back_off_while_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logged twice a second as `projection round failed (TopicAuthorizationFailedError)`
    for as long as the ACL stayed revoked; now each round's line says which ACL and where the
    list is, and the rounds back off to every 5 s, back to the idle poll once one passes."""
    from ledger.cli.service import follow_views

    stop = _Stop()
    with caplog.at_level("ERROR", logger="consent_ledger.projections"):
        follow_views(_RefusedViews(), stop, 0.5)
    assert stop.pauses == [0.5, 1.0, 2.0, 4.0, 5.0, 0.5]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 5
    assert said[0] == (
        "projection round failed (the Kafka cluster refused this client an ACL "
        "(TopicAuthorizationFailedError: {'crm.ledger'}): `consent-ledger kafka-acls "
        "--principal User:NAME` lists what the ledger's principal needs)"
    )
