"""Evidence packages: a subject's audit trail that someone without the ledger can check.

The trail (`projections.trail`) is what a person reads; `verify` is what the operator runs
over its whole log. A regulator, a court or the person's lawyer has neither the log nor a
reason to take the operator's word, so the package carries, next to the trail, the subject's
facts and its tenant's (whose facts are the policy versions the subject was shown, with
their full text) as the exact bytes the ledger hashed, each with its RFC 9162 inclusion
proof in the Merkle tree of the whole log, and that tree's head signed with the ledger's
Ed25519 key. `verify_evidence` checks it all from the package alone.

What a package that verifies proves: every fact listed was in the log of `size` facts whose
root the key signed, byte for byte as written; each chain runs unbroken from the aggregate's
first fact, so none was removed or replaced between; the readable trail says what those
bytes say, and each policy version it names has the text hash its publication recorded.
That the subject had no fact after the last one listed, no Merkle proof can show (a tree's
proofs show what it holds, never what it lacks): the ledger signs it instead, as the
subject's head in that tree, a statement any later walk of the log would prove false. Not
proven either: that the decrypted personal data is what its ciphertext holds (AES-GCM
would, with the subject's data key, which the package does not carry). The signing key is
only as trusted as the operator's publication of its public half: pass that to the check
(`--public-key`) to hold the package to it. After a rotation the package carries the key's
hand-overs (`ledger.checkpoint`), so any key the operator ever published will do.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from ledger.application import ConsentLedger
from ledger.chain import GENESIS, fact_hash, leaf_hash, root_from_inclusion
from ledger.checkpoint import (
    MALFORMED,
    CheckpointResult,
    LogNotIntact,
    ProofProblem,
    b64,
    check_extends,
    check_tree_head,
    key_chain,
    malformed,
    proven_moment,
    sign_tree_head,
    signed_by_ledger,
)
from ledger.codec import TRANSCODER
from ledger.policy import text_sha256
from ledger.recorder import LogEvidence
from ledger.subject import Subject
from ledger.tenant import Tenant, tenant_id
from projections.trail import ROW_FIELDS, stored_fields, subject_trail

FORMAT = "consent-ledger/evidence/v1"
_SUBJECT_HEAD = b"consent-ledger/subject-head/v1\x00"


def _event_classes() -> dict[str, type]:
    """The topics a package may name, to their classes.

    A package is untrusted input: resolving its topics the library's way would import
    whatever module one names, so only the ledger's own event classes are looked up.
    """
    classes: dict[str, type] = {}
    for aggregate in (Subject, Tenant):
        for name in dir(aggregate):
            value = getattr(aggregate, name)
            if isinstance(value, type) and hasattr(value, "mutate"):
                classes[get_topic(value)] = value
    return classes


_CLASSES = _event_classes()


def subject_head_message(
    sid: UUID, partition: int, size: int, version: int, last_hash: str
) -> bytes:
    """The bytes a subject head's signature covers: the subject, its partition's tree and
    that tree's size, and the version and hash of the subject's last fact in it."""
    return (
        _SUBJECT_HEAD
        + sid.bytes
        + partition.to_bytes(4, "big")
        + size.to_bytes(8, "big")
        + version.to_bytes(8, "big")
        + bytes.fromhex(last_hash)
    )


def evidence_package(
    ledger: ConsentLedger,
    tenant: str,
    sid: UUID,
    *,
    since_sizes: Mapping[int, int] | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The subject's evidence package, or None if the tenant has no such subject; with
    `since_sizes` (a published checkpoint's tree sizes), the proof that its trees extend
    those.

    Costs a pass over every fact's hash (the tree's leaves): about two SHA-256 calls a fact.
    """
    trail = subject_trail(ledger, tenant, sid)
    if trail is None:
        return None
    tid = tenant_id(tenant)
    read = ledger.ledger_recorder.evidence_of([sid, tid])
    leaves = [(partition, leaf) for partition, leaf, _, _ in read.leaves.values()]
    proven = proven_moment(read, leaves, since_sizes)
    # Kafka mode: positions as the receipts and the trail give them, offsets in a partition.
    placed = ledger.ledger_recorder.log_coordinates([p for _, _, p, _ in read.leaves.values()])
    chains = {
        name: [_entry(stored, read, proven.paths, placed) for stored in read.events[agg]]
        for name, agg in (("subject", sid), ("tenant", tid))
    }
    last = len(chains["subject"])
    if any(row["version"] > last for row in trail["facts"]):
        # Facts recorded between the trail's read and the log's: the trail is read again,
        # after, and cut to the moment the package proves.
        trail = subject_trail(ledger, tenant, sid)
        assert trail is not None
    trail["facts"] = [row for row in trail["facts"] if row["version"] <= last]
    signed_at = (now or datetime.now(UTC)).isoformat()
    key, transitions = ledger.keystore.signer()
    last_entry = chains["subject"][-1]
    # A tree's inclusion proofs show what it holds, never what it lacks; the completeness
    # of the subject's chain is the ledger's signed word instead, which a later walk of
    # the log (any fact of the subject in the first `size` left out) would prove false.
    partition = last_entry["partition"]
    size = len(read.trees[partition]) // 32
    message = subject_head_message(sid, partition, size, last_entry["version"], last_entry["hash"])
    subject_head = {
        "partition": partition,
        "tree_size": size,
        "version": last_entry["version"],
        "hash": last_entry["hash"],
        "signature": base64.b64encode(key.sign(message)).decode(),
    }
    package: dict[str, Any] = {
        "format": FORMAT,
        "tenant": tenant,
        "sid": sid.hex,
        "tree_head": sign_tree_head(key, proven.trees, signed_at),
        "subject_head": subject_head,
        "chains": chains,
        "trail": trail,
    }
    if proven.consistency is not None:
        package["consistency"] = proven.consistency
    return signed_by_ledger(package, transitions)


def _entry(
    stored: StoredEvent,
    read: LogEvidence,
    paths: dict[tuple[int, int], list[bytes]],
    placed: Mapping[int, tuple[int, int]],
) -> dict[str, Any]:
    found = read.leaves.get((UUID(str(stored.originator_id)), stored.originator_version))
    if found is None:
        raise LogNotIntact("an event of the subject or its tenant is missing from the index")
    partition, leaf, position, recorded = found
    rehashed = fact_hash(
        stored.originator_id, stored.originator_version, stored.topic, stored.state
    )
    if rehashed != recorded:
        # A check would name it; the ledger does not sign what it can see is broken.
        raise LogNotIntact("a fact of the subject or its tenant no longer has its recorded hash")
    return {
        "version": stored.originator_version,
        "position": placed[position][1] if position in placed else position,
        "partition": partition,
        "leaf_index": leaf,
        "topic": stored.topic,
        "state": base64.b64encode(stored.state).decode(),
        "hash": recorded,
        "inclusion_path": [node.hex() for node in paths[(partition, leaf)]],
    }


@dataclass
class EvidenceResult(CheckpointResult):
    """A checkpoint's result (the package's signed trees, and those of `since`) and how
    many facts the package proves."""

    facts_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "facts_checked": self.facts_checked}


def verify_evidence(
    package: Any, public_key: str | None = None, since: Any = None
) -> EvidenceResult:
    """Check a package from its own contents; with `public_key`, also that this key signed
    it; with `since` (a checkpoint published earlier), also that the package's tree extends
    that checkpoint's.

    Never raises on what the package holds: whatever is wrong with it is a problem named in
    the result, the first of them being the one to report.
    """
    result = EvidenceResult()
    try:
        _verify(package, public_key, since, result)
    except MALFORMED as e:
        # Missing, mistyped or undecodable parts: not a package this version wrote.
        result.problems.append(malformed("an evidence package", e))
    return result


def _verify(package: Any, public_key: str | None, since: Any, result: EvidenceResult) -> None:
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise ValueError("format")
    if set(package) - _PACKAGE_FIELDS:
        result.problems.append(
            ProofProblem(
                "unexpected",
                "package",
                None,
                "the package carries fields the ledger does not write",
            )
        )
    head = package["tree_head"]
    chain = key_chain(
        head, package.get("key_transitions"), public_key, "tree_head", result.problems
    )
    key, trees = check_tree_head(head, "tree_head", result.problems)
    result.trees = [(p, n, r.hex()) for p, (n, r) in sorted(trees.items())]
    result.public_key = str(head["public_key"])
    if since is not None:
        result.extends = check_extends(
            head, package.get("consistency"), since, chain, result.problems
        )
    sid = UUID(hex=package["sid"])
    chains = package["chains"]
    _check_subject_head(package["subject_head"], chains["subject"], sid, trees, key, result)
    subject = _check_chain(chains["subject"], sid, "subject", trees, result)
    tenant = _check_chain(
        chains["tenant"], tenant_id(str(package["tenant"])), "tenant", trees, result
    )
    _check_trail(package, subject, tenant, result)


def _check_subject_head(
    head: dict[str, Any],
    entries: list[Any],
    sid: UUID,
    trees: dict[int, tuple[int, bytes]],
    key: Ed25519PublicKey,
    result: EvidenceResult,
) -> None:
    version, last_hash = int(head["version"]), str(head["hash"])
    partition, size = int(head["partition"]), int(head["tree_size"])
    try:
        key.verify(
            b64(head["signature"]), subject_head_message(sid, partition, size, version, last_hash)
        )
    except InvalidSignature:
        result.problems.append(
            ProofProblem(
                "signature", "subject_head", None, "the subject head's signature does not verify"
            )
        )
    last_version, listed_hash = (
        (int(entries[-1]["version"]), entries[-1]["hash"]) if entries else (0, None)
    )
    signed_tree = trees.get(partition)
    if (
        signed_tree is None
        or signed_tree[0] != size
        or (last_version, listed_hash) != (version, last_hash)
    ):
        result.problems.append(
            ProofProblem(
                "incomplete",
                "subject_head",
                version,
                f"the ledger signed version {version} as the subject's last fact in this tree; "
                f"the package's chain ends at version {last_version}",
            )
        )


def _instant(text: str) -> str:
    """An instant as the trail's `erased_at` writes it (Python's isoformat)."""
    return datetime.fromisoformat(text).isoformat()


# A fact as the checks read it: its class, version, decoded state and recomputed hash.
_Read = tuple[type, int, dict[str, Any], str]


def _check_chain(
    entries: list[Any],
    originator: UUID,
    where: str,
    trees: dict[int, tuple[int, bytes]],
    result: EvidenceResult,
) -> list[_Read]:
    read: list[_Read] = []
    expected_prev, last_leaf = GENESIS, -1
    partition = int(entries[0]["partition"]) if entries else 0
    listed = {int(entry["version"]) for entry in entries}
    for number, entry in enumerate(entries, start=1):
        version = int(entry["version"])

        def problem(kind: str, message: str, version: int = version) -> None:
            result.problems.append(ProofProblem(kind, where, version, message))

        if version != number:
            problem(
                "reordered" if number in listed else "removed",
                f"version {version} is listed where version {number} belongs",
            )
        topic = str(entry["topic"])
        state = b64(entry["state"])
        digest = fact_hash(originator, version, topic, state)
        if digest != entry["hash"]:
            problem("altered", "the fact's bytes do not hash to the hash listed for it")
        event_class = _CLASSES.get(topic)
        try:
            decoded = TRANSCODER.decode(state)
        except ValueError:
            decoded = None
        if event_class is None or not isinstance(decoded, dict):
            problem("altered", "the fact's bytes are not an event the ledger writes")
            decoded = {}
        elif decoded.get("prev_hash", GENESIS) != expected_prev:
            problem("altered", "prev_hash is not the hash of the fact listed before it")
        expected_prev = digest
        leaf = int(entry["leaf_index"])
        if int(entry["partition"]) != partition or leaf <= last_leaf:
            # An aggregate's facts share a partition (its key), in order.
            problem("reordered", "the fact lies before the fact listed before it in the log")
        last_leaf = leaf
        path = [bytes.fromhex(node) for node in entry["inclusion_path"]]
        size, root = trees.get(int(entry["partition"]), (0, b""))
        if root_from_inclusion(leaf_hash(digest), leaf, size, path) != root:
            problem("not_included", "the inclusion proof does not lead to the signed root")
        result.facts_checked += 1
        if event_class is not None:
            read.append((event_class, version, decoded, digest))
    return read


_PACKAGE_FIELDS = {
    "format",
    "tenant",
    "sid",
    "tree_head",
    "subject_head",
    "chains",
    "trail",
    "consistency",
    "key_transitions",
}


def _check_trail(
    package: dict[str, Any],
    subject: list[_Read],
    tenant: list[_Read],
    result: EvidenceResult,
) -> None:
    trail = package["trail"]

    def mismatch(version: int | None, message: str) -> None:
        result.problems.append(ProofProblem("trail_mismatch", "trail", version, message))

    if trail["sid"] != package["sid"] or trail["tenant"] != package["tenant"]:
        mismatch(None, "the trail is of another subject than the facts")
    if set(trail) != {"tenant", "sid", "subject", "erased", "erased_at", "facts"}:
        mismatch(None, "the trail carries fields the ledger does not write, or lacks some")
    rows = trail["facts"]
    proven_in = {int(entry["partition"]) for entry in package["chains"]["subject"]}
    if len(rows) != len(subject):
        mismatch(None, f"the trail lists {len(rows)} facts, the package proves {len(subject)}")
    policies = {
        state["policy_version"]: state
        for _, _, state, _ in tenant
        if "policy_version" in state and "text" in state
    }
    # What the trail derives from the facts (the links between corrections and what they
    # correct, and the erasure), derived again from the facts' own bytes.
    corrected_by: dict[str, list[str]] = {}
    erased_at: str | None = None
    for event_class, _, state, _ in subject:
        if event_class is Subject.ConsentCorrected:
            corrected_by.setdefault(state["corrects"], []).append(state["event_id"])
        elif event_class is Subject.SubjectErased and erased_at is None:
            erased_at = stored_fields(event_class, 0, state)["occurred_at"]
    expected_at = _instant(erased_at) if erased_at is not None else None
    if trail["erased"] is not (erased_at is not None) or trail["erased_at"] != expected_at:
        mismatch(None, "the trail's erasure differs from the facts'")
    for row, (event_class, version, state, digest) in zip(rows, subject, strict=False):
        said = stored_fields(event_class, version, state)
        said["corrected_by"] = corrected_by.get(said["event_id"])
        said["corrects"] = state["corrects"] if event_class is Subject.ConsentCorrected else None
        wrong = [name for name, value in said.items() if row.get(name) != value]
        if row.get("hash") != digest:
            wrong.append("hash")
        if wrong:
            mismatch(version, f"the trail's {', '.join(wrong)} differ from the fact's bytes")
        if set(row) - ROW_FIELDS:
            mismatch(version, "the trail's row carries fields the ledger does not write")
        if "partition" in row and {row["partition"]} != proven_in:
            # Kafka mode's rows name their partition; the proofs say which it is.
            mismatch(version, "the trail places the fact in another partition than its proof")
        if said["type"] != "consent.granted":
            if "policy" in row:
                mismatch(version, "the trail names a policy for a fact that is not a grant")
            continue
        published = policies.get(state["policy_version"])
        if published is None:
            mismatch(version, "the grant names a policy version the package does not prove")
        elif text_sha256(published["text"]) != published["text_sha256"]:
            mismatch(version, "the policy's text does not hash to what its publication says")
        elif row.get("policy") != {
            "version": state["policy_version"],
            "text_sha256": published["text_sha256"],
        }:
            mismatch(version, "the trail's policy differs from the one the grant names")
