"""Questions about one subject: `trail`, `consents`, `report`, `accesses`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import orjson

from ledger.cli.common import (
    about_subject,
    given_sid,
    key_store,
    print_json,
    say,
    subject_args,
)
from ledger.controls import visible
from ledger.envelope import parse_known_at, parse_time
from ledger.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser("trail", help="a subject's audit trail")
    subject_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(run=cmd_trail)

    p = sub.add_parser("consents", help="a subject's consent per purpose at an instant")
    subject_args(p)
    p.add_argument("--as-of", help="valid time (RFC 3339), default now")
    p.add_argument("--known-at", help="transaction time (RFC 3339), default now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_consents)

    p = sub.add_parser(
        "report",
        help="what is held about a subject and done with it: the answer to an information request",
    )
    subject_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser(
        "accesses", help="who read or erased a subject's data over HTTP (key, route, status)"
    )
    subject_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_accesses)


def cmd_trail(args: argparse.Namespace, settings: Settings) -> int:
    from projections.trail import subject_trail, trail_csv

    trail = about_subject(settings, args, subject_trail)
    if args.format == "csv":
        sys.stdout.write(trail_csv(trail))
    elif args.json:
        print_json(trail)
    else:
        print_trail(trail)
    return 0


def cmd_consents(args: argparse.Namespace, settings: Settings) -> int:
    from projections.consents import subject_consents

    as_of = parse_time(args.as_of, "--as-of") if args.as_of else None
    known_at = parse_known_at(args.known_at, "--known-at", settings.max_future_skew_s)
    view = about_subject(
        settings,
        args,
        lambda ledger, tenant, sid: subject_consents(ledger, tenant, sid, as_of, known_at),
    )
    if args.json:
        print_json(view)
        return 0
    say(
        f"subject {view['sid']}  as of {view['as_of']}  known at {view['known_at']}"
        + ("  (erased)" if view["erased"] else "")
    )
    for p in view["purposes"]:
        say(
            f"  {p['purpose']:<20} {p['state']:<10} since {p['since'] or '-':<26} "
            f"policy {p['policy_version'] or '-':<12} fact {p['event_id'] or '-'}"
        )
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """The answer to a subject's information request (projections.report)."""
    from projections.report import subject_report

    report = about_subject(settings, args, subject_report)
    if args.json:
        print_json(report)
        return 0
    for line in report_lines(report):
        say(line)
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
        if report["personal_data_unreadable"]:
            out.append(
                "  INCOMPLETE: some of it is sealed under a key the key store does not hold "
                "(restored from a backup older than the log?)"
            )
        if report["personal_data_key_erased"]:
            out.append(
                "  DESTROYED: the key store erased this subject's key in an erasure the log "
                "does not hold (restored from a backup older than it?): `verify` names it, "
                "to be recorded again"
            )
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
        + (f"{r['outcome']} {r['closed_at']}" if r["closed_at"] else f"open, due {r['due_at']}")
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


def cmd_accesses(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP access log of one subject (api.access_log). Neither the log nor a broker is
    opened: a reference's sid needs only the key store's pseudonym key."""
    from api.access_log import AccessLog

    if args.sid:
        sid = given_sid(args.subject)
    else:
        with contextlib.closing(key_store(settings)) as keystore:
            sid = keystore.sid(args.tenant, args.subject)
    if not settings.access_log_path.exists():
        accesses: list[dict[str, Any]] = []
    else:
        with contextlib.closing(AccessLog(settings.access_log_path)) as log:
            accesses = log.of_subject(args.tenant, sid.hex)
    kept = settings.access_log_days or None
    if args.json:
        print_json({"tenant": args.tenant, "sid": sid.hex, "accesses": accesses, "kept_days": kept})
        return 0
    # The tenant named: a typo in it lists nothing, which must not read as "no one looked".
    say(
        f"accesses to subject {sid.hex} of tenant {args.tenant!r} over HTTP: {len(accesses)}"
        + (f" (the last {kept} days are kept)" if kept else "")
    )
    for a in accesses:
        say(f"  {a['at']}  key {a['key_id']}  {a['method']:<5} {a['route']:<34} {a['status']}")
    return 0


def print_trail(trail: dict[str, Any]) -> None:
    who = trail["subject"] or (
        "(erased)"
        if trail["erased"]
        else "(key erased, erasure not in the log)"
        if any(f["personal_data"] == {"key_erased": True} for f in trail["facts"])
        else "(key missing: not erased)"
    )
    say(
        f"Audit trail of subject {trail['sid']} [{who}], tenant {trail['tenant']}: "
        f"{len(trail['facts'])} facts"
        + ("; ERASED at " + trail["erased_at"] if trail["erased"] else "")
    )
    # Kafka mode places a fact by partition and offset ("1:115"), as its receipt does.
    width = 9 if any("partition" in f for f in trail["facts"]) else 5
    # Columns as wide as their longest value: a time cut to 25 characters lost its offset
    # (and digits of its second), an event_id cut to 22 could be another fact's.
    when = max([25, *(len(f["occurred_at"]) for f in trail["facts"])])
    ids = max([22, *(len(visible(f["event_id"] or "-")) for f in trail["facts"])])
    say(
        f"  {'pos':>{width}} {'v':>2}  {'occurred_at':<{when}} {'type':<19} "
        f"{'event_id':<{ids}} details"
    )
    for f in trail["facts"]:
        place = f"{f['partition']}:{f['position']}" if "partition" in f else f["position"] or ""
        details = dict(f["details"])
        if "corrected_by" in f:
            details["corrected_by"] = f["corrected_by"]
        text = orjson.dumps(details).decode()
        if len(text) > 110:
            text = text[:107] + "..."
        say(
            f"  {place:>{width}} {f['version']:>2}  {f['occurred_at']:<{when}} "
            f"{f['type']:<19} {visible(f['event_id'] or '-'):<{ids}} {text}"
        )
        if f["personal_data"] is not None:
            say(
                f"  {'':>{width}} {'':>2}  {'':<{when}} {'':<19} {'':<{ids}} personal data: "
                f"{orjson.dumps(f['personal_data']).decode()}"
            )
    if trail["facts"]:
        say(f"  chain head: {trail['facts'][-1]['hash']}")
