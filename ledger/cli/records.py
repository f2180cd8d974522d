"""Putting facts in: `init`, `demo`, `record` and (Kafka mode) `publish`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ledger.cli.common import (
    EXIT_BROKEN,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    CliError,
    InputFacts,
    demo_subjects,
    fact_batches,
    fail,
    json_text,
    open_ledger,
    print_json,
    read_input,
    say,
)
from ledger.cli.subjects import print_trail
from ledger.envelope import Fact, parse_fact, parse_fact_bytes, parse_fact_item
from ledger.errors import FactRejected
from ledger.receipt import ErasureNotOverwritten, Receipt
from ledger.settings import Settings

if TYPE_CHECKING:
    from ledger.application import ConsentLedger
    from ledger.kafka.publish import Before, Outcomes, Published
    from ledger.kafka.rejected import Refusal


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
    p.add_argument(
        "file", nargs="?", default="-", metavar="FILE|-", help="JSON or JSON Lines; '-' = stdin"
    )
    p.add_argument("--tenant", help="tenant of facts that name none")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the writer to take each batch of 2,000 facts",
    )
    p.add_argument("--no-wait", action="store_true", help="print where each fact was published")
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser(
        "receipts",
        help="the receipts of recorded facts, by event_id; which were not recorded (Kafka "
        "mode: and why the intake writer refused them)",
    )
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="event ids, one per line")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_receipts)


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
    answers = _Answers()
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
                    f"interrupted after answering the first {answers.answered} facts of the input: "
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
                        else parse_fact_item(item, args.tenant)
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
            # A batch's lines are out before the next batch starts.
            answers.batch(given, [p if p is not None else next(recorded) for p in parsed])
    finally:
        signal.signal(signal.SIGINT, before)
        ledger.close()
    if busy is not None:
        also = f"; {answers.refused()}" if answers.rejected else ""
        return fail(f"key store busy: {busy}{also}", EXIT_UNAVAILABLE)
    if answers.rejected:
        return fail(answers.refused(), EXIT_REJECTED)
    return 0


# Facts `publish` reads, sends and answers at a time.
PUBLISH_BATCH = 2000


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Kafka mode: facts to the intake topic, for the running writer (which it does not fence).

    The input is read, published and answered a batch at a time (`fact_batches`): read
    whole, with every record's future kept to the end, 200,000 facts took 331 MB
    (2026-12-04; 78 MB now). With a wait, a batch is answered once the writer has
    committed it, and the next batch is published before that wait, so the writer always
    has the next facts to take, unless the input's next line has not come (a pipe): then
    the batch is answered first, for a writer that waits for its answers. `--wait` bounds
    the wait for each batch.
    """
    from ledger.kafka.publish import Before, NotConsumed, Outcomes, Publisher
    from ledger.kafka.recorder import LedgerUnavailable

    if settings.backend != "kafka":
        raise CliError("publish needs Kafka mode (LEDGER_BACKEND=kafka); use record")
    batches = fact_batches(args.file, PUBLISH_BATCH)  # an input with no facts is refused here
    ledger = open_ledger(settings)
    publisher: Publisher | None = None
    outcomes = Outcomes(ledger)  # its consumers are made when first asked, and kept
    answers = _Answers()
    # A batch published and not yet answered: its facts, where each went, and the topics'
    # ends before it was published.
    pending: tuple[InputFacts, list[Published | FactRejected], Before] | None = None
    try:
        for given in batches:
            # A fact refused as read (an object naming a member twice) is not sent: its
            # decoded form has lost one of the two. It is reported in its place.
            to_send = [item for item in given.items if not isinstance(item, FactRejected)]
            if to_send and publisher is None:
                publisher = Publisher(ledger, args.tenant)
            # Refusals of these facts, and their first recording, are written after this.
            wait = bool(to_send) and not args.no_wait
            before = outcomes.ends_before() if wait else Before({}, {})
            sent = iter(publisher.send(to_send) if publisher is not None and to_send else [])
            # Each item: refused as read, not sent (too large for the topic), or where it went.
            placed = [
                item if isinstance(item, FactRejected) else next(sent) for item in given.items
            ]
            if args.no_wait:
                answers.batch(given, placed)
                continue
            if pending is not None:  # the batch before this one, published before this one
                answers.batch(pending[0], _outcomes(outcomes, *pending[1:], args.wait))
                pending = None
            if given.idle:  # the input's next line has not come: its writer may be waiting
                answers.batch(given, _outcomes(outcomes, placed, before, args.wait))
            else:
                pending = (given, placed, before)
        if pending is not None:
            answers.batch(pending[0], _outcomes(outcomes, *pending[1:], args.wait))
    except (LedgerUnavailable, NotConsumed) as e:
        said = f"kafka: {e}" if isinstance(e, LedgerUnavailable) else str(e)
        if answers.answered:
            said += f"; the first {answers.answered} facts of the input were answered on stdout"
        return fail(said, EXIT_UNAVAILABLE)
    finally:
        if publisher is not None:
            publisher.close()
        outcomes.close()
        ledger.close()
    if answers.rejected:
        return fail(answers.refused(), EXIT_REJECTED)
    return 0


# Event ids looked up at a time, as `POST /v1/facts:lookup` takes them.
LOOKUP_BATCH = 1000


def cmd_receipts(args: argparse.Namespace, settings: Settings) -> int:
    """A publisher that lost its answers (or published to Kafka, which gives none) learns
    which of its facts the ledger recorded, with their receipts, without sending them again.

    Each line is an event id exactly as published (only the line break is not part of it):
    trimmed, an id with a space at either end would be reported not recorded. Exit status
    3 when any is not recorded, so a script can publish those again.
    """
    try:
        text = read_input(args.file).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text") from None
    numbered = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)]
    numbered = [(n, line) for n, line in numbered if line.strip()]
    if not numbered:
        raise CliError(f"{args.file} holds no event ids (one per line)")
    for n, line in numbered:
        if len(line) > 128:
            raise CliError(f"line {n} is not an event id (1 to 128 characters)")
    ledger = open_ledger(settings)
    try:
        if ledger.tenant(args.tenant, shared=True) is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
        ids = [line for _, line in numbered]
        found: dict[str, Receipt] = {}
        for start in range(0, len(ids), LOOKUP_BATCH):
            found.update(ledger.receipts(args.tenant, ids[start : start + LOOKUP_BATCH]))
        refusals = _refusals(ledger, args.tenant, [i for i in ids if i not in found])
    finally:
        ledger.close()
    results: list[dict[str, Any]] = []
    for i, (n, event_id) in enumerate(numbered):
        receipt, refusal = found.get(event_id), refusals.get(event_id)
        result: dict[str, Any] = {"index": i, "line": n, "event_id": event_id}
        result["recorded"] = receipt is not None
        if receipt is not None:
            result["receipt"] = receipt.as_dict()
        elif refusal is not None:
            result["refused"] = refusal.as_dict()
        results.append(result)
        if not args.json:
            say(f"line {n}: {event_id}: {_where(receipt, refusal)}")
    missing = sum(1 for r in results if not r["recorded"])
    if args.json:
        print_json(
            {"results": results, "recorded": len(results) - missing, "not_recorded": missing}
        )
    if missing:
        refused = sum(1 for r in results if "refused" in r)
        said = f" ({refused} refused by the intake writer: see stdout)" if refused else ""
        return fail(f"{missing} of {len(results)} event ids not recorded{said}", EXIT_NOT_FOUND)
    return 0


def _refusals(ledger: ConsentLedger, tenant: str, missing: list[str]) -> dict[str, Refusal]:
    """Kafka mode: why the intake writer refused those of the missing facts that were
    published to the intake topic, while the rejected topic keeps them. Embedded mode keeps
    no refusal: each was in the answer that refused it."""
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from ledger.kafka.rejected import refusals_of

    recorder = ledger.ledger_recorder
    if not missing or not isinstance(recorder, KafkaLedgerRecorder):
        return {}
    return refusals_of(recorder.link, tenant, missing)


def _where(receipt: Receipt | None, refusal: Refusal | None = None) -> str:
    if receipt is None and refusal is not None:
        why = refusal.refused
        at = refusal.as_dict()["rejected_at"]
        return (
            f"not recorded: refused, {why.code.value}: {why.message} (intake partition "
            f"{refusal.partition} offset {refusal.offset}, at {at})"
        )
    if receipt is None:
        return "not recorded"
    place = (
        f"position {receipt.position}"
        if receipt.partition is None
        else f"partition {receipt.partition} offset {receipt.position}"
    )
    of = f", sid {receipt.sid}" if receipt.sid is not None else ""  # a policy has none
    return f"recorded at {receipt.recorded_at}, {place}{of}"


def _outcomes(
    outcomes: Outcomes, placed: list[Published | FactRejected], before: Before, wait: float
) -> list[Receipt | FactRejected]:
    """A published batch's outcomes in input order, once the writer has committed it."""
    published = [p for p in placed if not isinstance(p, FactRejected)]
    found = iter(outcomes.of(published, wait, before) if published else [])
    return [p if isinstance(p, FactRejected) else next(found) for p in placed]


class _Answers:
    """The lines `record` and `publish` print, a batch at a time, and how many said what."""

    def __init__(self) -> None:
        self.answered = 0
        self.rejected = 0

    def batch(
        self, given: InputFacts, outcomes: Sequence[Receipt | FactRejected | Published]
    ) -> None:
        """A line for each fact of the batch, in input order: its receipt, its refusal, or
        (`publish --no-wait`) where in the intake topic it was sent."""
        for offset, outcome in enumerate(outcomes):
            index = given.first + offset
            if isinstance(outcome, FactRejected):
                self.rejected += 1
                line = given.answer(index, rejected=outcome.as_dict())
            elif isinstance(outcome, Receipt):
                line = given.answer(index, receipt=outcome.as_dict())
            else:
                where = {"partition": outcome.partition, "offset": outcome.offset}
                line = given.answer(index, published=where)
            sys.stdout.write(json_text(orjson.dumps(line)) + "\n")
        self.answered += len(outcomes)
        sys.stdout.flush()

    def refused(self) -> str:
        return f"{self.rejected} of {self.answered} facts rejected (see stdout)"


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
