"""`consent-ledger publish`: facts through the intake topic to a running worker, which it does
not fence, with each fact's outcome reported once the worker committed it."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from ledger.kafka.names import Topics
from ledger.kafka.topics import RECORD_LIMIT
from tests.cli_support import (
    Started,
    closed,
    line_within,
    lines_until,
    piped,
    start_with,
    written_behind,
)
from tests.facts import grant, withdraw
from tests.kafka_support import (
    kafka_env,
    kafka_settings,
    largest_policy,
    made_by_hand,
    read_committed,
)

pytestmark = pytest.mark.kafka


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


@contextlib.contextmanager
def running_worker(env: dict[str, str]) -> Iterator[Started]:
    """`consent-ledger worker` consuming; stopped by SIGTERM, and it must exit 0."""
    worker = start_with({**os.environ, **env}, "worker", "--no-projections")
    try:
        assert worker.stdout is not None
        assert line_within(worker.stdout).startswith("worker: consuming")
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0


def test_publish_through_intake_to_a_running_worker(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    with running_worker(env) as worker:
        facts = [
            orjson.dumps(grant("pub-1", event_id="p1")).decode(),
            "{not json",
            orjson.dumps(withdraw("pub-1", event_id="p2", purposes=("analytics",))).decode(),
            orjson.dumps(
                withdraw("pub-1", event_id="p3", occurred_at="2025-03-02T10:00:00+05:00")
            ).decode(),
        ]
        # A blank line between two: each answer names its line in the file too.
        text = "\n".join(facts[:2]) + "\n\n" + "\n".join(facts[2:])
        out = cli(env, "publish", "--wait", "120", stdin=text)
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip() == "consent-ledger: 2 of 4 facts rejected (see stdout)"
        lines = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert [(line["index"], line["line"]) for line in lines] == [(0, 1), (1, 2), (2, 4), (3, 5)]
        assert lines[0]["receipt"]["event_id"] == "p1" and "partition" in lines[0]["receipt"]
        assert lines[1]["rejected"]["code"] == "invalid_json"
        assert lines[2]["rejected"]["code"] == "purpose_not_in_force"
        assert lines[3]["receipt"]["sid"] == lines[0]["receipt"]["sid"]
        assert lines[0]["receipt"]["duplicate"] is False

        # A retry is answered with the first receipt, as a duplicate: as `record` and HTTP
        # answer it (`publish` said `"duplicate": false`).
        retry = cli(env, "publish", "--wait", "120", stdin=facts[0])
        assert retry.returncode == 0, retry.stderr
        assert orjson.loads(retry.stdout)["receipt"] == {**lines[0]["receipt"], "duplicate": True}

        # The worker was not fenced: it keeps consuming.
        again = cli(env, "publish", stdin=orjson.dumps(grant("pub-2", event_id="p4")).decode())
        assert again.returncode == 0, again.stderr
        # A document's fact that names a member twice is refused in its place, never sent in
        # the one reading its decoded form kept; a line of JSON Lines, by the worker.
        twice = orjson.dumps(grant("pub-3", event_id="p6"))[:-1] + b',"subject":"pub-4"}'
        document = b"[" + orjson.dumps(grant("pub-3", event_id="p5")) + b"," + twice + b"]"
        for stdin in (document, twice):
            mixed = cli(env, "publish", "--wait", "120", stdin=stdin.decode())
            assert mixed.returncode == 1, mixed.stderr
            answers = [orjson.loads(line) for line in mixed.stdout.splitlines()]
            assert answers[-1] == {
                "index": len(answers) - 1,
                "rejected": {
                    "code": "invalid_json",
                    "message": "an object in the fact names the same member twice",
                },
            }
            assert all("receipt" in answer for answer in answers[:-1])
        assert worker.poll() is None
        trail = cli(env, "trail", "pub-1", "--tenant", "demo", "--json")
        assert [f["event_id"] for f in orjson.loads(trail.stdout)["facts"]] == ["p1", "p3"]

        # Asked later by event id: what landed, and why the intake writer refused the rest.
        asked = cli(env, "receipts", "--tenant", "demo", "--json", stdin="p1\np2\np3\nnever\n")
        assert asked.returncode == 3, asked.stderr
        assert asked.stderr.strip() == (
            "consent-ledger: 2 of 4 event ids not recorded (1 refused by the intake writer: "
            "see stdout)"
        )
        results = orjson.loads(asked.stdout)["results"]
        assert results[0]["receipt"] == lines[0]["receipt"]
        assert results[2]["receipt"] == lines[3]["receipt"]
        refused = results[1]["refused"]
        assert {k: refused[k] for k in ("code", "message", "field")} == lines[2]["rejected"]
        assert refused["source"]["partition"] == lines[0]["receipt"]["partition"]  # one subject
        assert results[3] == {"index": 3, "line": 4, "event_id": "never", "recorded": False}
        told = cli(env, "receipts", "--tenant", "demo", stdin="p2\n").stdout
        assert told.startswith("line 1: p2: not recorded: refused, purpose_not_in_force: ")


def test_a_line_that_is_json_but_no_object_reaches_the_rejected_topic_as_written(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The rejected topic keeps the original bytes of what it refuses. `publish` sent a line
    that was JSON but not an object re-encoded (`[1,2]` for `[1,  2]`), so the bytes kept
    were not the ones the publisher wrote, as they were for a line that is not JSON."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    env = kafka_env(settings)
    assert cli(env, "init").returncode == 0
    written = [b"[1,  2]", b' "a string" ', b"{not json"]
    with running_worker(env):
        out = cli(env, "publish", "--wait", "120", stdin=b"\n".join(written).decode())
    assert out.returncode == 1, out.stderr
    codes = [orjson.loads(line)["rejected"]["code"] for line in out.stdout.splitlines()]
    assert codes == ["not_an_object", "not_an_object", "invalid_json"]
    rejected = read_committed(kafka_bootstrap, Topics.of(settings.topic_prefix).rejected)
    kept = {base64.b64decode(orjson.loads(r.value)["original"]) for r in rejected}
    assert kept == set(written)


def test_publish_reads_sends_and_answers_a_batch_at_a_time(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The input is read and sent 2,000 facts at a time: a pipe's first batch is sent and
    answered while the pipe is still open (read whole, 200,000 facts took 331 MB), and a
    fact whose next line has not come is answered before it comes. With a wait, each batch
    is answered from the refusals and the ledger written after it was sent: a refusal in
    the second batch is found, and no fact is taken for one the ledger held before."""
    from ledger.cli.records import PUBLISH_BATCH

    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    facts = [orjson.dumps(grant(f"batch-{i}", event_id=f"batch-{i}")) for i in range(PUBLISH_BATCH)]
    with running_worker(env):
        with piped("publish", "--no-wait", "-", env=env) as fed:
            assert fed.stdin is not None and fed.stdout is not None
            data = b"\n".join(facts[:10]) + b"\n\n" + b"\n".join(facts[10:]) + b"\n"
            writing = written_behind(fed.stdin, data)  # and the pipe stays open
            last = PUBLISH_BATCH - 1
            first = lines_until(fed.stdout, lambda line: f'"index":{last},' in line)
            writing.join(timeout=60)
            assert not writing.is_alive(), "the input was not all written"
            answers = [orjson.loads(line) for line in first]
            assert [(a["index"], a["line"]) for a in answers[9:12]] == [
                (9, 10),
                (10, 12),
                (11, 13),
            ]
            assert all(set(a["published"]) == {"partition", "offset"} for a in answers)
            fed.stdin.write(orjson.dumps(grant("batch-last", event_id="batch-last")) + b"\n")
            rest = closed(fed)
        assert [(a["index"], a["line"]) for a in rest] == [(PUBLISH_BATCH, PUBLISH_BATCH + 2)]

        # With a wait, a fact whose next line has not come is answered with its receipt
        # before the pipe goes on: it was answered only after the next batch was read.
        with piped("publish", "--wait", "60", "-", env=env) as waited:
            assert waited.stdin is not None and waited.stdout is not None
            for i in range(2):
                waited.stdin.write(orjson.dumps(grant(f"one-{i}", event_id=f"one-{i}")) + b"\n")
                waited.stdin.flush()
                (one,) = lines_until(waited.stdout, lambda line: True, timeout=60)
                assert orjson.loads(one)["receipt"]["event_id"] == f"one-{i}", one
            assert closed(waited) == []

        # Other facts with a wait: a bad line and a fact in the second batch.
        again = [
            orjson.dumps(grant(f"waited-{i}", event_id=f"waited-{i}"))
            for i in range(PUBLISH_BATCH + 1)
        ]
        again.insert(PUBLISH_BATCH + 1, b"{not json")
        out = cli(env, "publish", "--wait", "120", stdin=b"\n".join(again).decode())
    assert out.returncode == 1, out.stderr
    total = PUBLISH_BATCH + 2
    assert out.stderr.strip() == f"consent-ledger: 1 of {total} facts rejected (see stdout)"
    answers = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [a["index"] for a in answers] == list(range(total))
    assert answers.pop(PUBLISH_BATCH + 1)["rejected"]["code"] == "invalid_json"
    assert [a["receipt"]["event_id"] for a in answers] == [
        f"waited-{i}" for i in range(PUBLISH_BATCH + 1)
    ]
    assert not any(a["receipt"]["duplicate"] for a in answers)


def test_publish_sends_the_envelopes_largest_facts_and_refuses_larger_ones(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A fact of the envelope's full 1 MiB made `publish` exit with kafka-python's traceback
    (its producer took requests of 1 MiB): sent now, to an intake topic the ledger made to
    take it, and recorded. A record larger than the topic takes is refused in its place
    (`oversize`, nothing sent for it), the others published. A policy's receipt has no sid
    (it gave the tenant's aggregate id as one)."""
    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    with running_worker(env):
        too_large = orjson.dumps({**grant("pub-big"), "evidence": {"x": "y" * 3_000_000}})
        lines = [
            largest_policy("pub-policy"),
            too_large,
            orjson.dumps(grant("pub-after", event_id="pub-after")),
        ]
        out = cli(env, "publish", "--wait", "120", stdin=b"\n".join(lines).decode())
        assert out.returncode == 1, out.stderr
        answers = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert answers[0]["receipt"]["event_id"] == "policy-pub-policy"
        assert answers[0]["receipt"]["sid"] is None
        assert answers[1]["rejected"]["code"] == "oversize"
        assert "nothing was published" in answers[1]["rejected"]["message"]
        assert answers[2]["receipt"]["event_id"] == "pub-after"
        assert answers[2]["receipt"]["sid"] is not None


def test_publish_with_no_worker_running_says_so_and_the_fact_is_taken_later(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The writer not started (or stopped): the wait ends with what to check, not an
    answer, and the fact, published all the same, is recorded once a worker runs."""
    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    fact = orjson.dumps(grant("nw-1", event_id="nw1")).decode()
    out = cli(env, "publish", "--wait", "2", stdin=fact)
    assert out.returncode == 6, out.stderr
    assert out.stderr == (
        "consent-ledger: the ledger writer did not take the facts within 2 s "
        "(is `consent-ledger worker` or `serve` running?)\n"
    )
    assert out.stdout == ""
    with running_worker(env):
        retry = cli(env, "publish", "--wait", "120", stdin=fact)
    assert retry.returncode == 0, retry.stderr
    assert orjson.loads(retry.stdout)["receipt"]["duplicate"] is True


def test_publish_needs_kafka_mode(tmp_path: Path) -> None:
    out = cli({"LEDGER_DATA_DIR": str(tmp_path)}, "publish", stdin="{}")
    assert out.returncode == 2
    assert "Kafka mode" in out.stderr


def test_records_on_the_rejected_topic_that_are_not_ours_are_passed_over() -> None:
    from ledger.kafka.names import Topics
    from ledger.kafka.publish import _refusal
    from ledger.kafka.recorder import KafkaLink
    from ledger.kafka.records import MAC_HEADER, record_mac

    link = KafkaLink("unused:9092", Topics.of("p"), 1, b"k" * 32)
    source = {"topic": "p.intake", "partition": 0, "offset": 7}
    ours: dict[str, object] = {
        "code": "invalid_json",
        "message": "m",
        "source": source,
    }
    wanted = {(0, 7)}

    def record(value: bytes | None, mac_key: bytes = link.record_key) -> SimpleNamespace:
        """A rejected record as the writer writes it: its key the source, its MAC."""
        key = b"p.intake/0/7"
        headers = {"code": b"invalid_json"}
        mac = record_mac(mac_key, key, value or b"", headers)
        return SimpleNamespace(key=key, value=value, headers=[*headers.items(), (MAC_HEADER, mac)])

    for value in [
        b"not json",
        b"[1]",
        b"{}",
        None,
        orjson.dumps({**ours, "code": "no_such_code"}),
        orjson.dumps({**ours, "source": {**source, "offset": 8}}),
    ]:
        assert _refusal(record(value), link, wanted) is None
    # The refusal of our record, written by anyone but the ledger (another MAC key, or none).
    assert _refusal(record(orjson.dumps(ours), b"x" * 32), link, wanted) is None
    unsigned = SimpleNamespace(key=b"p.intake/0/7", value=orjson.dumps(ours), headers=[])
    assert _refusal(unsigned, link, wanted) is None
    found = _refusal(record(orjson.dumps(ours)), link, wanted)
    assert found is not None and found[0] == (0, 7) and found[1].code.value == "invalid_json"


def test_a_refusal_found_by_event_id_is_the_ledgers_of_that_tenant_and_intake_topic() -> None:
    from ledger.kafka.names import Topics
    from ledger.kafka.recorder import KafkaLink
    from ledger.kafka.records import MAC_HEADER, record_mac
    from ledger.kafka.rejected import _refusal_of

    link = KafkaLink("unused:9092", Topics.of("p"), 1, b"k" * 32)
    source = {"topic": "p.intake", "partition": 2, "offset": 7}
    ours = {
        "code": "unknown_purpose",
        "message": "m",
        "field": "purposes",
        "source": source,
        "tenant": "demo",
        "event_id": "e1",
    }

    def record(body: object, mac_key: bytes = link.record_key) -> SimpleNamespace:
        key, value, headers = b"p.intake/2/7", orjson.dumps(body), {"code": b"unknown_purpose"}
        mac = record_mac(mac_key, key, value, headers)
        return SimpleNamespace(
            key=key, value=value, headers=[*headers.items(), (MAC_HEADER, mac)], timestamp=5
        )

    for body in [
        "not an object",
        [1],
        {**ours, "tenant": "acme"},  # another tenant's fact of the same event id
        {**ours, "event_id": "e2"},
        {**ours, "event_id": ["e1"]},
        {**ours, "source": {**source, "topic": "q.intake"}},  # another intake topic
        {**ours, "code": "no_such_code"},
        {k: v for k, v in ours.items() if k != "source"},
    ]:
        assert _refusal_of(record(body), link, "demo", {"e1"}) is None, body
    assert _refusal_of(record(ours, b"x" * 32), link, "demo", {"e1"}) is None  # not the ledger's
    found = _refusal_of(record(ours), link, "demo", {"e1"})
    assert found is not None
    event_id, refusal = found
    assert event_id == "e1" and refusal.as_dict() == {
        "code": "unknown_purpose",
        "message": "m",
        "field": "purposes",
        "source": {"partition": 2, "offset": 7},
        "rejected_at": "1970-01-01T00:00:00.005000+00:00",
    }


def test_an_answer_names_no_refusal_of_an_intake_topic_made_before(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The intake topic deleted and made again starts its offsets over. `publish` read the
    rejected topic from its beginning and matched refusals by partition and offset: a grant
    recorded at the place of a fact refused from the earlier topic was answered with that
    old refusal (exit 1), though the trail lists it."""
    from kafka.admin import KafkaAdminClient

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    env = kafka_env(settings)
    assert cli(env, "init").returncode == 0
    # Keyed by tenant and sid, both land at offset 0 of the same partition.
    refused = withdraw("pub-x", event_id="px-1", purposes=("marketing",))
    recorded = grant("pub-x", event_id="px-2")
    with running_worker(env):
        out = cli(env, "publish", "--wait", "120", stdin=orjson.dumps(refused).decode())
        assert out.returncode == 1, out.stderr
        assert orjson.loads(out.stdout)["rejected"]["code"] == "purpose_not_in_force"
    intake = f"{settings.topic_prefix}.intake"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([intake])
        deadline = time.monotonic() + 60
        while intake in admin.list_topics():  # deleted in the background: polled until gone
            assert time.monotonic() < deadline, "the intake topic was not deleted in 60 s"
            time.sleep(0.1)
    finally:
        admin.close()
    made = cli(env, "init")  # makes the intake topic again
    assert made.returncode == 0, made.stderr
    with running_worker(env):
        out = cli(env, "publish", "--wait", "120", stdin=orjson.dumps(recorded).decode())
        assert out.returncode == 0, out.stdout + out.stderr
        answer = orjson.loads(out.stdout)
        assert answer["receipt"]["event_id"] == "px-2"
    trail = cli(env, "trail", "pub-x", "--tenant", "demo", "--json")
    assert [f["event_id"] for f in orjson.loads(trail.stdout)["facts"]] == ["px-2"]


def test_a_fact_larger_than_another_teams_intake_topic_takes_is_refused_alone(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The intake topic may be another team's, made with its own `max.message.bytes`
    (`ledger.kafka.topics.intake_topic`), smaller than the envelope's largest fact. The
    broker refused such a record, and kafka-python's idempotent producer then failed every
    record after it with the same error: a small fact of the same person, sent with it,
    was answered `oversize` too. The large one is refused before it is sent now, naming
    the topic's limit, and the facts around it are published."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    env = kafka_env(settings)
    made_by_hand(kafka_bootstrap, f"{settings.topic_prefix}.intake", {"max.message.bytes": "65536"})
    made = cli(env, "init")
    assert made.returncode == 0, made.stderr
    # One partition, sent together: one batch.
    reference = "ref-oversize-7731"
    lines = [
        orjson.dumps(grant(reference, event_id="small-before")),
        largest_policy("large", 100_000),  # a valid fact, as large as a policy's text makes it
        orjson.dumps(grant(reference, event_id="small-after")),
        orjson.dumps(grant("someone-else", event_id="small-other")),
    ]
    refused, said = all_published_but(env, lines, 1)
    assert refused["code"] == "oversize"
    assert f"than topic {settings.topic_prefix}.intake takes (65536 bytes)" in refused["message"]
    assert reference not in said  # no reference echoed


def all_published_but(
    env: dict[str, str], lines: list[bytes], refused: int
) -> tuple[dict[str, Any], str]:
    """`publish --no-wait` of `lines`: each answered published but the `refused`th; its
    refusal, and everything the command printed."""
    out = cli(env, "publish", "--no-wait", stdin=b"\n".join(lines).decode())
    assert out.returncode == 1, out.stdout + out.stderr
    answers = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [sorted(a) for a in answers] == [
        ["index", "line", "rejected" if i == refused else "published"] for i in range(len(lines))
    ], answers
    rejected: dict[str, Any] = answers[refused]["rejected"]
    return rejected, out.stdout + out.stderr


def test_publish_refuses_a_record_larger_than_it_sends_to_a_topic_that_takes_it(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The other way round: an intake topic made to take records larger than `publish`'s
    requests carry (`RECORD_LIMIT`). kafka-python's `send` refuses such a record before it
    sends it; the answer names `publish`'s own limit, and the facts around it are
    published."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    env = kafka_env(settings)
    made_by_hand(
        kafka_bootstrap, f"{settings.topic_prefix}.intake", {"max.message.bytes": str(8 << 20)}
    )
    assert cli(env, "init").returncode == 0
    lines = [
        orjson.dumps(grant("ref-before", event_id="large-before")),
        orjson.dumps({**grant("ref-large"), "evidence": {"x": "y" * 3_000_000}}),
        orjson.dumps(grant("ref-after", event_id="large-after")),
    ]
    refused, said = all_published_but(env, lines, 1)
    assert refused["code"] == "oversize"
    assert f"than publish sends ({RECORD_LIMIT} bytes)" in refused["message"]
    assert "ref-large" not in said


def test_publish_gives_the_tenant_to_the_facts_that_name_none(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """`publish --tenant`: a fact that names no tenant is published as the tenant's (keyed by
    it, so a person's facts keep their partition); one that names its own keeps it; without
    the option, a fact that names none is refused by the worker, as any fact missing it."""
    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    tenantless = {k: v for k, v in grant("pub-t1", event_id="t1").items() if k != "tenant"}
    elsewhere = {**grant("pub-t2", event_id="t2"), "tenant": "no-such-tenant"}
    later = {
        k: v
        for k, v in withdraw(
            "pub-t1", event_id="t3", occurred_at="2025-03-02T10:00:00+05:00"
        ).items()
        if k != "tenant"
    }
    with running_worker(env):
        text = "\n".join(orjson.dumps(f).decode() for f in (tenantless, elsewhere, later))
        out = cli(env, "publish", "--tenant", "demo", "--wait", "120", stdin=text)
        assert out.returncode == 1, out.stderr
        answers = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert answers[0]["receipt"]["event_id"] == "t1"
        assert answers[1]["rejected"]["code"] == "unknown_tenant"
        assert answers[2]["receipt"]["sid"] == answers[0]["receipt"]["sid"]
        assert answers[2]["receipt"]["partition"] == answers[0]["receipt"]["partition"]
        bare = {**tenantless, "event_id": "t4"}
        refused = cli(env, "publish", "--wait", "120", stdin=orjson.dumps(bare).decode())
        assert refused.returncode == 1, refused.stderr
        rejected = orjson.loads(refused.stdout)["rejected"]
        assert (rejected["code"], rejected.get("field")) == ("missing_field", "tenant"), rejected
    trail = cli(env, "trail", "pub-t1", "--tenant", "demo", "--json")
    assert [f["event_id"] for f in orjson.loads(trail.stdout)["facts"]] == ["t1", "t3"]


def test_a_broker_refusal_after_the_limit_was_read_ends_publish_unanswered(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The intake topic's `max.message.bytes` lowered while `publish` runs: its own check,
    made with the limit read at start, lets a fact through that the broker now refuses, and
    kafka-python then fails whatever the producer holds. The command ends as at any broker
    failure (exit 6: publish everything again), answering no fact `oversize` it was not."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    env = kafka_env(settings)
    assert cli(env, "init").returncode == 0
    first = orjson.dumps(grant("pub-lowered", event_id="lowered-1")) + b"\n"
    large = largest_policy("lowered-2", 100_000)
    with piped("publish", "--no-wait", "-", env=env) as fed:
        assert fed.stdin is not None and fed.stdout is not None and fed.stderr is not None
        written_behind(fed.stdin, first).join(timeout=60)
        answered = lines_until(fed.stdout, lambda line: '"index":0,' in line)
        assert "published" in orjson.loads(answered[-1]), answered
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            topic = f"{settings.topic_prefix}.intake"
            admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "65536"})]
            )
        finally:
            admin.close()
        fed.stdin.write(large + b"\n")
        fed.stdin.close()
        out, err = fed.stdout.read(), fed.stderr.read()
        assert fed.wait(timeout=120) == 6, err
    assert b'"oversize"' not in out, out
    said = err.decode()
    assert "the broker did not confirm every fact" in said and "publish them all again" in said
    assert "the first 1 facts of the input were answered on stdout" in said


def test_a_worker_serves_its_metrics_on_the_port_asked(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A worker has no HTTP API: `--metrics-port` gives Prometheus what the intake writer
    counts, and the views' lag, on a port of its own."""
    import httpx

    env = kafka_env(kafka_settings(tmp_path / "data", kafka_bootstrap))
    assert cli(env, "init").returncode == 0
    worker = start_with({**os.environ, **env}, "worker", "--metrics-port", "0")
    try:
        assert worker.stdout is not None
        said = line_within(worker.stdout)
        assert said.startswith("worker: metrics on http://127.0.0.1:"), said
        url = said.split()[-1]
        assert line_within(worker.stdout).startswith("worker: consuming")
        facts = [grant("met-1", event_id="met-1"), grant("met-2", purposes=("astrology",))]
        stdin = "\n".join(orjson.dumps(f).decode() for f in facts)
        assert cli(env, "publish", "--wait", "120", stdin=stdin).returncode == 1
        # Committed, then counted: asked until counted, within the publish's own bound.
        deadline = time.monotonic() + 120
        while "\nledger_intake_facts_accepted_total 1\n" not in (text := httpx.get(url).text):
            assert time.monotonic() < deadline and worker.poll() is None, text
            time.sleep(0.05)  # a poll of the endpoint for a count, not a wait for it
        assert 'ledger_intake_facts_refused_total{code="unknown_purpose"} 1' in text
        assert "\nledger_projection_lag " in text and "ledger_intake_lag{" in text
        assert "ledger_http_requests_total" not in text  # no HTTP API to count
        assert "\nledger_kafka_fenced_broker_connections_closed_total 0\n" in text
        assert httpx.get(url.removesuffix("/metrics") + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url.removesuffix("/metrics") + "/other").status_code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0


def test_a_worker_whose_metrics_port_is_taken_says_so_at_once(tmp_path: Path) -> None:
    import socket

    env = {**os.environ, "LEDGER_BACKEND": "kafka", "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = cli(
            {**env, "LEDGER_DATA_DIR": str(tmp_path / "data")},
            "worker",
            "--metrics-port",
            str(port),
        )
    assert refused.returncode == 6, refused.stderr
    assert refused.stderr == (
        f"consent-ledger: worker: cannot listen on 127.0.0.1 port {port}: Address already in use\n"
    )
