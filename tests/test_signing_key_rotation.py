"""Signing key rotation: the retiring key and its successor sign the hand-over, and whatever
either key signed checks against any key of the ledger; a key that signs after its
hand-over, a hand-over left out or forged, and a key the hand-overs do not reach are named.

Against real key store files, the real `consent-ledger` process and, parametrised, the real
broker (Kafka mode signs one tree per ledger partition).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.checkpoint import (
    FORMAT,
    public_key_of,
    rotate_signing_key,
    sign_tree_head,
    since_sizes_of,
    verify_checkpoint,
)
from ledger.keystore import KeyStore, load_master_key
from projections.evidence import evidence_package, verify_evidence
from tests.checkpoint_support import recorded, signed
from tests.cli_support import run, verify_elsewhere
from tests.facts import grant, withdraw


def kinds(result: Any) -> list[str]:
    return [p.kind for p in result.problems]


def test_checkpoints_across_a_rotation_check_against_either_key(
    backend_ledger: ConsentLedger,
) -> None:
    ledger = backend_ledger
    recorded(ledger, grant("a", event_id="a1"), grant("b", event_id="b1"))
    old, first_key = signed(ledger), public_key_of(ledger.keystore)
    assert "key_transitions" not in old  # a key never replaced: the format of before
    rotate_signing_key(ledger.keystore)
    second_key = public_key_of(ledger.keystore)
    assert second_key != first_key
    recorded(ledger, withdraw("a", event_id="a2"))
    new = signed(ledger, since=old)
    assert new["tree_head"]["public_key"] == second_key
    assert [(t["previous_key"], t["public_key"]) for t in new["key_transitions"]] == [
        (first_key, second_key)
    ]
    for trusted in (first_key, second_key, None):
        assert verify_checkpoint(new, old, trusted).ok, trusted
    # The old checkpoint alone carries no hand-over: only its own key vouches for it.
    assert verify_checkpoint(old, None, first_key).ok
    assert kinds(verify_checkpoint(old, None, second_key)) == ["untrusted_key"]
    # Without the hand-overs, the new key is a stranger to the old one's holder.
    bare = {k: v for k, v in new.items() if k != "key_transitions"}
    assert kinds(verify_checkpoint(bare, old, first_key)) == ["untrusted_key", "untrusted_key"]


def test_hand_overs_forged_broken_or_out_of_order_are_named(ledger: ConsentLedger) -> None:
    recorded(ledger, grant("a", event_id="a1"))
    keys = [public_key_of(ledger.keystore)]
    for _ in range(3):
        rotate_signing_key(ledger.keystore)
        keys.append(public_key_of(ledger.keystore))
    cp = signed(ledger)
    assert [t["public_key"] for t in cp["key_transitions"]] == keys[1:]
    assert all(verify_checkpoint(cp, None, key).ok for key in keys)

    def altered(change: Any) -> dict[str, Any]:
        copy: dict[str, Any] = orjson.loads(orjson.dumps(cp))
        change(copy["key_transitions"])
        return copy

    def retime(ts: list[dict[str, Any]]) -> None:
        ts[0]["rotated_at"] = "2020-01-01T00:00:00+00:00"

    def resign(ts: list[dict[str, Any]]) -> None:
        ts[1]["successor_signature"] = ts[1]["signature"]

    assert kinds(verify_checkpoint(altered(retime), None, keys[0])) == ["signature"] * 2
    assert kinds(verify_checkpoint(altered(resign), None, keys[0])) == ["signature"]
    dropped = altered(lambda ts: ts.pop(0))
    assert kinds(verify_checkpoint(dropped, None, keys[0])) == ["untrusted_key"]
    assert verify_checkpoint(dropped, None, keys[1]).ok
    gap = altered(lambda ts: ts.pop(1))  # K0 -> K1, then K2 -> K3
    assert kinds(verify_checkpoint(gap, None, keys[3])) == ["key_transitions"]
    short = altered(lambda ts: ts.pop())  # ends at K2, which did not sign
    assert kinds(verify_checkpoint(short, None, keys[2])) == ["key_transitions"]
    swapped = altered(lambda ts: ts.reverse())
    assert "key_transitions" in kinds(verify_checkpoint(swapped, None, keys[2]))
    not_hand_overs: list[dict[str, Any]] = [
        {"key_transitions": {}},
        {"key_transitions": [{"previous_key": 1}]},
    ]
    for broken in not_hand_overs:
        assert kinds(verify_checkpoint({**cp, **broken})) == ["malformed"]


def test_a_retired_key_that_signs_after_its_hand_over_is_named(ledger: ConsentLedger) -> None:
    """Whoever kept a retired key can sign with it; what it signed after handing over, the
    hand-overs date and name."""
    recorded(ledger, grant("a", event_id="a1"))
    retired = ledger.keystore.signing_key()
    first_key = public_key_of(ledger.keystore)
    honest = signed(ledger)
    rotate_signing_key(ledger.keystore)
    new = signed(ledger, since=honest)
    assert verify_checkpoint(new, honest, first_key).ok
    trees = [(int(t["partition"]), int(t["size"]), t["root"]) for t in honest["tree_head"]["trees"]]
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    late = {"format": FORMAT, "tree_head": sign_tree_head(retired, trees, later)}
    late = orjson.loads(orjson.dumps(late))
    assert verify_checkpoint(late, None, first_key).ok  # alone, nothing shows the retirement
    assert kinds(verify_checkpoint(new, late, first_key)) == ["retired_key"]
    package = evidence_package(
        ledger, "demo", ledger.sid("demo", "a"), since_sizes=since_sizes_of(honest)
    )
    package = orjson.loads(orjson.dumps(package))
    assert verify_evidence(package, first_key, honest).ok
    assert kinds(verify_evidence(package, first_key, late)) == ["retired_key"]


def test_an_evidence_package_after_a_rotation_verifies_under_the_key_published_before(
    ledger: ConsentLedger,
) -> None:
    recorded(ledger, grant("a", event_id="a1"))
    first_key = public_key_of(ledger.keystore)
    rotate_signing_key(ledger.keystore)
    recorded(ledger, withdraw("a", event_id="a2"))
    package = evidence_package(ledger, "demo", ledger.sid("demo", "a"))
    package = orjson.loads(orjson.dumps(package))
    assert package["tree_head"]["public_key"] == public_key_of(ledger.keystore)
    assert verify_evidence(package, first_key).ok
    del package["key_transitions"]
    assert kinds(verify_evidence(package, first_key)) == ["untrusted_key"]


def wrapped_signing_key(path: Path) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE name='signing_key'").fetchone()
    return bytes(value)


def test_a_running_ledger_signs_with_the_new_key_and_the_old_one_is_gone(
    ledger: ConsentLedger,
) -> None:
    """Another process rotates (the CLI while the service runs): the open ledger's next
    checkpoint is the new key's, and the retired key's bytes are left in no file."""
    recorded(ledger, grant("a", event_id="a1"))
    path = ledger.settings.keystore_path
    first_key = public_key_of(ledger.keystore)
    before = wrapped_signing_key(path)
    other = KeyStore(path, load_master_key(ledger.settings))  # another process's
    try:
        statement = rotate_signing_key(other)
    finally:
        other.close()
    cp = signed(ledger)
    assert cp["tree_head"]["public_key"] == statement["public_key"] != first_key
    assert cp["key_transitions"] == [statement]
    stored = path.read_bytes() + path.with_name("keys.db-wal").read_bytes()
    assert before not in stored
    assert wrapped_signing_key(path) in stored


def test_a_master_key_rotation_keeps_the_signing_key_and_its_hand_overs(
    tmp_path: Path,
) -> None:
    path, old, new = tmp_path / "keys.db", os.urandom(32), os.urandom(32)
    store = KeyStore(path, old)
    statement = rotate_signing_key(store)
    store.rotate(new)
    store.close()
    with contextlib.closing(KeyStore(path, new)) as rotated:
        key, transitions = rotated.signer()
    assert transitions == [statement]
    assert public_key_of_private(key) == statement["public_key"]


def public_key_of_private(key: Any) -> str:
    from ledger.checkpoint import public_key_text

    return public_key_text(key.public_key())


def test_the_cli_rotates_lists_and_checks_across_the_hand_over(data: Path, tmp_path: Path) -> None:
    run(data, "record", stdin=orjson.dumps([grant("c-1", event_id="g1")]).decode())
    first_key = run(data, "signing-key").stdout.strip()
    old = tmp_path / "old.json"
    assert run(data, "checkpoint", "--out", str(old)).returncode == 0
    rotated = run(data, "signing-key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    second_key = run(data, "signing-key").stdout.strip()
    assert f"retired signing key: {first_key}" in rotated.stdout
    assert f"new signing key:     {second_key}" in rotated.stdout
    history = run(data, "signing-key", "history")
    assert f"{first_key} -> {second_key}" in history.stdout
    assert history.stdout.endswith(f"signing now: {second_key}\n")
    listed = orjson.loads(run(data, "signing-key", "history", "--json").stdout)
    assert [t["public_key"] for t in listed] == [second_key]
    new = tmp_path / "new.json"
    made = run(data, "checkpoint", "--since", str(old), "--out", str(new))
    assert made.returncode == 0, made.stderr
    checked = verify_elsewhere(
        data, tmp_path, "--checkpoint", str(new), "--since", str(old), "--public-key", first_key
    )
    assert checked.returncode == 0 and "extending the checkpoint" in checked.stdout, checked.stderr


def test_no_key_store_no_rotation(tmp_path: Path) -> None:
    """A fresh key made where the ledger is not would sign for nobody: refused, nothing made."""
    empty = tmp_path / "empty"
    for command in (("rotate",), ("history",)):
        refused = run(empty, "signing-key", *command)
        assert refused.returncode == 2 and "no key store" in refused.stderr, refused.stderr
    assert not empty.exists() or not any(empty.iterdir())


@pytest.mark.parametrize("field", ["signature", "successor_signature"])
def test_each_signature_of_a_hand_over_is_needed(ledger: ConsentLedger, field: str) -> None:
    rotate_signing_key(ledger.keystore)
    cp = signed(ledger)
    del cp["key_transitions"][0][field]
    assert kinds(verify_checkpoint(cp)) == ["malformed"]


def test_the_service_signs_with_the_key_the_cli_rotated_to(tmp_path: Path) -> None:
    """The service keeps running through a rotation: its next checkpoint and package are
    the new key's and carry the hand-over, and check against the key published before."""
    from fastapi.testclient import TestClient

    from api.app import create_app, keys_path
    from api.keys import ApiKeys
    from ledger.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        headers = {"Authorization": f"Bearer {api_keys.create('demo', {'admin'})[1]}"}
    with TestClient(create_app(settings)) as client:
        body = {k: v for k, v in grant("svc-1").items() if k != "tenant"}
        sid = client.post("/v1/facts", json=body, headers=headers).json()["sid"]
        old = client.get("/v1/checkpoint", headers=headers).json()
        first_key = old["tree_head"]["public_key"]
        rotated = run(settings.data_dir, "signing-key", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        sizes = ",".join(str(t["size"]) for t in old["tree_head"]["trees"])
        new = client.get(f"/v1/checkpoint?since_sizes={sizes}", headers=headers).json()
        package = client.get(
            f"/v1/subjects/{sid}/evidence?since_sizes={sizes}", headers=headers
        ).json()
    for signed_now in (new, package):
        assert signed_now["tree_head"]["public_key"] != first_key
        assert signed_now["key_transitions"][0]["previous_key"] == first_key
    assert verify_checkpoint(new, old, first_key).ok
    assert verify_evidence(package, first_key, old).ok
