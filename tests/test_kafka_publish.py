"""`consent-ledger publish`: facts through the intake topic to a running worker, which it does
not fence, with each fact's outcome reported once the worker committed it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.cli_support import line_within
from tests.facts import grant, withdraw
from tests.kafka_support import kafka_env, kafka_settings, largest_policy

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
def running_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`consent-ledger worker` consuming; stopped by SIGTERM, and it must exit 0."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "worker", "--no-projections"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
        out = cli(env, "publish", "--wait", "120", stdin="\n".join(facts))
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip() == "consent-ledger: 2 of 4 facts rejected (see stdout)"
        lines = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert [line["index"] for line in lines] == [0, 1, 2, 3]
        assert lines[0]["receipt"]["event_id"] == "p1" and "partition" in lines[0]["receipt"]
        assert lines[1]["rejected"]["code"] == "invalid_json"
        assert lines[2]["rejected"]["code"] == "purpose_not_in_force"
        assert lines[3]["receipt"]["sid"] == lines[0]["receipt"]["sid"]

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


def test_publish_needs_kafka_mode(tmp_path: Path) -> None:
    out = cli({"LEDGER_DATA_DIR": str(tmp_path)}, "publish", stdin="{}")
    assert out.returncode == 2
    assert "Kafka mode" in out.stderr


def test_records_on_the_rejected_topic_that_are_not_ours_are_passed_over() -> None:
    from ledger.kafka.publish import _refusal
    from ledger.kafka.recorder import KafkaLink
    from ledger.kafka.topics import Topics

    link = KafkaLink("unused:9092", Topics.of("p"), 1, b"k" * 32)
    source = {"topic": "p.intake", "partition": 0, "offset": 7}
    ours: dict[str, object] = {
        "code": "invalid_json",
        "message": "m",
        "source": source,
    }
    wanted = {(0, 7)}
    for value in [
        b"not json",
        b"[1]",
        b"{}",
        None,
        orjson.dumps({**ours, "code": "no_such_code"}),
        orjson.dumps({**ours, "source": {**source, "offset": 8}}),
    ]:
        assert _refusal(value, link, wanted) is None
    found = _refusal(orjson.dumps(ours), link, wanted)
    assert found is not None and found[0] == (0, 7) and found[1].code.value == "invalid_json"
