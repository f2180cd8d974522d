"""The three topics of Kafka mode, created with their settings or checked when they exist.

The ledger topic is the log of record: a topic that compacts or expires records would
silently destroy the evidence the ledger exists to keep, so such a topic is refused at start
rather than written to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import (
    BrokerResponseError,
    KafkaConnectionError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)

from ledger.envelope import MAX_FACT_BYTES
from ledger.kafka import reachable
from ledger.kafka.acls import WHERE_LISTED
from ledger.kafka.clients import AdminClient, last_bootstrap_failure, secured
from ledger.kafka.names import Topics
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import BrokerAway, ReadTimedOut, bootstrapped
from ledger.settings import Settings

# How long one attempt to reach the brokers waits for the first to answer. kafka-python's
# default is 30 s; the long-running processes try again (see ledger.cli.service), and a
# one-shot command says so sooner.
BOOTSTRAP_TIMEOUT_MS = 10_000


class TopicRefused(RuntimeError):
    """An existing topic's settings would lose or mislay ledger records."""


class RecordsLost(TopicRefused):
    """The ledger topic lost records (deleted, or the topic made again): the log of record
    was altered, which `verify` reports as such (exit 4).

    `partition` and `offset` place the first record lost, so that `verify --json` names it
    as it names any broken record: by the place Kafka's own tools read.
    """

    def __init__(self, message: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.partition = partition
        self.offset = offset

    def __reduce__(self) -> tuple[type[RecordsLost], tuple[str, int, int]]:
        # Whole across a process's pipe (the HTTP writer process's errors are pickled):
        # by its `args` alone it would be made again without its place.
        return type(self), (str(self), self.partition, self.offset)


class BrokersUnreachable(RuntimeError):
    """No broker of KAFKA_BOOTSTRAP answered: the cluster is down, starting, or misnamed.

    Nothing about the ledger is wrong; the same command works once a broker answers. Said in
    one line, naming the addresses (configuration, never personal data), instead of the
    traceback of the client library's timeout.
    """

    def __init__(self, bootstrap: str, error: Exception, when: str = "") -> None:
        when = when or f"within {BOOTSTRAP_TIMEOUT_MS // 1000} s"
        # A broker that answered and refused (SASL credentials, TLS trust) is named too.
        failed = last_bootstrap_failure(within_s=BOOTSTRAP_TIMEOUT_MS / 1000 + 5)
        super().__init__(
            f"no Kafka broker answered at {bootstrap} (KAFKA_BOOTSTRAP) {when} "
            f"({type(error).__name__}): is the cluster up?"
            + (f" The last connection failed: {failed}" if failed else "")
        )
        self.bootstrap = bootstrap


def admin_client(settings: Settings) -> KafkaAdminClient:
    """An admin client that has reached a broker, or `BrokersUnreachable`: made a step at a
    time, so that a broker whose addresses refuse connections is said within seconds
    (`ledger.kafka.reachable`), not at the timeout."""
    bootstrap = secured(settings)
    try:
        client: KafkaAdminClient = bootstrapped(
            lambda ms: AdminClient(
                bootstrap_servers=bootstrap, client_id="consent-ledger", bootstrap_timeout_ms=ms
            ),
            timeout_s=BOOTSTRAP_TIMEOUT_MS / 1000,
            away=BrokerWatch(bootstrap),
        )
    except BrokerAway as error:
        refused = f"and its addresses refused connections for {reachable.REFUSED_FOR_S:g} s"
        raise BrokersUnreachable(bootstrap, error, refused) from None
    except (ReadTimedOut, KafkaConnectionError) as error:
        raise BrokersUnreachable(bootstrap, error) from None
    return client


# `max.message.bytes` of the topics the ledger creates. A fact may be
# 1 MiB as published (ledger.envelope.MAX_FACT_BYTES), and its ledger record is larger (its
# sealed personal data in base64, the envelope the ledger adds); a rejected record carries
# the original bytes in base64. Kafka's default (1 MiB and 12 bytes) refused both.
RECORD_LIMIT = 2 * 1024 * 1024
# Kafka's default `max.message.bytes`, for a topic that does not say.
KAFKA_DEFAULT_RECORD_LIMIT = 1024 * 1024 + 12
# What an intake topic must take for the envelope's largest fact to be published: the fact,
# its key (tenant and sid) and a record batch's header, with room to spare.
INTAKE_RECORD_NEEDED = MAX_FACT_BYTES + 1024
# The most of a refused record's bytes its rejected record carries (ledger.kafka.intake), and
# the smallest `max.message.bytes` a rejected topic may have: that much in base64, with the
# reasons, key and headers. Kafka's default takes it.
ORIGINAL_KEPT = 512 * 1024
REJECTED_RECORD_MAX = ORIGINAL_KEPT * 4 // 3 + 16 * 1024


# Each topic stamps its records with the broker's clock (LogAppendTime), not the producer's:
# since Kafka 4.0 a broker refuses a record stamped more than an hour ahead of its own clock
# (`message.timestamp.after.max.ms`), so a writer host whose clock ran an hour fast had every
# append refused and retried for ever, and a publisher's record stamped in the past counted
# its retention from then. The ledger reads no Kafka timestamp: `recorded_at` is its own.
TIMESTAMPS = {"message.timestamp.type": "LogAppendTime"}


def topic_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    topics = Topics.of(settings.topic_prefix)
    replicas = settings.replication
    return {
        topics.intake: {
            "num_partitions": settings.partitions,
            "replication_factor": replicas,
            "configs": {
                "min.insync.replicas": str(settings.min_insync),
                "max.message.bytes": str(RECORD_LIMIT),
                **TIMESTAMPS,
            },
        },
        topics.ledger: {
            "num_partitions": settings.partitions,
            "replication_factor": replicas,
            "configs": {
                "cleanup.policy": "delete",
                "retention.ms": "-1",
                "retention.bytes": "-1",
                "min.insync.replicas": str(settings.min_insync),
                "unclean.leader.election.enable": "false",
                "max.message.bytes": str(RECORD_LIMIT),
                **TIMESTAMPS,
            },
        },
        topics.rejected: {
            "num_partitions": settings.partitions,
            "replication_factor": replicas,
            "configs": {
                "cleanup.policy": "delete",
                "retention.ms": str(settings.rejected_retention_ms),
                "min.insync.replicas": str(settings.min_insync),
                "max.message.bytes": str(RECORD_LIMIT),
                **TIMESTAMPS,
            },
        },
    }


class Layout(NamedTuple):
    topics: Topics
    partitions: int  # of the ledger topic
    record_limit: int  # the ledger topic's `max.message.bytes`
    # The intake topic's: it may be another team's, taking less than the envelope's largest
    # fact (ledger.kafka.publish refuses a larger record before sending it).
    intake_record_limit: int


def ensure_topics(settings: Settings) -> Topics:
    """Create missing topics; refuse a ledger topic that would not keep every record forever."""
    return ledger_layout(settings).topics


def ledger_layout(settings: Settings) -> Layout:
    """The topics, created or checked as `ensure_topics` does, the ledger's partitions and
    the largest record its topic takes."""
    topics = Topics.of(settings.topic_prefix)
    admin = admin_client(settings)
    try:
        specs = topic_specs(settings)
        # The broker's answer is read before waiting for the topics to appear: a topic it
        # refused (a name colliding with another once '.' and '_' are taken alike) never
        # appears, and the wait ran out as if no broker had answered.
        created = admin.create_topics(specs, raise_errors=False, wait_for_metadata=False)
        for result in created["topics"]:
            if result["error_code"] in (0, TopicAlreadyExistsError.errno):
                continue
            if result["error_code"] == TopicAuthorizationFailedError.errno:
                # A principal without the ACL Create is refused even a topic that exists: one
                # the operator made is checked below like any other.
                if _visible(admin, result["name"]):
                    continue
                raise TopicRefused(
                    f"cannot create topic {result['name']}: the Kafka cluster refused this "
                    "client the ACL Create for it, and it does not exist or this client may "
                    f"not see it; {WHERE_LISTED}"
                )
            raise TopicRefused(f"cannot create topic {result['name']}: {result['error_message']}")
        admin.wait_for_topics(list(specs))
        record_limit = check_ledger_topic(admin, topics.ledger, settings)
        intake_limit = check_intake_topic(admin, topics.intake)
        check_rejected_topic(admin, topics.rejected, settings)
        partitions = partition_count(admin, topics.ledger)
    except (KafkaTimeoutError, KafkaConnectionError) as error:
        # The cluster went away between the first answer and these requests: the same
        # "try again" as no answer at all, not the client library's traceback.
        raise BrokersUnreachable(
            settings.bootstrap(), error, "while the topics were created or checked"
        ) from None
    finally:
        admin.close()
    return Layout(topics, partitions, record_limit, intake_limit)


def check_ledger_topic(admin: KafkaAdminClient, name: str, settings: Settings) -> int:
    """Refuse a ledger topic that would lose facts; the largest record it takes."""
    configs = _config(admin, name)
    check_copies(admin, name, configs, settings)

    def value(key: str) -> str:
        return configs.get(key, "")

    policy = {p.strip() for p in value("cleanup.policy").split(",")}
    if "compact" in policy:
        raise TopicRefused(
            f"topic {name} has cleanup.policy={value('cleanup.policy')}: compaction would drop "
            "facts of the log of record; use cleanup.policy=delete with retention.ms=-1"
        )
    if value("retention.ms") != "-1":
        raise TopicRefused(
            f"topic {name} has retention.ms={value('retention.ms')}: facts would expire from "
            "the log of record; set retention.ms=-1"
        )
    if value("retention.bytes") not in ("-1", ""):
        raise TopicRefused(
            f"topic {name} has retention.bytes={value('retention.bytes')}: facts would be "
            "deleted from the log of record; set retention.bytes=-1"
        )
    return int(value("max.message.bytes") or KAFKA_DEFAULT_RECORD_LIMIT)


def check_rejected_topic(admin: KafkaAdminClient, name: str, settings: Settings) -> None:
    """Refuse a rejected topic that keeps its records for less time, or in fewer copies,
    than the settings say: a refused record is only there, and an operator reading the
    rejections of last week must find them (one made by hand was never checked)."""
    configs = _config(admin, name)
    check_copies(admin, name, configs, settings)
    kept_ms = int(configs.get("retention.ms") or "-1")
    if kept_ms != -1 and kept_ms < settings.rejected_retention_ms:
        raise TopicRefused(
            f"topic {name} has retention.ms={kept_ms}, but LEDGER_REJECTED_RETENTION_MS is "
            f"{settings.rejected_retention_ms}: refused records would be deleted sooner than "
            "configured; raise its retention.ms or set LEDGER_REJECTED_RETENTION_MS to it"
        )
    if configs.get("retention.bytes", "-1") not in ("-1", ""):
        raise TopicRefused(
            f"topic {name} has retention.bytes={configs['retention.bytes']}: refused records "
            "would be deleted by size, not after LEDGER_REJECTED_RETENTION_MS; set it to -1"
        )
    takes = int(configs.get("max.message.bytes") or KAFKA_DEFAULT_RECORD_LIMIT)
    if takes < REJECTED_RECORD_MAX:
        # A rejected record it cannot take fails the writer's whole transaction, retried
        # for ever with the intake partition stopped behind it.
        raise TopicRefused(
            f"topic {name} has max.message.bytes={takes}: a rejected record may be "
            f"{REJECTED_RECORD_MAX} bytes; raise it to at least that"
        )


def check_copies(
    admin: KafkaAdminClient, name: str, configs: Mapping[str, str], settings: Settings
) -> None:
    refusal = durability_refusal(name, configs, fewest_replicas(described(admin, name)), settings)
    if refusal is not None:
        raise TopicRefused(refusal)


def durability_refusal(
    name: str, configs: Mapping[str, str], replicas: int, settings: Settings
) -> str | None:
    """Why the topic (the log of record, or the rejected records) would keep fewer copies
    of an acknowledged record than the settings (and its own configuration) say, or None.

    The ledger topic was checked for compaction and retention only: one made by hand, or
    before LEDGER_REPLICATION and LEDGER_MIN_INSYNC were raised, ran with whatever copies it
    had. And Kafka (since 3.7) takes min(`min.insync.replicas`, replica count) as the copies
    an `acks=all` write waits for, so a topic stating 2 with one replica acknowledged every
    fact with one copy and said nothing. Unclean leader election lets a replica that missed
    acknowledged facts become leader, which drops them from the log for good.
    """
    if configs.get("unclean.leader.election.enable", "false") == "true":
        return (
            f"topic {name} has unclean.leader.election.enable=true: a replica that missed "
            "acknowledged records could become leader and drop them for good; set it to false"
        )
    if replicas < settings.replication:
        return (
            f"topic {name} has {replicas} replica(s) of a partition, but LEDGER_REPLICATION "
            f"is {settings.replication}: add replicas (kafka-reassign-partitions) or set "
            "LEDGER_REPLICATION to what the topic has"
        )
    stated = int(configs.get("min.insync.replicas") or "1")
    if stated > replicas:
        return (
            f"topic {name} has min.insync.replicas={stated} but {replicas} replica(s) of a "
            f"partition: Kafka acknowledges a write once {replicas} hold it, not {stated}; "
            "add replicas or lower min.insync.replicas to match"
        )
    if stated < settings.min_insync:
        return (
            f"topic {name} has min.insync.replicas={stated}, but LEDGER_MIN_INSYNC is "
            f"{settings.min_insync}: a record would be acknowledged with fewer copies; raise it "
            "(kafka-configs --alter --add-config min.insync.replicas=...) or set "
            "LEDGER_MIN_INSYNC to the topic's"
        )
    return None


# How long a topic (its settings, its partitions) is asked of again while the broker asked
# does not know the topic yet. Each broker learns of a topic from the controller's metadata
# in its own time: on the compose file's three brokers, a broker asked for the settings of a
# topic made a moment before answered UNKNOWN_TOPIC_OR_PARTITION 8 times in 10 (a throwaway
# script, 2026-12-06), and `consent-ledger init` failed, saying an ACL was missing.
SETTLE_S = 10.0
SETTLE_STEP_S = 0.05


def described(admin: KafkaAdminClient, name: str, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """The topic as the brokers describe it (its id, its partitions and their replicas).

    A topic just made is not in every broker's metadata at once: `wait_for_topics` saw it
    on the broker it asked, and the next question may go to another that has not heard of
    it yet (a three-broker cluster refused its own new ledger topic so, once in CI). So the
    question is asked again, as `_config` does, for up to `settle_s`.
    """
    deadline = time.monotonic() + settle_s
    while True:
        for topic in admin.describe_topics([name]):
            if topic.get("topic", topic.get("name")) == name and topic["partitions"]:
                return dict(topic)
        if time.monotonic() >= deadline:
            raise TopicRefused(f"topic {name} does not exist")
        time.sleep(SETTLE_STEP_S)  # the broker's metadata, asked again: a condition poll


def _visible(admin: KafkaAdminClient, name: str) -> bool:
    """Whether the topic exists and this client may describe it."""
    try:
        described(admin, name, settle_s=0.0)
    except (TopicRefused, BrokerResponseError):
        return False
    return True


def fewest_replicas(topic: Mapping[str, Any]) -> int:
    """The replica count of the topic's least replicated partition (`described`)."""
    return min(len(p["replica_nodes"]) for p in topic["partitions"])


def check_intake_topic(admin: KafkaAdminClient, name: str) -> int:
    """Refuse an intake topic that compacts: it would drop published facts before they are
    read. The largest record it takes.

    Publishers key one person's facts alike (so they stay in order): compaction keeps only
    the last record of each key, so a person's grant published before their withdrawal
    could be gone before the writer read it (while it is stopped, or behind), after the
    broker had acknowledged it to the publisher. Retention is the operator's to choose:
    records are read within moments while the writer runs.
    """
    configs = _config(admin, name)
    policy = configs.get("cleanup.policy", "")
    if "compact" in {p.strip() for p in policy.split(",")}:
        raise TopicRefused(
            f"topic {name} has cleanup.policy={policy}: compaction keeps only the last of a "
            "person's facts published under one key and could drop the others before they "
            "are read; use cleanup.policy=delete"
        )
    return int(configs.get("max.message.bytes") or KAFKA_DEFAULT_RECORD_LIMIT)


def _config(admin: KafkaAdminClient, name: str) -> dict[str, str]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        error, configs = _described_configs(admin, name)
        if error is not UnknownTopicOrPartitionError or time.monotonic() >= deadline:
            break
        time.sleep(SETTLE_STEP_S)  # the broker's metadata, asked again: a condition poll
    if error is TopicAuthorizationFailedError:
        raise TopicRefused(
            f"the Kafka cluster gave no settings of topic {name}: this client needs the ACL "
            f"DescribeConfigs on it; {WHERE_LISTED}"
        )
    if error is not None:
        raise TopicRefused(f"the Kafka cluster gave no settings of topic {name} ({error.__name__})")
    return {key: str(entry.get("value", "")) for key, entry in configs.items()}


def _described_configs(
    admin: KafkaAdminClient, name: str
) -> tuple[type[BrokerResponseError] | None, dict[str, Any]]:
    """The broker's error for the topic's settings (None if it gave them), and the settings.

    kafka-python 3.0.12's `describe_configs` drops a resource's error, so that a refused
    ACL, a topic the broker asked has not heard of yet and any other refusal all read as a
    topic without settings; its own request and answer are used here to tell them apart.
    """
    request = admin._describe_configs_request(
        [ConfigResource(ConfigResourceType.TOPIC, name)], False
    )

    async def send() -> Any:
        return await admin._manager.send(request)

    response = admin._manager.run(send)
    for result in response.results:
        if result.resource_name == name and result.error_code:
            return for_code(result.error_code), {}
    described = admin._describe_configs_process_responses([response], "all")
    configs: dict[str, Any] = described.get("topic", {}).get(name, {})
    if "cleanup.policy" not in configs:  # every topic has one: not an answer
        return BrokerResponseError, {}
    return None, configs


class IntakeTopic(NamedTuple):
    topic_id: str  # "" from a broker too old to give one
    warnings: list[str]


def intake_topic(settings: Settings, topics: Topics) -> IntakeTopic:
    """The intake topic's id, and what in its copies or retention the writer warns of.

    The id tells this topic from an earlier one of the same name, deleted and made again
    (whose offsets start over). The intake topic may be another team's, with its own
    replication, so it is not refused as the ledger's own topics are; but until the writer
    reads them its records are the only copy of facts their publishers were told Kafka had,
    and a rejected record that expires before the intake record it answers no longer tells a
    writer whose offsets expired that it was read (ledger.kafka.intake, `read_positions`).
    """
    admin = admin_client(settings)
    try:
        intake = described(admin, topics.intake)
        replicas = fewest_replicas(intake)
        configs = _config(admin, topics.intake)
        rejected_ms = int(_config(admin, topics.rejected).get("retention.ms") or "-1")
    except (KafkaTimeoutError, KafkaConnectionError) as error:
        raise BrokersUnreachable(settings.bootstrap(), error, "while a topic was read") from None
    finally:
        admin.close()
    warnings = []
    fewer = durability_refusal(topics.intake, configs, replicas, settings)
    if fewer is not None:
        warnings.append(f"published facts wait in the intake topic until read: {fewer}")
    intake_ms = int(configs.get("retention.ms") or "-1")
    if rejected_ms != -1 and (intake_ms == -1 or intake_ms > rejected_ms):
        warnings.append(
            f"topic {topics.intake} keeps records longer (retention.ms={intake_ms}) than "
            f"topic {topics.rejected} keeps the rejections of them ({rejected_ms}): a writer "
            "whose group offsets expired could read again a record whose rejection is gone "
            "and answer it anew (refused twice, or recorded if the ledger changed since); "
            "keep the rejected topic's retention at least the intake's"
        )
    takes = int(configs.get("max.message.bytes") or KAFKA_DEFAULT_RECORD_LIMIT)
    if takes < INTAKE_RECORD_NEEDED:
        warnings.append(
            f"topic {topics.intake} takes records of at most {takes} bytes "
            f"(max.message.bytes), less than the envelope's largest fact ({MAX_FACT_BYTES} "
            "bytes) with its key: the broker refuses a larger fact to its publisher, so it "
            "never reaches the ledger or the rejected topic (`publish` answers it "
            f"`oversize`); set its max.message.bytes to {RECORD_LIMIT}, as the ledger makes it"
        )
    return IntakeTopic(str(intake.get("topic_id") or ""), warnings)


def partition_count(admin: KafkaAdminClient, name: str) -> int:
    return len(described(admin, name)["partitions"])
