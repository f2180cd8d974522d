"""`consent-ledger`: the command line of the contract.

Exit status 0 on success; otherwise non-zero with one line on stderr that says why. Read
commands print a human table, or with --json the same JSON the HTTP routes return.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ledger.application import ConsentLedger
from ledger.envelope import Fact, parse_fact, parse_fact_bytes, parse_time
from ledger.errors import FactRejected
from ledger.keystore import KeyStore, KeyStoreBusyError
from ledger.receipt import Receipt
from ledger.settings import Settings, SettingsError
from ledger.tenant import Tenant
from ledger.vocabulary import ERASURE_GROUNDS

if TYPE_CHECKING:  # imported where used: a command that needs no views does not load them
    from projections.views import Views

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_BROKEN = 4
EXIT_FENCED = 5  # Kafka mode: another writer took the ledger partitions
EXIT_UNAVAILABLE = 6  # the key store held open elsewhere; Kafka: broker or topic unavailable


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ledger.runtime import tune

    tune()
    try:
        settings = Settings.from_env()
        result: int = args.run(args, settings)
        return result
    except CliError as e:
        return _fail(str(e), e.status)
    except SettingsError as e:
        return _fail(f"configuration: {e}", EXIT_USAGE)
    except FactRejected as e:
        return _fail(f"{e.code.value}: {e.message}", EXIT_REJECTED)
    except KeyStoreBusyError as e:
        return _fail(f"key store busy: {e}", EXIT_UNAVAILABLE)
    except BrokenPipeError:
        return 0
    except Exception as e:
        # Kafka mode's failures, named without importing Kafka in embedded mode.
        kind = type(e).__name__
        if kind in ("LedgerUnavailable", "TopicRefused"):
            return _fail(f"kafka: {e}", EXIT_UNAVAILABLE)
        if kind == "WriterFenced":
            return _fail(f"kafka: {e}", EXIT_FENCED)
        raise


def _fail(message: str, status: int) -> int:
    print(f"consent-ledger: {message}", file=sys.stderr)
    return status


def _open(settings: Settings) -> ConsentLedger:
    return ConsentLedger(settings)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


# ---- commands ----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    ledger = _open(settings)
    try:
        ledger.init_demo()
    finally:
        ledger.close()
    print(f"initialised {settings.data_dir} (tenant 'demo' with the seed policy)")
    return 0


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    ledger = _open(settings)
    try:
        ledger.create_tenant(args.tenant)
    finally:
        ledger.close()
    print(f"created tenant {args.tenant!r}")
    return 0


def cmd_tenants_export(args: argparse.Namespace, settings: Settings) -> int:
    """Every subject's audit trail, one JSON line each in sid order (erased ones too, their
    personal data marked erased): what a tenant leaving the platform is handed back. Holds
    personal data in the clear: the file is created for its owner only (0600) and never
    overwritten."""
    from projections.trail import subject_trail

    out = None
    if args.out not in (None, "-"):
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CliError(f"{args.out} exists: an export is never overwritten") from None
        except OSError as e:
            raise CliError(f"cannot write {args.out}: {e.strerror}") from None
        out = os.fdopen(fd, "wb")
    written = 0
    try:
        with _current_views(settings, args.tenant) as (ledger, views, _):
            for (sid,) in views.store.rows(
                "SELECT sid FROM view_subjects WHERE tenant=? ORDER BY sid",
                (args.tenant,),
                tuples=True,
            ):
                trail = subject_trail(ledger, args.tenant, uuid.UUID(hex=sid))
                if trail is None:
                    continue
                (out or sys.stdout.buffer).write(orjson.dumps(trail) + b"\n")
                written += 1
    except BaseException:
        if out is not None:  # no partial export left behind to be taken for a whole one
            out.close()
            os.unlink(args.out)
        raise
    if out is not None:
        out.close()
    where = f"; written to {args.out}" if out is not None else ""
    print(
        f"exported the trails of {written} subjects of tenant {args.tenant!r}{where}",
        file=sys.stderr,
    )
    return 0


def cmd_tenants_erase_subjects(args: argparse.Namespace, settings: Settings) -> int:
    """Erase every subject of a tenant not erased yet (a tenant leaving, its data returned):
    one erasure fact each on the ground given, a thousand per commit. --confirm must repeat
    the tenant's name: this destroys the personal data of everyone the tenant ever named."""
    if args.confirm != args.tenant:
        raise CliError(
            f"this erases every subject of tenant {args.tenant!r}: "
            f"repeat its name with --confirm {args.tenant}"
        )
    with _current_views(settings, args.tenant) as (ledger, views, _):
        sids = [
            row[0]
            for row in views.store.rows(
                "SELECT sid FROM view_subjects WHERE tenant=? AND erasure_recorded_at IS NULL "
                "ORDER BY sid",
                (args.tenant,),
                tuples=True,
            )
        ]
        outcomes = _erase_each(ledger, args.tenant, sids, args.ground, "tenant-erasure-")
    refused = [
        (sid, o) for sid, o in zip(sids, outcomes, strict=True) if isinstance(o, FactRejected)
    ]
    print(
        f"erased {len(sids) - len(refused)} subjects of tenant {args.tenant!r} "
        f"(ground {args.ground}): data keys destroyed"
    )
    for sid, o in refused:
        print(f"  not erased: sid {sid}: {o.code.value}: {o}")
    return EXIT_REJECTED if refused else 0


def cmd_record(args: argparse.Namespace, settings: Settings) -> int:
    """Facts are recorded in batches of 1,000 (one transaction each), answered line by line
    in input order, so a large file neither waits for one huge commit nor holds it in memory
    longer than a batch."""
    items = list(_read_facts(_read_input(args.file)))
    ledger = _open(settings)
    rejected = 0
    try:
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            facts: list[Fact] = []
            parsed: list[FactRejected | None] = []
            for item in chunk:
                try:
                    facts.append(
                        parse_fact_bytes(item, args.tenant)
                        if isinstance(item, bytes)
                        else parse_fact(item, args.tenant)
                    )
                    parsed.append(None)
                except FactRejected as e:
                    parsed.append(e)
            recorded = iter(ledger.record(facts) if facts else [])
            for offset, early in enumerate(parsed):
                final = early if early is not None else next(recorded)
                if isinstance(final, FactRejected):
                    rejected += 1
                    line = {"index": start + offset, "rejected": final.as_dict()}
                else:
                    line = {"index": start + offset, "receipt": final.as_dict()}
                sys.stdout.write(orjson.dumps(line).decode() + "\n")
    finally:
        ledger.close()
    if rejected:
        return _fail(f"{rejected} of {len(items)} facts rejected (see stdout)", EXIT_REJECTED)
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Kafka mode: facts to the intake topic, for the running writer (which it does not fence)."""
    from ledger.kafka.publish import NotConsumed, outcomes, publish

    if settings.backend != "kafka":
        raise CliError("publish needs Kafka mode (LEDGER_BACKEND=kafka); use record")
    items = list(_read_facts(_read_input(args.file)))
    ledger = _open(settings)
    try:
        published = publish(ledger, items, args.tenant)
        if args.no_wait:
            for index, p in enumerate(published):
                line = {"index": index, "published": {"partition": p.partition, "offset": p.offset}}
                sys.stdout.write(orjson.dumps(line).decode() + "\n")
            return 0
        try:
            results = outcomes(ledger, published, args.wait)
        except NotConsumed as e:
            return _fail(str(e), EXIT_UNAVAILABLE)
    finally:
        ledger.close()
    rejected = 0
    for index, result in enumerate(results):
        if isinstance(result, FactRejected):
            rejected += 1
            line = {"index": index, "rejected": result.as_dict()}
        else:
            line = {"index": index, "receipt": result.as_dict()}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
    if rejected:
        return _fail(f"{rejected} of {len(items)} facts rejected (see stdout)", EXIT_REJECTED)
    return 0


def _about_subject(
    settings: Settings,
    args: argparse.Namespace,
    question: Callable[[ConsentLedger, str, uuid.UUID], dict[str, Any] | None],
) -> dict[str, Any]:
    """A question about the subject the arguments name (SUBJECT or --sid, --tenant)."""
    ledger = _open(settings)
    try:
        answer = question(ledger, args.tenant, _sid(ledger, args))
    finally:
        ledger.close()
    if answer is None:
        raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
    return answer


def cmd_trail(args: argparse.Namespace, settings: Settings) -> int:
    from projections.trail import subject_trail, trail_csv

    trail = _about_subject(settings, args, subject_trail)
    if args.format == "csv":
        sys.stdout.write(trail_csv(trail))
    elif args.json:
        _print_json(trail)
    else:
        _print_trail(trail)
    return 0


def cmd_consents(args: argparse.Namespace, settings: Settings) -> int:
    from projections.consents import subject_consents

    as_of = parse_time(args.as_of, "--as-of") if args.as_of else None
    known_at = parse_time(args.known_at, "--known-at") if args.known_at else None
    view = _about_subject(
        settings,
        args,
        lambda ledger, tenant, sid: subject_consents(ledger, tenant, sid, as_of, known_at),
    )
    if args.json:
        _print_json(view)
        return 0
    print(
        f"subject {view['sid']}  as of {view['as_of']}  known at {view['known_at']}"
        + ("  (erased)" if view["erased"] else "")
    )
    for p in view["purposes"]:
        print(
            f"  {p['purpose']:<20} {p['state']:<10} since {p['since'] or '-':<26} "
            f"policy {p['policy_version'] or '-':<12} fact {p['event_id'] or '-'}"
        )
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """The answer to a subject's information request (projections.report)."""
    from projections.report import subject_report

    report = _about_subject(settings, args, subject_report)
    if args.json:
        _print_json(report)
        return 0
    for line in report_lines(report):
        print(line)
    return 0


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as plain text for a person to read (its every part, JSON values as such)."""
    out = [
        f"What tenant {report['tenant']!r} holds about subject {report['sid']}, "
        f"as of {report['as_of']}"
    ]
    for o in report["operators"]:
        out.append(f"operator: {o.get('name')} (TIN {o.get('tin')})")
    if report["erased"]:
        out.append(f"personal data: erased at {report['erased_at']}; none is held")
    else:
        out.append(f"reference: {report['subject']}")
        out.append("personal data held:")
        out += [f"  {k}: {v}" for k, v in sorted(report["personal_data"].items())]
        out.append("collected with:")
        out += [
            f"  {c['occurred_at']} via {c['source']} ({c['channel']}): "
            + orjson.dumps(c["evidence"]).decode()
            for c in report["collected_with"]
        ]
    out.append("consents:")
    for c in report["consents"]:
        days = c["retention_days"]
        kept = "as long as the purpose needs" if days is None else f"{days} days after it ends"
        out.append(
            f"  {c['purpose']}: {c['state']} since {c['since']} (policy {c['granted_under']}; "
            f"basis {c['legal_basis']}; categories {', '.join(c['categories']) or '-'}; "
            f"kept {kept}" + (f"; expires {c['expires_at']}" if c["expires_at"] else "") + ")"
        )
    policy = report["policy_in_force"]
    if policy is not None:
        out.append(
            f"policy in force: {policy['policy_version']} since {policy['effective_at']} "
            f"(text SHA-256 {policy['text_sha256']})"
        )
        out += [
            f"  {name}: basis {t['legal_basis']}; categories {', '.join(t['categories'])}"
            for name, t in policy["purposes"].items()
        ]
    out.append("passed to:" if report["transfers"] else "passed to: no one")
    out += [
        f"  {t['occurred_at']}: {t['recipient'].get('name')} ({t['recipient'].get('country')}), "
        f"{', '.join(t['categories'])} on {t['ground']}"
        + ("; cross-border" if t["cross_border"] else "")
        for t in report["transfers"]
    ]
    out.append("requests:" if report["requests"] else "requests: none")
    out += [
        f"  {r['request_id']} ({r['kind']}) received {r['received_at']}: "
        + (f"{r['outcome']} {r['closed_at']}" if r["closed_at"] else "open")
        for r in report["requests"]
    ]
    out.append("complaints:" if report["complaints"] else "complaints: none")
    out += [
        f"  {c['occurred_at']}: {c['authority']}, reference {c['reference']}"
        for c in report["complaints"]
    ]
    out.append(
        "sources: " + ", ".join(f"{s['source']} ({s['channel']})" for s in report["sources"])
    )
    return out


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    event_id = args.event_id or f"erasure-{uuid.uuid4()}"
    ledger = _open(settings)
    try:
        sid = _sid(ledger, args)
        if ledger.subject(args.tenant, sid) is None:
            raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
        # A retry with --event-id repeats the first attempt's instant (see occurred_at_of).
        occurred_at = ledger.occurred_at_of(args.tenant, event_id, sid) or datetime.now(UTC)
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
        if args.request_id:
            fact["request_id"] = args.request_id
        outcome = ledger.record([parse_fact(fact)], sids=[sid] if args.sid else None)[0]
    finally:
        ledger.close()
    if isinstance(outcome, FactRejected):
        raise outcome
    print(
        f"erased subject {outcome.sid}: data key destroyed; erasure recorded at position "
        f"{outcome.position}"
    )
    return 0


def cmd_evidence(args: argparse.Namespace, settings: Settings) -> int:
    from projections.evidence import evidence_package

    since = _load_json(args.since) if args.since else None
    ledger = _open(settings)
    try:
        with _signing(since) as since_sizes:
            package = evidence_package(
                ledger, args.tenant, _sid(ledger, args), since_sizes=since_sizes
            )
            if package is not None and since is not None:
                _agrees_with(package, since)
    finally:
        ledger.close()
    if package is None:
        raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
    head = package["tree_head"]
    _write_once(
        package,
        args.out,
        "an evidence package",
        f"evidence: {len(package['chains']['subject'])} facts of sid {package['sid']}, "
        f"in {_trees(head['trees'])}, signed by {head['public_key']}",
    )
    return 0


def cmd_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import checkpoint

    since = _load_json(args.since) if args.since else None
    ledger = _open(settings)
    try:
        with _signing(since) as since_sizes:
            signed = checkpoint(ledger.ledger_recorder, ledger.keystore, since_sizes=since_sizes)
            if since is not None:
                _agrees_with(signed, since)
    finally:
        ledger.close()
    head = signed["tree_head"]
    _write_once(
        signed,
        args.out,
        "a checkpoint",
        f"checkpoint: {_trees(head['trees'])}, signed by {head['public_key']}",
    )
    return 0


def _trees(trees: Any) -> str:
    """Signed trees as a line says them: the log of N facts, root R (one per partition)."""
    parts = [(int(t["partition"]), int(t["size"]), str(t["root"])) for t in trees]
    if len(parts) == 1:
        return f"the log of {parts[0][1]} facts with root {parts[0][2]}"
    listed = "; ".join(f"partition {p}: {n} facts, root {r}" for p, n, r in parts)
    return f"the log of {sum(n for _, n, _ in parts)} facts ({listed})"


@contextlib.contextmanager
def _signing(since: Any) -> Iterator[dict[int, int] | None]:
    """The earlier checkpoint's sizes to prove consistency from, and the refusals of
    signing: a log whose records disagree, or one with fewer facts than the checkpoint."""
    from ledger.checkpoint import MALFORMED, LogNotIntact, SinceTooLarge, since_sizes_of

    try:
        sizes = since_sizes_of(since) if since is not None else None
    except MALFORMED:
        raise CliError(_NOT_A_CHECKPOINT) from None
    try:
        yield sizes
    except LogNotIntact as e:
        raise CliError(
            f"the log does not verify ({e}); run consent-ledger verify", EXIT_BROKEN
        ) from None
    except SinceTooLarge as e:
        raise CliError(f"--since: {e}", EXIT_BROKEN) from None


_NOT_A_CHECKPOINT = "--since takes a checkpoint written by consent-ledger checkpoint"


def _agrees_with(signed: dict[str, Any], since: Any) -> None:
    """Refuse to hand out a proof that the earlier checkpoint does not check against: it is
    another log's, or this log was rewritten since it was signed."""
    from ledger.checkpoint import MALFORMED, ProofProblem, check_extends, key_chain

    problems: list[ProofProblem] = []
    head = signed["tree_head"]
    try:
        chain = key_chain(head, signed.get("key_transitions"), None, "tree_head", problems)
        check_extends(head, signed.get("consistency"), since, chain, problems)
    except MALFORMED:
        raise CliError(_NOT_A_CHECKPOINT) from None
    if problems:
        raise CliError(f"--since: {problems[0].message}", EXIT_BROKEN)


def _write_once(value: Any, out: str | None, what: str, summary: str) -> None:
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"
    if out in (None, "-"):
        sys.stdout.buffer.write(data)
        return
    assert out is not None
    try:
        with open(out, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise CliError(f"{out} exists: {what} is never overwritten") from None
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None
    print(f"{summary}; written to {out}", file=sys.stderr)


def _load_json(path: str) -> Any:
    try:
        return orjson.loads(_read_input(path))
    except orjson.JSONDecodeError:  # also for bytes that are not UTF-8
        raise CliError(f"{path} is not JSON") from None


def cmd_signing_key(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import public_key_of

    ledger = _open(settings)
    try:
        print(public_key_of(ledger.keystore))
    finally:
        ledger.close()
    return 0


def cmd_signing_key_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Only the key store is opened (no log, no broker); a running service signs with the
    new key from its next checkpoint or package on."""
    from ledger.checkpoint import rotate_signing_key

    with contextlib.closing(_key_store(settings)) as keystore:
        statement = rotate_signing_key(keystore)
    print(f"retired signing key: {statement['previous_key']}")
    print(f"new signing key:     {statement['public_key']}")
    print(
        f"both keys signed the hand-over at {statement['rotated_at']}; checkpoints and "
        "evidence packages carry it from now on. Publish the new key next to the old one "
        "(consent-ledger signing-key history --json lists every hand-over)"
    )
    return 0


def cmd_signing_key_history(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import public_key_text

    with contextlib.closing(_key_store(settings)) as keystore:
        key, transitions = keystore.signer()
    if args.json:
        _print_json(transitions)
        return 0
    for t in transitions:
        print(f"{t['rotated_at']}  {t['previous_key']} -> {t['public_key']}")
    print(f"signing now: {public_key_text(key.public_key())}")
    return 0


def _key_store(settings: Settings) -> KeyStore:
    """The key store alone, refused where there is none (a fresh key there would sign for
    a ledger that is elsewhere)."""
    from ledger.keystore import load_master_key

    if not settings.keystore_path.exists():
        raise CliError(f"no key store at {settings.keystore_path}: run consent-ledger init")
    return KeyStore(settings.keystore_path, load_master_key(settings))


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    """Copies files only (no log opened, no broker): safe while the service runs."""
    from pathlib import Path

    from ledger.backup import back_up

    into = Path(args.into)
    for copied in back_up(settings, into):
        print(f"{copied.name:<16} {copied.bytes:>14,} bytes")
    if settings.backend == "kafka":
        print("Kafka mode: the log is the ledger topic; the replica and views are rebuilt from it")
    if not settings.master_key:
        print(f"not copied: {settings.master_key_path.name}; keep a copy of it apart from backups")
    print(f"backup in {into}: restore by copying its files into an empty data directory")
    return 0


def cmd_master_key_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Only the key store is opened (no log, no broker): rotation touches nothing else."""
    from ledger.rotation import NEW_KEY_ENV, rotate_master_key

    done = rotate_master_key(settings)
    if done.already:
        print(f"the key store was already under the new master key ({settings.keystore_path})")
    else:
        print(
            f"re-wrapped {done.data_keys:,} data keys and the ledger's own keys under the new "
            "master key"
        )
    if done.key_file is not None:
        print(f"the new master key is in {done.key_file}; the old one is gone from it")
    else:
        print(
            f"now give every process of this deployment LEDGER_MASTER_KEY={NEW_KEY_ENV}'s "
            "value and restart them; processes still on the old key refuse to write"
        )
    return 0


def _verify_signed(args: argparse.Namespace) -> int:
    """An evidence package or a checkpoint checked from its own contents (and an earlier
    checkpoint's, with --since): no data directory, no ledger."""
    from ledger.checkpoint import verify_checkpoint
    from projections.evidence import verify_evidence

    since = _load_json(args.since) if args.since else None
    what = "evidence" if args.evidence else "checkpoint"
    result: Any
    if args.evidence:
        result = verify_evidence(_load_json(args.evidence), args.public_key, since)
        summary = f"{result.facts_checked} facts of the subject and its tenant, included in "
    else:
        result = verify_checkpoint(_load_json(args.checkpoint), since, args.public_key)
        summary = ""
    if args.json:
        _print_json(result.as_dict())
    elif result.ok:
        trees = [{"partition": p, "size": n, "root": r} for p, n, r in result.trees]
        extends = ""
        if since is not None:
            extends = f", extending the checkpoint of {_trees(since['tree_head']['trees'])}"
        print(f"{what}: OK, {summary}{_trees(trees)}{extends}, signed by {result.public_key}")
    if not result.ok:
        first = result.problems[0]
        return _fail(
            f"{what}: BROKEN ({first.kind}; {first.where}"
            + (f" version {first.version}" if first.version is not None else "")
            + f"): {first.message}",
            EXIT_BROKEN,
        )
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.verify import verify_ledger

    if args.evidence is not None and args.checkpoint is not None:
        raise CliError("give --evidence or --checkpoint, not both")
    if args.evidence is not None or args.checkpoint is not None:
        return _verify_signed(args)
    if args.public_key is not None or args.since is not None:
        raise CliError(
            "--public-key and --since check a package or checkpoint: give --evidence FILE "
            "or --checkpoint FILE"
        )
    ledger = _open(settings)
    try:
        result = verify_ledger(ledger.ledger_recorder)
    finally:
        ledger.close()
    if args.json:
        _print_json(result.as_dict())
    elif result.ok:
        print(f"verify: OK, {result.facts_checked} facts, merkle root {result.root}")
    if not result.ok:
        first = result.problems[0]
        return _fail(
            f"verify: BROKEN at position {first.position} ({first.kind}; sid {first.aggregate} "
            f"version {first.version}; event_id {first.event_id}): {first.message}",
            EXIT_BROKEN,
        )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.demo import contact, demo_stream
    from ledger.verify import verify_ledger
    from projections.trail import subject_trail

    ledger = _open(settings)
    try:
        ledger.init_demo()
        stream = demo_stream(args.subjects)
        outcomes = []
        for i in range(0, len(stream), 500):
            outcomes += ledger.record([parse_fact(f) for f in stream[i : i + 500]])
        new = sum(1 for o in outcomes if isinstance(o, Receipt) and not o.duplicate)
        again = sum(1 for o in outcomes if isinstance(o, Receipt) and o.duplicate)
        refused = [o for o in outcomes if isinstance(o, FactRejected)]
        print(
            f"demo: {len(stream)} facts for {args.subjects} subjects: {new} recorded, "
            f"{again} already recorded, {len(refused)} refused"
        )
        print(f"data directory: {settings.data_dir}\n")
        trail = subject_trail(ledger, "demo", ledger.sid("demo", contact(3)))
        assert trail is not None
        _print_trail(trail)
        erased = subject_trail(ledger, "demo", ledger.sid("demo", contact(7)))
        assert erased is not None
        print()
        _print_trail(erased)
        result = verify_ledger(ledger.ledger_recorder)
    finally:
        ledger.close()
    print()
    if result.ok:
        print(f"verify: OK, {result.facts_checked} facts, merkle root {result.root}")
        return 0
    return _fail(f"verify: BROKEN: {result.problems[0].message}", EXIT_BROKEN)


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from api.logs import configure
    from projections.views import Views

    # JSON lines on stderr: what the writer skipped or set aside, by partition and offset.
    configure(logging.WARNING, sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ledger = _open(settings)
    views = Views(ledger)
    total = 0
    try:
        while True:
            done = views.refresh(page=args.page)
            total += done
            if not args.follow or stop.is_set():
                break
            if done == 0:
                stop.wait(args.interval)
                if stop.is_set():
                    break
    finally:
        views.close()
        ledger.close()
    print(f"projected {total} log entries into {settings.views_path}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from projections.rebuild import MAX_WORKERS, rebuild
    from projections.store import ConsentViews

    known_at = parse_time(args.known_at, "--known-at") if args.known_at else None
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers takes a whole number from 1 to {MAX_WORKERS}")
    if args.workers is not None and args.workers > 1 and settings.backend == "kafka":
        raise CliError("--workers: in Kafka mode replay reads the ledger topic in one process")
    if Path(args.into).exists() and not Path(args.into).is_dir():
        raise CliError(f"--into {args.into} is not a directory")
    target = Path(args.into) / "views.db"
    if target.exists():
        raise CliError(f"{target} exists: replay builds a fresh store")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the directory should be, no permission, ...
        raise CliError(f"--into {args.into}: {e.strerror}") from None
    ledger = _open(settings)
    try:
        read = rebuild(ledger, target, known_at=known_at, workers=args.workers)
    finally:
        ledger.close()
    store = ConsentViews.open(target)
    try:
        counts = {
            table: store.rows(f"SELECT COUNT(*) FROM {table}")[0][0]
            for table in ("view_subjects", "view_entries", "view_corrections", "view_intervals")
        }
    finally:
        store.close()
    summary = {"into": str(target), "log_entries_read": read, "known_at": args.known_at, **counts}
    if args.json:
        _print_json(summary)
    else:
        print(
            f"replayed {read} log entries into {target}"
            + (f" as known at {args.known_at}" if args.known_at else "")
        )
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from projections.queries import check_recipients, check_report
    from projections.views import Views

    at = parse_time(args.at, "--at")
    known_at = parse_time(args.known_at, "--known-at") if args.known_at else None
    try:
        text = _read_input(args.file).decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ledger = _open(settings)
    views = Views(ledger)
    try:
        sids = []
        for i, line in enumerate(lines):
            if args.sids:
                try:
                    sids.append(uuid.UUID(hex=line).hex)
                except ValueError:
                    raise CliError(f"line {i + 1} is not a sid (32 hex digits)") from None
            else:
                sids.append(ledger.sid(args.tenant, line).hex)
        _known_purpose(ledger, args.tenant, args.purpose)
        views.refresh()
        results = check_recipients(views.store, args.tenant, args.purpose, at, sids, known_at)
    finally:
        views.close()
        ledger.close()
    report = check_report(args.purpose, at, known_at, results)
    lacking = report["without_consent"]
    if args.json:
        _print_json(report)
    else:
        print(
            f"{report['with_consent']} of {len(results)} had consent for {args.purpose} "
            f"at {report['at']}"
        )
        for row in lacking:
            print(
                f"  line {row['index'] + 1}: sid {row['sid']}: {row['reason']}"
                + (f" at {row['since']}" if row["since"] else "")
            )
    return 0


def cmd_who(args: argparse.Namespace, settings: Settings) -> int:
    from projections.queries import who_had_consent
    from projections.views import Views

    at = parse_time(args.at, "--at")
    known_at = parse_time(args.known_at, "--known-at") if args.known_at else None
    if args.after and not all(c in "0123456789abcdef" for c in args.after):
        raise CliError("--after takes a sid (the last one of the previous page)")
    ledger = _open(settings)
    views = Views(ledger)
    try:
        _known_purpose(ledger, args.tenant, args.purpose)
        if args.policy_version is not None:
            tenant = ledger.tenant(args.tenant, shared=True)
            assert tenant is not None  # _known_purpose found it
            try:
                tenant.policy(args.policy_version)
            except FactRejected as unknown:
                raise CliError(f"{unknown.code.value}: {unknown.message}", EXIT_NOT_FOUND) from None
        views.refresh()
        sids = who_had_consent(
            views.store,
            args.tenant,
            args.purpose,
            at,
            known_at,
            after=args.after or "",
            limit=args.limit,
            policy_version=args.policy_version,
        )
    finally:
        views.close()
        ledger.close()
    # The route's answer (`GET /v1/purposes/{purpose}/subjects`), and `at` as before.
    page = {
        "purpose": args.purpose,
        "as_of": at.isoformat(),
        "known_at": known_at.isoformat() if known_at else None,
        "policy_version": args.policy_version,
        "sids": sids,
        "next": sids[-1] if len(sids) == args.limit else None,
        "at": at.isoformat(),
    }
    if args.json:
        _print_json(page)
    else:
        print("\n".join(sids))
    return 0


def _known_purpose(ledger: ConsentLedger, tenant: str, purpose: str) -> None:
    """A purpose no policy version names was never granted: a typo, not a finding."""
    found = ledger.tenant(tenant, shared=True)
    if found is None:
        raise CliError("no such tenant", EXIT_NOT_FOUND)
    if not found.names_purpose(purpose):
        raise CliError(
            "unknown_purpose: no policy version of this tenant names this purpose", EXIT_NOT_FOUND
        )


@contextlib.contextmanager
def _current_views(settings: Settings, name: str) -> Iterator[tuple[ConsentLedger, Views, Tenant]]:
    """The ledger, its consent views brought up to date with the log, and the tenant."""
    from projections.views import Views

    ledger = _open(settings)
    views = Views(ledger)
    try:
        tenant = ledger.tenant(name)
        if tenant is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
        views.refresh()
        yield ledger, views, tenant
    finally:
        views.close()
        ledger.close()


def cmd_due(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from projections.due import due_list

    now = parse_time(args.as_of, "--as-of") if args.as_of else datetime.now(UTC)
    with _current_views(settings, args.tenant) as (_, views, tenant):
        report = due_list(
            views.store,
            args.tenant,
            now,
            within=timedelta(days=args.within),
            request_days=settings.request_due_days,
            request_days_by_kind=dict(settings.request_due_days_by_kind),
            policies=tenant.policies,
        )
    if args.json:
        _print_json(report)
        return 0
    print(f"due for tenant {args.tenant} as of {report['as_of']} (within {args.within} days)")
    for r in report["requests"]:
        print(
            f"  request {r['request_id']} ({r['kind']}) of sid {r['sid']}: due {r['due_at']}"
            + ("  OVERDUE" if r["overdue"] else "")
        )
    for e in report["expiring_consents"]:
        print(f"  consent {e['purpose']} of sid {e['sid']} expires {e['expires_at']}")
    for p in report["past_retention"]:
        print(f"  data of sid {p['sid']} for {p['purpose']} past retention since {p['due_since']}")
    if report["erasable"]:
        print(
            f"  {len(report['erasable'])} subjects no purpose keeps any longer: "
            f"consent-ledger retention --tenant {args.tenant} [--erase]"
        )
    if not (report["requests"] or report["expiring_consents"] or report["past_retention"]):
        print("  nothing due")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app, keys_path
    from api.keys import ApiKeys

    if args.demo:
        cmd_demo(argparse.Namespace(subjects=args.subjects), settings)
        keys = ApiKeys(keys_path(settings))
        try:
            _, key = keys.create("demo", {"publisher", "compliance", "admin"})
        finally:
            keys.close()
        base = f"http://{args.host}:{args.port}"
        print(
            f"""
serving the demo tenant on {base}  (OpenAPI: {base}/docs)
API key (demo tenant; publisher, compliance, admin): {key}

record a grant:
  curl -s -X POST {base}/v1/facts -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' -d '{{"event_id": "curl-1", "type": "consent.granted",
    "subject": "curl-contact-1", "occurred_at": "2025-06-01T10:00:00+05:00", "source": "curl",
    "policy_version": "crmpro-1.0", "purposes": ["marketing"]}}'
read it back (the sid is in the receipt):
  curl -s {base}/v1/subjects/SID/consents -H 'Authorization: Bearer {key}'
""",
            flush=True,
        )
    from api.logs import configure

    configure()
    # uvicorn's own access log would print URLs and client addresses; ours names routes only.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Kafka mode's long-running process: the intake writer and the projections."""
    import signal
    import threading

    from ledger.kafka.intake import IntakeWriter
    from ledger.kafka.recorder import WriterFenced
    from projections.views import Views

    if settings.backend != "kafka":
        raise CliError(
            "the worker runs in Kafka mode: set LEDGER_BACKEND=kafka and KAFKA_BOOTSTRAP"
        )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ledger = _open(settings)
    writer = IntakeWriter(ledger)
    views = None if args.no_projections else Views(ledger)
    project = threading.Thread(
        target=_follow_views, args=(views, stop, args.interval), name="projections", daemon=True
    )
    topics = writer.link.topics
    try:
        writer.start()  # owns the ledger and has its intake positions: now it is consuming
        print(f"worker: consuming {topics.intake} into {topics.ledger}", flush=True)
        if views is not None:
            project.start()
        writer.run(stop)
    except WriterFenced:
        return _fail("worker: fenced — another writer owns the ledger partitions", EXIT_FENCED)
    finally:
        stop.set()
        if project.is_alive():
            project.join()
        writer.close()
        if views is not None:
            views.close()
        ledger.close()
    stats = writer.stats
    print(
        f"worker: stopped; {stats.accepted} accepted, {stats.duplicates} duplicates, "
        f"{sum(stats.rejected.values())} rejected in {stats.batches} batches; "
        f"{stats.retries} retries after the broker was unavailable",
        flush=True,
    )
    if stats.batches:
        per_batch = 1000 / stats.batches
        records = stats.accepted + stats.duplicates + sum(stats.rejected.values())
        print(
            f"worker: a batch on average: {records / stats.batches:.0f} records, poll "
            f"{stats.poll_s * per_batch:.1f} ms, parsing, checks, sealing and the replica "
            f"{(stats.write_s - stats.transaction_s) * per_batch:.1f} ms, Kafka transaction "
            f"{stats.transaction_s * per_batch:.1f} ms",
            flush=True,
        )
    return 0


def _follow_views(views: Any, stop: Any, interval: float) -> None:
    from ledger.kafka.recorder import LedgerUnavailable

    while not stop.is_set():
        try:
            done = views.refresh()
        except LedgerUnavailable:
            done = 0
        except Exception as error:  # a broker outage surfaces as several kafka errors
            logging.getLogger("consent_ledger.projections").error(
                "projection round failed (%s)", type(error).__name__
            )
            done = 0
        if done == 0:
            stop.wait(interval)


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    """The subjects no purpose keeps any longer (projections.due.erasable_past_retention)
    and, with --erase, their erasure on the ground `retention_expired`, a thousand per
    commit. Each erasure's event id is the sid's, so a run cut short and run again erases
    the rest and repeats none."""
    from projections.due import erasable_past_retention

    if args.erase and args.as_of:
        raise CliError("--erase acts on now; --as-of only lists what would be due then")
    now = parse_time(args.as_of, "--as-of") if args.as_of else datetime.now(UTC)
    with _current_views(settings, args.tenant) as (ledger, views, tenant):
        due = erasable_past_retention(views.store, args.tenant, now, tenant.policies)
        outcomes = (
            _erase_each(
                ledger,
                args.tenant,
                [d["sid"] for d in due],
                "retention_expired",
                "retention-expired-",
            )
            if args.erase
            else []
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
        _print_json(report)
    else:
        print(
            f"subjects of tenant {args.tenant!r} whose every purpose is past its retention "
            f"as of {now.isoformat()}: {len(due)}"
        )
        for d in due:
            purposes = ", ".join(d["purposes"])
            print(f"  sid {d['sid']}: {purposes} past retention since {d['due_since']}")
        if args.erase:
            print(f"erased {len(outcomes) - len(refused)}: data keys destroyed")
            for d, o in zip(due, outcomes, strict=True):
                if isinstance(o, FactRejected):
                    print(f"  not erased: sid {d['sid']}: {o.code.value}: {o}")
    return EXIT_REJECTED if refused else 0


def _erase_each(
    ledger: ConsentLedger, tenant: str, sids: Sequence[str], ground: str, id_prefix: str
) -> list[Any]:
    """Erase each subject (by sid), a thousand per commit; an outcome per sid, in order.

    Each erasure's event id is `id_prefix` and the sid, at the first attempt's instant on a
    retry (see occurred_at_of): a run cut short and run again erases the rest and answers
    the ones it did with their first receipts.
    """
    outcomes: list[Any] = []
    for start in range(0, len(sids), 1000):
        chunk = [uuid.UUID(hex=sid) for sid in sids[start : start + 1000]]
        facts = []
        for sid in chunk:
            event_id = f"{id_prefix}{sid.hex}"
            occurred_at = ledger.occurred_at_of(tenant, event_id, sid) or datetime.now(UTC)
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
        outcomes.extend(ledger.record(facts, sids=chunk))
    return outcomes


def cmd_accesses(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP access log of one subject (api.access_log). Neither the log nor a broker is
    opened: a reference's sid needs only the key store's pseudonym key."""
    from api.access_log import AccessLog

    if args.sid:
        sid = _given_sid(args.subject)
    else:
        with contextlib.closing(_key_store(settings)) as keystore:
            sid = keystore.sid(args.tenant, args.subject)
    if not settings.access_log_path.exists():
        accesses: list[dict[str, Any]] = []
    else:
        with contextlib.closing(AccessLog(settings.access_log_path)) as log:
            accesses = log.of_subject(args.tenant, sid.hex)
    kept = settings.access_log_days or None
    if args.json:
        _print_json(
            {"tenant": args.tenant, "sid": sid.hex, "accesses": accesses, "kept_days": kept}
        )
        return 0
    # The tenant named: a typo in it lists nothing, which must not read as "no one looked".
    print(
        f"accesses to subject {sid.hex} of tenant {args.tenant!r} over HTTP: {len(accesses)}"
        + (f" (the last {kept} days are kept)" if kept else "")
    )
    for a in accesses:
        print(f"  {a['at']}  key {a['key_id']}  {a['method']:<5} {a['route']:<34} {a['status']}")
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import keys_path
    from api.keys import ApiKeys, KeyError_

    ledger = _open(settings)
    try:
        if ledger.tenant(args.tenant) is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
    finally:
        ledger.close()
    expires_at = None
    if args.expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    keys = ApiKeys(keys_path(settings))
    try:
        key_id, key = keys.create(args.tenant, set(args.role), expires_at)
    except KeyError_ as e:
        raise CliError(str(e)) from None
    finally:
        keys.close()
    until = f"; expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    print(f"key id {key_id} (tenant {args.tenant}; {', '.join(sorted(set(args.role)))}{until})")
    print(key)
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import keys_path
    from api.keys import ApiKeys, KeyError_

    keys = ApiKeys(keys_path(settings))
    try:
        keys.revoke(args.key_id)
    except KeyError_ as e:
        raise CliError(str(e), EXIT_NOT_FOUND) from None
    finally:
        keys.close()
    print(f"revoked key {args.key_id}")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import keys_path
    from api.keys import ApiKeys

    keys = ApiKeys(keys_path(settings))
    try:
        listed = keys.list(args.tenant)
    finally:
        keys.close()
    if args.json:
        _print_json(listed)
    else:
        for k in listed:
            print(
                f"{k['key_id']}  {k['tenant']:<16} {k['roles']:<30} created {k['created_at']}"
                + (f"  revoked {k['revoked_at']}" if k["revoked_at"] else "")
                + (f"  expires {k['expires_at']}" if k["expires_at"] else "")
            )
    return 0


# ---- helpers -------------------------------------------------------------------------------


def _sid(ledger: ConsentLedger, args: argparse.Namespace) -> uuid.UUID:
    return _given_sid(args.subject) if args.sid else ledger.sid(args.tenant, args.subject)


def _given_sid(subject: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=subject)
    except ValueError:
        raise CliError("with --sid, SUBJECT must be a sid (32 hex digits)") from None


def _read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for '-'. Bytes, not text: what is not UTF-8 is refused
    where it is parsed (a fact's own line, a JSON document), never as a traceback."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None


def _read_facts(data: bytes) -> Iterator[bytes | Any]:
    """A JSON object, a JSON array of objects, or JSON Lines; bad lines become rejections."""
    stripped = data.strip()
    if not stripped:
        raise CliError("no facts in the input")
    # A whole JSON document first (an object, possibly pretty-printed, or an array of them);
    # anything else is read as JSON Lines, where a bad line is that line's own rejection.
    try:
        whole = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        yield from whole
        return
    if isinstance(whole, dict):
        yield whole
        return
    for line in data.splitlines():
        if line.strip():
            yield line


def _print_trail(trail: dict[str, Any]) -> None:
    who = trail["subject"] if trail["subject"] else "(erased)"
    print(
        f"Audit trail of subject {trail['sid']} [{who}], tenant {trail['tenant']}: "
        f"{len(trail['facts'])} facts"
        + ("; ERASED at " + trail["erased_at"] if trail["erased"] else "")
    )
    print(f"  {'pos':>5} {'v':>2}  {'occurred_at':<25} {'type':<19} {'event_id':<22} details")
    for f in trail["facts"]:
        details = dict(f["details"])
        if "corrected_by" in f:
            details["corrected_by"] = f["corrected_by"]
        text = orjson.dumps(details).decode()
        if len(text) > 110:
            text = text[:107] + "..."
        print(
            f"  {f['position'] or '':>5} {f['version']:>2}  {f['occurred_at'][:25]:<25} "
            f"{f['type']:<19} {(f['event_id'] or '-')[:22]:<22} {text}"
        )
        if f["personal_data"] is not None:
            print(
                f"  {'':>5} {'':>2}  {'':<25} {'':<19} {'':<22} personal data: "
                f"{orjson.dumps(f['personal_data']).decode()}"
            )
    if trail["facts"]:
        print(f"  chain head: {trail['facts'][-1]['hash']}")


def _subject_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "subject", metavar="SUBJECT", help="the publisher's reference (or a sid with --sid)"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--sid", action="store_true", help="SUBJECT is a sid, not a reference")


def _whole(low: int, high: int, out_of_range: str = "") -> Callable[[str], int]:
    """An argument's whole number, bounded: a number past any sensible size is a usage
    error, not an OverflowError deep in SQLite or datetime (the HTTP routes' bounds)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(out_of_range or f"from {low} to {high}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError("more than 0 and at most 3600 seconds")
    return value


def _demo_subjects(text: str) -> int:
    from ledger.demo import MAX_SUBJECTS, MIN_SUBJECTS

    return _whole(
        MIN_SUBJECTS,
        MAX_SUBJECTS,
        f"the demo's story needs at least {MIN_SUBJECTS}, and tells at most {MAX_SUBJECTS:,}",
    )(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-ledger", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="create the data directory and the demo tenant")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("demo", help="load the seed policy and a demo stream, show a trail")
    p.add_argument(
        "--subjects", type=_demo_subjects, default=300, help="at least 8, at most 100,000"
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

    p = sub.add_parser("trail", help="a subject's audit trail")
    _subject_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(run=cmd_trail)

    p = sub.add_parser("consents", help="a subject's consent per purpose at an instant")
    _subject_args(p)
    p.add_argument("--as-of", help="valid time (RFC 3339), default now")
    p.add_argument("--known-at", help="transaction time (RFC 3339), default now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_consents)

    p = sub.add_parser(
        "report",
        help="what is held about a subject and done with it: the answer to an information request",
    )
    _subject_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("erase", help="erase a subject's personal data (crypto-shredding)")
    _subject_args(p)
    p.add_argument("--ground", required=True)
    p.add_argument("--request-id")
    p.add_argument("--event-id", help="idempotency key for this erasure")
    p.set_defaults(run=cmd_erase)

    p = sub.add_parser(
        "verify",
        help="check the whole log for alteration, or alone an evidence package (--evidence) "
        "or a checkpoint (--checkpoint)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--evidence", metavar="FILE", help="check this evidence package alone, without the log"
    )
    p.add_argument(
        "--checkpoint", metavar="FILE", help="check this signed checkpoint alone, without the log"
    )
    p.add_argument(
        "--since",
        metavar="FILE",
        help="with --evidence or --checkpoint: an earlier checkpoint its tree must extend",
    )
    p.add_argument(
        "--public-key",
        help="with --evidence or --checkpoint: the key (base64) it must be signed by",
    )
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser(
        "evidence", help="a subject's trail with the proofs that let others verify it"
    )
    _subject_args(p)
    p.add_argument("--out", metavar="FILE", help="write it to this new file (default: stdout)")
    p.add_argument(
        "--since", metavar="FILE", help="a published checkpoint: add the proof the log extends it"
    )
    p.set_defaults(run=cmd_evidence)

    p = sub.add_parser(
        "checkpoint", help="the log's Merkle tree head, signed, for the operator to publish"
    )
    p.add_argument("--out", metavar="FILE", help="write it to this new file (default: stdout)")
    p.add_argument(
        "--since", metavar="FILE", help="an earlier checkpoint: add the proof the log extends it"
    )
    p.set_defaults(run=cmd_checkpoint)

    p = sub.add_parser(
        "signing-key", help="the public key (base64) that signs this ledger's evidence packages"
    )
    p.set_defaults(run=cmd_signing_key)
    signing = p.add_subparsers(dest="signing_command")
    q = signing.add_parser(
        "rotate", help="replace the signing key; the retiring key signs the hand-over"
    )
    q.set_defaults(run=cmd_signing_key_rotate)
    q = signing.add_parser("history", help="the signing key's hand-overs, oldest first")
    q.add_argument("--json", action="store_true", help="the signed statements, to publish")
    q.set_defaults(run=cmd_signing_key_history)

    p = sub.add_parser(
        "backup", help="consistent copies of the data directory's databases (not the master key)"
    )
    p.add_argument("--into", required=True, metavar="DIR", help="a new or empty directory")
    p.set_defaults(run=cmd_backup)

    p = sub.add_parser("master-key", help="the master key that wraps the key store")
    master = p.add_subparsers(dest="master_command", required=True)
    q = master.add_parser(
        "rotate",
        help="re-wrap the key store under a new master key (stop the service first); the new "
        "key: master.key's successor, or LEDGER_NEW_MASTER_KEY",
    )
    q.set_defaults(run=cmd_master_key_rotate)

    p = sub.add_parser("project", help="bring the consent views up to date with the log")
    p.add_argument("--follow", action="store_true", help="keep following until SIGTERM")
    p.add_argument(
        "--page", type=_whole(1, 1_000_000), default=5000, help="log entries per transaction"
    )
    p.add_argument("--interval", type=_seconds, default=0.5, help="seconds between polls")
    p.set_defaults(run=cmd_project)

    p = sub.add_parser("replay", help="rebuild the views from the log into a fresh store")
    p.add_argument("--into", required=True, metavar="DIR")
    p.add_argument("--known-at", help="only facts recorded up to this instant (RFC 3339)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes sharing the build (default: one per core for a log of 50,000 "
        "entries or more, else one; Kafka mode: one)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_replay)

    p = sub.add_parser("check", help="which recipients had consent for a purpose at an instant")
    p.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE|-",
        help="subject references (or sids with --sids), one per line",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--purpose", required=True)
    p.add_argument("--at", required=True)
    p.add_argument("--known-at")
    p.add_argument("--sids", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("who", help="subjects with consent for a purpose at an instant (paged)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--purpose", required=True)
    p.add_argument("--at", required=True)
    p.add_argument("--known-at")
    p.add_argument("--after", help="continue after this sid (the previous page's 'next')")
    p.add_argument("--limit", type=_whole(1, 10_000), default=1000)
    p.add_argument(
        "--policy-version",
        help="only those whose consent was given under this policy version (re-consent)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_who)

    p = sub.add_parser("due", help="requests near their deadline, expiring consents, retention")
    p.add_argument("--tenant", required=True)
    p.add_argument(
        "--within", type=_whole(0, 3650), default=7, help="days ahead to look (default 7)"
    )
    p.add_argument("--as-of", help="instead of now (RFC 3339)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_due)

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

    p = sub.add_parser("worker", help="Kafka mode: the intake writer and the projections")
    p.add_argument("--no-projections", action="store_true", help="run only the intake writer")
    p.add_argument("--interval", type=_seconds, default=0.5, help="projection poll when idle (s)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("serve", help="the HTTP service (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_whole(0, 65_535), default=8000, help="0: any free port")
    p.add_argument("--demo", action="store_true", help="load the demo and print a key first")
    p.add_argument(
        "--subjects", type=_demo_subjects, default=300, help="at least 8, at most 100,000"
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "accesses", help="who read or erased a subject's data over HTTP (key, route, status)"
    )
    _subject_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_accesses)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action")
    p = keys.add_parser("create", help="create a key; it is printed once")
    p.add_argument("--tenant", required=True)
    p.add_argument(
        "--role", action="append", required=True, choices=["publisher", "compliance", "admin"]
    )
    p.add_argument(
        "--expires-in-days",
        type=_whole(1, 36_500),
        metavar="N",
        help="refuse the key N days from now (401 api_key_expired); default: never",
    )
    p.set_defaults(run=cmd_keys_create)
    p = keys.add_parser("revoke")
    p.add_argument("key_id", metavar="KEY_ID")
    p.set_defaults(run=cmd_keys_revoke)
    p = keys.add_parser("list")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_keys_list)

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="action")
    p = tenants.add_parser("create")
    p.add_argument("tenant", metavar="T")
    p.set_defaults(run=cmd_tenants_create)
    p = tenants.add_parser(
        "export", help="every subject's audit trail as JSON Lines (personal data included)"
    )
    p.add_argument("tenant", metavar="T")
    p.add_argument("--out", help="a new file (mode 0600; default stdout)")
    p.set_defaults(run=cmd_tenants_export)
    p = tenants.add_parser("erase-subjects", help="erase every subject of a tenant")
    p.add_argument("tenant", metavar="T")
    p.add_argument("--ground", required=True, choices=sorted(ERASURE_GROUNDS))
    p.add_argument("--confirm", required=True, metavar="T", help="the tenant's name again")
    p.set_defaults(run=cmd_tenants_erase_subjects)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
