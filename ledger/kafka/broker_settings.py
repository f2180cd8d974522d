"""What in the brokers' own settings the ledger's writer warns of when it starts.

A commit returns once the transaction coordinator has logged it. The coordinator then writes
its markers on each partition's leader, and the writer's next transaction waits until all of
them are written (`CONCURRENT_TRANSACTIONS`, retried). A leader that hangs as they reach it
keeps them until the coordinator's wait for its answer runs out: the brokers'
`request.timeout.ms`, 30 s by default. The controller fences the hung broker and moves its
partitions much sooner (`broker.session.timeout.ms`, 9 s by default), but that does not end
the wait. On the compose cluster the writer, and every publish queued behind it, waited
until the broker came back (deploy/CONFIG.md, "Clients"); the compose file's brokers set
5 s. The setting is read when a broker starts, and the ledger cannot change it, so the
writer says so, once, naming the brokers.
"""

from __future__ import annotations

from collections.abc import Mapping

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError

# Above this, a hung leader holds the writer well past the fence: the next commit came
# 17.8 to 19.0 s into a hang with 10 s, 9.4 to 13.8 s with 5 s, and as the broker came back
# with 30 s (a throwaway probe on the compose cluster, 2026-12-07).
REQUEST_TIMEOUT_WARN_MS = 10_000


def request_timeouts(admin: KafkaAdminClient) -> dict[str, int]:
    """Each broker's `request.timeout.ms`, by broker id; a broker that does not say it is
    left out.

    A principal refused `DescribeConfigs` on the cluster gets no setting: kafka-python
    3.0.12 drops the refusal and answers an empty set of settings for the broker."""
    brokers = [str(broker["broker_id"]) for broker in admin.describe_cluster()["brokers"]]
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, b, ["request.timeout.ms"]) for b in brokers],
        config_filter="all",
    )
    timeouts = {}
    for broker, settings in (described.get("broker") or {}).items():
        value = (settings.get("request.timeout.ms") or {}).get("value")
        if isinstance(value, str) and value.isdigit():
            timeouts[str(broker)] = int(value)
    return timeouts


def broker_warnings(admin: KafkaAdminClient) -> list[str]:
    """The warning for the brokers whose `request.timeout.ms` is above
    `REQUEST_TIMEOUT_WARN_MS`, if any. A question the cluster does not answer warns of
    nothing: this is advice, and the writer starts all the same."""
    try:
        timeouts = request_timeouts(admin)
    except KafkaError:
        return []
    return request_timeout_warnings(timeouts)


def request_timeout_warnings(timeouts: Mapping[str, int]) -> list[str]:
    """A one-broker cluster writes its markers on itself, and its hang stops the writer
    whatever the setting: only a cluster of several brokers is warned of."""
    slow = {broker: ms for broker, ms in timeouts.items() if ms > REQUEST_TIMEOUT_WARN_MS}
    if len(timeouts) < 2 or not slow:
        return []
    listed = ", ".join(f"{broker} ({ms} ms)" for broker, ms in sorted(slow.items()))
    return [
        f"Kafka brokers {listed} wait that long for each other's answers "
        "(request.timeout.ms): a broker that hangs as a commit's markers reach it holds the "
        "ledger's next transaction, and every publish behind it, for that long, although "
        "the cluster fences it sooner; set request.timeout.ms=5000 in each broker's "
        "settings, as deploy/compose.yaml does (deploy/CONFIG.md, Clients)"
    ]
