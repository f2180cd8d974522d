"""`kafka-acls --apply` and `--revoke`: the ACLs of `ledger.kafka.acls` created or deleted
by the ledger's own admin client, for a deployment where its principal may change them (the
compose file's, where it is a super user on the compose network), so that an operator runs
one command where they copied `kafka-acls.sh` lines into a broker's container.

The command ends only once the cluster describes the change: the controller commits a
change before it answers, and a broker's authorizer applies it from the metadata log a
moment later, so a publisher started (or cut off) at once could meet the ACLs of before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import NoError

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
    """The cluster created (or deleted) none or only some of the ACLs, or did not describe
    the change in time; why, in one line."""


class NoAuthorizer(GrantsRefused):
    """The cluster runs no authorizer: there is no ACL to create or delete."""


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
            raise _refused(result["failed"][0], len(result["succeeded"]), len(wanted), "created")
        keys = {_key(acl) for acl in wanted}
        _settle(admin, principal, lambda held: keys <= held)
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def revoke_grants(settings: Settings, principal: str, grants: list[Grant]) -> None:
    """Delete exactly the grants' ACLs (one the cluster does not hold is taken as deleted;
    any other of the principal's stays) and wait until the cluster describes none of them:
    a publishing service cut off is refused from then on."""
    wanted = acls_of(principal, grants)
    admin = admin_client(settings)
    try:
        filters = [
            ACLFilter(
                acl.principal,
                acl.host,
                acl.operation,
                acl.permission_type,
                ResourcePatternFilter(
                    acl.resource_pattern.resource_type,
                    acl.resource_pattern.resource_name,
                    acl.resource_pattern.pattern_type,
                ),
            )
            for acl in wanted
        ]
        failed = [error for _, _, error in admin.delete_acls(filters) if error is not NoError]
        if failed:
            raise _refused(failed[0], len(wanted) - len(failed), len(wanted), "deleted")
        keys = {_key(acl) for acl in wanted}
        _settle(admin, principal, lambda held: not keys & held)
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _refused(error: object, done: int, asked: int, verb: str) -> GrantsRefused:
    """What the cluster's refusal of some of `asked` ACLs is said as."""
    name = getattr(error, "__name__", type(error).__name__)
    if name == "SecurityDisabledError":
        return NoAuthorizer(
            "the cluster runs no authorizer (SecurityDisabledError): every client may do "
            "anything on it, so there is no ACL to create or delete; set the brokers' "
            "authorizer.class.name for ACLs to mean anything"
        )
    hint = ""
    if "Authorization" in name:
        hint = (
            f": the ledger's principal may not change ACLs (Alter on the cluster); an "
            f"operator does it with the commands `kafka-acls` prints without --{_FLAG[verb]}"
        )
    return GrantsRefused(
        f"the cluster {verb} {done} of {asked} ACLs and refused the rest ({name}){hint}"
    )


_FLAG = {"created": "apply", "deleted": "revoke"}


def _settle(admin: KafkaAdminClient, principal: str, settled: Callable[[set[Key]], bool]) -> None:
    """Until the cluster describes the principal's ACLs as `settled` wants, at most
    IN_FORCE_WITHIN_S."""
    every = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    mine = ACLFilter(principal, "*", ACLOperation.ANY, ACLPermissionType.ANY, every)
    deadline = time.monotonic() + IN_FORCE_WITHIN_S
    while True:  # each round trip to a broker paces the next look
        held, _ = admin.describe_acls(mine)
        if settled({_key(acl) for acl in held}):
            return
        if time.monotonic() >= deadline:
            raise GrantsRefused(
                f"the cluster took the change but did not describe it in full within "
                f"{IN_FORCE_WITHIN_S:g} s; ask again before relying on it"
            )


Key = tuple[object, ...]


def _key(acl: ACL) -> Key:
    pattern = acl.resource_pattern
    return (
        pattern.resource_type,
        pattern.resource_name,
        pattern.pattern_type,
        acl.operation,
        acl.permission_type,
        acl.host,
    )
