"""Evidence packages: checked from their own contents, and every kind of tampering named."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.checkpoint import LogNotIntact, public_key_of, rotate_signing_key
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from projections.evidence import evidence_package, verify_evidence
from projections.trail import subject_trail
from tests.facts import erase, fact, grant, withdraw

NAME = "Qodirova Dilnoza Botirovna"
REFERENCE = "+998901112233"


def recorded(ledger: ConsentLedger, *facts: dict[str, Any]) -> None:
    for outcome in ledger.record([parse_fact(f) for f in facts]):
        assert isinstance(outcome, Receipt), outcome


def history(ledger: ConsentLedger) -> Any:
    """A subject with five facts among other subjects' facts, so its leaves are scattered;
    its tenant has published a second policy version, which the subject never saw."""
    recorded(
        ledger,
        fact(
            "policy.published",
            None,
            event_id="p2",
            policy_version="2.0",
            effective_at="2025-01-01T00:00:00+05:00",
            language="uz",
            text="v2",
            operator={"name": "MEGABITE-CRM LLC", "tin": "309519699"},
            purposes={
                "marketing": {
                    "legal_basis": "consent",
                    "categories": ["email"],
                    "retention_days": 1,
                }
            },
        ),
        grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}),
        grant("someone-else", event_id="o1"),
        grant(REFERENCE, ("support",), event_id="g2", occurred_at="2025-03-02T10:00:00+05:00"),
        withdraw(REFERENCE, event_id="w1", occurred_at="2025-03-05T10:00:00+05:00"),
        grant("another-one", event_id="o2"),
        fact(
            "consent.corrected",
            REFERENCE,
            event_id="c1",
            corrects="g2",
            reason="entered a day late",
            changes={"occurred_at": "2025-03-01T12:00:00+05:00"},
        ),
        fact("request.received", REFERENCE, event_id="r1", request_id="q1", kind="information"),
    )
    return ledger.sid("demo", REFERENCE)


def package_of(ledger: ConsentLedger) -> dict[str, Any]:
    found = evidence_package(ledger, "demo", history(ledger))
    assert found is not None
    # As it travels: bytes, read back by someone else.
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(found))
    return decoded


def test_a_package_verifies_from_its_own_contents(backend_ledger: ConsentLedger) -> None:
    package = package_of(backend_ledger)
    result = verify_evidence(package, public_key_of(backend_ledger.keystore))
    assert result.ok, result.problems
    subject, tenant = package["chains"]["subject"], package["chains"]["tenant"]
    assert [e["version"] for e in subject] == [1, 2, 3, 4, 5]
    assert result.facts_checked == len(subject) + len(tenant)
    assert result.size == sum(t["size"] for t in package["tree_head"]["trees"]) >= 9
    assert [e["leaf_index"] for e in subject] == sorted(e["leaf_index"] for e in subject)
    # The trail it carries is the trail, and the policy the grants name is in it, text and all.
    trail = subject_trail(backend_ledger, "demo", backend_ledger.sid("demo", REFERENCE))
    assert package["trail"] == orjson.loads(orjson.dumps(trail))
    assert package["trail"]["facts"][0]["personal_data"] == {"personal_data": {"full_name": NAME}}
    policies = [orjson.loads(base64.b64decode(e["state"])) for e in tenant]
    assert any("crmpro" in p.get("policy_version", "") and p.get("text") for p in policies)


def _state(entry: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(base64.b64decode(entry["state"]))
    return value


def _restate(entry: dict[str, Any], state: dict[str, Any]) -> None:
    entry["state"] = base64.b64encode(orjson.dumps(state)).decode()


def drop_the_last_fact(p: dict[str, Any]) -> None:
    """What chains and proofs alone cannot see: only the signed subject head shows it."""
    p["chains"]["subject"].pop()
    p["trail"]["facts"].pop()


def another_subject_head(p: dict[str, Any]) -> None:
    p["subject_head"]["version"] -= 1


def flip_a_byte(p: dict[str, Any]) -> None:
    entry = p["chains"]["subject"][2]
    raw = bytearray(base64.b64decode(entry["state"]))
    raw[len(raw) // 2] ^= 0x01
    entry["state"] = base64.b64encode(bytes(raw)).decode()


def drop_a_fact(p: dict[str, Any]) -> None:
    del p["chains"]["subject"][1]
    del p["trail"]["facts"][1]


def swap_two(p: dict[str, Any]) -> None:
    chain = p["chains"]["subject"]
    chain[1], chain[2] = chain[2], chain[1]


def rewrite_a_fact_and_its_hash(p: dict[str, Any]) -> None:
    """A forger who also rehashes: the chain and the inclusion proof still give it away."""
    from ledger.chain import fact_hash

    entry = p["chains"]["subject"][3]
    state = _state(entry)
    state["purposes"] = ["support"]
    _restate(entry, state)
    sid = bytes.fromhex(p["sid"])
    from uuid import UUID

    entry["hash"] = fact_hash(
        UUID(bytes=sid), entry["version"], entry["topic"], base64.b64decode(entry["state"])
    )


def move_a_trail_date(p: dict[str, Any]) -> None:
    p["trail"]["facts"][2]["occurred_at"] = "2025-03-09T10:00:00+05:00"


def relabel_a_trail_row(p: dict[str, Any]) -> None:
    p["trail"]["facts"][2]["type"] = "consent.granted"


def another_policy_hash(p: dict[str, Any]) -> None:
    p["trail"]["facts"][0]["policy"]["text_sha256"] = "0" * 64


def another_policy_text(p: dict[str, Any]) -> None:
    for entry in p["chains"]["tenant"]:
        state = _state(entry)
        if "text" in state:
            state["text"] += " (amended)"
            _restate(entry, state)


def another_root(p: dict[str, Any]) -> None:
    p["tree_head"]["trees"][0]["root"] = "ab" * 32


def another_size(p: dict[str, Any]) -> None:
    p["tree_head"]["trees"][0]["size"] += 1


def another_signature(p: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(p["tree_head"]["signature"]))
    sig[0] ^= 0x01
    p["tree_head"]["signature"] = base64.b64encode(bytes(sig)).decode()


def another_proof(p: dict[str, Any]) -> None:
    path = p["chains"]["subject"][0]["inclusion_path"]
    path[0] = "cd" * 32


def another_leaf(p: dict[str, Any]) -> None:
    p["chains"]["subject"][0]["leaf_index"] += 1


def a_trail_of_someone_else(p: dict[str, Any]) -> None:
    p["trail"]["sid"] = "0" * 32


def a_shorter_trail(p: dict[str, Any]) -> None:
    p["trail"]["facts"].pop()


def unlink_a_correction(p: dict[str, Any]) -> None:
    row = p["trail"]["facts"][1]
    assert row["event_id"] == "g2" and row.pop("corrected_by") == ["c1"]


def another_real_policy(p: dict[str, Any]) -> None:
    """A grant's policy swapped for another version the tenant really published, with that
    version's true text hash."""
    from ledger.policy import text_sha256

    p["trail"]["facts"][0]["policy"] = {"version": "2.0", "text_sha256": text_sha256("v2")}


def a_note_in_a_row(p: dict[str, Any]) -> None:
    p["trail"]["facts"][2]["note"] = "consent was obtained by phone"


def a_policy_on_a_withdrawal(p: dict[str, Any]) -> None:
    p["trail"]["facts"][2]["policy"] = dict(p["trail"]["facts"][0]["policy"])


def a_note_in_the_package(p: dict[str, Any]) -> None:
    p["note"] = "the ledger's operator vouches for this consent"


def claim_an_erasure(p: dict[str, Any]) -> None:
    p["trail"]["erased"], p["trail"]["erased_at"] = True, "2025-03-06T10:00:00+05:00"


TAMPERING: list[tuple[Callable[[dict[str, Any]], None], str, str, int | None]] = [
    (flip_a_byte, "altered", "subject", 3),
    (drop_the_last_fact, "incomplete", "subject_head", 5),
    (another_subject_head, "signature", "subject_head", None),
    (drop_a_fact, "removed", "subject", 3),
    (swap_two, "reordered", "subject", 3),
    (rewrite_a_fact_and_its_hash, "not_included", "subject", 4),
    (move_a_trail_date, "trail_mismatch", "trail", 3),
    (relabel_a_trail_row, "trail_mismatch", "trail", 3),
    (another_policy_hash, "trail_mismatch", "trail", 1),
    (another_policy_text, "altered", "tenant", 2),
    (another_root, "signature", "tree_head", None),
    (another_size, "signature", "tree_head", None),
    (another_signature, "signature", "tree_head", None),
    (another_proof, "not_included", "subject", 1),
    (another_leaf, "not_included", "subject", 1),
    (a_trail_of_someone_else, "trail_mismatch", "trail", None),
    (a_shorter_trail, "trail_mismatch", "trail", None),
    (unlink_a_correction, "trail_mismatch", "trail", 2),
    (claim_an_erasure, "trail_mismatch", "trail", None),
    (a_note_in_the_package, "unexpected", "package", None),
    (another_real_policy, "trail_mismatch", "trail", 1),
    (a_note_in_a_row, "trail_mismatch", "trail", 3),
    (a_policy_on_a_withdrawal, "trail_mismatch", "trail", 3),
]


@pytest.mark.parametrize(
    ("tamper", "kind", "where", "version"), TAMPERING, ids=[t[0].__name__ for t in TAMPERING]
)
def test_tampering_is_found_and_named(
    ledger: ConsentLedger,
    tamper: Callable[[dict[str, Any]], None],
    kind: str,
    where: str,
    version: int | None,
) -> None:
    package = package_of(ledger)
    assert verify_evidence(package).ok
    tampered = copy.deepcopy(package)
    tamper(tampered)
    result = verify_evidence(tampered)
    assert not result.ok
    first = result.problems[0]
    assert (first.kind, first.where, first.version) == (kind, where, version), result.problems


def test_a_chain_broken_by_whoever_holds_the_key_still_shows(ledger: ConsentLedger) -> None:
    """A signer can make any tree it likes include any bytes: the chain is what it cannot
    fake without rewriting every later fact of the subject, which the trail then betrays."""
    from uuid import UUID

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.chain import fact_hash, inclusion_paths, leaf_level
    from ledger.checkpoint import sign_tree_head
    from projections.evidence import subject_head_message

    package = package_of(ledger)
    sid = UUID(hex=package["sid"])
    entry = package["chains"]["subject"][2]
    state = _state(entry)
    state["prev_hash"] = "0" * 64
    _restate(entry, state)
    entry["hash"] = fact_hash(sid, entry["version"], entry["topic"], _state_bytes(entry))
    # A tree of the package's own facts, signed by a key of the forger's.
    entries = sorted(
        package["chains"]["subject"] + package["chains"]["tenant"], key=lambda e: e["leaf_index"]
    )
    root, paths = inclusion_paths(leaf_level([e["hash"] for e in entries]), range(len(entries)))
    for leaf, e in enumerate(entries):
        e["leaf_index"], e["inclusion_path"] = leaf, [node.hex() for node in paths[leaf]]
    for e in entries:
        e["partition"] = 0
    forger = Ed25519PrivateKey.generate()
    package["tree_head"] = sign_tree_head(
        forger, [(0, len(entries), root.hex())], "2026-12-02T00:00:00+00:00"
    )
    last = package["chains"]["subject"][-1]
    signed = forger.sign(subject_head_message(sid, 0, len(entries), last["version"], last["hash"]))
    package["subject_head"] = {
        "partition": 0,
        "tree_size": len(entries),
        "version": last["version"],
        "hash": last["hash"],
        "signature": base64.b64encode(signed).decode(),
    }
    first = verify_evidence(package).problems[0]
    assert (first.kind, first.where, first.version) == ("altered", "subject", 3)
    assert "prev_hash" in first.message


def _state_bytes(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["state"])


def test_a_package_signed_by_another_key_is_refused_when_the_key_is_given(
    ledger: ConsentLedger, tmp_path: Any
) -> None:
    from ledger.settings import Settings

    other = ConsentLedger(Settings(data_dir=tmp_path / "other"))
    try:
        stranger = public_key_of(other.keystore)
    finally:
        other.close()
    package = package_of(ledger)
    assert verify_evidence(package).ok
    refused = verify_evidence(package, stranger)
    assert [p.kind for p in refused.problems] == ["untrusted_key"]


@pytest.mark.parametrize(
    "broken",
    [[], {"format": "something else"}, {"format": "consent-ledger/evidence/v1"}, "text"],
)
def test_what_is_not_a_package_is_malformed_not_an_exception(broken: Any) -> None:
    result = verify_evidence(broken)
    assert [p.kind for p in result.problems] == ["malformed"]


def test_a_package_with_garbage_where_bytes_belong_is_malformed(ledger: ConsentLedger) -> None:
    package = package_of(ledger)
    package["chains"]["subject"][0]["state"] = "not base64!"
    assert [p.kind for p in verify_evidence(package).problems] == ["malformed"]


def test_an_erased_subjects_package_still_verifies_and_holds_no_personal_data(
    backend_ledger: ConsentLedger,
) -> None:
    sid = history(backend_ledger)
    recorded(backend_ledger, erase(REFERENCE, event_id="e1"))
    package = evidence_package(backend_ledger, "demo", sid)
    assert package is not None
    data = orjson.dumps(package)
    assert verify_evidence(orjson.loads(data)).ok
    assert NAME.encode() not in data and REFERENCE.encode() not in data
    assert package["trail"]["erased"] and package["trail"]["subject"] is None
    assert package["trail"]["facts"][0]["personal_data"] == {"erased": True}
    hidden = orjson.loads(data)
    hidden["trail"]["erased"] = False
    assert [p.kind for p in verify_evidence(hidden).problems] == ["trail_mismatch"]


def test_no_package_for_another_tenants_subject(ledger: ConsentLedger) -> None:
    sid = history(ledger)
    ledger.create_tenant("acme")
    assert evidence_package(ledger, "acme", sid) is None


def test_no_package_is_signed_for_a_log_whose_records_disagree(ledger: ConsentLedger) -> None:
    """The package vouches for the log with the ledger's key: one whose fact index no longer
    hashes to its recorded root (here, another subject's row rewritten) gets none."""
    import sqlite3

    sid = history(ledger)
    other = ledger.sid("demo", "someone-else").hex
    with sqlite3.connect(ledger.settings.log_path) as db:
        db.execute(
            "UPDATE stored_events_index SET hash = ? WHERE originator_id = ?", ("0" * 64, other)
        )
    with pytest.raises(LogNotIntact):
        evidence_package(ledger, "demo", sid)


def test_no_package_is_signed_for_a_subject_whose_bytes_changed(ledger: ConsentLedger) -> None:
    import sqlite3

    sid = history(ledger)
    where = "WHERE originator_id = ? AND originator_version = 3"
    with sqlite3.connect(ledger.settings.log_path) as db:
        [(state,)] = db.execute(f"SELECT state FROM stored_events {where}", (sid.hex,))
        changed = bytes(state).replace(b'"test"', b'"tesT"')
        assert changed != state
        db.execute(f"UPDATE stored_events SET state = ? {where}", (changed, sid.hex))
    with pytest.raises(LogNotIntact, match="recorded hash"):
        evidence_package(ledger, "demo", sid)


# What a package carries for the reader that no check binds: the decrypted personal data and
# the subject's reference (the package holds no key), and the log positions (in Kafka mode
# offsets, which no proof covers: what is proven is each fact's leaf in its partition's tree).
UNCHECKED = (
    ("trail", "subject"),
    ("trail", "facts", "*", "personal_data"),
    ("trail", "facts", "*", "position"),
    ("chains", "*", "*", "position"),
    ("tree_head", "algorithm"),
    ("key_transitions", "*", "algorithm"),
)


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*path, i))]
    return [path]


def unchecked(path: tuple[Any, ...]) -> bool:
    return any(
        len(path) >= len(rule) and all(r == "*" or r == p for r, p in zip(rule, path, strict=False))
        for rule in UNCHECKED
    )


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    if value is None:
        return "x"
    return None  # an empty list or object: gone


@pytest.mark.parametrize("state", ["kept", "erased", "rotated"])
def test_every_value_a_package_vouches_for_is_checked(
    backend_ledger: ConsentLedger, state: str
) -> None:
    """Every leaf of the package but the few listed as unchecked, changed in turn (a string's
    last character, a number by one, a flag flipped): not one change goes unnoticed. Also
    with the signing key replaced twice, so the package carries its hand-overs."""
    sid = history(backend_ledger)
    if state == "erased":
        recorded(backend_ledger, erase(REFERENCE, event_id="e1"))
    if state == "rotated":
        for _ in range(2):
            rotate_signing_key(backend_ledger.keystore)
    found = evidence_package(backend_ledger, "demo", sid)
    package: dict[str, Any] = orjson.loads(orjson.dumps(found))
    assert verify_evidence(package).ok
    assert ("key_transitions" in package) == (state == "rotated")
    paths = [p for p in leaf_paths(package) if not unchecked(p)]
    assert len(paths) > 150
    unnoticed = []
    for path in paths:
        tampered = copy.deepcopy(package)
        holder = tampered
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = changed(holder[path[-1]])
        if verify_evidence(tampered).ok:
            unnoticed.append(path)
    assert unnoticed == []
