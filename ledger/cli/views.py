"""The consent views and what they answer about many subjects: `project`, `replay`, `check`,
`who`, `due`, `requests`."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

from ledger.cli.common import (
    EXIT_NOT_FOUND,
    CliError,
    current_views,
    known_purpose,
    open_ledger,
    print_json,
    read_input,
    say,
    seconds,
    whole,
)
from ledger.cli.stopping import stopped_by_signals
from ledger.envelope import parse_known_at, parse_time
from ledger.errors import FactRejected
from ledger.settings import Settings
from ledger.storage import storage_failure
from ledger.vocabulary import REQUEST_KINDS, REQUEST_STATES

log = logging.getLogger("consent_ledger.projections")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser("project", help="bring the consent views up to date with the log")
    p.add_argument(
        "--follow", action="store_true", help="keep following until SIGTERM, SIGINT or SIGHUP"
    )
    p.add_argument(
        "--page", type=whole(1, 1_000_000), default=5000, help="log entries per transaction"
    )
    p.add_argument("--interval", type=seconds, default=0.5, help="seconds between polls")
    p.set_defaults(run=cmd_project)

    p = sub.add_parser("replay", help="rebuild the views from the log into a fresh store")
    p.add_argument("--into", required=True, metavar="DIR")
    p.add_argument("--known-at", help="only facts recorded up to this instant (RFC 3339)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes sharing the build (default: one per core for a log of 50,000 "
        "entries or more, else one; Kafka mode: from 20,000 offsets, and at most one per "
        "partition of the ledger topic)",
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
    p.add_argument(
        "--after",
        help="the previous page's 'next' (its pages answer for its --at and --known-at)",
    )
    p.add_argument("--limit", type=whole(1, 10_000), default=1000)
    p.add_argument(
        "--policy-version",
        help="only those whose consent was given under this policy version (re-consent)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="how many, by policy version, instead of who (GET /v1/purposes/{P}/summary)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_who)

    p = sub.add_parser("due", help="requests near their deadline, expiring consents, retention")
    p.add_argument("--tenant", required=True)
    p.add_argument(
        "--within", type=whole(0, 3650), default=7, help="days ahead to look (default 7)"
    )
    p.add_argument("--as-of", help="instead of now (RFC 3339)")
    p.add_argument(
        "--limit",
        type=whole(1, 10_000),
        help="at most this many of each list, then a cursor for the rest (default: all)",
    )
    p.add_argument(
        "--after", help="continue after this cursor (the previous page's 'next'; its instant)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_due)

    p = sub.add_parser(
        "requests", help="the register of subject requests: deadlines, answers, lateness"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--state", choices=REQUEST_STATES, help="only requests in this state")
    p.add_argument("--kind", choices=sorted(REQUEST_KINDS), help="only requests of this kind")
    p.add_argument(
        "--from", dest="received_from", metavar="T", help="received at or after (RFC 3339)"
    )
    p.add_argument("--to", dest="received_to", metavar="T", help="received before (RFC 3339)")
    p.add_argument(
        "--after",
        help="continue after this cursor (the previous page's 'next', with the same --kind, "
        "--from and --to; its instant and counts)",
    )
    p.add_argument("--limit", type=whole(1, 10_000), default=1000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(run=cmd_requests)


def cmd_requests(args: argparse.Namespace, settings: Settings) -> int:
    """GET /v1/requests from the command line (projections.requests)."""
    from projections.cursors import BadCursor
    from projections.requests import register_csv, request_register

    start = parse_time(args.received_from, "--from") if args.received_from else None
    end = parse_time(args.received_to, "--to") if args.received_to else None
    if start is not None and end is not None and end < start:
        raise CliError("--to is before --from: the register would list nothing")  # not "none"
    with current_views(settings, args.tenant) as (_, views, tenant):
        try:
            register = request_register(
                views.store,
                args.tenant,
                datetime.now(UTC),
                policies=tenant.policies,
                request_days=settings.request_due_days,
                request_days_by_kind=dict(settings.request_due_days_by_kind),
                state=args.state,
                kind=args.kind,
                received_from=start,
                received_to=end,
                cursor=args.after,
                limit=args.limit,
            )
        except BadCursor:
            raise CliError(
                "--after takes the 'next' of a previous page, with its --kind, --from and --to"
            ) from None
    if args.format == "csv":
        sys.stdout.write(register_csv(register))
        if register["next"]:
            say(f"more: --after {register['next']}", file=sys.stderr)
        return 0
    if args.json or args.format == "json":
        print_json(register)
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in register["counts"].items())
    say(f"subject requests of tenant {args.tenant!r}: {counts}")
    for r in register["requests"]:
        closed = f"{r['outcome']} {r['closed_at']}" if r["closed_at"] else "not closed"
        say(
            f"  {r['request_id']} ({r['kind']}) of sid {r['sid']}: received {r['received_at']}, "
            f"due {r['due_at']} ({r['due_from']}), {closed}: {r['state'].upper()}"
        )
    if register["next"]:
        say(f"more: --after {register['next']}")
    return 0


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    from api.logs import configure

    # JSON lines on stderr: what the writer skipped or set aside, by partition and offset.
    configure(logging.WARNING, sys.stderr)
    with stopped_by_signals() as stop:
        return _project(args, settings, stop)


def _project(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    """The views brought up to date (with --follow: kept so) until `stop` is set."""
    from projections.views import Views

    ledger = open_ledger(settings)
    views = Views(ledger, stopping=stop.is_set)
    total = 0
    pause = args.interval
    try:
        while True:
            try:
                done = views.refresh(page=args.page)
                pause = args.interval
            except Exception as error:
                from ledger.kafka.recorder import LedgerUnavailable

                if stop.is_set() and isinstance(error, LedgerUnavailable):
                    break  # a Kafka-mode read ended by the stop; what was read is kept
                failure = storage_failure(error)
                if failure is None or not args.follow:
                    raise
                # A follower waits for the storage as the worker does, pausing longer each
                # time up to 5 s: the page that failed was rolled back with its position.
                log.error("storage unavailable (%s), retrying", failure.reason)
                stop.wait(pause)
                pause = min(pause * 2, max(args.interval, 5.0))
                done = 0
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
    say(f"projected {total} log entries into {settings.views_path}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from projections.rebuild import MAX_WORKERS, rebuild
    from projections.store import ConsentViews

    known_at = parse_known_at(args.known_at, "--known-at", settings.max_future_skew_s)
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers takes a whole number from 1 to {MAX_WORKERS}")
    if Path(args.into).exists() and not Path(args.into).is_dir():
        raise CliError(f"--into {args.into} is not a directory")
    target = Path(args.into) / "views.db"
    if target.exists():
        raise CliError(f"{target} exists: replay builds a fresh store")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the directory should be, no permission, ...
        raise CliError(f"--into {args.into}: {e.strerror}") from None
    ledger = open_ledger(settings)
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
    known = known_at.isoformat() if known_at else None
    summary = {"into": str(target), "log_entries_read": read, "known_at": known, **counts}
    if args.json:
        print_json(summary)
    else:
        # What the store holds, not only what was read: as known at an instant before the
        # facts were recorded, every entry is read and none is in it.
        say(
            f"replayed {read} log entries into {target}"
            + (f" as known at {known}" if known else "")
            + f": {counts['view_subjects']} subjects, {counts['view_entries']} of their facts"
        )
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from projections.queries import check_recipients, check_report
    from projections.views import Views

    at = parse_time(args.at, "--at")
    known_at = parse_known_at(args.known_at, "--known-at", settings.max_future_skew_s)
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte order mark, which read as
        # part of the first reference would make that recipient unknown.
        text = read_input(args.file).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text") from None
    # Blank lines are skipped, but each reference keeps the number of its line in the file:
    # counting only the others sent the officer to the wrong recipient's line.
    numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    ledger = open_ledger(settings)
    views = Views(ledger)
    try:
        sids = []
        for n, line in numbered:
            if args.sids:
                try:
                    sids.append(uuid.UUID(hex=line).hex)
                except ValueError:
                    raise CliError(f"line {n} is not a sid (32 hex digits)") from None
            else:
                sids.append(ledger.sid(args.tenant, line).hex)
        known_purpose(ledger, args.tenant, args.purpose)
        views.refresh()
        results = check_recipients(views.store, args.tenant, args.purpose, at, sids, known_at)
    finally:
        views.close()
        ledger.close()
    report = check_report(args.purpose, at, known_at, results)
    lacking = report["without_consent"]
    for row in lacking:  # the HTTP answer's fields, and the line in the file
        row["line"] = numbered[row["index"]][0]
    if args.json:
        print_json(report)
    else:
        say(
            f"{report['with_consent']} of {len(results)} had consent for {args.purpose} "
            f"at {report['at']}"
        )
        for row in lacking:
            say(
                f"  line {row['line']}: sid {row['sid']}: {row['reason']}"
                + (f" at {row['since']}" if row["since"] else "")
            )
    return 0


def cmd_who(args: argparse.Namespace, settings: Settings) -> int:
    from projections.cursors import BadCursor
    from projections.queries import consent_summary, who_had_consent_page
    from projections.views import Views

    at = parse_time(args.at, "--at")
    known_at = parse_known_at(args.known_at, "--known-at", settings.max_future_skew_s)
    if args.summary and (args.after or args.policy_version):
        raise CliError("--summary counts every version at once: no --after or --policy-version")
    ledger = open_ledger(settings)
    views = Views(ledger)
    try:
        known_purpose(ledger, args.tenant, args.purpose)
        if args.summary:
            views.refresh()
            summary = consent_summary(views.store, args.tenant, args.purpose, at, known_at)
            if args.json:
                print_json(summary)
            else:
                say(
                    f"{summary['with_consent']} subjects had consent for {args.purpose} "
                    f"at {summary['as_of']}"
                )
                for version, n in summary["by_policy_version"].items():
                    say(f"  {n} under policy {version}")
            return 0
        if args.policy_version is not None:
            tenant = ledger.tenant(args.tenant, shared=True)
            assert tenant is not None  # known_purpose found it
            try:
                tenant.policy(args.policy_version)
            except FactRejected as unknown:
                raise CliError(f"{unknown.code.value}: {unknown.message}", EXIT_NOT_FOUND) from None
        views.refresh()
        try:
            page = who_had_consent_page(
                views.store,
                args.tenant,
                args.purpose,
                at,
                known_at,
                cursor=args.after,
                limit=args.limit,
                policy_version=args.policy_version,
                now=datetime.now(UTC),
                recorded_through=views.recorded_through,
            )
        except BadCursor:
            raise CliError(
                "--after takes the 'next' of a previous page, with its --purpose, --at, "
                "--known-at and --policy-version"
            ) from None
    finally:
        views.close()
        ledger.close()
    # The route's answer (`GET /v1/purposes/{purpose}/subjects`), and `at` as before.
    page["at"] = page["as_of"]
    if args.json:
        print_json(page)
    else:
        print("\n".join(page["sids"]))  # the views' own hex: nothing in them can act
        if page["next"]:
            # A full page: more may follow. Said on stderr, so stdout stays a list of sids,
            # but said: a count of these lines stopped silently at the default 1,000.
            say(f"more may follow: --after {page['next']}", file=sys.stderr)
    return 0


def cmd_due(args: argparse.Namespace, settings: Settings) -> int:

    from projections.cursors import BadCursor
    from projections.due import due_list

    if args.as_of and args.after:
        raise CliError("--after continues at its own instant: give it without --as-of")
    now = parse_time(args.as_of, "--as-of") if args.as_of else datetime.now(UTC)
    with current_views(settings, args.tenant) as (_, views, tenant):
        try:
            report = due_list(
                views.store,
                args.tenant,
                now,
                within=timedelta(days=args.within),
                request_days=settings.request_due_days,
                request_days_by_kind=dict(settings.request_due_days_by_kind),
                policies=tenant.policies,
                limit=args.limit,
                cursor=args.after,
            )
        except BadCursor:
            raise CliError("--after takes the 'next' of a previous page") from None
    if args.json:
        print_json(report)
        return 0
    say(f"due for tenant {args.tenant} as of {report['as_of']} (within {args.within} days)")
    for r in report["requests"]:
        by = {"request": "its own", "policy": f"policy {r['policy_version']}"}.get(
            r["due_from"], "settings"
        )
        say(
            f"  request {r['request_id']} ({r['kind']}) of sid {r['sid']}: due {r['due_at']}"
            f" (deadline: {by})" + ("  OVERDUE" if r["overdue"] else "")
        )
    for e in report["expiring_consents"]:
        say(f"  consent {e['purpose']} of sid {e['sid']} expires {e['expires_at']}")
    for p in report["past_retention"]:
        say(f"  data of sid {p['sid']} for {p['purpose']} past retention since {p['due_since']}")
    if report["erasable"]:
        say(
            f"  {len(report['erasable'])} subjects no purpose keeps any longer: "
            f"consent-ledger retention --tenant {args.tenant} [--erase]"
        )
    if not (report["requests"] or report["expiring_consents"] or report["past_retention"]):
        say("  nothing due" if args.after is None else "  nothing more due")
    if report["next"]:
        say(f"more: --after {report['next']}", file=sys.stderr)
    return 0
