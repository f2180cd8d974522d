"""Facts recorded and checkpoints signed as an operator publishes them: shared by the
checkpoint and signing-key rotation tests."""

from __future__ import annotations

from typing import Any

import orjson

from ledger.application import ConsentLedger
from ledger.checkpoint import checkpoint, since_sizes_of
from ledger.envelope import parse_fact
from ledger.receipt import Receipt


def recorded(ledger: ConsentLedger, *facts: dict[str, Any]) -> None:
    for outcome in ledger.record([parse_fact(f) for f in facts]):
        assert isinstance(outcome, Receipt), outcome


def signed(ledger: ConsentLedger, since: dict[str, Any] | None = None) -> dict[str, Any]:
    sizes = since_sizes_of(since) if since is not None else None
    found = checkpoint(ledger.ledger_recorder, ledger.keystore, since_sizes=sizes)
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(found))  # as published
    return decoded
