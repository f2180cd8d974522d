"""Running a deployment: `tenants`, `keys`, `backup`, `master-key`, `kafka-acls`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from ledger.cli.common import (
    EXIT_BROKEN,
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    current_views,
    fail,
    open_ledger,
    print_json,
    say,
    whole,
)
from ledger.cli.erasure import erase_each, key_store_held
from ledger.errors import FactRejected
from ledger.kafka.acls import (
    kafka_acls_commands,
    principal_error,
    publisher_grants,
    writer_grants,
)
from ledger.settings import Settings
from ledger.vocabulary import ERASURE_GROUNDS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser(
        "backup", help="consistent copies of the data directory's databases (not the master key)"
    )
    p.add_argument("--into", required=True, metavar="DIR", help="a new or empty directory")
    p.set_defaults(run=cmd_backup)

    p = sub.add_parser(
        "restore",
        help="a backup put back as LEDGER_DATA_DIR (missing or empty), opened and verified first",
    )
    p.add_argument("backup", metavar="DIR", help="a directory `backup --into` made")
    p.add_argument(
        "--master-key",
        metavar="FILE",
        help="the copy of master.key kept apart from backups (unless LEDGER_MASTER_KEY is set)",
    )
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("master-key", help="the master key that wraps the key store")
    master = p.add_subparsers(dest="master_command", required=True)
    q = master.add_parser(
        "rotate",
        help="re-wrap the key store under a new master key (stop the service first); the new "
        "key: master.key's successor, or LEDGER_NEW_MASTER_KEY",
    )
    q.set_defaults(run=cmd_master_key_rotate)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create a key; it is printed once")
    p.add_argument("--tenant", required=True)
    p.add_argument(
        "--role", action="append", required=True, choices=["publisher", "compliance", "admin"]
    )
    p.add_argument(
        "--expires-in-days",
        type=whole(1, 36_500),
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

    p = sub.add_parser(
        "kafka-acls",
        help="the Kafka ACLs a principal needs on a cluster with an authorizer, as "
        "kafka-acls.sh commands (topics of LEDGER_TOPIC_PREFIX)",
    )
    p.add_argument(
        "--principal",
        required=True,
        metavar="TYPE:NAME",
        help="as the cluster names it: User:<SASL user>, or User:<the client certificate's "
        "distinguished name>",
    )
    p.add_argument(
        "--publisher",
        action="store_true",
        help="a service publishing facts to the intake topic with a client of its own",
    )
    p.add_argument(
        "--topics-made",
        action="store_true",
        help="the operator made the three topics: the ledger needs no ACL Create",
    )
    change = p.add_mutually_exclusive_group()
    change.add_argument(
        "--apply",
        action="store_true",
        help="create them on the cluster (Kafka mode) with the ledger's own principal, "
        "where it may (Alter on the cluster), and wait until the cluster describes them",
    )
    change.add_argument(
        "--revoke",
        action="store_true",
        help="delete them from the cluster, as --apply creates them (a publishing service "
        "cut off: its other ACLs stay)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_kafka_acls)

    p = sub.add_parser(
        "kafka-topics",
        help="the three topics as the ledger would create them, as kafka-topics.sh commands, "
        "for an operator who makes them (LEDGER_TOPIC_PREFIX, _PARTITIONS, _REPLICATION, ...)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_kafka_topics)

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    p = tenants.add_parser("create")
    p.add_argument("tenant", metavar="T")
    p.set_defaults(run=cmd_tenants_create)
    p = tenants.add_parser("list", help="every tenant, in the order created, with its policies")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_tenants_list)
    p = tenants.add_parser(
        "export", help="every subject's audit trail as JSON Lines (personal data included)"
    )
    p.add_argument("tenant", metavar="T")
    p.add_argument("--out", metavar="FILE", help="a new file (mode 0600; default stdout)")
    p.set_defaults(run=cmd_tenants_export)
    p = tenants.add_parser("erase-subjects", help="erase every subject of a tenant")
    p.add_argument("tenant", metavar="T")
    p.add_argument("--ground", required=True, choices=sorted(ERASURE_GROUNDS))
    p.add_argument("--confirm", required=True, metavar="T", help="the tenant's name again")
    p.set_defaults(run=cmd_tenants_erase_subjects)


def cmd_kafka_acls(args: argparse.Namespace, settings: Settings) -> int:
    """Printed from the lists the tests grant (`ledger.kafka.acls`), asking no broker; or,
    with --apply (--revoke), created on (deleted from) the cluster as listed."""
    wrong = principal_error(args.principal)
    if wrong is not None:
        return fail(f"kafka-acls: {wrong}", EXIT_USAGE)
    if args.publisher and args.topics_made:
        return fail(
            "kafka-acls: --topics-made is of the ledger's principal, not --publisher's", EXIT_USAGE
        )
    prefix = settings.topic_prefix
    if args.publisher:
        grants = publisher_grants(prefix)
    else:
        grants = writer_grants(prefix, create_topics=not args.topics_made)
    change = "apply" if args.apply else "revoke" if args.revoke else None
    if change is not None:
        if settings.backend != "kafka":
            return fail(
                f"kafka-acls: --{change} changes them on the cluster: it needs "
                "LEDGER_BACKEND=kafka and KAFKA_BOOTSTRAP",
                EXIT_USAGE,
            )
        from ledger.kafka.granting import GrantsRefused, NoAuthorizer, apply_grants, revoke_grants

        try:
            (apply_grants if args.apply else revoke_grants)(settings, args.principal, grants)
        except NoAuthorizer as error:  # nothing a retry mends: the cluster's configuration
            return fail(f"kafka-acls: {error}", EXIT_USAGE)
        except GrantsRefused as error:
            return fail(f"kafka-acls: {error}", EXIT_UNAVAILABLE)
    if args.json:
        answer: dict[str, object] = {
            "principal": args.principal,
            "grants": [g.as_json() for g in grants],
        }
        if change is not None:
            answer["applied" if args.apply else "revoked"] = True
        print_json(answer)
        return 0
    if change is not None:
        said = "granted" if args.apply else "revoked"
        for grant in grants:
            pattern = " (prefixed)" if grant.prefixed else ""
            where = (
                grant.resource if grant.resource == "cluster" else f"{grant.resource} {grant.name}"
            )
            say(f"{said} {args.principal}: {', '.join(grant.operations)} on {where}{pattern}")
        return 0
    bootstrap = settings.kafka_bootstrap or "BROKER:9092"
    for grant, command in zip(
        grants, kafka_acls_commands(args.principal, grants, bootstrap), strict=True
    ):
        say(f"# {grant.why}")
        say(command)
    return 0


def cmd_kafka_topics(args: argparse.Namespace, settings: Settings) -> int:
    """The specs `ensure_topics` creates with, which its checks accept; asks no broker."""
    from ledger.kafka.topics import topic_specs

    specs = topic_specs(settings)
    if args.json:
        print_json(
            {
                "topics": [
                    {
                        "name": name,
                        "partitions": spec["num_partitions"],
                        "replication_factor": spec["replication_factor"],
                        "configs": spec["configs"],
                    }
                    for name, spec in specs.items()
                ]
            }
        )
        return 0
    bootstrap = settings.kafka_bootstrap or "BROKER:9092"
    for name, spec in specs.items():
        words = ["kafka-topics.sh", "--bootstrap-server", bootstrap, "--create", "--topic", name]
        words += ["--partitions", str(spec["num_partitions"])]
        words += ["--replication-factor", str(spec["replication_factor"])]
        for key, value in spec["configs"].items():
            words += ["--config", f"{key}={value}"]
        say(shlex.join(words))
    return 0


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings)
    try:
        ledger.create_tenant(args.tenant)
    finally:
        ledger.close()
    say(f"created tenant {args.tenant!r}")
    return 0


def cmd_tenants_list(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings)
    try:
        listed = []
        for name in ledger.tenant_names():
            tenant = ledger.tenant(name, shared=True)
            versions = list(tenant.policies) if tenant else []
            listed.append({"tenant": name, "policy_versions": versions})
    finally:
        ledger.close()
    if args.json:
        print_json({"tenants": listed})
        return 0
    for t in listed:
        say(f"{t['tenant']:<24} policies: {', '.join(t['policy_versions']) or 'none yet'}")
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
        with current_views(settings, args.tenant) as (ledger, views, _):
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
        if out is not None:
            out.close()  # its last writes happen here: a full disk fails here too
    except BaseException:
        if out is not None:  # no partial export left behind to be taken for a whole one
            with contextlib.suppress(OSError):
                out.close()
            os.unlink(args.out)
        raise
    where = f"; written to {args.out}" if out is not None else ""
    say(
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
    with current_views(settings, args.tenant) as (ledger, views, _):
        sids = [
            row[0]
            for row in views.store.rows(
                "SELECT sid FROM view_subjects WHERE tenant=? AND erasure_recorded_at IS NULL "
                "ORDER BY sid",
                (args.tenant,),
                tuples=True,
            )
        ]
        outcomes, busy = erase_each(ledger, args.tenant, sids, args.ground, "tenant-erasure-")
    refused = [
        (sid, o) for sid, o in zip(sids, outcomes, strict=True) if isinstance(o, FactRejected)
    ]
    say(
        f"erased {len(sids) - len(refused)} subjects of tenant {args.tenant!r} "
        f"(ground {args.ground}): data keys destroyed"
    )
    for sid, o in refused:
        say(f"  not erased: sid {sid}: {o.code.value}: {o}")
    return key_store_held(busy) or (EXIT_REJECTED if refused else 0)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    """Copies files, and opens the key store only to sign the manifest (no log, no broker):
    safe while the service runs."""
    from pathlib import Path

    from ledger.backup import back_up

    into = Path(args.into)
    for copied in back_up(settings, into):
        say(f"{copied.name:<16} {copied.bytes:>14,} bytes")
    if settings.backend == "kafka":
        say("Kafka mode: the log is the ledger topic; the replica and views are rebuilt from it")
    if not settings.master_key:
        say(f"not copied: {settings.master_key_path.name}; keep a copy of it apart from backups")
    if settings.backend == "embedded":
        say(_journal_advice(settings))
    say(f"backup in {into}: put it back with `consent-ledger restore {into}`")
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ledger.restore import BackupBroken, ManifestMismatch, ViewsNotOfItsLog, restore

    master_key = Path(args.master_key) if args.master_key else None
    try:
        restored = restore(settings, Path(args.backup), master_key)
    except BackupBroken as broken:
        return fail(f"restore: {broken}; nothing restored", EXIT_BROKEN)
    except ManifestMismatch as mismatch:
        return fail(
            f"restore: the backup is not as it was made: {mismatch}; nothing restored",
            EXIT_BROKEN,
        )
    except ViewsNotOfItsLog as views:
        return fail(f"restore: the backup is not whole: {views}; nothing restored", EXIT_BROKEN)
    for copied in restored.copied:
        say(f"{copied.name:<16} {copied.bytes:>14,} bytes")
    if master_key is not None:
        say(f"master.key       from {master_key}")
    if restored.manifest_made_at is not None:
        say(f"manifest: every file as the backup of {restored.manifest_made_at} wrote it, signed")
    else:
        say("no manifest.json (a backup made before manifests): its files are taken as they are")
    if restored.verified is not None:
        v = restored.verified
        say(f"verify: OK, {v.facts_checked} facts, merkle root {v.root}")
    else:
        say(
            "Kafka mode: the replica and views are rebuilt from the ledger topic when a "
            "ledger next opens"
        )
    if settings.erasure_journal is not None:
        say(
            f"erasure journal: {restored.erasures_from_journal} keys of subjects erased after "
            "this backup destroyed again"
        )
    if restored.erasures_not_in_log:
        say(
            f"restore: warning: the log lacks {restored.erasures_not_in_log} erasures the key "
            "store holds: `consent-ledger verify` names them, to record each again",
            file=sys.stderr,
        )
    if restored.subjects_without_key:
        say(
            f"restore: warning: {restored.subjects_without_key} subjects have neither a key "
            "nor an erasure in the key store: their personal data cannot be read",
            file=sys.stderr,
        )
    active = _active_api_keys(settings)
    if active:
        say(
            f"API keys: {active} active as at the backup: any revoked since are valid again; "
            "`consent-ledger keys list` shows them, `keys revoke` revokes one"
        )
    say(f"restored into {settings.data_dir}")
    return 0


def _active_api_keys(settings: Settings) -> int:
    """The API keys the restored directory accepts (neither revoked nor expired): the ones
    an operator must check, since a revocation made after the backup is undone."""
    if not settings.api_keys_path.exists():
        return 0
    from api.keys import ApiKeys

    now = datetime.now(UTC)
    keys = ApiKeys(settings.api_keys_path)
    try:
        listed = keys.list()
    finally:
        keys.close()
    return sum(
        1
        for key in listed
        if key["revoked_at"] is None
        and (key["expires_at"] is None or datetime.fromisoformat(key["expires_at"]) > now)
    )


def _journal_advice(settings: Settings) -> str:
    """What a restore of this backup will do with the erasures made after it: said at the
    moment a backup is made, when an operator can still set the journal that keeps them."""
    journal = settings.erasure_journal
    if journal is None:
        return (
            "erasures made after this backup are forgotten by a restore of it: set "
            "LEDGER_ERASURE_JOURNAL to a file on another disk to keep them"
        )
    if journal.resolve().is_relative_to(settings.data_dir.resolve()):
        return (
            f"the erasure journal {journal} is in the data directory: a restore that "
            "replaces the directory loses it and the erasures made after this backup; "
            "keep it on another disk"
        )
    return (
        f"not copied: the erasure journal {journal}; a restore of this backup reads it "
        "to destroy the keys of people erased after it"
    )


def cmd_master_key_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Only the key store is opened (no log, no broker): rotation touches nothing else."""
    from ledger.rotation import NEW_KEY_ENV, rotate_master_key

    done = rotate_master_key(settings)
    if done.already:
        say(f"the key store was already under the new master key ({settings.keystore_path})")
    else:
        say(
            f"re-wrapped {done.data_keys:,} data keys and the ledger's own keys under the new "
            "master key"
        )
    if done.key_file is not None:
        say(f"the new master key is in {done.key_file}; the old one is gone from it")
    else:
        say(
            f"now give every process of this deployment LEDGER_MASTER_KEY={NEW_KEY_ENV}'s "
            "value and restart them; processes still on the old key refuse to write"
        )
    return 0


def _tenant_exists(settings: Settings, name: str) -> None:
    """Keys live apart from the log: whether their tenant exists is the log's to say."""
    ledger = open_ledger(settings)
    try:
        if ledger.tenant(name) is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
    finally:
        ledger.close()


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import keys_path
    from api.keys import ApiKeys, KeyError_

    _tenant_exists(settings, args.tenant)
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
    say(f"key id {key_id} (tenant {args.tenant}; {', '.join(sorted(set(args.role)))}{until})")
    say(key)
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
    say(f"revoked key {args.key_id}")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import keys_path
    from api.keys import ApiKeys

    if args.tenant is not None:
        # A misspelt tenant listed no keys, which reads as "this tenant has none".
        _tenant_exists(settings, args.tenant)
    keys = ApiKeys(keys_path(settings))
    try:
        listed = keys.list(args.tenant)
    finally:
        keys.close()
    if args.json:
        print_json(listed)
    else:
        if not listed:
            say("no API keys" + (f" of tenant {args.tenant!r}" if args.tenant else ""))
        for k in listed:
            say(
                f"{k['key_id']}  {k['tenant']:<16} {k['roles']:<30} created {k['created_at']}"
                + (f"  revoked {k['revoked_at']}" if k["revoked_at"] else "")
                + (f"  expires {k['expires_at']}" if k["expires_at"] else "")
            )
    return 0
