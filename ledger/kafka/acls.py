"""The Kafka ACLs that the ledger's principal, and a publishing service's, need on a cluster
with an authorizer, and what a refusal of one of them is said as.

A cluster run for personal data grants each principal only what it uses: the ledger writes
the ledger topic, a CRM publishes to the intake topic and nothing more. The lists here are
the ones the tests grant on a broker with Kafka's `StandardAuthorizer`
(`tests/test_kafka_acls.py`), and `consent-ledger kafka-acls` prints them as
`kafka-acls.sh` commands, so an operator grants what was tested rather than what a page
says. Kafka's own rules keep them short: Read and Write imply Describe, and a producer's
Write on any topic covers the idempotent producer's id (KIP-679, brokers from 2.8).

This module imports nothing of kafka-python: `kafka-acls` prints in any mode, and the CLI
names a refusal without importing Kafka in embedded mode.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from ledger.kafka.names import Topics, intake_group, transactional_id_prefix

Resource = Literal["topic", "group", "transactional-id", "cluster"]

# The name Kafka gives the one cluster resource (`kafka-acls.sh --cluster`).
CLUSTER = "kafka-cluster"

# How every refusal of an ACL ends: where the operator finds what to grant.
WHERE_LISTED = (
    "`consent-ledger kafka-acls --principal User:NAME` lists what the ledger's principal needs"
)


@dataclass(frozen=True)
class Grant:
    """One resource (or every resource whose name begins with `name`, if `prefixed`) and
    the operations allowed on it, in Kafka's names (`kafka-acls.sh --operation`)."""

    resource: Resource
    name: str
    prefixed: bool
    operations: tuple[str, ...]
    why: str

    def as_json(self) -> dict[str, object]:
        return {
            "resource_type": self.resource,
            "name": self.name,
            "pattern": "prefixed" if self.prefixed else "literal",
            "operations": list(self.operations),
            "why": self.why,
        }


def writer_grants(prefix: str, *, create_topics: bool = True) -> list[Grant]:
    """What `serve`, `worker` and every CLI command need: the writer, the intake writer,
    the readers and `publish`. Without `create_topics` the operator made the three topics
    (with the settings `ledger.kafka.topics` checks) and the ledger only checks them."""
    topics = Topics.of(prefix)
    create = ("Create",) if create_topics else ()
    made = "created at start if missing, " if create_topics else ""
    return [
        Grant(
            "topic",
            topics.intake,
            False,
            (*create, "Read", "Write", "DescribeConfigs"),
            f"{made}its settings checked; the intake writer reads it; `publish` writes it",
        ),
        Grant(
            "topic",
            topics.ledger,
            False,
            (*create, "Read", "Write", "DescribeConfigs"),
            f"the log of record: {made}its retention checked; written in transactions, read "
            "by every reader",
        ),
        Grant(
            "topic",
            topics.rejected,
            False,
            (*create, "Read", "Write", "DescribeConfigs"),
            f"{made}its retention checked; refused facts written with the ledger's "
            "transaction; read by `publish`, `receipts` and the intake writer's restart",
        ),
        Grant(
            "group",
            intake_group(topics),
            False,
            ("Read",),
            "the intake writer's consumer group: its offsets commit in the ledger's "
            "transaction; `publish` reads them",
        ),
        Grant(
            "transactional-id",
            transactional_id_prefix(topics),
            True,
            ("Write",),
            "the writer's transactional id, one per set of ledger partitions it owns",
        ),
        Grant(
            "cluster",
            CLUSTER,
            False,
            ("Describe",),
            "/readyz, and a write waiting for its answer, ask whether the controllers have a "
            "quorum (without it neither can tell a cluster that lost its quorum: a write then "
            "waits its whole 30 s)",
        ),
    ]


def publisher_grants(prefix: str) -> list[Grant]:
    """What a service that publishes facts to the intake topic with a Kafka client of its
    own needs (the ledger answers it through the rejected topic, which it need not read)."""
    return [
        Grant(
            "topic",
            Topics.of(prefix).intake,
            False,
            ("Write",),
            "publishing facts; covers an idempotent producer's id too",
        )
    ]


_OPTION: dict[Resource, str] = {
    "topic": "--topic",
    "group": "--group",
    "transactional-id": "--transactional-id",
    "cluster": "--cluster",
}


def kafka_acls_commands(principal: str, grants: list[Grant], bootstrap: str) -> list[str]:
    """One `kafka-acls.sh --add` command a grant, quoted for a POSIX shell."""
    lines = []
    for grant in grants:
        words = ["kafka-acls.sh", "--bootstrap-server", bootstrap, "--add"]
        words += ["--allow-principal", principal]
        for operation in grant.operations:
            words += ["--operation", operation]
        words += [_OPTION[grant.resource]]
        if grant.resource != "cluster":  # the one cluster resource has no name to give
            words.append(grant.name)
        if grant.prefixed:
            words += ["--resource-pattern-type", "prefixed"]
        lines.append(shlex.join(words))
    return lines


def principal_error(principal: str) -> str | None:
    """Why `principal` is not one kafka-acls.sh takes (`Type:name`, as `User:ledger`)."""
    kind, colon, name = principal.partition(":")
    if not colon or not kind or not name:
        return f"principal {principal!r} is not of the form Type:name (for example User:ledger)"
    if any(c.isspace() for c in principal):
        return f"principal {principal!r} holds white space"
    return None


def refused_access(error: BaseException) -> str | None:
    """If `error`, or an error it was raised from, is the cluster refusing this client an
    ACL: one line saying so and where the list is; otherwise None.

    kafka-python raises the refusal from wherever the request was (a consumer's poll, a
    producer's transaction, an admin call), and the ledger wraps some of them; its message
    names the resource (a topic, the group) and the error, never a record's values.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {(c.__module__, c.__name__) for c in type(current).__mro__}
        if ("kafka.errors", "AuthorizationError") in names:
            detail = _detail(current)
            return f"the Kafka cluster refused this client an ACL ({detail}): {WHERE_LISTED}"
        current = current.__cause__ or current.__context__
    return None


def _detail(error: BaseException) -> str:
    """The class name, then what kafka-python said besides its "[Error N] Class" prefix."""
    name = type(error).__name__
    said = str(error).split(f"{name}", 1)[-1].lstrip(": ").strip()
    return f"{name}: {said}" if said else name
