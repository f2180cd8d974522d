"""Destroying personal data: `erase`, and `retention` for those no purpose keeps."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ledger.application import ConsentLedger
from ledger.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    CliError,
    current_views,
    fail,
    open_ledger,
    print_json,
    say,
    subject_args,
    subject_sid,
)
from ledger.envelope import parse_fact, parse_time
from ledger.errors import FactRejected
from ledger.receipt import ErasureNotOverwritten
from ledger.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser("erase", help="erase a subject's personal data (crypto-shredding)")
    subject_args(p)
    p.add_argument("--ground", required=True)
    p.add_argument("--request-id")
    p.add_argument("--event-id", help="idempotency key for this erasure")
    p.set_defaults(run=cmd_erase)

    p = sub.add_parser(
        "retention",
        help="subjects whose every purpose is past its retention; --erase erases them",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--as-of", help="list what is due at this instant instead of now (RFC 3339)")
    p.add_argument(
        "--erase",
        action="store_true",
        help="erase each listed subject now (ground retention_expired)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_retention)


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    event_id = f"erasure-{uuid.uuid4()}" if args.event_id is None else args.event_id
    ledger = open_ledger(settings)
    try:
        sid = subject_sid(ledger, args)
        subject = ledger.subject(args.tenant, sid)
        if subject is None:
            raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
        erased_before = subject.erased_at
        # An erasure the log lost (ledger.db restored from before it) happened when the key
        # store destroyed the key: recorded again, it says so (`erasures_not_in_log`).
        lost_at = ledger.lost_erasure_at(subject)
        # A retry with --event-id repeats the first attempt's instant (see occurred_at_of).
        occurred_at = (
            ledger.occurred_at_of(args.tenant, event_id, sid) or lost_at or datetime.now(UTC)
        )
        fact: dict[str, Any] = {
            "event_id": event_id,
            "type": "subject.erased",
            "tenant": args.tenant,
            # By sid (the reference unknown here), the erasure is built as the HTTP route's.
            "subject": f"sid:{sid.hex}" if args.sid else args.subject,
            "occurred_at": occurred_at.isoformat(),
            "source": "consent-ledger-cli",
            "channel": "api",
            "ground": args.ground,
        }
        if args.request_id is not None:
            fact["request_id"] = args.request_id
        outcome = ledger.record([parse_fact(fact)], sids=[sid] if args.sid else None)[0]
    finally:
        ledger.close()
    if isinstance(outcome, FactRejected):
        raise outcome
    # Kafka mode: the partition too, as the receipt and the trail name the fact's place.
    place = f"position {outcome.position}" + (
        "" if outcome.partition is None else f" of partition {outcome.partition}"
    )
    if outcome.duplicate:
        say(
            f"subject {outcome.sid}: this erasure was recorded before, at {place}; "
            "nothing new recorded"
        )
    elif lost_at is not None:
        say(
            f"subject {outcome.sid}: its data key was destroyed at {lost_at.isoformat()} by an "
            f"erasure the log did not hold; that erasure recorded again, at {place}"
        )
    elif erased_before is not None:
        # Recorded all the same (another ground or request may be why it was asked again),
        # but there was no key left to destroy: saying so would misstate what happened.
        say(
            f"subject {outcome.sid} was already erased ({erased_before.isoformat()}): no data "
            f"key left to destroy; this erasure recorded too, at {place}"
        )
    else:
        say(f"erased subject {outcome.sid}: data key destroyed; erasure recorded at {place}")
    return 0


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    """The subjects no purpose keeps any longer (projections.due.erasable_past_retention)
    and, with --erase, their erasure on the ground `retention_expired`, a thousand per
    commit. Each erasure's event id is the sid's, so a run cut short and run again erases
    the rest and repeats none."""
    from projections.due import erasable_past_retention

    if args.erase and args.as_of:
        raise CliError("--erase acts on now; --as-of only lists what would be due then")
    now = parse_time(args.as_of, "--as-of") if args.as_of else datetime.now(UTC)
    with current_views(settings, args.tenant) as (ledger, views, tenant):
        due = erasable_past_retention(views.store, args.tenant, now, tenant.policies)
        outcomes, busy = (
            erase_each(
                ledger,
                args.tenant,
                [d["sid"] for d in due],
                "retention_expired",
                "retention-expired-",
            )
            if args.erase
            else ([], None)
        )
    refused = [o for o in outcomes if isinstance(o, FactRejected)]
    if args.json:
        report: dict[str, Any] = {"tenant": args.tenant, "as_of": now.isoformat(), "subjects": due}
        if args.erase:
            report["erased"] = len(outcomes) - len(refused)
            report["refused"] = [
                {"sid": d["sid"], "code": o.code.value, "message": str(o)}
                for d, o in zip(due, outcomes, strict=True)
                if isinstance(o, FactRejected)
            ]
        print_json(report)
    else:
        say(
            f"subjects of tenant {args.tenant!r} whose every purpose is past its retention "
            f"as of {now.isoformat()}: {len(due)}"
        )
        for d in due:
            purposes = ", ".join(d["purposes"])
            say(f"  sid {d['sid']}: {purposes} past retention since {d['due_since']}")
        if args.erase:
            say(f"erased {len(outcomes) - len(refused)}: data keys destroyed")
            for d, o in zip(due, outcomes, strict=True):
                if isinstance(o, FactRejected):
                    say(f"  not erased: sid {d['sid']}: {o.code.value}: {o}")
    return key_store_held(busy) or (EXIT_REJECTED if refused else 0)


def erase_each(
    ledger: ConsentLedger, tenant: str, sids: Sequence[str], ground: str, id_prefix: str
) -> tuple[list[Any], ErasureNotOverwritten | None]:
    """Erase each subject (by sid), a thousand per commit; an outcome per sid, in order, and
    what the key store said if another process held it open (every erasure recorded and
    every key deleted all the same: only the keys' old page images wait in its WAL).

    The caller reports the outcomes either way, then the key store: until 2026-12-07 a held
    key store was raised from here, and `retention --erase` or `tenants erase-subjects` said
    only "key store busy", not whom it had erased, nor whom it refused.

    Each erasure's event id is `id_prefix` and the sid, at the first attempt's instant on a
    retry (see occurred_at_of): a run cut short and run again erases the rest and answers
    the ones it did with their first receipts. An erasure the log lost (a restored
    `ledger.db`) is recorded at the instant the key store destroyed the key, as `erase` does.
    """
    outcomes: list[Any] = []
    busy: ErasureNotOverwritten | None = None
    lost = {sid: at for _, sid, at in ledger.erasures_not_in_log(tenant)}
    for start in range(0, len(sids), 1000):
        chunk = [uuid.UUID(hex=sid) for sid in sids[start : start + 1000]]
        facts = []
        for sid in chunk:
            event_id = f"{id_prefix}{sid.hex}"
            occurred_at = (
                ledger.occurred_at_of(tenant, event_id, sid) or lost.get(sid) or datetime.now(UTC)
            )
            facts.append(
                parse_fact(
                    {
                        "event_id": event_id,
                        "type": "subject.erased",
                        "tenant": tenant,
                        "subject": f"sid:{sid.hex}",
                        "occurred_at": occurred_at.isoformat(),
                        "source": "consent-ledger-cli",
                        "channel": "api",
                        "ground": ground,
                    }
                )
            )
        try:
            outcomes.extend(ledger.record(facts, sids=chunk))
        except ErasureNotOverwritten as held:
            # Recorded and the keys deleted; only their old page images wait. The other
            # thousands are erased all the same before the key store's state is reported.
            outcomes.extend(held.outcomes)
            busy = held
    return outcomes, busy


def key_store_held(busy: ErasureNotOverwritten | None) -> int:
    """After a bulk erasure's report: its exit status, the key store's line if it was held."""
    if busy is None:
        return 0
    return fail(f"key store busy: {busy}", EXIT_UNAVAILABLE)
