"""The incremental Merkle frontier gives exactly the RFC 9162 root computed the slow way;
the mapper's remembered hashes are always the hashes of the bytes asked about."""

from __future__ import annotations

import hashlib
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from ledger.chain import (
    REMEMBERED,
    ChainMapper,
    consistency_path,
    consistent,
    fact_hash,
    frontier_append,
    frontier_root,
    inclusion_paths,
    leaf_hash,
    leaf_level,
    merkle_root,
    root_from_inclusion,
    stored_event,
)


def test_empty_tree_hash() -> None:
    assert frontier_root([]) == hashlib.sha256(b"").digest() == merkle_root([])


def test_rfc9162_shape_for_three_leaves() -> None:
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    a, b, c = (leaf_hash(h) for h in hashes)
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle_root(hashes) == hashlib.sha256(b"\x01" + ab + c).digest()


@given(st.integers(min_value=0, max_value=300))
def test_frontier_matches_reference_at_every_size(n: int) -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    frontier: list[bytes] = []
    for size, h in enumerate(hashes):
        frontier = frontier_append(frontier, size, leaf_hash(h))
    assert frontier_root(frontier) == merkle_root(hashes)
    assert len(frontier) == bin(n).count("1")


@given(st.integers(min_value=1, max_value=300), st.data())
def test_inclusion_proofs_lead_to_the_reference_root_and_nowhere_else(
    n: int, data: st.DataObject
) -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    chosen = data.draw(st.sets(st.integers(min_value=0, max_value=n - 1), min_size=1))
    root, paths = inclusion_paths(leaf_level(hashes), chosen)
    assert root == merkle_root(hashes)
    for i in chosen:
        leaf = leaf_hash(hashes[i])
        assert root_from_inclusion(leaf, i, n, paths[i]) == root
        # The same proof for another leaf or index proves nothing about this root. (Another
        # size can: a root stands for one size only because the tree head signs both.)
        assert root_from_inclusion(leaf_hash(hashes[(i + 1) % n]), i, n, paths[i]) != root or n == 1
        if n > 1:
            assert root_from_inclusion(leaf, (i + 1) % n, n, paths[i]) != root
        assert root_from_inclusion(leaf, n, n, paths[i]) is None
    with pytest.raises(IndexError):
        inclusion_paths(leaf_level(hashes), [n])


@given(st.integers(min_value=0, max_value=200), st.data())
def test_consistency_proofs_link_every_prefix_and_no_rewritten_one(
    n: int, data: st.DataObject
) -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    m = data.draw(st.integers(min_value=0, max_value=n))
    root, old_root = merkle_root(hashes), merkle_root(hashes[:m])
    path = consistency_path(leaf_level(hashes), m)
    assert consistent(m, old_root, n, root, path)
    if 0 < m < n:
        changed = data.draw(st.integers(min_value=0, max_value=m - 1))
        rewritten = [*hashes[:changed], "00" * 32, *hashes[changed + 1 :]]
        # The old checkpoint against the rewritten log's proof and root, and the other way.
        assert not consistent(
            m, old_root, n, merkle_root(rewritten), consistency_path(leaf_level(rewritten), m)
        )
        assert not consistent(m, merkle_root(rewritten[:m]), n, root, path)
        assert not consistent(m, old_root, n, root, path[:-1])
        assert not consistent(m + 1, old_root, n, root, path)
        # Nor does it prove the log shrank (the two checkpoints given the other way round),
        # nor does no proof at all, whatever the old size.
        assert not consistent(n, root, m, old_root, path)
        assert not consistent(m, old_root, n, root, [])
    with pytest.raises(IndexError):
        consistency_path(leaf_level(hashes), n + 1)


def test_inclusion_proof_of_rfc9162_shape() -> None:
    """Five leaves: the fifth is carried up two levels, so its proof is one node long."""
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    root, paths = inclusion_paths(leaf_level(hashes), range(5))
    leaves = [leaf_hash(h) for h in hashes]
    ab = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    cd = hashlib.sha256(b"\x01" + leaves[2] + leaves[3]).digest()
    abcd = hashlib.sha256(b"\x01" + ab + cd).digest()
    assert paths[4] == [abcd] and paths[0] == [leaves[1], cd, leaves[4]]
    assert root == hashlib.sha256(b"\x01" + abcd + leaves[4]).digest()


def test_a_remembered_hash_answers_only_for_the_same_event() -> None:
    """The mapper remembers a batch's hashes by the stored bytes object; a hash must never be
    given for other bytes, or for the same bytes under another aggregate, version or topic."""
    sid, other_sid = uuid4(), uuid4()
    state = b'{"a":1}'
    for args in [
        (sid, 2, "t", b'{"a":2}'),
        (sid, 2, "t", bytes(bytearray(state))),  # equal bytes, another object: recomputed
        (other_sid, 2, "t", state),
        (sid, 3, "t", state),
        (sid, 2, "u", state),
    ]:
        mapper = ChainMapper()
        assert mapper.hash_of_stored(sid, 2, "t", state) == fact_hash(sid, 2, "t", state)
        assert mapper.hash_of_stored(*args) == fact_hash(*args)


def test_the_remembered_hashes_stay_bounded() -> None:
    """A replica catching up a whole topic stores every event without a batch to end it."""
    mapper = ChainMapper()
    sid = uuid4()
    states = [str(i).encode() for i in range(REMEMBERED * 2 + 1)]
    for version, state in enumerate(states, start=1):
        expected = fact_hash(sid, version, "t", state)
        assert mapper.hash_of_stored(sid, version, "t", state) == expected
        assert len(mapper._hashes) <= REMEMBERED


@given(
    st.uuids() | st.text(max_size=40),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.text(max_size=60),
    st.binary(max_size=200),
)
def test_stored_event_is_the_constructors(
    originator_id: object, version: int, topic: str, state: bytes
) -> None:
    built = stored_event(originator_id, version, topic, state)  # type: ignore[arg-type]
    constructed = StoredEvent(originator_id, version, topic, state)  # type: ignore[arg-type]
    assert type(built) is StoredEvent
    assert vars(built) == vars(constructed)
    assert built == constructed and hash(built) == hash(constructed)
