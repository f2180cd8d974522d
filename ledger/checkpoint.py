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

The signing key can be replaced (`consent-ledger signing-key rotate`): the retiring key and
its successor both sign a hand-over naming the two and the instant, and every checkpoint
and package signed afterwards carries the ledger's hand-overs (`key_transitions`). A holder
of any one of the ledger's keys (the one published when it took a checkpoint, or today's)
follows them to every other, so an earlier checkpoint signed by a retired key still proves
what it proved, and a head a key signed after its own retirement shows as such. Hand-overs
prove continuity, not safety: whoever holds a retired key can sign a head dated before its
retirement. After a suspected leak, publish the new key and say from when the old one is
not to be trusted.
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
_KEY_TRANSITION = b"consent-ledger/key-transition/v1\x00"


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


def key_transition_message(previous: str, successor: str, rotated_at: str) -> bytes:
    """The bytes a hand-over's signature covers: both raw public keys, then the instant."""
    return b"".join([_KEY_TRANSITION, b64(previous), b64(successor), rotated_at.encode()])


def hand_over(old: Ed25519PrivateKey, new: Ed25519PrivateKey, rotated_at: str) -> dict[str, Any]:
    """The word of both keys that `new` signs for the ledger from `rotated_at`: the old
    key's, so its holders may trust the new one, and the new key's, so its holders may
    trust what the old one signed before."""
    previous = public_key_text(old.public_key())
    successor = public_key_text(new.public_key())
    message = key_transition_message(previous, successor, rotated_at)
    return {
        "previous_key": previous,
        "public_key": successor,
        "rotated_at": rotated_at,
        "algorithm": "Ed25519",
        "signature": base64.b64encode(old.sign(message)).decode(),
        "successor_signature": base64.b64encode(new.sign(message)).decode(),
    }


def rotate_signing_key(keystore: KeyStore, now: datetime | None = None) -> dict[str, Any]:
    """Replace the ledger's signing key; the hand-over both keys signed."""
    rotated_at = (now or datetime.now(UTC)).isoformat()
    return keystore.rotate_signing_key(lambda old, new: hand_over(old, new, rotated_at))


def signed_by_ledger(body: dict[str, Any], transitions: list[dict[str, Any]]) -> dict[str, Any]:
    """A signed document with the key's hand-overs, when it has any (a ledger whose key
    never changed writes what it always wrote)."""
    if transitions:
        body["key_transitions"] = transitions
    return body


@dataclass(frozen=True)
class KeyChain:
    """The keys a head is taken as the ledger's under, oldest first, ending with its
    signer, and when each retired key handed over."""

    signers: list[str]
    retired_at: dict[str, datetime]


def key_chain(
    head: dict[str, Any],
    transitions: Any,
    public_key: str | None,
    where: str,
    problems: list[ProofProblem],
) -> KeyChain:
    """The hand-overs that lead to a head's signer, checked: each signed by both its keys,
    each starting where the one before ended, the last ending at the signer. With
    `public_key`, that key must be one of the chain's."""
    signer = str(head["public_key"])
    if transitions is None:
        transitions = []
    if not isinstance(transitions, list):
        raise ValueError("key_transitions")
    chain: list[str] = []
    retired_at: dict[str, datetime] = {}
    for i, t in enumerate(transitions):
        previous, successor = str(t["previous_key"]), str(t["public_key"])
        rotated_at = str(t["rotated_at"])
        when = datetime.fromisoformat(rotated_at)
        if when.tzinfo is None:
            raise ValueError("rotated_at")
        message = key_transition_message(previous, successor, rotated_at)
        for key, signature in ((previous, "signature"), (successor, "successor_signature")):
            try:
                Ed25519PublicKey.from_public_bytes(b64(key)).verify(b64(t[signature]), message)
            except InvalidSignature:
                problems.append(
                    ProofProblem(
                        "signature",
                        "key_transitions",
                        None,
                        f"hand-over {i + 1}'s {signature} does not verify",
                    )
                )
        if chain and chain[-1] != previous:
            problems.append(
                ProofProblem(
                    "key_transitions",
                    "key_transitions",
                    None,
                    f"hand-over {i + 1} retires a key that hand-over {i} did not hand over to",
                )
            )
        if not chain:
            chain.append(previous)
        chain.append(successor)
        retired_at[previous] = when
    if chain and chain[-1] != signer:
        problems.append(
            ProofProblem(
                "key_transitions",
                where,
                None,
                "the key hand-overs given do not end at the key that signed",
            )
        )
        chain.append(signer)
    if not chain:
        chain = [signer]
    if public_key is not None and public_key.strip() not in chain:
        problems.append(
            ProofProblem(
                "untrusted_key",
                where,
                None,
                "signed by another key, which no hand-over given links to the trusted one",
            )
        )
    return KeyChain(chain, retired_at)


def check_signer(
    head: dict[str, Any], chain: KeyChain, where: str, problems: list[ProofProblem]
) -> None:
    """That a head's signer is on the chain and had not handed over when it signed."""
    signer = str(head["public_key"])
    if signer not in chain.signers:
        problems.append(
            ProofProblem(
                "untrusted_key",
                where,
                None,
                "signed by another key, which no hand-over given links to the signer's",
            )
        )
        return
    retired = chain.retired_at.get(signer)
    if retired is not None and _instant(head["signed_at"]) > retired:
        problems.append(
            ProofProblem(
                "retired_key",
                where,
                None,
                "signed by a key after it handed over to its successor",
            )
        )


def _instant(text: Any) -> datetime:
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        raise ValueError("signed_at")
    return when


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
    key, transitions = keystore.signer()
    out: dict[str, Any] = {
        "format": FORMAT,
        "tree_head": sign_tree_head(key, proven.trees, signed_at),
    }
    if proven.consistency is not None:
        out["consistency"] = proven.consistency
    return signed_by_ledger(out, transitions)


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
        chain = key_chain(
            head, checkpoint.get("key_transitions"), public_key, "tree_head", result.problems
        )
        _, trees = check_tree_head(head, "tree_head", result.problems)
        result.trees = [(p, n, r.hex()) for p, (n, r) in sorted(trees.items())]
        result.public_key = str(head["public_key"])
        if since is not None:
            result.extends = check_extends(
                head, checkpoint.get("consistency"), since, chain, result.problems
            )
    except MALFORMED as e:
        result.problems.append(malformed("a checkpoint", e))
    return result


def malformed(what: str, error: Exception) -> ProofProblem:
    # The message names the exception's kind, never the input's values.
    return ProofProblem(
        "malformed", "input", None, f"not {what} this ledger writes ({type(error).__name__})"
    )


def b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error:
        raise ValueError("base64") from None


def check_tree_head(
    head: dict[str, Any], where: str, problems: list[ProofProblem]
) -> tuple[Ed25519PublicKey, dict[int, tuple[int, bytes]]]:
    """The signature of a tree head (whose key signed it, `key_chain` says); returns the
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
    return key, trees


def check_extends(
    head: dict[str, Any],
    consistency: Any,
    since: Any,
    chain: KeyChain,
    problems: list[ProofProblem],
) -> list[Tree]:
    """That every tree of `head` extends the same partition's tree in the earlier checkpoint
    `since`, by the consistency proofs given with it; returns the earlier trees. The earlier
    checkpoint is held to the head's signer or a key that handed over to it (`chain`): a
    rewrite signed by an unrelated key is no extension of what the old key signed."""
    if not isinstance(since, dict) or since.get("format") != FORMAT:
        raise ValueError("since format")
    _, new_trees = check_tree_head(head, "tree_head", [])
    _, old_trees = check_tree_head(since["tree_head"], "since", problems)
    check_signer(since["tree_head"], chain, "since", problems)
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
