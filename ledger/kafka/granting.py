"""`kafka-acls --apply`: the ACLs of `ledger.kafka.acls` created by the ledger's own admin
client, for a deployment where its principal may create them (the compose file's, where it
is a super user on the compose network), so that an operator runs one command where they
copied `kafka-acls.sh` lines into a broker's container.

The command ends only once the cluster describes every ACL it created: the controller
commits a change before it answers, and a broker's authorizer applies it from the metadata
log a moment later, so a publisher started at once could meet the ACLs of before.
"""

from __future__ import annotations

import contextlib
import time

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from ledger.kafka.acls import Grant
from ledger.kafka.topics import admin_client
from ledger.settings import Settings

_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional-id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.CLUSTER,
}
_OPERATION = {
    "Create": ACLOperation.CREATE,
    "Read": ACLOperation.READ,
    "Write": ACLOperation.WRITE,
    "DescribeConfigs": ACLOperation.DESCRIBE_CONFIGS,
    "Describe": ACLOperation.DESCRIBE,
}
# How long the cluster may take to describe what it created.
IN_FORCE_WITHIN_S = 30.0


class GrantsRefused(Exception):
    """The cluster created none or only some of the ACLs, or did not describe them all in
    time; why, in one line."""


class NoAuthorizer(GrantsRefused):
    """The cluster runs no authorizer: there is no ACL to create, and none would be kept."""


def acls_of(principal: str, grants: list[Grant]) -> list[ACL]:
    """Each grant's operations as allow-ACLs of `principal`, from any host."""
    return [
        ACL(
            principal,
            "*",
            _OPERATION[operation],
            ACLPermissionType.ALLOW,
            ResourcePattern(
                _RESOURCE[grant.resource],
                grant.name,
                ACLResourcePatternType.PREFIXED
                if grant.prefixed
                else ACLResourcePatternType.LITERAL,
            ),
        )
        for grant in grants
        for operation in grant.operations
    ]


def apply_grants(settings: Settings, principal: str, grants: list[Grant]) -> None:
    """Create the grants' ACLs (an ACL the cluster holds already is taken as created) and
    wait until the cluster describes them all; `GrantsRefused` if it refuses any."""
    wanted = acls_of(principal, grants)
    admin = admin_client(settings)
    try:
        result = admin.create_acls(wanted)
        if result["failed"]:
            error = result["failed"][0]
            name = getattr(error, "__name__", type(error).__name__)
            if name == "SecurityDisabledError":
                raise NoAuthorizer(
                    "the cluster runs no authorizer (SecurityDisabledError): every client may "
                    "do anything on it, so there is no ACL to create; set the brokers' "
                    "authorizer.class.name for ACLs to mean anything"
                )
            hint = ""
            if "Authorization" in name:
                hint = (
                    ": the ledger's principal may not create ACLs (Alter on the cluster); "
                    "an operator grants them with the commands `kafka-acls` prints without "
                    "--apply"
                )
            raise GrantsRefused(
                f"the cluster created {len(result['succeeded'])} of {len(wanted)} ACLs and "
                f"refused the rest ({name}){hint}"
            )
        keys = {_key(acl) for acl in wanted}
        every = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
        mine = ACLFilter(principal, "*", ACLOperation.ANY, ACLPermissionType.ANY, every)
        deadline = time.monotonic() + IN_FORCE_WITHIN_S
        while True:  # each round trip to a broker paces the next look
            held, _ = admin.describe_acls(mine)
            if keys <= {_key(acl) for acl in held}:
                return
            if time.monotonic() >= deadline:
                raise GrantsRefused(
                    f"the cluster took the ACLs but did not describe them all within "
                    f"{IN_FORCE_WITHIN_S:g} s; ask again before relying on them"
                )
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _key(acl: ACL) -> tuple[object, ...]:
    pattern = acl.resource_pattern
    return (
        pattern.resource_type,
        pattern.resource_name,
        pattern.pattern_type,
        acl.operation,
        acl.permission_type,
        acl.host,
    )
