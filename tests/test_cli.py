"""The `consent-ledger` command, run as a real process against a real data directory."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.policy import seed_policy_fact
from tests.cli_support import (
    BACKEND_ENV,
    closed,
    command_env,
    line_within,
    lines_until,
    piped,
    run,
    run_fresh,
    start_with,
    verify_elsewhere,
    written_behind,
)
from tests.facts import fact, grant, policy, terms, withdraw


def lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_record_json_lines_with_a_bad_line(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text(
        "\n".join(
            [
                orjson.dumps(grant("c-1", event_id="g1")).decode(),
                "{this is not json",
                orjson.dumps(grant("c-1", event_id="g2", purposes=("lottery",))).decode(),
                orjson.dumps(
                    withdraw("c-1", event_id="w1", occurred_at="2025-03-02T10:00:00+05:00")
                ).decode(),
            ]
        )
    )
    out = run(data, "record", str(path))
    assert out.returncode == 1
    assert out.stderr.strip() == "consent-ledger: 2 of 4 facts rejected (see stdout)"
    result = lines(out.stdout)
    assert [r["index"] for r in result] == [0, 1, 2, 3]
    assert result[0]["receipt"]["event_id"] == "g1"
    assert result[1]["rejected"]["code"] == "invalid_json"
    assert result[2]["rejected"]["code"] == "unknown_purpose"
    assert result[3]["receipt"]["sid"] == result[0]["receipt"]["sid"]
    again = run(data, "record", str(path))
    assert lines(again.stdout)[0]["receipt"]["duplicate"] is True
    # Saved by an editor that starts UTF-8 with a byte order mark: the first fact is read.
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert lines(run(data, "record", str(marked)).stdout)[0]["receipt"]["duplicate"] is True
    document = tmp_path / "marked.json"
    document.write_bytes(b"\xef\xbb\xbf" + orjson.dumps([grant("c-1", event_id="g1")]))
    assert lines(run(data, "record", str(document)).stdout)[0]["receipt"]["duplicate"] is True


def test_record_from_stdin_with_tenant_option(data: Path) -> None:
    fact = grant("c-2", event_id="s1")
    del fact["tenant"]
    out = run(data, "record", "--tenant", "demo", stdin=orjson.dumps([fact]).decode())
    assert out.returncode == 0, out.stderr
    position = lines(out.stdout)[0]["receipt"]["position"]
    # Embedded: the log's position (after the demo policy); Kafka: the partition's offset,
    # which is 0 for a new subject's first fact on an empty partition.
    assert isinstance(position, int) and position >= 0


def test_read_commands(data: Path) -> None:
    run(
        data,
        "record",
        stdin=orjson.dumps(
            [
                grant("c-3", event_id="g", personal_data={"full_name": "Aziz Karimov"}),
                withdraw("c-3", event_id="w", occurred_at="2025-03-05T10:00:00+05:00"),
            ]
        ).decode(),
    )
    trail = orjson.loads(run(data, "trail", "c-3", "--tenant", "demo", "--json").stdout)
    # The first fact registers the subject: no registration entry of its own.
    assert [f["type"] for f in trail["facts"]] == ["consent.granted", "consent.withdrawn"]
    assert trail["subject"] == "c-3"
    assert trail["facts"][0]["personal_data"] == {"personal_data": {"full_name": "Aziz Karimov"}}
    assert trail["facts"][0]["policy"]["text_sha256"]
    csv = run(data, "trail", "c-3", "--tenant", "demo", "--format", "csv").stdout
    # Kafka mode places a fact by partition and offset, as its receipt does.
    kafka = data in BACKEND_ENV
    assert csv.startswith(("position,partition," if kafka else "position,") + "version,type")
    table = run(data, "trail", "c-3", "--tenant", "demo").stdout
    assert "Aziz Karimov" in table and "chain head" in table
    first = trail["facts"][0]
    place = f"{first['partition']}:{first['position']}" if kafka else str(first["position"])
    assert f" {place}  1  2025-03-01T10:00:00+05:00 consent.granted " in table, table

    before = orjson.loads(
        run(
            data,
            "consents",
            "c-3",
            "--tenant",
            "demo",
            "--json",
            "--as-of",
            "2025-03-03T00:00:00+05:00",
        ).stdout
    )
    states = {p["purpose"]: p["state"] for p in before["purposes"]}
    assert states["marketing"] == "granted" and states["support"] == "none"
    after = orjson.loads(
        run(data, "consents", trail["sid"], "--sid", "--tenant", "demo", "--json").stdout
    )
    assert {p["purpose"]: p["state"] for p in after["purposes"]}["marketing"] == "withdrawn"
    known_then = orjson.loads(
        run(
            data,
            "consents",
            "c-3",
            "--tenant",
            "demo",
            "--json",
            "--known-at",
            "2020-01-01T00:00:00Z",
        ).stdout
    )
    assert {p["purpose"]: p["state"] for p in known_then["purposes"]}["marketing"] == "none"
    # The same answer as a table: the sid, never the reference; a line a purpose.
    answered = run(data, "consents", "c-3", "--tenant", "demo").stdout.splitlines()
    assert answered[0].startswith(f"subject {trail['sid']}  as of ")
    assert "c-3" not in "".join(answered)
    rows = {line.split()[0]: line.split() for line in answered[1:]}
    assert set(rows) == {p["purpose"] for p in after["purposes"]}
    assert rows["marketing"][1:4] == ["withdrawn", "since", "2025-03-05T10:00:00+05:00"]
    assert rows["marketing"][-2:] == ["fact", "w"] and rows["support"][1] == "none"


def test_errors_are_one_line_with_status(data: Path) -> None:
    missing = run(data, "trail", "nobody", "--tenant", "demo")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1
    assert "nobody" not in missing.stderr  # the reference is personal data
    bad_time = run(data, "consents", "nobody", "--tenant", "demo", "--as-of", "yesterday")
    assert bad_time.returncode == 1 and "invalid_timestamp" in bad_time.stderr
    # "As known at" an instant still to come: not known yet (an answer labelled with it
    # would change as facts are recorded), for every question that takes it.
    later = "2999-01-01T00:00:00Z"
    for asked in (
        ("consents", "c-3", "--tenant", "demo", "--known-at", later),
        ("who", "--tenant", "demo", "--purpose", "marketing", "--at", later, "--known-at", later),
        ("check", "--tenant", "demo", "--purpose", "marketing", "--at", later, "--known-at", later),
        ("replay", "--into", str(data / "replayed"), "--known-at", later),
    ):
        future = run(data, *asked, stdin="c-3\n")
        assert future.returncode == 1, (asked, future.stderr)
        assert future.stderr.startswith("consent-ledger: known_at_in_future: --known-at is in")
    assert not (data / "replayed").exists()
    no_file = run(data, "record", str(data / "nope.json"))
    assert no_file.returncode == 2 and "cannot read" in no_file.stderr
    empty = run(data, "record", stdin="")
    assert empty.returncode == 2
    backend = run(data, "verify", LEDGER_BACKEND="cassandra")
    assert backend.returncode == 2 and "LEDGER_BACKEND" in backend.stderr
    writer = run(data, "verify", LEDGER_HTTP_WRITER="fork")
    assert writer.returncode == 2 and "LEDGER_HTTP_WRITER" in writer.stderr
    telemetry = run(data, "verify", LEDGER_HTTP_TELEMETRY="sometimes")
    assert telemetry.returncode == 2 and "LEDGER_HTTP_TELEMETRY" in telemetry.stderr
    body = run(data, "verify", LEDGER_HTTP_MAX_BODY_BYTES="16MB")
    assert body.returncode == 2 and "LEDGER_HTTP_MAX_BODY_BYTES" in body.stderr
    # A misspelt setting is ignored, and said to be: the command runs on the default.
    misspelt = run(data, "verify", LEDGER_REQUEST_DUE_DAY="15")
    assert misspelt.returncode == 0, misspelt.stderr
    assert misspelt.stderr == (
        "consent-ledger: warning: LEDGER_REQUEST_DUE_DAY is not a setting of the ledger and "
        "is ignored (did you mean LEDGER_REQUEST_DUE_DAYS?)\n"
    )
    # Kafka caps min.insync.replicas at the replica count: two asked of one is refused.
    copies = run(
        data, "verify", LEDGER_BACKEND="kafka", LEDGER_MIN_INSYNC="2", LEDGER_REPLICATION="1"
    )
    assert copies.returncode == 2 and "LEDGER_MIN_INSYNC (2) must not exceed" in copies.stderr
    assert run(data).returncode == 2


def test_erase_and_tenants(data: Path) -> None:
    run(data, "record", stdin=orjson.dumps(grant("c-4", event_id="g")).decode())
    bad = run(data, "erase", "c-4", "--tenant", "demo", "--ground", "because")
    assert bad.returncode == 1 and "invalid_field" in bad.stderr
    ok = run(data, "erase", "c-4", "--tenant", "demo", "--ground", "subject_request")
    assert ok.returncode == 0, ok.stderr
    trail = orjson.loads(run(data, "trail", "c-4", "--tenant", "demo", "--json").stdout)
    assert trail["erased"] is True
    assert run(data, "tenants", "create", "acme").returncode == 0
    again = run(data, "tenants", "create", "acme")
    assert again.returncode == 1 and "tenant_exists" in again.stderr
    listed = orjson.loads(run(data, "tenants", "list", "--json").stdout)["tenants"]
    assert listed == [
        {"tenant": "demo", "policy_versions": ["crmpro-1.0"]},
        {"tenant": "acme", "policy_versions": []},
    ]
    assert run(data, "tenants", "list").stdout.splitlines()[1].endswith("policies: none yet")
    # Another tenant does not see demo's subject.
    assert run(data, "trail", "c-4", "--tenant", "acme").returncode == 3
    verify = run(data, "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("verify: OK")


def test_tenants_are_listed_in_the_order_created_page_after_page(
    backend_ledger: ConsentLedger,
) -> None:
    backend_ledger.init_demo()
    for name in ("acme", "beta", "gamma"):
        backend_ledger.create_tenant(name)
    expected = ["demo", "acme", "beta", "gamma"]
    assert backend_ledger.tenant_names() == expected
    assert backend_ledger.tenant_names(page=1) == expected
    assert backend_ledger.tenant_names(page=3) == expected


def test_input_that_is_not_utf8_is_refused_where_it_is_read(data: Path, tmp_path: Path) -> None:
    """A line that is not UTF-8 is that fact's own rejection; the others are recorded. A
    checkpoint or a recipients list that is not text is refused by name, never a traceback."""
    facts = tmp_path / "mixed.jsonl"
    facts.write_bytes(
        orjson.dumps(grant("u-1", event_id="u1"))
        + b"\n\xff\xfe{not text}\n"
        + orjson.dumps(grant("u-2", event_id="u2"))
        + b"\n"
    )
    recorded = run(data, "record", str(facts))
    assert recorded.returncode == 1 and "1 of 3 facts rejected" in recorded.stderr
    lines = [orjson.loads(line) for line in recorded.stdout.splitlines()]
    assert ["receipt" in line for line in lines] == [True, False, True]
    assert lines[1]["rejected"]["code"] == "invalid_json"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x00\xff\xfe garbage")
    for args in (
        ("evidence", "u-1", "--tenant", "demo", "--since", str(binary)),
        ("checkpoint", "--since", str(binary)),
        ("verify", "--checkpoint", str(binary)),
    ):
        refused = run(data, *args)
        assert refused.returncode == 2 and "is not JSON" in refused.stderr, args
    at = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-03-01T00:00:00Z")
    reading: tuple[tuple[str, ...], ...] = (
        ("check", *at, str(binary)),
        ("receipts", "--tenant", "demo", str(binary)),
    )
    for command in reading:
        refused = run(data, *command)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr == f"consent-ledger: {binary} is not UTF-8 text\n", command


def test_a_fact_of_json_lines_is_answered_with_its_line_in_the_file(tmp_path: Path) -> None:
    """A rejected fact's `index` counts facts; after a blank line that is not its line, and
    whoever fixes the file needs the line. A JSON document's facts are not lines."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    good, bad = grant("l-1", event_id="l-g"), grant("l-1", event_id="l-b", purposes=("lottery",))
    text = f"\n{orjson.dumps(good).decode()}\n\n   \n{orjson.dumps(bad).decode()}\n"
    out = run(data, "record", stdin=text)
    assert out.returncode == 1, out.stderr
    answers = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [(a["index"], a["line"]) for a in answers] == [(0, 2), (1, 5)]
    assert answers[1]["rejected"]["code"] == "unknown_purpose"
    document = run(data, "record", stdin=orjson.dumps([good, bad]).decode())
    assert [set(orjson.loads(line)) for line in document.stdout.splitlines()] == [
        {"index", "receipt"},
        {"index", "rejected"},
    ]


def test_the_trail_table_shows_each_time_and_event_id_whole(tmp_path: Path) -> None:
    """The table cut `occurred_at` to 25 characters and `event_id` to 22: a time with a
    fraction of a second lost its offset (read as local time, or as UTC), and two facts
    whose ids began alike showed the same id."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    long_ids = [f"campaign-2025-spring-signup-{n}" for n in (1, 2)]
    facts = [
        grant("w-1", event_id=long_ids[0], occurred_at="2025-03-01T10:00:00.123456+05:00"),
        grant("w-1", event_id=long_ids[1], occurred_at="2025-03-01T11:00:00+05:00"),
    ]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    table = run(data, "trail", "--tenant", "demo", "w-1")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[2:4]]
    assert [row[2] for row in rows] == [
        "2025-03-01T10:00:00.123456+05:00",
        "2025-03-01T11:00:00+05:00",
    ]
    assert [row[4] for row in rows] == long_ids


def test_who_says_on_stderr_when_a_page_may_not_be_all(tmp_path: Path) -> None:
    """`who` lists at most --limit sids (default 1,000); its list stopped there without a
    word, so `who ... | wc -l` counted 1,000 where more had consent."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    facts = [grant(f"who-{n}") for n in range(3)]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    at = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z")
    first = run(data, "who", *at, "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.split()) == 2
    said = re.fullmatch(r"more may follow: --after ([A-Za-z0-9_-]+)\n", first.stderr)
    assert said is not None, first.stderr
    [cursor] = said.groups()
    rest = run(data, "who", *at, "--limit", "2", "--after", cursor)
    assert len(rest.stdout.split()) == 1 and rest.stderr == ""
    whole = run(data, "who", *at, "--limit", "3")  # a full last page: nothing more to say
    assert len(whole.stdout.split()) == 3 and whole.stderr == ""


@pytest.mark.parametrize("given", ["", "  \n\n", "[]", " [ ]\n"])
def test_an_input_without_facts_is_said_so(tmp_path: Path, given: str) -> None:
    """An empty array was answered with nothing and exit 0, where an empty file was an
    error: a file that should have held facts and holds none is said so either way."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    out = run(data, "record", stdin=given)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("consent-ledger: no facts in the input"), out.stderr


def test_replay_says_what_the_store_holds_as_known_then(tmp_path: Path) -> None:
    """`replay --known-at` before the facts were recorded reads every entry and keeps none;
    "replayed 3 log entries" alone read as if the store held them."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    assert run(data, "record", stdin=orjson.dumps(grant("r-1")).decode()).returncode == 0
    before = run(
        data, "replay", "--into", str(tmp_path / "then"), "--known-at", "2001-01-01T00:00:00Z"
    )
    assert before.returncode == 0, before.stderr
    assert before.stdout.rstrip().endswith(": 0 subjects, 0 of their facts"), before.stdout
    now = run(data, "replay", "--into", str(tmp_path / "now"))
    assert now.stdout.rstrip().endswith(": 1 subjects, 1 of their facts"), now.stdout


def test_a_subject_reference_may_come_from_stdin_not_the_command_line(tmp_path: Path) -> None:
    """A reference is personal data: as an argument, every user of the machine reads it in
    the process list. SUBJECT '-' takes it from stdin's first line instead."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    person = "aziz@example.uz"
    assert run(data, "record", stdin=orjson.dumps(grant(person)).decode()).returncode == 0
    for command in (
        ("consents", "--json"),
        ("trail", "--json"),
        ("report", "--json"),
        ("evidence",),
    ):
        named = run(data, command[0], person, "--tenant", "demo", *command[1:])
        piped = run(data, command[0], "-", "--tenant", "demo", *command[1:], stdin=f"{person}\r\n")
        assert named.returncode == piped.returncode == 0, (command, piped.stderr)
        drop = {"as_of", "known_at", "tree_head", "subject_head", "generated_at"}
        keep = {k: v for k, v in orjson.loads(piped.stdout).items() if k not in drop}
        assert keep == {k: v for k, v in orjson.loads(named.stdout).items() if k not in drop}
    erased = run(
        data, "erase", "-", "--tenant", "demo", "--ground", "subject_request", stdin=person
    )
    assert erased.returncode == 0, erased.stderr
    assert orjson.loads(run(data, "consents", person, "--tenant", "demo", "--json").stdout)[
        "erased"
    ]
    nothing = run(data, "trail", "-", "--tenant", "demo", stdin="")
    assert nothing.returncode == 2 and "stdin, which gave none" in nothing.stderr


def test_stdin_redirected_from_a_file_and_inputs_that_cannot_be_read(tmp_path: Path) -> None:
    """`record - < facts.jsonl` (stdin a regular file, read whole as a file is, where a pipe
    is read a batch at a time), and the one-line refusals of input that cannot be read."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    facts = tmp_path / "facts.jsonl"
    facts.write_bytes(b"\n".join(orjson.dumps(grant(f"file-{i}")) for i in range(3)))
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    cli = [sys.executable, "-m", "ledger.cli"]
    with facts.open("rb") as stdin:
        recorded = subprocess.run([*cli, "record", "-"], stdin=stdin, env=env, capture_output=True)
    assert recorded.returncode == 0, recorded.stderr
    assert [orjson.loads(line)["index"] for line in recorded.stdout.splitlines()] == [0, 1, 2]
    not_utf8 = subprocess.run(
        [*cli, "trail", "-", "--tenant", "demo"], input=b"\xff\xfe\n", env=env, capture_output=True
    )
    assert (not_utf8.returncode, not_utf8.stderr) == (
        2,
        b"consent-ledger: SUBJECT '-': stdin's first line is not UTF-8 text\n",
    )
    at = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z")
    missing = run(data, "check", *at, str(tmp_path / "nope.txt"))
    assert (missing.returncode, missing.stderr) == (
        2,
        f"consent-ledger: cannot read {tmp_path / 'nope.txt'}: No such file or directory\n",
    )


def test_a_terminal_that_is_not_utf8_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    """A Cyrillic name on a terminal set to Latin-1 or ASCII (an old server, a C locale
    without UTF-8 mode) raised UnicodeEncodeError: a traceback, not the trail. Text gets
    backslash escapes, JSON stays JSON (JSON escapes) and a policy's text its bytes."""
    import hashlib

    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    name = "Турсунова Азиза O\u02bbg\u02bbil \U0001d49c"  # and a letter beyond the BMP
    fact = grant("контакт-1", personal_data={"full_name": name})
    assert run(data, "record", stdin=orjson.dumps(fact).decode()).returncode == 0
    seed_text = seed_policy_fact()["text"].encode()

    def on(encoding: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "ledger.cli", *args, "--tenant", "demo"],
            env={**os.environ, "LEDGER_DATA_DIR": str(data), "PYTHONIOENCODING": encoding},
            capture_output=True,
            timeout=120,
        )

    for encoding in ("latin-1", "ascii", "cp1251"):
        text = on(encoding, "trail", "контакт-1")
        assert text.returncode == 0 and text.stderr == b"", (encoding, text.stderr)
        assert "Audit trail of subject" in text.stdout.decode(encoding)
        report = on(encoding, "report", "контакт-1", "--json")
        assert report.returncode == 0, (encoding, report.stderr)
        assert orjson.loads(report.stdout)["personal_data"] == {"full_name": name}, encoding
        piped = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "consents", "-", "--tenant", "demo", "--json"],
            env={**os.environ, "LEDGER_DATA_DIR": str(data), "PYTHONIOENCODING": encoding},
            input="контакт-1\n".encode(),  # UTF-8, whatever the terminal says
            capture_output=True,
            timeout=120,
        )
        assert piped.returncode == 0, (encoding, piped.stderr)
        policy_text = on(encoding, "policies", "show", "crmpro-1.0", "--text")
        assert policy_text.returncode == 0, (encoding, policy_text.stderr)
        assert hashlib.sha256(policy_text.stdout).digest() == hashlib.sha256(seed_text).digest()


def test_a_campaign_check_names_each_recipient_by_its_line_in_the_file(tmp_path: Path) -> None:
    """Blank lines are skipped; the lines after them were numbered as if they were not
    there, so "line 2 lacked consent" sent the officer to another recipient."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    assert run(data, "record", stdin=orjson.dumps(grant("with-1")).decode()).returncode == 0
    at = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z")
    recipients = "\n\nwith-1\n  \nwithout-1\n"  # lines 3 and 5
    text = run(data, "check", *at, stdin=recipients)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1].startswith("  line 5: sid "), text.stdout
    answer = orjson.loads(run(data, "check", *at, "--json", stdin=recipients).stdout)
    [lacking] = answer["without_consent"]
    assert (lacking["index"], lacking["line"], lacking["reason"]) == (1, 5, "unknown_subject")
    sids = run(data, "check", *at, "--sids", stdin="\n" + "0" * 32 + "\n\nnot-a-sid\n")
    assert sids.returncode == 2 and "line 4 is not a sid" in sids.stderr, sids.stderr


@pytest.mark.parametrize("name", ["   ", "a\nb", "tab\there", "x" * 65, " acme", "acme "])
def test_a_tenant_name_no_fact_could_carry_is_refused(tmp_path: Path, name: str) -> None:
    refused = run(tmp_path / "data", "tenants", "create", name)
    assert refused.returncode == 1 and "invalid_field" in refused.stderr, refused.stderr
    assert run(tmp_path / "data", "tenants", "create", "x" * 64).returncode == 0


def test_an_empty_value_is_refused_not_taken_as_not_given(tmp_path: Path) -> None:
    """A script's variable left unset gives an empty argument. Taken as not given, `consents
    --as-of ""` answered as of now, `erase --event-id ""` made a new erasure on each run (its
    idempotency key gone), `verify --evidence ""` was an internal error."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    assert run(data, "record", stdin=orjson.dumps(grant("e-1")).decode()).returncode == 0
    for args, name in (
        (("consents", "e-1", "--tenant", "demo", "--as-of", ""), "--as-of"),
        (
            ("erase", "e-1", "--tenant", "demo", "--ground", "subject_request", "--event-id", ""),
            "--event-id",
        ),
        (("verify", "--evidence", ""), "--evidence"),
        (("evidence", "e-1", "--tenant", "demo", "--out", ""), "--out"),
        (("due", "--tenant", "demo", "--as-of", ""), "--as-of"),
        (("tenants", "create", ""), "T"),
        (("record", ""), "FILE|-"),
    ):
        refused = run(data, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert refused.stderr.endswith(f"error: {name} is empty\n"), refused.stderr
    trail = orjson.loads(run(data, "trail", "e-1", "--tenant", "demo", "--json").stdout)
    assert [f["type"] for f in trail["facts"]] == ["consent.granted"]  # not erased


def _command_groups() -> list[tuple[str, ...]]:
    """Every command that has commands of its own (`keys`, `tenants`, ...), as typed."""
    from ledger.cli import _parser

    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                if path:
                    found.append(path)
                for name, child in action.choices.items():
                    walk(child, (*path, name))

    walk(_parser(), ())
    return found


@pytest.mark.parametrize("group", _command_groups(), ids=" ".join)
def test_a_command_group_typed_alone_says_what_it_lacks(
    tmp_path: Path, group: tuple[str, ...]
) -> None:
    """`keys` and `tenants` alone were an AttributeError traceback: their actions were not
    required and the group itself does nothing. A group that does something alone
    (`signing-key` prints the public key) must do it."""
    alone = run(tmp_path / "data", *group)
    assert "Traceback" not in alone.stderr, alone.stderr
    if alone.returncode != 0:
        assert alone.returncode == 2, alone.stderr
        assert "error: the following arguments are required" in alone.stderr, alone.stderr
        assert len(alone.stderr.strip().splitlines()) == 2, alone.stderr  # usage, then why


AT = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-03-01T00:00:00Z")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("who", *AT, "--limit", "0"), "argument --limit: from 1 to 10000"),
        (("who", *AT, "--limit", "9" * 20), "argument --limit: from 1 to 10000"),
        (("due", "--tenant", "demo", "--within", "-1"), "argument --within: from 0 to 3650"),
        (("due", "--tenant", "demo", "--within", "9" * 12), "argument --within: from 0 to"),
        (("project", "--page", "0"), "argument --page: from 1 to 1000000"),
        (("project", "--follow", "--interval", "-1"), "argument --interval: more than 0"),
        (("project", "--follow", "--interval", "nan"), "argument --interval: more than 0"),
        (("worker", "--interval", "0"), "argument --interval: more than 0"),
        (("serve", "--port", "99999"), "argument --port: from 0 to 65535"),
        (("replay", "--into", "{file}"), "is not a directory"),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, tuple) else None,
)
def test_numbers_and_places_out_of_range_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    """Each was an OverflowError traceback, a silent no-op or a hang (`serve --port
    99999` never returned; `project --interval -1` spun)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    refused = run(tmp_path / "data", *(arg.format(file=a_file) for arg in args))
    assert refused.returncode == 2 and says in refused.stderr, refused.stderr


def test_demo(tmp_path: Path) -> None:
    out = run(tmp_path / "demo", "demo", "--subjects", "40")
    assert out.returncode == 0, out.stderr
    assert "Audit trail of subject" in out.stdout and "verify: OK" in out.stdout
    rerun = run(tmp_path / "demo", "demo", "--subjects", "40")
    assert "0 recorded" in rerun.stdout


def test_views_commands(data: Path, tmp_path: Path) -> None:
    run(
        data,
        "record",
        stdin=orjson.dumps(
            [
                grant("c-5", event_id="g5", occurred_at="2025-03-01T10:00:00+05:00"),
                grant("c-6", event_id="g6", occurred_at="2025-03-01T10:00:00+05:00"),
                withdraw("c-6", event_id="w6", occurred_at="2025-03-03T10:00:00+05:00"),
            ]
        ).decode(),
    )
    check = run(
        data,
        "check",
        "--tenant",
        "demo",
        "--purpose",
        "marketing",
        "--at",
        "2025-03-04T00:00:00+05:00",
        "--json",
        stdin="c-5\nc-6\nc-7\n",
    )
    assert check.returncode == 0, check.stderr
    report = orjson.loads(check.stdout)
    assert report["with_consent"] == 1
    assert [(r["index"], r["reason"]) for r in report["without_consent"]] == [
        (1, "withdrawn"),
        (2, "unknown_subject"),
    ]
    assert "c-6" not in check.stdout
    # As a spreadsheet saves it: a byte order mark first, CRLF line ends. The mark read as
    # part of the first reference made that recipient unknown.
    saved = run(data, *check.args[3:], stdin="\ufeffc-5\r\nc-6\r\nc-7\r\n")
    assert saved.returncode == 0 and orjson.loads(saved.stdout) == report
    who = orjson.loads(
        run(
            data,
            "who",
            "--tenant",
            "demo",
            "--purpose",
            "marketing",
            "--at",
            "2025-03-02T00:00:00+05:00",
            "--json",
            "--limit",
            "1",
        ).stdout
    )
    assert len(who["sids"]) == 1 and who["next"] is not None
    rest = orjson.loads(
        run(
            data,
            "who",
            "--tenant",
            "demo",
            "--purpose",
            "marketing",
            "--at",
            "2025-03-02T00:00:00+05:00",
            "--json",
            "--after",
            who["next"],
        ).stdout
    )
    assert len(rest["sids"]) == 1 and rest["sids"][0] > who["sids"][0]
    at = ("--at", "2025-03-02T00:00:00+05:00")
    counted = run(data, "who", "--tenant", "demo", "--purpose", "marketing", *at, "--summary")
    assert counted.stdout.splitlines() == [
        "2 subjects had consent for marketing at 2025-03-02T00:00:00+05:00",
        "  2 under policy crmpro-1.0",
    ]
    summary = orjson.loads(
        run(data, "who", "--tenant=demo", "--purpose=marketing", *at, "--summary", "--json").stdout
    )
    assert (summary["with_consent"], summary["by_policy_version"]) == (2, {"crmpro-1.0": 2})
    paged = run(data, "who", "--tenant=demo", "--purpose=marketing", *at, "--summary", "--after=a")
    assert paged.returncode == 2 and "--summary" in paged.stderr
    replay = run(data, "replay", "--into", str(tmp_path / "r"), "--json")
    assert replay.returncode == 0 and orjson.loads(replay.stdout)["view_entries"] == 3
    again = run(data, "replay", "--into", str(tmp_path / "r"))
    assert again.returncode == 2 and "fresh store" in again.stderr
    split = run(data, "replay", "--into", str(tmp_path / "r2"), "--workers", "2", "--json")
    # Split by range of subjects, or in Kafka mode by partition of the ledger topic.
    assert split.returncode == 0 and orjson.loads(split.stdout) == {
        **orjson.loads(replay.stdout),
        "into": str(tmp_path / "r2" / "views.db"),
    }, split.stderr
    none = run(data, "replay", "--into", str(tmp_path / "r3"), "--workers", "0")
    assert none.returncode == 2 and "--workers takes a whole number from 1 to 64" in none.stderr
    assert not (tmp_path / "r3" / "views.db").exists()
    bad = run(
        data, "check", "--tenant", "demo", "--purpose", "marketing", "--at", "now", stdin="c-5\n"
    )
    assert bad.returncode == 1 and "invalid_timestamp" in bad.stderr


def test_check_and_who_refuse_a_purpose_or_tenant_that_names_nothing(data: Path) -> None:
    """A typo in a purpose would otherwise report that nobody had consent."""
    at = ("--at", "2025-03-04T00:00:00+05:00")
    typo = run(data, "check", "--tenant", "demo", "--purpose", "marketting", *at, stdin="c-1\n")
    assert typo.returncode == 3 and typo.stdout == ""
    assert typo.stderr.startswith("consent-ledger: unknown_purpose:")
    who = run(data, "who", "--tenant", "demo", "--purpose", "marketting", *at)
    assert who.returncode == 3 and "unknown_purpose" in who.stderr
    nobody = run(data, "check", "--tenant", "nobody", "--purpose", "marketing", *at, stdin="")
    assert nobody.returncode == 3 and "no such tenant" in nobody.stderr
    known = run(data, "who", "--tenant", "demo", "--purpose", "marketing", *at, "--json")
    assert known.returncode == 0 and orjson.loads(known.stdout)["sids"] == []
    # One consent, given under a newer version: not among those under the seed's.
    facts = [policy("crmpro-2.0"), grant("on-new", policy_version="crmpro-2.0")]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    version = run(
        data, "who", "--tenant", "demo", "--purpose", "marketing", *at, "--policy-version", "9"
    )
    assert version.returncode == 3 and "unknown_policy_version" in version.stderr
    # The route's answer (GET /v1/purposes/{purpose}/subjects), with `at` kept from before.
    who_on = ("who", "--tenant", "demo", "--purpose", "marketing", *at, "--json")
    page = orjson.loads(run(data, *who_on, "--policy-version", "crmpro-1.0").stdout)
    assert page == {
        "purpose": "marketing",
        "as_of": "2025-03-04T00:00:00+05:00",
        "known_at": None,
        "policy_version": "crmpro-1.0",
        "sids": [],
        "next": None,
        "at": "2025-03-04T00:00:00+05:00",
    }


def test_evidence_is_written_once_and_verified_without_the_ledger(
    data: Path, tmp_path: Path
) -> None:
    run(data, "record", stdin=orjson.dumps([grant("c-9", event_id="g9")]).decode())
    package = tmp_path / "evidence.json"
    made = run(data, "evidence", "c-9", "--tenant", "demo", "--out", str(package))
    assert made.returncode == 0, made.stderr
    assert "written to" in made.stderr and "c-9" not in made.stderr
    assert package.stat().st_mode & 0o777 == 0o600  # it holds the personal data in the clear
    again = run(data, "evidence", "c-9", "--tenant", "demo", "--out", str(package))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    key = run(data, "signing-key").stdout.strip()
    assert orjson.loads(package.read_bytes())["tree_head"]["public_key"] == key
    # Checked with no data directory at all: the package is all the check has.
    checked = verify_elsewhere(data, tmp_path, "--evidence", str(package), "--public-key", key)
    assert checked.returncode == 0 and checked.stdout.startswith("evidence: OK"), checked.stderr
    assert not (tmp_path / "nothing-here").exists()
    stranger = run(data, "verify", "--evidence", str(package), "--public-key", "A" * 44)
    assert stranger.returncode == 4 and "untrusted_key" in stranger.stderr
    tampered = orjson.loads(package.read_bytes())
    tampered["trail"]["facts"][0]["occurred_at"] = "2020-01-01T00:00:00+05:00"
    package.write_bytes(orjson.dumps(tampered))
    broken = run(data, "verify", "--evidence", str(package), "--json")
    assert broken.returncode == 4
    assert orjson.loads(broken.stdout)["first_problem"]["kind"] == "trail_mismatch"
    missing = run(data, "evidence", "nobody", "--tenant", "demo")
    assert missing.returncode == 3
    lost = run(data, "verify", "--public-key", key)
    assert lost.returncode == 2 and "--evidence" in lost.stderr


def test_checkpoints_are_published_and_checked_without_the_ledger(
    data: Path, tmp_path: Path
) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    first = run(data, "checkpoint", "--out", str(old))
    assert first.returncode == 0 and "written to" in first.stderr, first.stderr
    run(data, "record", stdin=orjson.dumps([grant("c-10", event_id="g10")]).decode())
    second = run(data, "checkpoint", "--since", str(old), "--out", str(new))
    assert second.returncode == 0, second.stderr
    key = run(data, "signing-key").stdout.strip()
    checked = verify_elsewhere(
        data, tmp_path, "--checkpoint", str(new), "--since", str(old), "--public-key", key
    )
    assert checked.returncode == 0 and "extending the checkpoint of" in checked.stdout
    backwards = run(data, "verify", "--checkpoint", str(old), "--since", str(new), "--json")
    assert backwards.returncode == 4
    assert orjson.loads(backwards.stdout)["first_problem"]["kind"] == "inconsistent"
    package = tmp_path / "evidence.json"
    made = run(
        data, "evidence", "c-10", "--tenant", "demo", "--since", str(old), "--out", str(package)
    )
    assert made.returncode == 0, made.stderr
    assert run(data, "verify", "--evidence", str(package), "--since", str(old)).returncode == 0
    # A checkpoint this log never signed at that size: refused, not proven.
    forged = orjson.loads(old.read_bytes())
    forged["tree_head"]["trees"][0]["root"] = "ab" * 32
    (tmp_path / "forged.json").write_bytes(orjson.dumps(forged))
    refused = run(data, "checkpoint", "--since", str(tmp_path / "forged.json"))
    assert refused.returncode == 4 and refused.stdout == "", refused.stderr
    ahead = orjson.loads(old.read_bytes())
    ahead["tree_head"]["trees"][0]["size"] = 10**6
    (tmp_path / "ahead.json").write_bytes(orjson.dumps(ahead))
    too_large = run(data, "checkpoint", "--since", str(tmp_path / "ahead.json"))
    assert too_large.returncode == 4 and "or more" in too_large.stderr
    both = run(data, "verify", "--checkpoint", str(new), "--evidence", str(package))
    assert both.returncode == 2
    stray = run(data, "verify", "--since", str(old))
    assert stray.returncode == 2 and "--checkpoint" in stray.stderr


def test_due_command(data: Path) -> None:
    out = run(data, "due", "--tenant", "demo", "--json", "--as-of", "2025-03-05T00:00:00Z")
    assert out.returncode == 0, out.stderr
    report = orjson.loads(out.stdout)
    assert set(report) >= {"requests", "expiring_consents", "past_retention"}
    missing = run(data, "due", "--tenant", "nobody")
    assert missing.returncode == 3
    text = run(data, "due", "--tenant", "demo")
    assert "nothing due" in text.stdout
    # An information request received 8 days ago: due in 22 days by default, in 2 by kind.
    received = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    asked = fact(
        "request.received", "c-due", request_id="R", kind="information", occurred_at=received
    )
    assert run(data, "record", stdin=orjson.dumps(asked).decode()).returncode == 0
    by_default = orjson.loads(run(data, "due", "--tenant", "demo", "--json").stdout)
    assert by_default["requests"] == []
    by_kind = orjson.loads(
        run(
            data,
            "due",
            "--tenant",
            "demo",
            "--json",
            LEDGER_REQUEST_DUE_DAYS_BY_KIND="information=10",
        ).stdout
    )
    assert [r["request_id"] for r in by_kind["requests"]] == ["R"]
    text = run(data, "due", "--tenant", "demo", LEDGER_REQUEST_DUE_DAYS_BY_KIND="information=10")
    assert "(deadline: settings)" in text.stdout
    # A policy version in force since before the request promises an answer in 10 days.
    effective = (datetime.now(UTC) - timedelta(days=9)).isoformat()
    promised = policy("2.0", effective, request_due_days={"information": 10})
    assert run(data, "record", stdin=orjson.dumps(promised).decode()).returncode == 0
    by_policy = orjson.loads(run(data, "due", "--tenant", "demo", "--json").stdout)
    due = [(r["request_id"], r["due_from"], r["policy_version"]) for r in by_policy["requests"]]
    assert due == [("R", "policy", "2.0")]
    text = run(data, "due", "--tenant", "demo")
    assert "(deadline: policy 2.0)" in text.stdout


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_due_in_text_names_each_kind_of_item_and_refuses_a_bad_page(data: Path) -> None:
    """What a person reading `due` sees of consents expiring, data past retention and the
    subjects to erase, a page's continuation, and the two ways of asking for a page wrong."""
    facts = [
        policy("2.0", purposes={"marketing": terms(30)}),
        grant("gone", policy_version="2.0", occurred_at="2025-02-01T00:00:00Z"),
        withdraw("gone", occurred_at="2025-03-01T00:00:00Z"),
        grant("soon", occurred_at="2025-03-01T00:00:00Z", expires_at="2025-04-05T00:00:00Z"),
        grant("next", occurred_at="2025-03-01T00:00:00Z", expires_at="2025-04-06T12:30:00Z"),
    ]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    sid = {
        s: orjson.loads(run(data, "trail", s, "--tenant", "demo", "--json").stdout)["sid"]
        for s in ("gone", "soon", "next")
    }
    asked = ("due", "--tenant", "demo", "--as-of", "2025-04-01T00:00:00Z")
    text = run(data, *asked)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1:] == [
        f"  consent marketing of sid {sid['soon']} expires 2025-04-05T00:00:00+00:00",
        f"  consent marketing of sid {sid['next']} expires 2025-04-06T12:30:00+00:00",
        f"  data of sid {sid['gone']} for marketing past retention since 2025-03-31T00:00:00+00:00",
        "  1 subjects no purpose keeps any longer: "
        "consent-ledger retention --tenant demo [--erase]",
    ]
    assert text.stderr == ""
    first = run(data, *asked, "--limit", "1")
    cursor = orjson.loads(run(data, *asked, "--limit", "1", "--json").stdout)["next"]
    assert first.stderr == f"more: --after {cursor}\n"
    rest = run(data, "due", "--tenant", "demo", "--after", cursor, "--json")
    assert rest.returncode == 0, rest.stderr
    assert [e["sid"] for e in orjson.loads(rest.stdout)["expiring_consents"]] == [sid["next"]]
    both = run(data, *asked, "--after", cursor)
    assert (both.returncode, both.stderr) == (
        2,
        "consent-ledger: --after continues at its own instant: give it without --as-of\n",
    )
    bad = run(data, "due", "--tenant", "demo", "--after", "not-a-cursor")
    assert (bad.returncode, bad.stderr) == (
        2,
        "consent-ledger: --after takes the 'next' of a previous page\n",
    )


def test_retention_lists_and_erases_the_subjects_no_purpose_keeps(data: Path) -> None:
    name = {"full_name": "Retention Person"}
    facts = [
        policy("2.0", purposes={"marketing": terms(30)}),
        grant("gone", policy_version="2.0", personal_data=name, occurred_at="2025-02-01T00:00:00Z"),
        withdraw("gone", occurred_at="2025-03-01T00:00:00Z"),
        # The seed policy bounds no retention: kept.
        grant("kept", ("service_provision",), occurred_at="2025-02-01T00:00:00Z"),
        withdraw("kept", ("service_provision",), occurred_at="2025-03-01T00:00:00Z"),
    ]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    before = run(data, "retention", "--tenant", "demo", "--as-of", "2025-03-20T00:00:00Z")
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[0].endswith(": 0")
    listed = orjson.loads(run(data, "retention", "--tenant", "demo", "--json").stdout)
    gone = orjson.loads(run(data, "trail", "gone", "--tenant", "demo", "--json").stdout)["sid"]
    assert listed["subjects"] == [
        {"sid": gone, "purposes": ["marketing"], "due_since": "2025-03-31T00:00:00+00:00"}
    ]
    refused = run(
        data, "retention", "--tenant", "demo", "--erase", "--as-of", "2030-01-01T00:00:00Z"
    )
    assert refused.returncode == 2 and "--as-of" in refused.stderr
    assert run(data, "retention", "--tenant", "nobody").returncode == 3

    erased = run(data, "retention", "--tenant", "demo", "--erase")
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.splitlines()[-1] == "erased 1: data keys destroyed"
    trail = orjson.loads(run(data, "trail", "gone", "--tenant", "demo", "--json").stdout)
    last = trail["facts"][-1]
    assert (last["type"], last["details"]["ground"]) == ("subject.erased", "retention_expired")
    assert last["event_id"] == f"retention-expired-{gone}"
    assert "Retention Person" not in orjson.dumps(trail).decode()
    after = orjson.loads(run(data, "retention", "--tenant", "demo", "--erase", "--json").stdout)
    assert (after["subjects"], after["erased"], after["refused"]) == ([], 0, [])
    assert run(data, "verify").returncode == 0


def test_a_tenant_leaving_gets_its_trails_and_then_its_subjects_are_erased(
    data: Path, tmp_path: Path
) -> None:
    names = {"leaving-1": "Yusupov Bekzod", "leaving-2": "Rashidova Kamola"}

    def leave(ground: str, confirm: str) -> subprocess.CompletedProcess[str]:
        return run(
            data, "tenants", "erase-subjects", "demo", "--ground", ground, "--confirm", confirm
        )

    facts: list[dict[str, Any]] = [
        grant(ref, personal_data={"full_name": name}) for ref, name in names.items()
    ]
    assert run(data, "tenants", "create", "acme").returncode == 0
    # Another tenant, the same reference: untouched by the first one's leaving.
    facts += [
        {**seed_policy_fact("acme-policy"), "tenant": "acme"},
        grant("leaving-1", tenant="acme", personal_data={"full_name": "Acme Person"}),
    ]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0

    exported = run(data, "tenants", "export", "demo")
    assert exported.returncode == 0, exported.stderr
    trails = lines(exported.stdout)
    assert [t["subject"] for t in trails] == sorted(names, key=lambda r: _sid_of(data, r))
    assert [t["sid"] for t in trails] == sorted(t["sid"] for t in trails)
    assert all(name in exported.stdout for name in names.values())
    assert "Acme Person" not in exported.stdout
    assert exported.stderr.strip() == "exported the trails of 2 subjects of tenant 'demo'"
    out = tmp_path / "demo-export.jsonl"
    assert run(data, "tenants", "export", "demo", "--out", str(out)).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600 and lines(out.read_text()) == trails
    again = run(data, "tenants", "export", "demo", "--out", str(out))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    nobody = run(data, "tenants", "export", "nobody", "--out", str(tmp_path / "nobody.jsonl"))
    assert nobody.returncode == 3 and not (tmp_path / "nobody.jsonl").exists()

    unconfirmed = leave("purpose_achieved", "x")
    assert unconfirmed.returncode == 2 and "--confirm demo" in unconfirmed.stderr
    bad_ground = leave("tired", "demo")
    assert bad_ground.returncode == 2 and "invalid choice" in bad_ground.stderr
    assert "Yusupov Bekzod" in run(data, "tenants", "export", "demo").stdout  # nothing erased

    erased = leave("purpose_achieved", "demo")
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.startswith("erased 2 subjects of tenant 'demo' (ground purpose_achieved)")
    after = run(data, "tenants", "export", "demo").stdout
    assert [t["erased"] for t in lines(after)] == [True, True]
    assert not any(name in after for name in names.values())
    assert "Acme Person" in run(data, "tenants", "export", "acme").stdout
    repeat = leave("purpose_achieved", "demo")
    assert repeat.stdout.startswith("erased 0 subjects")
    assert run(data, "verify").returncode == 0


def _sid_of(data: Path, reference: str) -> str:
    trail = orjson.loads(run(data, "trail", reference, "--tenant", "demo", "--json").stdout)
    return str(trail["sid"])


def test_record_a_large_file_in_batches(data: Path, tmp_path: Path) -> None:
    lines = [orjson.dumps(grant(f"bulk-{i}", event_id=f"bulk-{i}")).decode() for i in range(2500)]
    lines[1700] = "not json"
    path = tmp_path / "bulk.jsonl"
    path.write_text("\n".join(lines))
    out = run(data, "record", str(path))
    assert out.returncode == 1
    result = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert [r["index"] for r in result] == list(range(2500))
    assert result[1700]["rejected"]["code"] == "invalid_json"
    assert sum("receipt" in r for r in result) == 2499


def test_record_answers_json_lines_from_a_pipe_a_batch_at_a_time(data: Path) -> None:
    """JSON Lines are read a batch at a time: the first 1,000 facts of a pipe are recorded
    and answered while the pipe is still open. Read whole, the input was held in memory
    (1.1 GB for a file of 1,000,000 facts) and a pipe was answered only once it closed.
    A batch also ends where the pipe has no next line yet: one fact, then its answer, then
    the next (it was answered with the next 999, or at the pipe's end)."""
    env = {**BACKEND_ENV.get(data, {}), "LEDGER_DATA_DIR": str(data)}
    with piped("record", "-", env=env) as fed:
        assert fed.stdin is not None and fed.stdout is not None
        # A byte order mark, and blank lines among the facts: each fact is answered with its
        # own line in the input.
        facts = [orjson.dumps(grant(f"pipe-{i}", event_id=f"pipe-{i}")) for i in range(1000)]
        given = b"\n".join(facts[:500]) + b"\n\n" + b"\n".join(facts[500:]) + b"\n"
        writing = written_behind(fed.stdin, b"\xef\xbb\xbf\n\n" + given)  # the pipe stays open
        first = lines_until(fed.stdout, lambda line: '"index":999' in line)
        writing.join(timeout=60)
        assert not writing.is_alive(), "the input was not all written"
        answers = [orjson.loads(line) for line in first]
        assert [a["index"] for a in answers] == list(range(1000))
        assert [a["line"] for a in answers] == [*range(3, 503), *range(504, 1004)]
        assert all("receipt" in a for a in answers), answers[0]
        fed.stdin.write(orjson.dumps(grant("pipe-one", event_id="pipe-one")) + b"\n")
        fed.stdin.flush()
        (alone,) = [orjson.loads(x) for x in lines_until(fed.stdout, lambda x: True, timeout=60)]
        assert (alone["index"], alone["line"], alone["receipt"]["event_id"]) == (
            1000,
            1004,
            "pipe-one",
        )
        fed.stdin.write(orjson.dumps(grant("pipe-last", event_id="pipe-last")) + b"\n")
        rest = closed(fed)
    assert [(a["index"], a["line"]) for a in rest] == [(1001, 1005)]
    assert all("receipt" in a for a in rest)


def test_record_interrupted_by_ctrl_c_says_so_and_finishes_when_run_again(
    data: Path, tmp_path: Path
) -> None:
    """SIGINT mid-file: the batch in hand is finished and answered, then exit 130 with one
    line naming how many were answered (it was the interpreter's traceback); the log whole,
    and the same input again records the rest and nothing twice."""
    total = 10_000
    path = tmp_path / "bulk.jsonl"
    path.write_text(
        "\n".join(
            orjson.dumps(grant(f"int-{i}", event_id=f"int-{i}")).decode() for i in range(total)
        )
    )
    cut = start_with(command_env(data, {}), "record", str(path))
    assert cut.stdout is not None
    first = line_within(cut.stdout)  # printed once the first batch has committed
    assert "receipt" in first, first
    cut.send_signal(signal.SIGINT)
    rest = cut.stdout.read()  # the pipe's reader holds what it read ahead with the first line
    assert cut.stderr is not None
    err = cut.stderr.read()
    assert cut.wait(timeout=120) == 130, err
    answered = lines(first + rest)
    assert 0 < len(answered) < total and len(answered) % 1000 == 0  # whole batches
    assert err == (
        f"consent-ledger: interrupted after answering the first {len(answered)} facts of the "
        "input: record the same input again to finish (facts already recorded get their "
        'first receipts, with "duplicate": true)\n'
    )
    assert run(data, "verify").returncode == 0
    again = run(data, "record", str(path))
    assert again.returncode == 0, again.stderr
    receipts = [r["receipt"] for r in lines(again.stdout)]
    assert len(receipts) == total
    # Exactly the answered facts were recorded by the interrupted run.
    assert [r["duplicate"] for r in receipts] == [i < len(answered) for i in range(total)]
    # Each fact recorded once: one place in the log each (Kafka mode: partition and offset).
    assert len({(r.get("partition"), r["position"]) for r in receipts}) == total


def test_an_option_given_twice_is_refused_where_repeating_it_means_nothing(data: Path) -> None:
    """argparse keeps the last: `--as-of A --as-of B` was answered as of B, as if asked as
    written. `--role` appends, and may repeat."""
    twice = run(
        data,
        "consents",
        "x",
        "--tenant",
        "demo",
        "--as-of",
        "2025-03-01T00:00:00Z",
        "--as-of=2025-04-01T00:00:00Z",
    )
    assert twice.returncode == 2
    assert twice.stderr.rstrip().endswith("error: --as-of is given twice"), twice.stderr
    once = run(data, "keys", "create", "--tenant", "demo", "--role", "publisher", "--role", "admin")
    assert once.returncode == 0, once.stderr


def test_record_a_pretty_printed_object(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(
        orjson.dumps(grant("pretty", event_id="pretty"), option=orjson.OPT_INDENT_2).decode()
    )
    out = run(data, "record", str(path))
    assert out.returncode == 0, out.stdout
    assert orjson.loads(out.stdout)["receipt"]["event_id"] == "pretty"


def test_a_document_s_fact_over_a_mebibyte_is_refused_as_oversize(
    data: Path, tmp_path: Path
) -> None:
    """As a line of JSON Lines is: a document's facts were not measured, and a policy of
    2 MB was recorded from an array (its text has no limit but the fact's 1 MiB)."""
    path = tmp_path / "facts.json"
    long = {**policy("v-long", text="x" * 2_000_000), "event_id": "long-policy"}
    path.write_bytes(orjson.dumps([long, grant("doc-1", event_id="doc-1")]))
    out = run(data, "record", str(path))
    assert out.returncode == 1, out.stderr
    first, second = (orjson.loads(line) for line in out.stdout.splitlines())
    assert first["rejected"]["code"] == "oversize", first
    assert second["receipt"]["event_id"] == "doc-1"
    lines = tmp_path / "facts.jsonl"
    lines.write_bytes(orjson.dumps({**long, "event_id": "long-line"}) + b"\n")
    as_line = run(data, "record", str(lines))
    assert orjson.loads(as_line.stdout)["rejected"]["code"] == "oversize"


def test_who_refuses_a_limit_below_one(data: Path) -> None:
    out = run(
        data,
        "who",
        "--tenant",
        "demo",
        "--purpose",
        "marketing",
        "--at",
        "2025-03-02T00:00:00Z",
        "--limit",
        "0",
    )
    assert out.returncode == 2 and "--limit" in out.stderr


def test_a_demo_too_small_for_its_story_is_refused(tmp_path: Path) -> None:
    out = run(tmp_path / "d", "demo", "--subjects", "5")
    assert out.returncode == 2
    assert "--subjects: the demo's story needs at least 8" in out.stderr
    assert not (tmp_path / "d").exists()
    smallest = run(tmp_path / "d", "demo", "--subjects", "8")
    assert smallest.returncode == 0, smallest.stderr
    assert "verify: OK" in smallest.stdout


@pytest.mark.parametrize("by", ["reference", "sid"])
def test_an_erasure_retried_with_its_event_id_is_recorded_once(
    data: Path, tmp_path: Path, by: str
) -> None:
    """By the publisher's reference or, as the HTTP route, by sid alone."""
    facts = tmp_path / "g.jsonl"
    facts.write_text(orjson.dumps(grant("twice-1", event_id="t1")).decode())
    assert run(data, "record", str(facts)).returncode == 0
    subject = ["twice-1"]
    if by == "sid":
        listed = orjson.loads(run(data, "trail", "twice-1", "--tenant", "demo", "--json").stdout)
        subject = [listed["sid"], "--sid"]
        not_a_sid = run(data, "erase", "twice-1", "--sid", "--tenant", "demo", "--ground", "x")
        assert not_a_sid.returncode == 2 and "32 hex digits" in not_a_sid.stderr
    erase = ["erase", *subject, "--tenant", "demo", "--ground", "subject_request"]
    first = run(data, *erase, "--event-id", "erase-t1")
    again = run(data, *erase, "--event-id", "erase-t1")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "data key destroyed; erasure recorded at position" in first.stdout
    place = first.stdout.split("erasure recorded at ")[-1].strip()
    # The same place: the first erasure's receipt, said as such.
    assert again.stdout.endswith(
        f"this erasure was recorded before, at {place}; nothing new recorded\n"
    )
    other = run(data, *erase[:-1], "court_decision", "--event-id", "erase-t1")
    assert other.returncode == 1 and "event_id_conflict" in other.stderr
    trail = orjson.loads(run(data, "trail", "twice-1", "--tenant", "demo", "--json").stdout)
    erasures = [f for f in trail["facts"] if f["type"] == "subject.erased"]
    assert len(erasures) == 1
    # The trail places the fact where the command said it was recorded: in Kafka mode by
    # partition and offset (the trail gave the replica's own numbering).
    said = f"position {erasures[0]['position']}"
    if data in BACKEND_ENV:
        said += f" of partition {erasures[0]['partition']}"
    else:
        assert "partition" not in erasures[0]
    assert place == said, (place, said)
    # Another erasure of the erased subject is recorded, but destroys no key: it said it did.
    later = run(data, *erase[:-1], "court_decision", "--event-id", "erase-t2")
    assert later.returncode == 0, later.stderr
    assert "was already erased (" in later.stdout and "data key destroyed" not in later.stdout
    assert "no data key left to destroy; this erasure recorded too, at position" in later.stdout


def test_api_keys_are_created_listed_expired_and_revoked(data: Path) -> None:
    made = run(data, "keys", "create", "--tenant", "demo", "--role", "compliance")
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.split()[2]
    assert made.stdout.splitlines()[1].startswith(f"cl_{key_id}_")
    expiring = run(
        data, "keys", "create", "--tenant", "demo", "--role", "admin", "--expires-in-days", "30"
    )
    assert expiring.returncode == 0 and "; expires 20" in expiring.stdout, expiring.stderr
    for days in ("0", "-3", "36501", "soon"):
        refused = run(
            data, "keys", "create", "--tenant", "demo", "--role", "admin", "--expires-in-days", days
        )
        assert refused.returncode == 2 and "--expires-in-days" in refused.stderr, days
    nobody = run(data, "keys", "create", "--tenant", "nobody", "--role", "admin")
    assert nobody.returncode == 3 and "no such tenant" in nobody.stderr
    assert run(data, "keys", "revoke", key_id).returncode == 0
    again = run(data, "keys", "revoke", key_id)
    assert again.returncode == 3 and "no such active key" in again.stderr
    listed = orjson.loads(run(data, "keys", "list", "--tenant", "demo", "--json").stdout)
    assert [(k["roles"], k["revoked_at"] is None, k["expires_at"] is None) for k in listed] == [
        ("compliance", False, True),
        ("admin", True, False),
    ]
    table = run(data, "keys", "list").stdout.splitlines()
    assert "revoked 20" in table[0] and "expires 20" in table[1]
    # A misspelt tenant listed nothing, as if it had no keys; one with none says so.
    typo = run(data, "keys", "list", "--tenant", "demo-uz")
    assert typo.returncode == 3 and "no such tenant" in typo.stderr
    assert run(data, "tenants", "create", "keyless").returncode == 0
    assert run(data, "keys", "list", "--tenant", "keyless").stdout == (
        "no API keys of tenant 'keyless'\n"
    )


def test_a_data_directory_that_cannot_be_one_is_a_configuration_error(tmp_path: Path) -> None:
    """Each was a traceback (FileExistsError, NotADirectoryError) from the first mkdir."""
    afile = tmp_path / "a-file"
    afile.write_text("")
    for data, args, why in (
        (afile, ("verify",), "is not a directory"),
        (afile / "sub", ("init",), "cannot be made a directory: Not a directory"),
        (afile / "sub", ("keys", "create", "--tenant", "demo", "--role", "admin"), "cannot be"),
    ):
        out = run(data, *args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("consent-ledger: configuration: ") and why in out.stderr
        assert "Traceback" not in out.stderr


def test_a_path_the_os_cannot_use_is_said_in_one_line(tmp_path: Path) -> None:
    """A name longer than the file system takes (ENAMETOOLONG), given as the data directory
    or as a directory to make: each was an internal error, exit 70, its reason withheld."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    long = tmp_path / ("n" * 300)
    for directory, args in (
        (long, ("init",)),
        (data, ("backup", "--into", str(long))),
        (data, ("replay", "--into", str(long))),
    ):
        out = run(directory, *args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("consent-ledger: cannot use "), out.stderr
        assert out.stderr.endswith(": File name too long\n"), out.stderr
        assert out.stderr.count("\n") == 1


def test_arguments_that_are_not_utf8_text_are_refused_by_name(tmp_path: Path) -> None:
    """Bytes a terminal or script passed that are not UTF-8 reach Python as lone surrogates:
    a subject's sid could not be computed from them, an internal error (exit 70). Text
    arguments refuse them by name, without quoting them; a path may be any bytes."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    bad = os.fsdecode(b"\xffcontact")
    for args, name in (
        (("trail", bad, "--tenant", "demo"), "SUBJECT"),
        (("trail", "c-1", "--tenant", bad), "--tenant"),
        (("consents", "c-1", "--tenant", "demo", "--as-of", bad), "--as-of"),
        (("tenants", "create", bad), "T"),
        (
            ("who", "--tenant", "demo", "--purpose", bad, "--at", "2025-01-01T00:00:00Z"),
            "--purpose",
        ),
    ):
        out = run_fresh(data, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert f"error: {name} is not UTF-8 text" in out.stderr, out.stderr
        assert "contact" not in out.stderr + out.stdout
    out = run_fresh(data, "record", str(tmp_path / bad))
    assert out.returncode == 2 and "cannot read" in out.stderr and "No such file" in out.stderr


@pytest.mark.parametrize(
    ("bootstrap", "problem"),
    [
        (os.fsdecode(b"\xff:9092"), "a host name no resolver takes"),
        ("a..b:9092", "a host name no resolver takes"),
        ("k" * 64 + ":9092", "a host name no resolver takes"),
        ("kafka:nine", "a port that is not a number from 1 to 65535"),
        ("kafka:65536", "a port that is not a number from 1 to 65535"),
        (":9092", "no host"),
        ("kafka-1:9092,", "an empty address"),
        ("[::1:9092", "a bracket not closed before the port"),
        ("[kafka]:9092", "no IPv6 address in brackets"),
        ("::1:9092:x", "an IPv6 address with a port must be in brackets"),
    ],
)
def test_a_malformed_bootstrap_list_is_a_configuration_error(bootstrap: str, problem: str) -> None:
    """Each failed in the Kafka client (an internal error, exit 70) or was waited on as a
    broker that did not answer."""
    from ledger.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=r"^KAFKA_BOOTSTRAP takes host:port") as refused:
        Settings.from_env({"LEDGER_BACKEND": "kafka", "KAFKA_BOOTSTRAP": bootstrap})
    assert problem in str(refused.value)


def test_every_form_of_address_the_kafka_client_takes_is_taken(tmp_path: Path) -> None:
    from ledger.settings import Settings

    given = "kafka-1:9092, kafka_2:9093,10.0.0.3:1,[::1]:9092,[fe80::1],::1,кафка.uz:9092,k"
    settings = Settings.from_env({"LEDGER_BACKEND": "kafka", "KAFKA_BOOTSTRAP": given})
    assert settings.bootstrap() == given
    # Embedded mode does not use it, and does not refuse it.
    assert Settings.from_env({"KAFKA_BOOTSTRAP": ":"}).backend == "embedded"
    out = run_fresh(tmp_path / "data", "verify", LEDGER_BACKEND="kafka", KAFKA_BOOTSTRAP="k:x")
    assert out.returncode == 2 and out.stderr.startswith("consent-ledger: configuration: ")
    # Left empty (by a script, or unset: the same to the settings, and this process's own
    # environment may set it), it is said as such.
    out = run_fresh(tmp_path / "data", "init", LEDGER_BACKEND="kafka", KAFKA_BOOTSTRAP="")
    assert (out.returncode, out.stderr) == (
        2,
        "consent-ledger: configuration: LEDGER_BACKEND=kafka needs KAFKA_BOOTSTRAP (host:port)\n",
    )


def test_a_malformed_failpoint_is_a_configuration_error(tmp_path: Path) -> None:
    """A count that was no number was a ValueError traceback from the import of
    `ledger.failpoints`; a misspelt crash point armed nothing, and said nothing."""
    for spec, why in (
        ("intake-step:x", "count must be a whole number from 1, not 'x'"),
        ("intake-step:0", "count must be a whole number from 1, not '0'"),
        ("intake-setp:1", "names no crash point ('intake-setp'); one of erasure.journalled,"),
        ("intake-step:3:rise", "ends in ':raise' or nothing, not 'rise'"),
    ):
        out = run_fresh(tmp_path / "data", "verify", LEDGER_FAILPOINT=spec)
        assert out.returncode == 2, (spec, out.stderr)
        assert out.stderr.startswith("consent-ledger: configuration: LEDGER_FAILPOINT"), spec
        assert why in out.stderr and "Traceback" not in out.stderr, (spec, out.stderr)
    assert run(tmp_path / "data", "verify", LEDGER_FAILPOINT="intake-step:3:raise").returncode == 0


def test_every_crash_point_the_code_passes_can_be_armed() -> None:
    """`failpoint(name)` with a name `LEDGER_FAILPOINT` refuses could never fire."""
    import ast

    import ledger.failpoints

    root = Path(__file__).resolve().parents[1]
    passed = set()
    for package in ("ledger", "projections", "api"):
        for source in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "failpoint"
                ):
                    (argument,) = node.args
                    assert isinstance(argument, ast.Constant), source
                    passed.add(argument.value)
    assert passed == ledger.failpoints.NAMES


def test_an_error_of_the_kafka_client_is_one_line_and_exit_6(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error of kafka-python out of a wait the ledger does not bound itself (its own are
    LedgerUnavailable) was a traceback and exit 1, the status of a refused fact: `publish`'s
    wait for its outcomes raised one when its broker stopped. It stands in for the command's
    work here; tests/test_kafka_faults.py stops a real broker under `publish`."""
    from kafka.errors import KafkaConnectionError

    from ledger.cli import main
    from ledger.settings import Settings

    def broker_gone() -> Settings:
        raise KafkaConnectionError("111 ECONNREFUSED")

    monkeypatch.setattr(Settings, "from_env", staticmethod(broker_gone))
    assert main(["verify"]) == 6
    err = capsys.readouterr().err
    assert err == "consent-ledger: kafka: KafkaConnectionError: 111 ECONNREFUSED\n"


def test_the_worker_on_the_embedded_default_says_it_runs_in_kafka_mode(tmp_path: Path) -> None:
    """Embedded, the writer is every command's own, and the views follow with `project
    --follow`: a `worker` started there would have nothing to do, and says so."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    worker = run(data, "worker")
    assert worker.returncode == 2  # a configuration error
    assert worker.stderr == (
        "consent-ledger: the worker runs in Kafka mode: set LEDGER_BACKEND=kafka and "
        "KAFKA_BOOTSTRAP\n"
    )


def test_receipts_are_found_again_by_event_id_without_sending_the_facts(data: Path) -> None:
    """A publisher that lost its answers asks by event id: each recorded fact's receipt, as
    first given, and which ids were never recorded (refused, or another tenant's), exit 3."""
    assert run(data, "tenants", "create", "acme").returncode == 0
    facts = [
        grant("rc-1", event_id="rc-grant"),
        withdraw("rc-1", event_id="rc-withdraw", occurred_at="2025-03-02T10:00:00+05:00"),
        policy("crmpro-9.0", event_id="rc-policy"),
        grant("rc-2", event_id="rc-refused", purposes=("lottery",)),
        grant("rc-3", event_id="rc-acme", tenant="acme", policy_version="none-such"),
    ]
    recorded = run(data, "record", stdin="\n".join(orjson.dumps(f).decode() for f in facts))
    assert recorded.returncode == 1, recorded.stderr
    answers = {a["index"]: a for a in lines(recorded.stdout)}
    receipts = {facts[i]["event_id"]: answers[i]["receipt"] for i in (0, 1, 2)}
    assert receipts["rc-policy"]["sid"] is None  # the tenant's fact, not a subject's
    asked = ["rc-grant", "rc-policy", "rc-refused", "rc-acme", "never-sent", "rc-withdraw"]
    out = run(data, "receipts", "--tenant", "demo", "--json", stdin="\n".join(asked) + "\n")
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip() == "consent-ledger: 3 of 6 event ids not recorded"
    answer = orjson.loads(out.stdout)
    assert (answer["recorded"], answer["not_recorded"]) == (3, 3)
    assert [(r["index"], r["line"], r["event_id"]) for r in answer["results"]] == [
        (i, i + 1, e) for i, e in enumerate(asked)
    ]
    found = {r["event_id"]: r.get("receipt") for r in answer["results"] if r["recorded"]}
    assert found == receipts
    assert [r["recorded"] for r in answer["results"]] == [True, True, False, False, False, True]
    # Blank lines are skipped, each id keeps its line; all found: exit 0, a line each.
    text = run(data, "receipts", "--tenant", "demo", stdin="rc-grant\n\nrc-withdraw\r\n")
    assert text.returncode == 0, text.stderr
    said = text.stdout.splitlines()
    assert said[0].startswith(
        f"line 1: rc-grant: recorded at {receipts['rc-grant']['recorded_at']}"
    )
    assert said[1].startswith("line 3: rc-withdraw: recorded at ")
    assert said[0].endswith(f"sid {receipts['rc-grant']['sid']}")
    # Another tenant's key to the same ids finds none of the demo tenant's facts.
    other = run(data, "receipts", "--tenant", "acme", stdin="rc-grant\n")
    assert other.returncode == 3 and "rc-grant: not recorded" in other.stdout
    # An id is shown, never obeyed: a terminal escape in the input is written escaped.
    escaped = run(data, "receipts", "--tenant", "demo", stdin="\x1b[2Jrc\n")
    assert escaped.stdout == "line 1: \\u001b[2Jrc: not recorded\n"
    for stdin, args, status, said_so in [
        ("x\n", ("--tenant", "nobody"), 3, "no such tenant"),
        ("\n\n", ("--tenant", "demo"), 2, "- holds no event ids (one per line)"),
        ("ok\n" + "x" * 129, ("--tenant", "demo"), 2, "line 2 is not an event id"),
    ]:
        refused = run(data, "receipts", *args, stdin=stdin)
        assert refused.returncode == status and said_so in refused.stderr, refused.stderr
        assert len(refused.stderr.splitlines()) == 1
