"""Tamper evidence: per-subject hash chains and an RFC 9162 Merkle tree over the whole log.

A fact's hash covers its stored bytes exactly as the recorder writes them (ciphertext
included, so crypto-shredding leaves every hash intact) and, through the `prev_hash` field
inside those bytes, the hash of the previous fact of the same aggregate. The Merkle tree's
leaves are those hashes in log order; its frontier is kept in the log's own transaction so
removing the newest fact of a subject, which no per-subject chain can notice, changes the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ledger.codec import TRANSCODER

GENESIS = ""  # prev_hash of an aggregate's first event
_DOMAIN = b"consent-ledger/fact/v1\x00"


# Hashes the mapper keeps at most: a batch (at most 1,000 facts, one event each) needs 1,000.
REMEMBERED = 20_000


class ChainMapper(Mapper[UUID]):
    """The library's mapper, remembering the stored form of events it hashed before saving.

    A new event's hash is needed as the next event's `prev_hash` before the event is saved;
    encoding it once for the hash and again for the store would double the hot path's work.
    Events are immutable, so the remembered form is exactly what would be encoded again.
    """

    def __init__(self) -> None:
        super().__init__(transcoder=TRANSCODER)
        self._memo: dict[int, tuple[object, StoredEvent]] = {}
        # id(stored bytes) -> (those bytes, aggregate, version, topic, hash): a batch needs
        # each new event's hash three times (the next event's prev_hash, the recorder's index
        # row, the receipt), and all three see the one bytes object the mapper made. The
        # entry holds the bytes, so their id cannot be reused while it is remembered.
        self._hashes: dict[int, tuple[bytes, UUID | str, int, str, str]] = {}

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        hit = self._memo.pop(id(domain_event), None)
        if hit is not None and hit[0] is domain_event:
            return hit[1]
        return self._stored(domain_event)

    def _stored(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """The library's `Mapper.to_stored_event`, with the StoredEvent made by `stored_event`.
        The ledger configures no compressor or cipher (it seals personal data itself); with
        one, the library's method runs. tests/test_events.py holds it to the library's."""
        if self.compressor or self.cipher or getattr(domain_event, "class_version", 1) > 1:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        version = state.pop("originator_version")
        topic = get_topic(domain_event.__class__)
        return stored_event(originator_id, version, topic, self.transcoder.encode(state))

    def hash_of(self, domain_event: DomainEventProtocol[UUID]) -> str:
        stored = self._stored(domain_event)
        self._memo[id(domain_event)] = (domain_event, stored)
        return self.hash_of_stored(
            stored.originator_id, stored.originator_version, stored.topic, stored.state
        )

    def hash_of_stored(
        self, originator_id: UUID | str, version: int, topic: str, state: bytes
    ) -> str:
        """`fact_hash` of these parts, computed once per batch."""
        hit = self._hashes.get(id(state))
        if (
            hit is not None
            and hit[2] == version
            and hit[3] == topic
            and (hit[1] is originator_id or hit[1] == originator_id)
        ):
            return hit[4]
        digest = fact_hash(originator_id, version, topic, state)
        if len(self._hashes) >= REMEMBERED:
            # Not only batches store events: a Kafka replica catching up a whole topic does
            # too, and nothing ends it the way a batch's commit does. A miss only recomputes.
            self._hashes.clear()
        self._hashes[id(state)] = (state, originator_id, version, topic, digest)
        return digest

    def forget(self) -> None:
        """Drop what was remembered for a batch (at its end, or when it was refused)."""
        self._memo.clear()
        self._hashes.clear()


MAPPER = ChainMapper()


def stored_event(
    originator_id: UUID | str, originator_version: int, topic: str, state: bytes
) -> StoredEvent:
    """`StoredEvent(originator_id, originator_version, topic, state)`, given its instance dict
    as the library's mapper gives a domain event its own (`ledger.chained.new_event` says
    why): a frozen dataclass's constructor sets each field through `object.__setattr__`, 1.7
    against 0.4 us here (timeit, 2026-12-01), and every event the ledger stores, reads back,
    replays or verifies is one. tests/test_chain.py holds it to the constructor."""
    stored = object.__new__(StoredEvent)
    object.__setattr__(
        stored,
        "__dict__",
        {
            "originator_id": originator_id,
            "originator_version": originator_version,
            "topic": topic,
            "state": state,
        },
    )
    return stored


def fact_hash(originator_id: UUID | str, version: int, topic: str, state: bytes) -> str:
    h = hashlib.sha256(_DOMAIN)
    h.update(originator_id.bytes if isinstance(originator_id, UUID) else originator_id.encode())
    h.update(version.to_bytes(8, "big"))
    h.update(topic.encode())
    h.update(b"\x00")
    h.update(state)
    return h.hexdigest()


def stored_hash(stored: StoredEvent) -> str:
    return fact_hash(stored.originator_id, stored.originator_version, stored.topic, stored.state)


def event_hash(event: DomainEventProtocol[UUID]) -> str:
    """The hash the recorder will compute for this event, from the same mapper and transcoder."""
    return MAPPER.hash_of(event)


# RFC 9162 §2.1.1: leaves and nodes are hashed with distinct prefixes.
def leaf_hash(fact_hash_hex: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(fact_hash_hex)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def frontier_append(frontier: list[bytes], size: int, leaf: bytes) -> list[bytes]:
    """Add a leaf to the compact range of perfect subtrees (one per set bit of `size`)."""
    node = leaf
    while size & 1:
        node = node_hash(frontier.pop(), node)
        size >>= 1
    frontier.append(node)
    return frontier


def frontier_root(frontier: list[bytes]) -> bytes:
    """MTH of the leaves summarised by the frontier (the empty tree hashes to SHA-256(''))."""
    if not frontier:
        return hashlib.sha256(b"").digest()
    root = frontier[-1]
    for node in reversed(frontier[:-1]):
        root = node_hash(node, root)
    return root


def pack_frontier(frontier: list[bytes]) -> bytes:
    return b"".join(frontier)


def unpack_frontier(packed: bytes) -> list[bytes]:
    return [packed[i : i + 32] for i in range(0, len(packed), 32)]


def leaf_level(fact_hashes: Iterable[str]) -> bytes:
    """The leaf hashes of these facts' hashes, as the one bytes object the tree functions
    below take: 32 bytes a fact, where a list of hex strings would take about 110."""
    return b"".join(leaf_hash(h) for h in fact_hashes)


def inclusion_paths(
    leaves: bytes, indexes: Collection[int]
) -> tuple[bytes, dict[int, list[bytes]]]:
    """The root of the tree of these leaf hashes (`leaf_level`) and the RFC 9162 inclusion
    proofs (§2.1.3.1) of the leaves at `indexes` in it.

    Built bottom up, a level at a time, with a node left without a sibling carried up as it
    is: the same tree as the RFC's recursion (`merkle_root`), whose proofs leave out the
    levels such a node skips. Each level is one bytes object of 32-byte hashes, so a log of a
    million facts costs a million SHA-256 calls and about 48 MiB, not a million objects.
    """
    size = len(leaves) // 32
    if any(not 0 <= i < size for i in indexes):
        raise IndexError("a leaf index outside the tree")
    level = bytes(leaves)
    paths: dict[int, list[bytes]] = {i: [] for i in indexes}
    at = {i: i for i in indexes}  # leaf -> its ancestor's index at the current level
    count = size
    while count > 1:
        for leaf, i in at.items():
            sibling = i ^ 1
            if sibling < count:
                paths[leaf].append(level[32 * sibling : 32 * sibling + 32])
            at[leaf] = i >> 1
        pairs = count // 2
        parents = b"".join(
            hashlib.sha256(b"\x01" + level[64 * k : 64 * k + 64]).digest() for k in range(pairs)
        )
        level = parents + level[64 * pairs :] if count & 1 else parents
        count = pairs + (count & 1)
    return (level if size else hashlib.sha256(b"").digest()), paths


def root_from_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that `path` proves `leaf` at `index` in a tree of `size` leaves belongs to
    (RFC 9162 §2.1.3.2), or None when the path cannot be a proof for that index and size."""
    if not 0 <= index < size:
        return None
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return node if sn == 0 else None


def consistency_path(leaves: bytes, old_size: int) -> list[bytes]:
    """RFC 9162 consistency proof (§2.1.4.1) that the tree of the first `old_size` leaves
    (`leaf_level`) is a prefix of the tree of all of them: a checkpoint's holder checks with
    it that the log only grew since. Empty for an old size of 0 or of the whole tree."""
    size = len(leaves) // 32
    if not 0 <= old_size <= size:
        raise IndexError("the old tree is larger than the tree")
    if old_size in (0, size):
        return []
    level = leaves

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return level[32 * lo : 32 * lo + 32]
        k = _split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if whole else [mth(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*subproof(m, lo, lo + k, whole), mth(lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), mth(lo, lo + k)]

    return subproof(old_size, 0, size, True)


def consistent(
    old_size: int, old_root: bytes, new_size: int, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether `path` proves the tree (`old_size`, `old_root`) a prefix of (`new_size`,
    `new_root`): RFC 9162 §2.1.4.2, with the empty tree a prefix of every tree."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == 0:
        return not path and old_root == hashlib.sha256(b"").digest()
    if old_size == new_size:
        return not path and old_root == new_root
    proof = list(path)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        proof.insert(0, old_root)
    if not proof:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def _split(n: int) -> int:
    """The largest power of two smaller than `n` (> 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(fact_hashes: list[str]) -> bytes:
    """Root computed the slow, obvious way (RFC 9162 recursion); the reference for tests."""
    leaves = [leaf_hash(h) for h in fact_hashes]

    def mth(items: list[bytes]) -> bytes:
        if not items:
            return hashlib.sha256(b"").digest()
        if len(items) == 1:
            return items[0]
        k = 1
        while k * 2 < len(items):
            k *= 2
        return node_hash(mth(items[:k]), mth(items[k:]))

    return mth(leaves)
