"""Proof that nothing was altered: `verify`, `evidence`, `checkpoint`, `signing-key`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from ledger.cli.common import (
    EXIT_BROKEN,
    EXIT_NOT_FOUND,
    CliError,
    fail,
    key_store,
    load_json,
    open_ledger,
    print_json,
    say,
    subject_args,
    subject_sid,
    write_once,
)
from ledger.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
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
    p.add_argument(
        "--tenant",
        help="name only this tenant's subjects in the key store's warnings, as GET /v1/verify "
        "does (the log is checked whole either way)",
    )
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser(
        "evidence", help="a subject's trail with the proofs that let others verify it"
    )
    subject_args(p)
    p.add_argument(
        "--out", metavar="FILE", help="write it to this new file (mode 0600; default: stdout)"
    )
    p.add_argument(
        "--since", metavar="FILE", help="a published checkpoint: add the proof the log extends it"
    )
    p.set_defaults(run=cmd_evidence)

    p = sub.add_parser(
        "checkpoint", help="the log's Merkle tree head, signed, for the operator to publish"
    )
    p.add_argument(
        "--out", metavar="FILE", help="write it to this new file (mode 0600; default: stdout)"
    )
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


def cmd_evidence(args: argparse.Namespace, settings: Settings) -> int:
    from projections.evidence import evidence_package

    since = load_json(args.since) if args.since else None
    ledger = open_ledger(settings)
    try:
        with signing_since(since) as since_sizes:
            package = evidence_package(
                ledger, args.tenant, subject_sid(ledger, args), since_sizes=since_sizes
            )
            if package is not None and since is not None:
                agrees_with(package, since)
    finally:
        ledger.close()
    if package is None:
        raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
    head = package["tree_head"]
    write_once(
        package,
        args.out,
        "an evidence package",
        f"evidence: {len(package['chains']['subject'])} facts of sid {package['sid']}, "
        f"in {trees_text(head['trees'])}, signed by {head['public_key']}",
    )
    return 0


def cmd_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import checkpoint

    since = load_json(args.since) if args.since else None
    ledger = open_ledger(settings)
    try:
        with signing_since(since) as since_sizes:
            signed = checkpoint(ledger.ledger_recorder, ledger.keystore, since_sizes=since_sizes)
            if since is not None:
                agrees_with(signed, since)
    finally:
        ledger.close()
    head = signed["tree_head"]
    write_once(
        signed,
        args.out,
        "a checkpoint",
        f"checkpoint: {trees_text(head['trees'])}, signed by {head['public_key']}",
    )
    return 0


def trees_text(trees: Any) -> str:
    """Signed trees as a line says them: the log of N facts, root R (one per partition)."""
    parts = [(int(t["partition"]), int(t["size"]), str(t["root"])) for t in trees]
    if len(parts) == 1:
        return f"the log of {parts[0][1]} facts with root {parts[0][2]}"
    listed = "; ".join(f"partition {p}: {n} facts, root {r}" for p, n, r in parts)
    return f"the log of {sum(n for _, n, _ in parts)} facts ({listed})"


@contextlib.contextmanager
def signing_since(since: Any) -> Iterator[dict[int, int] | None]:
    """The earlier checkpoint's sizes to prove consistency from, and the refusals of
    signing: a log whose records disagree, or one with fewer facts than the checkpoint."""
    from ledger.checkpoint import MALFORMED, LogNotIntact, SinceTooLarge, since_sizes_of

    try:
        sizes = since_sizes_of(since) if since is not None else None
    except MALFORMED:
        raise CliError(NOT_A_CHECKPOINT) from None
    try:
        yield sizes
    except LogNotIntact as e:
        raise CliError(
            f"the log does not verify ({e}); run consent-ledger verify", EXIT_BROKEN
        ) from None
    except SinceTooLarge as e:
        raise CliError(f"--since: {e}", EXIT_BROKEN) from None


NOT_A_CHECKPOINT = "--since takes a checkpoint written by consent-ledger checkpoint"


def agrees_with(signed: dict[str, Any], since: Any) -> None:
    """Refuse to hand out a proof that the earlier checkpoint does not check against: it is
    another log's, or this log was rewritten since it was signed."""
    from ledger.checkpoint import MALFORMED, ProofProblem, check_extends, key_chain

    problems: list[ProofProblem] = []
    head = signed["tree_head"]
    try:
        chain = key_chain(head, signed.get("key_transitions"), None, "tree_head", problems)
        check_extends(head, signed.get("consistency"), since, chain, problems)
    except MALFORMED:
        raise CliError(NOT_A_CHECKPOINT) from None
    if problems:
        raise CliError(f"--since: {problems[0].message}", EXIT_BROKEN)


def cmd_signing_key(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import public_key_of

    ledger = open_ledger(settings)
    try:
        say(public_key_of(ledger.keystore))
    finally:
        ledger.close()
    return 0


def cmd_signing_key_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Only the key store is opened (no log, no broker); a running service signs with the
    new key from its next checkpoint or package on."""
    from ledger.checkpoint import rotate_signing_key

    with contextlib.closing(key_store(settings)) as keystore:
        statement = rotate_signing_key(keystore)
    say(f"retired signing key: {statement['previous_key']}")
    say(f"new signing key:     {statement['public_key']}")
    say(
        f"both keys signed the hand-over at {statement['rotated_at']}; checkpoints and "
        "evidence packages carry it from now on. Publish the new key next to the old one "
        "(consent-ledger signing-key history --json lists every hand-over)"
    )
    return 0


def cmd_signing_key_history(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import public_key_text

    with contextlib.closing(key_store(settings)) as keystore:
        key, transitions = keystore.signer()
    if args.json:
        print_json(transitions)
        return 0
    for t in transitions:
        say(f"{t['rotated_at']}  {t['previous_key']} -> {t['public_key']}")
    say(f"signing now: {public_key_text(key.public_key())}")
    return 0


def verify_signed(args: argparse.Namespace) -> int:
    """An evidence package or a checkpoint checked from its own contents (and an earlier
    checkpoint's, with --since): no data directory, no ledger."""
    from ledger.checkpoint import verify_checkpoint
    from projections.evidence import verify_evidence

    since = load_json(args.since) if args.since else None
    what = "evidence" if args.evidence else "checkpoint"
    result: Any
    if args.evidence:
        result = verify_evidence(load_json(args.evidence), args.public_key, since)
        summary = f"{result.facts_checked} facts of the subject and its tenant, included in "
    else:
        result = verify_checkpoint(load_json(args.checkpoint), since, args.public_key)
        summary = ""
    if args.json:
        print_json(result.as_dict())
    elif result.ok:
        trees = [{"partition": p, "size": n, "root": r} for p, n, r in result.trees]
        extends = ""
        if since is not None:
            extends = f", extending the checkpoint of {trees_text(since['tree_head']['trees'])}"
        say(f"{what}: OK, {summary}{trees_text(trees)}{extends}, signed by {result.public_key}")
    if not result.ok:
        first = result.problems[0]
        return fail(
            f"{what}: BROKEN ({first.kind}; {first.where}"
            + (f" version {first.version}" if first.version is not None else "")
            + f"): {first.message}",
            EXIT_BROKEN,
        )
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.verify import key_store_gaps, verify_ledger

    if args.evidence is not None and args.checkpoint is not None:
        raise CliError("give --evidence or --checkpoint, not both")
    if args.evidence is not None or args.checkpoint is not None:
        if args.tenant is not None:
            raise CliError("--tenant names the log's subjects: not with --evidence or --checkpoint")
        return verify_signed(args)
    if args.public_key is not None or args.since is not None:
        raise CliError(
            "--public-key and --since check a package or checkpoint: give --evidence FILE "
            "or --checkpoint FILE"
        )
    try:
        ledger = open_ledger(settings)
    except Exception as error:
        # Kafka mode: the ledger topic lost records, found as the replica caught up. That
        # is the log of record altered, what this command exists to report (exit 4, not
        # the 6 of a resource to retry). Named without importing Kafka in embedded mode.
        if type(error).__name__ != "RecordsLost":
            raise
        from ledger.kafka.topics import RecordsLost  # Kafka mode, as it was raised

        assert isinstance(error, RecordsLost)
        if args.json:
            print_json(
                {
                    "ok": False,
                    "facts_checked": 0,
                    "merkle_root": None,
                    "problems": 1,
                    "first_broken": {
                        # The first record lost, with the fields of any broken record
                        # (those of a fact no longer in the log unknown).
                        "position": error.offset,
                        "partition": error.partition,
                        "kind": "removed",
                        "sid": None,
                        "version": None,
                        "event_id": None,
                        "message": str(error),
                    },
                    # Unknown, not zero: they are found by reading the log, which was not.
                    "subjects_without_key": None,
                    "erasures_not_in_log": None,
                }
            )
        return fail(f"verify: BROKEN (removed): {error}", EXIT_BROKEN)
    try:
        if args.tenant is not None and ledger.tenant(args.tenant) is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
        result = verify_ledger(ledger.ledger_recorder)
        gaps = key_store_gaps(ledger, args.tenant)
    finally:
        ledger.close()
    keyless, lost = gaps["subjects_without_key"], gaps["erasures_not_in_log"]
    if args.json:
        print_json({**result.as_dict(), **gaps})
    elif result.ok:
        say(f"verify: OK, {result.facts_checked} facts, merkle root {result.root}")
    if keyless:
        say(
            f"verify: warning: {keyless} subjects have neither a key in the key store nor an "
            "erasure: their personal data cannot be read (keys.db older than the log?)",
            file=sys.stderr,
        )
    if lost:
        say(
            f"verify: warning: {len(lost)} subjects were erased in the key store but the log "
            "holds no erasure of them (a ledger.db restored from before the erasures?); record "
            "each again with `consent-ledger erase SID --sid --tenant TENANT --ground GROUND`:",
            file=sys.stderr,
        )
        for erasure in lost:
            say(
                f"  tenant {erasure['tenant']!r} sid {erasure['sid']}: key erased at "
                f"{erasure['key_erased_at']}",
                file=sys.stderr,
            )
    if not result.ok:
        first = result.problems[0]
        return fail(
            f"verify: BROKEN at {first.place} ({first.kind}; sid {first.aggregate} "
            f"version {first.version}; event_id {first.event_id}): {first.message}",
            EXIT_BROKEN,
        )
    return 0
