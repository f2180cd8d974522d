"""Signed checkpoints: a later one proves the log only grew; a rewritten history cannot."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.checkpoint import (
    SinceTooLarge,
    checkpoint,
    public_key_of,
    since_sizes_of,
    verify_checkpoint,
)
from ledger.settings import Settings
from projections.evidence import evidence_package, verify_evidence
from tests.checkpoint_support import recorded, signed
from tests.facts import grant, withdraw


def test_a_later_checkpoint_proves_the_log_only_grew(backend_ledger: ConsentLedger) -> None:
    recorded(backend_ledger, grant("a", event_id="a1"), grant("b", event_id="b1"))
    old = signed(backend_ledger)
    recorded(backend_ledger, withdraw("a", event_id="a2"), grant("c", event_id="c1"))
    new = signed(backend_ledger, since=old)
    key = public_key_of(backend_ledger.keystore)
    result = verify_checkpoint(new, old, key)
    assert result.ok, result.problems
    old_sizes = since_sizes_of(old)
    assert result.size == sum(old_sizes.values()) + 2
    assert result.extends is not None
    assert {p: n for p, n, _ in result.extends} == old_sizes
    # Without the proof, or the other way round, nothing is shown.
    bare = signed(backend_ledger)
    assert {p.kind for p in verify_checkpoint(bare, old).problems} == {"inconsistent"}
    assert {p.kind for p in verify_checkpoint(old, new).problems} == {"inconsistent"}
    # The same checkpoint again: a tree extends itself, with an empty proof.
    assert verify_checkpoint(signed(backend_ledger, since=bare), bare).ok


def test_a_rewritten_history_cannot_extend_a_published_checkpoint(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    """The operator's own key, a log with the same number of facts and different ones: the
    old checkpoint's holder sees it, whatever the new one claims."""
    recorded(ledger, grant("a", event_id="a1"), grant("b", event_id="b1"))
    old = signed(ledger)
    rewritten_dir = tmp_path / "rewritten"
    rewritten_dir.mkdir()
    for name in ("master.key", "keys.db", "keys.db-wal"):  # the same signing key
        if (ledger.settings.data_dir / name).exists():
            shutil.copy(ledger.settings.data_dir / name, rewritten_dir / name)
    # A key store with subjects beside no log is refused (ledger.keystore.LogMissing); the
    # operator forging a history gets past that with an empty file of their own.
    (rewritten_dir / "ledger.db").touch()
    rewritten = ConsentLedger(Settings(data_dir=rewritten_dir))
    try:
        rewritten.init_demo()
        recorded(rewritten, grant("a", event_id="a1", occurred_at="2025-03-02T10:00:00+05:00"))
        recorded(rewritten, grant("b", event_id="b1"), grant("c", event_id="c1"))
        assert public_key_of(rewritten.keystore) == public_key_of(ledger.keystore)
        forged = signed(rewritten, since=old)
    finally:
        rewritten.close()
    result = verify_checkpoint(forged, old, public_key_of(ledger.keystore))
    assert [p.kind for p in result.problems] == ["inconsistent"]
    assert "changed or removed" in result.problems[0].message


def test_an_evidence_package_can_prove_it_extends_a_checkpoint(ledger: ConsentLedger) -> None:
    recorded(ledger, grant("a", event_id="a1"))
    old = signed(ledger)
    recorded(ledger, withdraw("a", event_id="a2"))
    package = evidence_package(
        ledger, "demo", ledger.sid("demo", "a"), since_sizes=since_sizes_of(old)
    )
    assert package is not None
    package = orjson.loads(orjson.dumps(package))
    assert verify_evidence(package, public_key_of(ledger.keystore), old).ok
    package["consistency"][0]["path"][0] = "ab" * 32
    assert [p.kind for p in verify_evidence(package, None, old).problems] == ["inconsistent"]


def test_no_proof_from_a_tree_larger_than_the_log(ledger: ConsentLedger) -> None:
    sizes = since_sizes_of(signed(ledger))
    with pytest.raises(SinceTooLarge):
        checkpoint(ledger.ledger_recorder, ledger.keystore, since_sizes={0: sizes[0] + 1})


def test_tampered_or_foreign_checkpoints_are_named(ledger: ConsentLedger, tmp_path: Path) -> None:
    recorded(ledger, grant("a", event_id="a1"))
    cp = signed(ledger)
    assert verify_checkpoint(cp).ok
    moved = orjson.loads(orjson.dumps(cp))
    moved["tree_head"]["trees"][0]["size"] += 1
    assert [p.kind for p in verify_checkpoint(moved).problems] == ["signature"]
    other = ConsentLedger(Settings(data_dir=tmp_path / "other"))
    try:
        stranger = public_key_of(other.keystore)
    finally:
        other.close()
    assert [p.kind for p in verify_checkpoint(cp, None, stranger).problems] == ["untrusted_key"]
    not_checkpoints: list[Any] = [[], {"format": "consent-ledger/checkpoint/v1"}, {"tree_head": 1}]
    for broken in not_checkpoints:
        assert [p.kind for p in verify_checkpoint(broken).problems] == ["malformed"]
    assert [p.kind for p in verify_checkpoint(cp, {"format": "x"}).problems] == ["malformed"]


@pytest.mark.kafka
def test_a_rebuilt_kafka_replica_signs_the_trees_the_writer_signed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Replicas order the log as their reads happened to, so their own Merkle heads differ;
    signed trees are per ledger partition in offset order, the same from any replica."""
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from tests.kafka_support import kafka_settings

    settings = kafka_settings(tmp_path / "writer", kafka_bootstrap)
    writer = ConsentLedger(settings)
    try:
        writer.init_demo()
        for batch in range(3):
            recorded(
                writer, *(grant(f"s-{batch}-{i}", event_id=f"g-{batch}-{i}") for i in range(8))
            )
        published = signed(writer)
        writer_head = writer.ledger_recorder.head()
    finally:
        writer.close()
    rebuilt_dir = tmp_path / "rebuilt"
    rebuilt_dir.mkdir()
    for name in ("master.key", "keys.db", "keys.db-wal"):  # the same signing key
        if (settings.data_dir / name).exists():
            shutil.copy(settings.data_dir / name, rebuilt_dir / name)
    rebuilt = ConsentLedger(
        kafka_settings(rebuilt_dir, kafka_bootstrap, topic_prefix=settings.topic_prefix)
    )
    try:
        replica = rebuilt.ledger_recorder
        assert isinstance(replica, KafkaLedgerRecorder)
        replica.catch_up()
        assert rebuilt.ledger_recorder.head()[0] == writer_head[0]
        assert rebuilt.ledger_recorder.head() != writer_head  # another order of the same facts
        again = signed(rebuilt, since=published)
        package = evidence_package(
            rebuilt, "demo", rebuilt.sid("demo", "s-1-3"), since_sizes=since_sizes_of(published)
        )
    finally:
        rebuilt.close()
    assert again["tree_head"]["trees"] == published["tree_head"]["trees"]
    assert len(published["tree_head"]["trees"]) == 3
    assert verify_checkpoint(again, published).ok
    assert package is not None
    assert verify_evidence(orjson.loads(orjson.dumps(package)), None, published).ok
