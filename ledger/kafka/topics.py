"""The three topics of Kafka mode, created with their settings or checked when they exist.

The ledger topic is the log of record: a topic that compacts or expires records would
silently destroy the evidence the ledger exists to keep, so such a topic is refused at start
rather than written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from ledger.settings import Settings


class TopicRefused(RuntimeError):
    """An existing topic's settings would lose or mislay ledger records."""


@dataclass(frozen=True)
class Topics:
    intake: str
    ledger: str
    rejected: str

    @classmethod
    def of(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.intake", f"{prefix}.ledger", f"{prefix}.rejected")


def topic_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    topics = Topics.of(settings.topic_prefix)
    replicas = settings.replication
    return {
        topics.intake: {
            "num_partitions": settings.partitions,
            "replication_factor": replicas,
            "configs": {"min.insync.replicas": str(settings.min_insync)},
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
            },
        },
        topics.rejected: {
            "num_partitions": settings.partitions,
            "replication_factor": replicas,
            "configs": {
                "cleanup.policy": "delete",
                "retention.ms": str(settings.rejected_retention_ms),
                "min.insync.replicas": str(settings.min_insync),
            },
        },
    }


def ensure_topics(settings: Settings) -> Topics:
    """Create missing topics; refuse a ledger topic that would not keep every record forever."""
    topics = Topics.of(settings.topic_prefix)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap(), client_id="consent-ledger")
    try:
        created = admin.create_topics(
            topic_specs(settings), raise_errors=False, wait_for_metadata=True
        )
        for result in created["topics"]:
            if result["error_code"] not in (0, 36):  # 36: the topic already exists
                raise TopicRefused(
                    f"cannot create topic {result['name']}: {result['error_message']}"
                )
        check_ledger_topic(admin, topics.ledger)
    finally:
        admin.close()
    return topics


def check_ledger_topic(admin: KafkaAdminClient, name: str) -> None:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
    )
    configs = described["topic"][name]

    def value(key: str) -> str:
        return str(configs.get(key, {}).get("value", ""))

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


def partition_count(admin: KafkaAdminClient, name: str) -> int:
    for topic in admin.describe_topics([name]):
        if topic.get("topic", topic.get("name")) == name:
            return len(topic["partitions"])
    raise TopicRefused(f"topic {name} does not exist")
