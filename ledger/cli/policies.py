"""The tenant's policy versions (§9): `policies list`, `show` and `changes`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ledger.cli.common import EXIT_NOT_FOUND, CliError, open_ledger, print_json, say
from ledger.policy import PolicyVersion, policy_changes, policy_text, previous_version
from ledger.settings import Settings
from ledger.tenant import Tenant


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    policies = sub.add_parser("policies", help="the tenant's policy versions").add_subparsers(
        dest="action", required=True
    )
    p = policies.add_parser("list", help="every version, as GET /v1/policies answers")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_policies_list)
    p = policies.add_parser("show", help="one version's purposes, bases, categories, retention")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--text", action="store_true", help="the full text people were shown, as published"
    )
    p.set_defaults(run=cmd_policies_show)
    p = policies.add_parser(
        "changes",
        help="what a version changes from the one before it, and which consents to ask again",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--tenant", required=True)
    p.add_argument("--from", dest="since", metavar="VERSION", help="instead of the one before")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_policies_changes)


def cmd_policies_list(args: argparse.Namespace, settings: Settings) -> int:
    tenant = _tenant(settings, args.tenant)
    if args.json:
        print_json({"policies": [p.as_dict() for p in tenant.policies.values()]})
        return 0
    for p in tenant.policies.values():
        say(
            f"{p.version:<20} effective {p.effective_at.isoformat():<26} {p.language:<3} "
            f"{len(p.purposes)} purposes  text sha256 {p.text_sha256}"
        )
    if not tenant.policies:
        say(f"tenant {args.tenant!r} has published no policy version")
    return 0


def cmd_policies_show(args: argparse.Namespace, settings: Settings) -> int:
    found = _version(_tenant(settings, args.tenant), args.version)
    if args.text:  # as GET /v1/policies/{version}/text; the text alone, byte for byte
        if args.json:
            print_json(policy_text(found))
        else:
            # UTF-8 bytes whatever the terminal's encoding: these are what the hash is of.
            sys.stdout.flush()
            sys.stdout.buffer.write(found.text.encode())
            sys.stdout.buffer.flush()
        return 0
    if args.json:
        print_json(found.as_dict())
        return 0
    say(
        f"policy {found.version} of {found.operator_name} (TIN {found.operator_tin}), "
        f"effective {found.effective_at.isoformat()}, language {found.language}"
    )
    say(f"  text sha256 {found.text_sha256}")
    if found.request_due_days:
        say(f"  answers requests within: {_deadlines(found.request_due_days)}")
    for name, terms in found.purposes.items():
        kept = (
            "as long as the purpose needs"
            if terms.retention_days is None
            else (f"{terms.retention_days} days")
        )
        say(f"  {name:<20} {terms.legal_basis:<17} {', '.join(terms.categories)}; kept {kept}")
    return 0


def cmd_policies_changes(args: argparse.Namespace, settings: Settings) -> int:
    """api.routes.compliance.policy_version_changes, from the command line."""
    tenant = _tenant(settings, args.tenant)
    new = _version(tenant, args.version)
    old = _version(tenant, args.since) if args.since else previous_version(tenant.policies, new)
    changes = policy_changes(old, new)
    if args.json:
        print_json(changes)
        return 0
    for line in changes_lines(changes):
        say(line)
    return 0


def changes_lines(changes: dict[str, Any]) -> list[str]:
    if changes["from"] is None:
        head = f"policy {changes['policy_version']} is the tenant's first: every purpose is new"
    else:
        head = f"policy {changes['policy_version']} against {changes['from']}"
    lines = [head]
    if changes["from"] is not None:
        same = [k[: -len("_changed")] for k in _SAME if not changes[k]]
        differ = [k[: -len("_changed")] for k in _SAME if changes[k]]
        if differ:
            lines.append(f"  changed: {', '.join(differ)}")
        if same:
            lines.append(f"  unchanged: {', '.join(same)}")
    for purpose in changes["purposes_added"]:
        lines.append(f"  + {purpose}")
    for purpose in changes["purposes_removed"]:
        lines.append(f"  - {purpose}")
    for c in changes["purposes_changed"]:
        parts = []
        if "legal_basis" in c:
            parts.append(f"basis {c['legal_basis']['from']} -> {c['legal_basis']['to']}")
        if "categories_added" in c:
            parts.append(f"categories + {', '.join(c['categories_added'])}")
        if "categories_removed" in c:
            parts.append(f"categories - {', '.join(c['categories_removed'])}")
        if "retention_days" in c:
            was, now = c["retention_days"]["from"], c["retention_days"]["to"]
            parts.append(f"retention {_days(was)} -> {_days(now)}")
        lines.append(f"  ~ {c['purpose']}: {'; '.join(parts)}")
    if changes["request_due_days"] is not None:
        was, now = changes["request_due_days"]["from"], changes["request_due_days"]["to"]
        lines.append(f"  request deadlines: {_deadlines(was)} -> {_deadlines(now)}")
    if changes["consent_needed"] and changes["from"] is None:
        # Nobody can hold consent under a version before the first: "ask again" of whom?
        lines.append("consent to ask for, none given before (the purposes on the consent basis):")
        for n in changes["consent_needed"]:
            lines.append(f"  {n['purpose']}")
    elif changes["consent_needed"]:
        lines.append("consent to ask again (who --purpose P --policy-version <the old one>):")
        for n in changes["consent_needed"]:
            lines.append(f"  {n['purpose']}: {', '.join(n['reasons'])}")
    else:
        lines.append("no consent given under the earlier version needs asking again")
    return lines


_SAME = ("text_changed", "operator_changed", "language_changed")


def _deadlines(days: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n} days" for kind, n in days.items()) or "none (the settings')"


def _days(days: int | None) -> str:
    return "unbounded" if days is None else f"{days} days"


def _tenant(settings: Settings, name: str) -> Tenant:
    ledger = open_ledger(settings)
    try:
        tenant = ledger.tenant(name)
    finally:
        ledger.close()
    if tenant is None:
        raise CliError("no such tenant", EXIT_NOT_FOUND)
    return tenant


def _version(tenant: Tenant, version: str) -> PolicyVersion:
    found = tenant.policies.get(version)
    if found is None:
        raise CliError(
            f"unknown_policy_version: tenant {tenant.name!r} published no version {version!r}",
            EXIT_NOT_FOUND,
        )
    return found
