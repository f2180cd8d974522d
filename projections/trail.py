"""A subject's complete audit trail: every fact in order, decoded for a person to read.

Personal data is decrypted while the subject's key exists and shows as erased after (as a
missing key, if the log records no erasure); every row keeps its chain hashes so the reader
can check it against `verify`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from ledger.application import ConsentLedger
from ledger.chained import ChainedAggregate
from ledger.codec import isoformat
from ledger.controls import visible
from ledger.keystore import unseal_if_ours
from ledger.subject import Subject

_HIDDEN = {
    "originator_id",
    "originator_version",
    "timestamp",
    "pii",
    "prev_hash",
    "event_id",
    "occurred_at",
    "source",
    "channel",
    "originator_topic",
}


def subject_trail(ledger: ConsentLedger, tenant: str, sid: UUID) -> dict[str, Any] | None:
    subject = ledger.subject(tenant, sid)
    if subject is None:
        return None
    tenant_agg = ledger.tenant(tenant, shared=True)  # read only: no copy of the catalogue
    policies = tenant_agg.policies if tenant_agg else {}
    # An erased subject's data is never decrypted, even if its key outlived the erasure fact.
    key = None if subject.erased else ledger.keystore.open_keys([sid]).get(sid)
    index = {row.originator_version: row for row in ledger.ledger_recorder.index_of(sid)}
    # In Kafka mode a fact's place is its partition and offset in the log of record, as its
    # receipt said: the replica's own numbering follows the order its reads happened in, so
    # two replicas would hand over the same trail with different positions.
    placed = ledger.ledger_recorder.log_coordinates([row.position for row in index.values()])
    # Sealed data without its key: erased, if the log says so; destroyed by an erasure the
    # key store holds and the log does not (a log restored from a backup older than it:
    # `ConsentLedger.erasures_not_in_log`), which must not read as "not erased"; otherwise
    # the key is missing (a key store restored from a backup older than the log), which a
    # trail handed to the authorised body must not call an erasure.
    unreadable = (
        {"erased": True}
        if subject.erased
        else {"key_erased": True}
        if key is None and ledger.keystore.is_erased(sid)
        else {"key_missing": True}
    )
    corrected_by: dict[str, list[str]] = {}
    for c in subject.corrections:
        corrected_by.setdefault(c.corrects, []).append(c.event_id)

    reference: str | None = None
    facts: list[dict[str, Any]] = []
    for stored in ledger.events.get(sid):
        event: Any = stored
        state = dict(vars(event))
        sealed = state.get("pii")
        personal: dict[str, Any] | None = None
        if sealed is not None and key is not None:
            personal = unseal_if_ours(key, sid, sealed)
        is_fact = isinstance(event, ChainedAggregate.Fact)
        if isinstance(event, Subject.Registered) and personal is not None:
            # The reference is sealed with the subject's first fact (or, in logs written
            # before first facts registered subjects, in a registration of its own).
            reference = personal.pop("subject", None)
            if not personal and is_fact:
                sealed = None  # the fact itself carried no personal data
        said = stored_fields(type(event), event.originator_version, state)
        fact_type, event_id = said["type"], said["event_id"]
        row = index.get(event.originator_version)
        entry: dict[str, Any] = {"position": row.position if row else None}
        if row is not None and row.position in placed:
            entry["partition"], entry["position"] = placed[row.position]
        entry.update({name: said[name] for name in _SAID_BEFORE_PERSONAL_DATA})
        entry["personal_data"] = (
            None if sealed is None else personal if personal is not None else unreadable
        )
        entry["prev_hash"] = said["prev_hash"]
        entry["hash"] = row.hash if row else None
        if fact_type == "consent.granted":
            policy = policies.get(state["policy_version"])
            entry["policy"] = {
                "version": state["policy_version"],
                "text_sha256": policy.text_sha256 if policy else None,
            }
        if event_id is not None and event_id in corrected_by:
            entry["corrected_by"] = corrected_by[event_id]
        if fact_type == "consent.corrected":
            entry["corrects"] = state["corrects"]
        facts.append(entry)
    return {
        "tenant": tenant,
        "sid": sid.hex,
        "subject": reference if key is not None else None,
        "erased": subject.erased,
        "erased_at": subject.erased_at.isoformat() if subject.erased_at else None,
        "facts": facts,
    }


_SAID_BEFORE_PERSONAL_DATA = (
    "version",
    "type",
    "event_id",
    "occurred_at",
    "recorded_at",
    "source",
    "channel",
    "details",
)


# Every field a trail row may hold: the optional ones are the partition (Kafka mode), the
# grant's policy and the links between a correction and what it corrects.
ROW_FIELDS = frozenset(
    {"position", *_SAID_BEFORE_PERSONAL_DATA, "personal_data", "prev_hash", "hash"}
    | {"partition", "policy", "corrected_by", "corrects"}
)


def said_type(event_class: type) -> str:
    if issubclass(event_class, ChainedAggregate.Fact):
        return event_class.fact_type
    return "subject.registered"


def stored_fields(event_class: type, version: int, state: Mapping[str, Any]) -> dict[str, Any]:
    """A trail row's fields that the event's stored bytes say by themselves (all but its
    position, hash, personal data, policy and correction links).

    One function for the trail and for checking an evidence package's trail against the
    bytes it carries (`projections.evidence`), so the two cannot read a fact differently.
    `state` is the event's decoded state: its instance dict, less the originator's id and
    version, which are not in its bytes.
    """
    is_fact = issubclass(event_class, ChainedAggregate.Fact)
    return {
        "version": version,
        "type": said_type(event_class),
        "event_id": state["event_id"] if is_fact else None,
        "occurred_at": _plain(state.get("occurred_at", state["timestamp"])),
        "recorded_at": isoformat(state["timestamp"]),
        "source": state.get("source"),
        "channel": state.get("channel"),
        "details": {k: _plain(v) for k, v in state.items() if k not in _HIDDEN and k != "tenant"},
        "prev_hash": state.get("prev_hash", ""),
    }


# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str | None) -> str:
    """A publisher's text as a cell a spreadsheet shows as text, never runs.

    The CSV trail is what a compliance officer opens in a spreadsheet; `event_id` and
    `source` are whatever the publisher sent, and one that begins like a formula
    (`=HYPERLINK(...)`) would be evaluated there. Such a cell is prefixed with an
    apostrophe, OWASP's advice; a character that would not show (a control, a
    bidirectional override: `ledger.controls`) is written as its escape. The JSON trail
    keeps every value exactly.
    """
    if not value:
        return ""
    value = visible(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def json_cell(value: Any) -> str:
    """A JSON value as a cell: the same JSON, with what would not show escaped."""
    return visible(orjson.dumps(value).decode())


def trail_csv(trail: dict[str, Any]) -> str:
    """The trail as CSV, one fact per row; text a publisher chose is made spreadsheet-safe
    (`text_cell`, `json_cell`), the rest (positions, times from the ledger, hashes) is as is."""
    out = io.StringIO()
    writer = csv.writer(out)
    # Kafka mode's rows say their partition too, in a column embedded mode has no use for.
    partitioned = any("partition" in fact for fact in trail["facts"])
    place = ["position", "partition"] if partitioned else ["position"]
    writer.writerow([*place, *_SAID_BEFORE_PERSONAL_DATA, "personal_data", "prev_hash", "hash"])
    for fact in trail["facts"]:
        writer.writerow(
            [
                *(fact.get(name) for name in place),
                fact["version"],
                fact["type"],
                text_cell(fact["event_id"]),
                fact["occurred_at"],
                fact["recorded_at"],
                text_cell(fact["source"]),
                text_cell(fact["channel"]),
                json_cell(fact["details"]),
                json_cell(fact["personal_data"]) if fact["personal_data"] else "",
                fact["prev_hash"],
                fact["hash"] or "",
            ]
        )
    return out.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
