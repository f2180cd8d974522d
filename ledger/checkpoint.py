"""Signed checkpoints: the log's Merkle tree head under the ledger's key, and the proof that
a later tree only grew from an earlier one.

`verify` proves the log intact to whoever holds the log. Everyone else (the authorised
body, an auditor, a court) can hold checkpoints instead: the operator publishes one now and
then, and any later checkpoint or evidence package of the ledger carries, on request, an
RFC 9162 consistency proof from an earlier tree size. A checkpoint holder then knows,
without the log, that nothing recorded by then was changed or removed since: a rewritten
history has another root at the old size, which no consistency proof links to the old one,
and the operator's signature on both makes the rewrite its own signed contradiction.

Proofs are given in trees every copy of the log agrees on. Embedded, that is one tree, the
log's. In Kafka mode a replica's log order interleaves the ledger partitions as its reads
happened to, so its Merkle head (which `verify` checks) is its own; signed proofs use one
tree per ledger partition instead, each in offset order, which every replica, and a replica
rebuilt from the topic, computes alike.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.chain import consistency_path, consistent, inclusion_paths
from ledger.keystore import KeyStore
from ledger.recorder import LedgerSQLiteRecorder, LogEvidence

FORMAT = "consent-ledger/checkpoint/v1"
_TREE_HEAD = b"consent-ledger/tree-head/v1\x00"


class LogNotIntact(RuntimeError):
    """The log's own records disagree: the ledger signs nothing for it (run `verify`)."""


class SinceTooLarge(ValueError):
    """Asked for a proof from a tree larger than the log: not a checkpoint of this log."""


@dataclass(frozen=True)
class ProofProblem:
    """What a check of signed proofs found wrong, named by kind and place, never by value."""

    kind: str  # malformed, signature, untrusted_key, inconsistent, altered, removed, ...
    where: str  # tree_head, since, subject_head, subject, tenant, trail, input
    version: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "version": self.version,
            "message": self.message,
        }


# One Merkle tree per partition of the log: (partition, size, root hex).
Tree = tuple[int, int, str]


def tree_head_message(trees: list[Tree], signed_at: str) -> bytes:
    """The bytes a tree head's signature covers: a domain tag, every tree's partition, size
    and root in partition order, then the time."""
    parts = [_TREE_HEAD, len(trees).to_bytes(4, "big")]
    for partition, size, root in sorted(trees):
        parts += [partition.to_bytes(4, "big"), size.to_bytes(8, "big"), bytes.fromhex(root)]
    return b"".join([*parts, signed_at.encode()])


def public_key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def public_key_of(keystore: KeyStore) -> str:
    """The base64 public half of the ledger's signing key, for the operator to publish."""
    return public_key_text(keystore.signing_key().public_key())


def sign_tree_head(key: Ed25519PrivateKey, trees: list[Tree], signed_at: str) -> dict[str, Any]:
    signature = key.sign(tree_head_message(trees, signed_at))
    return {
        "trees": [
            {"partition": partition, "size": size, "root": root}
            for partition, size, root in sorted(trees)
        ],
        "signed_at": signed_at,
        "algorithm": "Ed25519",
        "public_key": public_key_text(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }


class Proven(NamedTuple):
    """What one moment of the log proves: its trees, the inclusion proofs asked for, and the
    consistency proofs from an earlier checkpoint's sizes."""

    trees: list[Tree]
    paths: dict[tuple[int, int], list[bytes]]  # (partition, leaf) -> inclusion proof
    consistency: list[dict[str, Any]] | None


def proven_moment(
    read: LogEvidence, leaves: list[tuple[int, int]], since_sizes: Mapping[int, int] | None
) -> Proven:
    """Inclusion proofs of these (partition, leaf)s and, with `since_sizes` (an earlier
    checkpoint's size per partition), the consistency proofs from them; refused if the log's
    records disagree with its recorded head."""
    size, root = read.head
    if len(read.log_leaves) // 32 != size:
        raise LogNotIntact(
            f"the fact index holds {len(read.log_leaves) // 32} facts, its head {size}"
        )
    trees: list[Tree] = []
    paths: dict[tuple[int, int], list[bytes]] = {}
    recorded: str | None = None
    for partition, level in sorted(read.trees.items()):
        wanted = [leaf for p, leaf in leaves if p == partition]
        tree_root, found = inclusion_paths(level, wanted)
        trees.append((partition, len(level) // 32, tree_root.hex()))
        paths.update(((partition, leaf), path) for leaf, path in found.items())
        if level is read.log_leaves:  # embedded: the one tree is the log's own
            recorded = tree_root.hex()
    if recorded is None:
        recorded = inclusion_paths(read.log_leaves, [])[0].hex()
    if recorded != root:
        raise LogNotIntact("the fact index does not hash to the log's recorded Merkle root")
    if since_sizes is None:
        return Proven(trees, paths, None)
    consistency = []
    for partition, old_size in sorted(since_sizes.items()):
        level = read.trees.get(partition, b"")
        if not 0 <= old_size <= len(level) // 32:
            raise SinceTooLarge(
                f"partition {partition} of the log holds {len(level) // 32} facts, "
                f"not {old_size} or more"
            )
        path = consistency_path(level, old_size)
        consistency.append(
            {"partition": partition, "from_size": old_size, "path": [n.hex() for n in path]}
        )
    return Proven(trees, paths, consistency)


def since_sizes_of(since: Any) -> dict[int, int]:
    """An earlier checkpoint's size per partition (what to prove consistency from)."""
    return {int(t["partition"]): int(t["size"]) for t in since["tree_head"]["trees"]}


def checkpoint(
    recorder: LedgerSQLiteRecorder,
    keystore: KeyStore,
    *,
    since_sizes: Mapping[int, int] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The log's tree heads now, signed; with `since_sizes` (an earlier checkpoint's), the
    proof that today's trees extend those. Reads every fact's hash once."""
    proven = proven_moment(recorder.evidence_of([]), [], since_sizes)
    signed_at = (now or datetime.now(UTC)).isoformat()
    out: dict[str, Any] = {
        "format": FORMAT,
        "tree_head": sign_tree_head(keystore.signing_key(), proven.trees, signed_at),
    }
    if proven.consistency is not None:
        out["consistency"] = proven.consistency
    return out


@dataclass
class CheckpointResult:
    trees: list[Tree] = field(default_factory=list)
    public_key: str | None = None
    extends: list[Tree] | None = None
    problems: list[ProofProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.trees)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "size": self.size,
            "trees": [{"partition": p, "size": n, "root": r} for p, n, r in self.trees],
            "public_key": self.public_key,
            "extends": (
                None
                if self.extends is None
                else [{"partition": p, "size": n, "root": r} for p, n, r in self.extends]
            ),
            "first_problem": self.problems[0].as_dict() if self.problems else None,
            "problems": [p.as_dict() for p in self.problems],
        }


MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


def verify_checkpoint(
    checkpoint: Any, since: Any = None, public_key: str | None = None
) -> CheckpointResult:
    """Check a checkpoint's signature and, given an earlier checkpoint `since`, that its
    consistency proofs link each earlier tree to its own. Never raises on what they hold."""
    result = CheckpointResult()
    try:
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
            raise ValueError("format")
        head = checkpoint["tree_head"]
        _, trees = check_tree_head(head, "tree_head", public_key, result.problems)
        result.trees = [(p, n, r.hex()) for p, (n, r) in sorted(trees.items())]
        result.public_key = str(head["public_key"])
        if since is not None:
            result.extends = check_extends(
                head, checkpoint.get("consistency"), since, public_key, result.problems
            )
    except MALFORMED as e:
        result.problems.append(malformed("checkpoint", e))
    return result


def malformed(what: str, error: Exception) -> ProofProblem:
    # The message names the exception's kind, never the input's values.
    return ProofProblem(
        "malformed", "input", None, f"not a {what} this ledger writes ({type(error).__name__})"
    )


def b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error:
        raise ValueError("base64") from None


def check_tree_head(
    head: dict[str, Any], where: str, public_key: str | None, problems: list[ProofProblem]
) -> tuple[Ed25519PublicKey, dict[int, tuple[int, bytes]]]:
    """The signature of a tree head, and its signer if `public_key` names one; returns the
    head's key, for what else it signed, and its trees: partition -> (size, root)."""
    key = Ed25519PublicKey.from_public_bytes(b64(head["public_key"]))
    listed: list[Tree] = [
        (int(t["partition"]), int(t["size"]), str(t["root"])) for t in head["trees"]
    ]
    trees = {p: (n, bytes.fromhex(r)) for p, n, r in listed}
    if len(trees) != len(listed) or any(n < 0 or len(r) != 32 for n, r in trees.values()):
        raise ValueError("trees")
    try:
        key.verify(b64(head["signature"]), tree_head_message(listed, str(head["signed_at"])))
    except InvalidSignature:
        problems.append(
            ProofProblem("signature", where, None, "the tree head's signature does not verify")
        )
    if public_key is not None and public_key.strip() != head["public_key"]:
        problems.append(ProofProblem("untrusted_key", where, None, "signed by another key"))
    return key, trees


def check_extends(
    head: dict[str, Any],
    consistency: Any,
    since: Any,
    public_key: str | None,
    problems: list[ProofProblem],
) -> list[Tree]:
    """That every tree of `head` extends the same partition's tree in the earlier checkpoint
    `since`, by the consistency proofs given with it; returns the earlier trees. The earlier
    checkpoint is held to the same signer: a rewrite signed by a new key is no extension of
    what the old key signed."""
    if not isinstance(since, dict) or since.get("format") != FORMAT:
        raise ValueError("since format")
    _, new_trees = check_tree_head(head, "tree_head", None, [])
    _, old_trees = check_tree_head(
        since["tree_head"], "since", public_key or str(head["public_key"]), problems
    )
    proofs = {
        int(c["partition"]): (int(c["from_size"]), [bytes.fromhex(n) for n in c["path"]])
        for c in (consistency if isinstance(consistency, list) else [])
    }
    for partition, (old_size, old_root) in sorted(old_trees.items()):
        new_size, new_root = new_trees.get(partition, (-1, b""))
        proof = proofs.get(partition)
        if new_size < 0 or proof is None or proof[0] != old_size:
            problems.append(
                ProofProblem(
                    "inconsistent",
                    "since",
                    None,
                    f"no consistency proof from the earlier tree of partition {partition} "
                    f"({old_size} facts) is given",
                )
            )
        elif not consistent(old_size, old_root, new_size, new_root, proof[1]):
            problems.append(
                ProofProblem(
                    "inconsistent",
                    "since",
                    None,
                    f"partition {partition}'s tree of {new_size} facts does not extend its "
                    f"earlier tree of {old_size}: what was recorded by then was changed or "
                    "removed",
                )
            )
    return [(p, n, r.hex()) for p, (n, r) in sorted(old_trees.items())]
