"""The tests' warm CLI (`tests.cli_forker`) answers exactly as a fresh `consent-ledger`
process does: every CLI test that runs a command through `tests.cli_support.run` stands on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.cli_support import Forker, command_env, forker, run_fresh
from tests.facts import grant, withdraw


@pytest.fixture
def warm() -> Iterator[Forker]:
    """The forker the suite's commands go through; under coverage, which measures each
    process afresh and so runs no command forked, one of the test's own."""
    shared = forker()
    if shared is not None:
        yield shared
        return
    own = Forker()
    try:
        yield own
    finally:
        own.close()


def test_a_forked_command_answers_as_a_fresh_process(data: Path, warm: Forker) -> None:
    facts = orjson.dumps(
        [
            grant("c-1", event_id="g1"),
            {"type": "grant", "tenant": "demo"},
            withdraw("c-1", event_id="w1", occurred_at="2025-03-02T10:00:00+05:00"),
        ]
    ).decode()
    assert run_fresh(data, "record", "-", stdin=facts).returncode == 1  # one refused
    at = ("--as-of", "2025-06-01T00:00:00+05:00", "--known-at", "2026-01-01T00:00:00Z")
    commands: list[tuple[tuple[str, ...], str | None]] = [
        # The same facts again: the first receipts, the refusal, exit 1.
        (("record", "-"), facts),
        (("consents", "c-1", "--tenant", "demo", *at, "--json"), None),
        (("consents", "-", "--tenant", "demo", *at), "c-1\r\n"),
        (("trail", "c-1", "--tenant", "demo", "--format", "csv"), None),
        (("trail", "-", "--tenant", "demo"), "\ufeffc-1\n"),
        (("trail", "-", "--tenant", "demo"), ""),
        (("verify", "--json"), None),
        (("consents", "c-1", "--tenant", "demo", "--as-of", "yesterday"), None),
        (("consents",), None),
        (("no-such-command",), None),
        ((), None),
    ]
    for args, stdin in commands:
        forked = warm.run(list(args), command_env(data, {}), stdin, timeout=120)
        fresh = run_fresh(data, *args, stdin=stdin)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            fresh.returncode,
            fresh.stdout,
            fresh.stderr,
        ), args
        assert forked.args == fresh.args


def test_what_a_process_reads_before_any_command_runs_is_never_forked(warm: Forker) -> None:
    assert warm.forkable(dict(os.environ))
    for changed in ("LEDGER_FAILPOINT", "PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONHASHSEED"):
        assert not warm.forkable({**os.environ, changed: "x"}), changed
