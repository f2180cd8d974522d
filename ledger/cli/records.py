"""Putting facts in: `init`, `demo`, `record` and (Kafka mode) `publish`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import orjson

from ledger.cli.common import (
    EXIT_BROKEN,
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    CliError,
    demo_subjects,
    fact_batches,
    fail,
    json_text,
    open_ledger,
    read_facts,
    read_input,
    say,
)
from ledger.cli.subjects import print_trail
from ledger.envelope import Fact, parse_fact, parse_fact_bytes
from ledger.errors import FactRejected
from ledger.receipt import ErasureNotOverwritten, Receipt
from ledger.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser("init", help="create the data directory and the demo tenant")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("demo", help="load the seed policy and a demo stream, show a trail")
    p.add_argument(
        "--subjects", type=demo_subjects, default=300, help="at least 8, at most 100,000"
    )
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("record", help="record facts from a file or stdin (JSON or JSON Lines)")
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    p.add_argument("--tenant", help="the tenant, when the facts do not name one")
    p.set_defaults(run=cmd_record)

    p = sub.add_parser(
        "publish", help="Kafka mode: publish facts to the intake topic and wait for outcomes"
    )
    p.add_argument("file", nargs="?", default="-", help="JSON or JSON Lines; '-' = stdin")
    p.add_argument("--tenant", help="tenant of facts that name none")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the writer")
    p.add_argument("--no-wait", action="store_true", help="print where each fact was published")
    p.set_defaults(run=cmd_publish)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings)
    try:
        ledger.init_demo()
    finally:
        ledger.close()
    say(f"initialised {settings.data_dir} (tenant 'demo' with the seed policy)")
    return 0


def cmd_record(args: argparse.Namespace, settings: Settings) -> int:
    """Facts are recorded in batches of 1,000 (one transaction each), answered line by line
    in input order, so a large file neither waits for one huge commit nor holds it in memory
    longer than a batch: JSON Lines are read a batch at a time (`fact_batches`).

    Ctrl-C stops at the next batch boundary, once the batch in hand is committed and
    answered: the output then says exactly what was recorded, and the same input again
    finishes the rest. A second Ctrl-C stops at once (the batch in hand is rolled back whole).
    """
    batches = fact_batches(args.file, 1000)  # an input with no facts is refused here
    ledger = open_ledger(settings)
    answered = 0
    rejected = 0
    busy: ErasureNotOverwritten | None = None
    interrupted = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    before = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for given in batches:
            if interrupted.is_set():
                raise CliError(
                    f"interrupted after answering the first {answered} facts of the input: "
                    "record the same input again to finish (facts already recorded get their "
                    'first receipts, with "duplicate": true)',
                    EXIT_INTERRUPTED,
                )
            facts: list[Fact] = []
            parsed: list[FactRejected | None] = []
            for item in given.items:
                try:
                    if isinstance(item, FactRejected):
                        raise item
                    facts.append(
                        parse_fact_bytes(item, args.tenant)
                        if isinstance(item, bytes)
                        else parse_fact(item, args.tenant)
                    )
                    parsed.append(None)
                except FactRejected as e:
                    parsed.append(e)
            try:
                recorded = iter(ledger.record(facts) if facts else [])
            except ErasureNotOverwritten as held:
                # The batch is recorded (its lines follow) and so are the next ones; the
                # erasures' old key pages wait in the key store's WAL, said at the end.
                recorded, busy = iter(held.outcomes), held
            for offset, early in enumerate(parsed):
                final = early if early is not None else next(recorded)
                if isinstance(final, FactRejected):
                    rejected += 1
                    line = given.answer(given.first + offset, rejected=final.as_dict())
                else:
                    line = given.answer(given.first + offset, receipt=final.as_dict())
                sys.stdout.write(json_text(orjson.dumps(line)) + "\n")
            sys.stdout.flush()  # a batch's lines are out before the next batch starts
            answered += len(given.items)
    finally:
        signal.signal(signal.SIGINT, before)
        ledger.close()
    if busy is not None:
        also = f"; {rejected} of {answered} facts rejected (see stdout)" if rejected else ""
        return fail(f"key store busy: {busy}{also}", EXIT_UNAVAILABLE)
    if rejected:
        return fail(f"{rejected} of {answered} facts rejected (see stdout)", EXIT_REJECTED)
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Kafka mode: facts to the intake topic, for the running writer (which it does not fence)."""
    from ledger.kafka.publish import Before, NotConsumed, ends_before, outcomes, publish

    if settings.backend != "kafka":
        raise CliError("publish needs Kafka mode (LEDGER_BACKEND=kafka); use record")
    given = read_facts(read_input(args.file))
    items = given.items
    # A fact refused as read (an object naming a member twice) is not sent: its decoded
    # form has lost one of the two. It is reported in its place.
    to_send = [item for item in items if not isinstance(item, FactRejected)]
    ledger = open_ledger(settings)
    try:
        # Refusals of these facts, and their first recording, are written after this.
        before = ends_before(ledger) if to_send and not args.no_wait else Before({}, {})
        sent = iter(publish(ledger, to_send, args.tenant) if to_send else [])
        # Each item: refused as read, not sent (too large for the topic), or where it went.
        placed = [item if isinstance(item, FactRejected) else next(sent) for item in items]
        if args.no_wait:
            for index, p in enumerate(placed):
                if isinstance(p, FactRejected):
                    line = given.answer(index, rejected=p.as_dict())
                else:
                    where = {"partition": p.partition, "offset": p.offset}
                    line = given.answer(index, published=where)
                sys.stdout.write(json_text(orjson.dumps(line)) + "\n")
            refused = sum(1 for p in placed if isinstance(p, FactRejected))
            if refused:
                return fail(f"{refused} of {len(items)} facts rejected (see stdout)", EXIT_REJECTED)
            return 0
        published = [p for p in placed if not isinstance(p, FactRejected)]
        try:
            answered = iter(outcomes(ledger, published, args.wait, before) if published else [])
        except NotConsumed as e:
            return fail(str(e), EXIT_UNAVAILABLE)
    finally:
        ledger.close()
    results = [p if isinstance(p, FactRejected) else next(answered) for p in placed]
    rejected = 0
    for index, result in enumerate(results):
        if isinstance(result, FactRejected):
            rejected += 1
            line = given.answer(index, rejected=result.as_dict())
        else:
            line = given.answer(index, receipt=result.as_dict())
        sys.stdout.write(json_text(orjson.dumps(line)) + "\n")
    if rejected:
        return fail(f"{rejected} of {len(items)} facts rejected (see stdout)", EXIT_REJECTED)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.demo import contact, demo_stream
    from ledger.verify import verify_ledger
    from projections.trail import subject_trail

    ledger = open_ledger(settings)
    try:
        ledger.init_demo()
        stream = demo_stream(args.subjects)
        outcomes = []
        for i in range(0, len(stream), 500):
            outcomes += ledger.record([parse_fact(f) for f in stream[i : i + 500]])
        new = sum(1 for o in outcomes if isinstance(o, Receipt) and not o.duplicate)
        again = sum(1 for o in outcomes if isinstance(o, Receipt) and o.duplicate)
        refused = [o for o in outcomes if isinstance(o, FactRejected)]
        say(
            f"demo: {len(stream)} facts for {args.subjects} subjects: {new} recorded, "
            f"{again} already recorded, {len(refused)} refused"
        )
        say(f"data directory: {settings.data_dir}")
        say()
        trail = subject_trail(ledger, "demo", ledger.sid("demo", contact(3)))
        assert trail is not None
        print_trail(trail)
        erased = subject_trail(ledger, "demo", ledger.sid("demo", contact(7)))
        assert erased is not None
        say()
        print_trail(erased)
        result = verify_ledger(ledger.ledger_recorder)
    finally:
        ledger.close()
    say()
    if result.ok:
        say(f"verify: OK, {result.facts_checked} facts, merkle root {result.root}")
        return 0
    return fail(f"verify: BROKEN: {result.problems[0].message}", EXIT_BROKEN)
