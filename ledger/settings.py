"""The one settings object: every knob the service reads from the environment.

Kept in one place so the README's configuration table and the code cannot drift apart.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import failpoints
from ledger.vocabulary import REQUEST_KINDS

BACKENDS = ("embedded", "kafka")
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
HTTP_WRITERS = ("process", "thread")
SWITCHES = {"on": True, "off": False}


# The longest topic name Kafka takes, 249, less ".rejected".
_TOPIC_PREFIX_MAX = 249 - len(".rejected")
_TOPIC_PREFIX = re.compile(rf"[A-Za-z0-9._-]{{1,{_TOPIC_PREFIX_MAX}}}\Z")


# Every LEDGER_ variable the ledger reads: the settings below (the table of `Settings`, which
# a test holds to this), and the crash tests' failpoints (`ledger.failpoints`).
VARIABLES = (
    "LEDGER_DATA_DIR",
    "LEDGER_BACKEND",
    "LEDGER_MASTER_KEY",
    "LEDGER_NEW_MASTER_KEY",
    "LEDGER_ERASURE_JOURNAL",
    "LEDGER_TOPIC_PREFIX",
    "LEDGER_PARTITIONS",
    "LEDGER_REPLICATION",
    "LEDGER_MIN_INSYNC",
    "LEDGER_REJECTED_RETENTION_MS",
    "LEDGER_INTAKE_BATCH",
    "LEDGER_INTAKE_MAX_BYTES",
    "LEDGER_MAX_FUTURE_SKEW_S",
    "LEDGER_AGGREGATE_CACHE",
    "LEDGER_AGGREGATE_CACHE_FACTS",
    "LEDGER_VIEWS_CACHE_FACTS",
    "LEDGER_SQLITE_MEMORY_MIB",
    "LEDGER_REQUEST_DUE_DAYS",
    "LEDGER_REQUEST_DUE_DAYS_BY_KIND",
    "LEDGER_HTTP_WRITER",
    "LEDGER_API_KEY_RECHECK_MS",
    "LEDGER_HTTP_MAX_BODY_BYTES",
    "LEDGER_ACCESS_LOG_DAYS",
    "LEDGER_HTTP_TELEMETRY",
    "LEDGER_TLS_CERT",
    "LEDGER_TLS_KEY",
    "LEDGER_HTTP_CORS_ORIGINS",
    "LEDGER_FAILPOINT",
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A line for each LEDGER_ variable that the ledger does not read, with the setting it
    most resembles.

    A misspelt setting was ignored without a word: LEDGER_REQUEST_DUE_DAYS given without its
    final S, as 15, left subject requests due in 30 days while the operator believed 15,
    and the due list raised them a fortnight late. Only the name is said, never the value
    (a master key, a path).
    """
    lines = []
    for name in sorted(n for n in env if n.startswith("LEDGER_") and n not in VARIABLES):
        near = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.75)
        lines.append(
            f"{name} is not a setting of the ledger and is ignored"
            + (f" (did you mean {near[0]}?)" if near else "")
        )
    return lines


class SettingsError(ValueError):
    """A configuration value is unusable; the message names the variable, never a secret."""


def ensure_dir(path: Path) -> None:
    """Make the data directory (or another the ledger writes in) if it is missing, or say
    in one line why it cannot be: a path that names a file, or a place nothing can be made.
    """
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingsError(f"{path} cannot be made a directory: {e.strerror}") from None


@dataclass(frozen=True)
class Settings:
    """Configuration of one ledger process.

    | variable | default | meaning |
    | --- | --- | --- |
    | LEDGER_DATA_DIR | ./var | where the log, key store and master key file live |
    | LEDGER_BACKEND | embedded | `embedded` (SQLite log) or `kafka` |
    | LEDGER_MASTER_KEY | (file) | base64 of 32 bytes wrapping every data key; if unset, the key
      is read from (or created in) `$LEDGER_DATA_DIR/master.key` with mode 0600 |
    | LEDGER_NEW_MASTER_KEY | | `consent-ledger master-key rotate` only: the key to re-wrap the key
      store under (base64 of 32 bytes); required with LEDGER_MASTER_KEY, else a new random
      key replaces master.key |
    | LEDGER_ERASURE_JOURNAL | | a file, best on another disk than the data directory and
      never in its backups, where every erasure is also written (the `sid` and when its key
      was destroyed, sealed: no personal data); each time a ledger opens it destroys the key
      of every subject listed there, so a backup restored from before an erasure brings no
      erased person's data back (see the README's "Backups"); unset: no journal |
    | KAFKA_BOOTSTRAP | | Kafka bootstrap servers, `host:port[,host:port]` |
    | KAFKA_SECURITY_PROTOCOL | PLAINTEXT | how every Kafka client of the ledger reaches the
      brokers: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL` (TLS, then SASL) |
    | KAFKA_SSL_CAFILE | | with SSL or SASL_SSL: a PEM file of the CAs that sign the brokers'
      certificates (unset: the system's); the brokers' names are checked against them |
    | KAFKA_SSL_CERTFILE | | with SSL or SASL_SSL: the ledger's own certificate (PEM), for a
      cluster that authenticates clients by TLS; with KAFKA_SSL_KEYFILE |
    | KAFKA_SSL_KEYFILE | | that certificate's private key (PEM, not encrypted) |
    | KAFKA_SASL_MECHANISM | | with SASL_PLAINTEXT or SASL_SSL (required then): `PLAIN`,
      `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER` |
    | KAFKA_SASL_USERNAME | | with PLAIN or SCRAM (required then): the ledger's user |
    | KAFKA_SASL_PASSWORD | | its password (never printed) |
    | KAFKA_SASL_OAUTH_TOKEN_FILE | | with OAUTHBEARER (required then): a file holding the
      ledger's access token (a JWT from the cluster's identity provider), read again at every
      connection, so whatever renews it (a sidecar, a projected service-account token) only
      rewrites the file; never printed |
    | LEDGER_TOPIC_PREFIX | consent | topics `<prefix>.intake`, `.ledger`, `.rejected`; 1 to 240
      letters, digits, `.`, `_`, `-` (Kafka's topic names) |
    | LEDGER_PARTITIONS | 3 | partitions of the topics the ledger creates |
    | LEDGER_REPLICATION | 1 | replication factor of the topics it creates (3 in production) |
    | LEDGER_MIN_INSYNC | 1 | `min.insync.replicas` of the topics (2 in production); at most
      LEDGER_REPLICATION |
    | LEDGER_REJECTED_RETENTION_MS | 604800000 | rejected topic retention (original bytes) |
    | LEDGER_INTAKE_BATCH | 500 | intake records per writer transaction |
    | LEDGER_INTAKE_MAX_BYTES | 1048576 | larger intake records are rejected as oversize |
    | LEDGER_MAX_FUTURE_SKEW_S | 300 | how far `occurred_at` (or a correction's
      `changes.occurred_at`) may be ahead of the ledger's clock (at most 86400) |
    | LEDGER_AGGREGATE_CACHE | 10000 | subjects kept in memory between writes |
    | LEDGER_AGGREGATE_CACHE_FACTS | 2000000 | how many facts those subjects may hold in all
      (about 0.6 KiB each); past it, the subjects least recently written are read back from
      the log when next needed |
    | LEDGER_VIEWS_CACHE_FACTS | 1200000 | how many facts the consent views' subjects kept in
      memory between pages may hold in all, each subject counting as one more (0.7 to 1.0
      KiB each, `python -m bench memory`); past it, the subjects least recently written are
      read back from views.db when next needed |
    | LEDGER_SQLITE_MEMORY_MIB | 0 | a soft bound on the memory SQLite holds in each process
      that opens the ledger (its page caches, up to 64 MiB for each open connection, most of
      it): past it SQLite frees cached pages first, and reads them again from the file (the
      OS's page cache) when next needed; 0: no bound |
    | LEDGER_REQUEST_DUE_DAYS | 30 | deadline of a subject request that names no `due_at`, where
      the tenant's policy in force at its receipt gives its kind none (at most 3650) |
    | LEDGER_REQUEST_DUE_DAYS_BY_KIND | | the same for some kinds of request, as
      `kind=days,...` (for example `information=10,erasure=30`); other kinds keep
      LEDGER_REQUEST_DUE_DAYS |
    | LEDGER_HTTP_WRITER | process | where `serve` records published facts in embedded mode:
      `process` (a writer process of its own, see api.writer_process) or `thread` (a thread of
      the service's process); Kafka mode always uses a thread |
    | LEDGER_API_KEY_RECHECK_MS | 1000 | how long `serve` trusts an API key it found valid before
      reading it from the key table again, so a key revoked by `consent-ledger keys revoke` is
      refused within this long; 0 reads it on every request |
    | LEDGER_HTTP_MAX_BODY_BYTES | 16777216 | `serve`: a request body over this many bytes is
      refused with 413 `oversize` before any route reads it (a body sent without
      Content-Length is counted as it arrives); a single fact is further held to 1 MiB |
    | LEDGER_ACCESS_LOG_DAYS | 0 | `serve`: how many days the HTTP access log
      (`$LEDGER_DATA_DIR/access.db`, who read or erased which subject) keeps an access; older
      ones are deleted as the service starts and as it runs; 0 keeps them all (at most 36500) |
    | LEDGER_HTTP_TELEMETRY | off | `on`: FastAPI's native OpenTelemetry in `serve`, which traces
      and measures requests once the process has OpenTelemetry providers configured; `off`
      skips its checks on every request (the service's own metrics are at /metrics) |
    | LEDGER_TLS_CERT | | `serve` (and `worker --metrics-port`): a PEM file of the service's
      certificate (and the chain to its CA after it): the service answers HTTPS only; with
      LEDGER_TLS_KEY; unset: plain HTTP, for loopback or behind a proxy that terminates TLS |
    | LEDGER_TLS_KEY | | `serve`: the PEM file of that certificate's private key, not
      encrypted (keep it 0600); with LEDGER_TLS_CERT |
    | LEDGER_HTTP_CORS_ORIGINS | | `serve`: the web origins (`https://host[:port]`, comma-separated)
      whose pages may call the API from a browser (CORS); unset: none, only the service's own
      pages (/docs) |
    """

    data_dir: Path
    backend: str = "embedded"
    # Secrets: never in a repr (an exception, a test's failure output).
    master_key: str | None = field(default=None, repr=False)
    new_master_key: str | None = field(default=None, repr=False)
    kafka_bootstrap: str | None = None
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_sasl_oauth_token_file: Path | None = None
    topic_prefix: str = "consent"
    max_future_skew_s: int = 300
    aggregate_cache: int = 10000
    aggregate_cache_facts: int = 2_000_000
    views_cache_facts: int = 1_200_000
    sqlite_memory_mib: int = 0
    request_due_days: int = 30
    # (kind, days) pairs, a tuple so that the settings stay hashable.
    request_due_days_by_kind: tuple[tuple[str, int], ...] = ()
    partitions: int = 3
    replication: int = 1
    min_insync: int = 1
    rejected_retention_ms: int = 7 * 24 * 3600 * 1000
    intake_batch: int = 500
    intake_max_bytes: int = 1024 * 1024
    http_writer: str = "process"
    api_key_recheck_ms: int = 1000
    http_telemetry: bool = False
    http_max_body: int = 16 * 1024 * 1024
    access_log_days: int = 0
    erasure_journal: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http_cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        backend = env.get("LEDGER_BACKEND", "embedded").strip() or "embedded"
        if backend not in BACKENDS:
            raise SettingsError(
                f"LEDGER_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}"
            )
        http_writer = env.get("LEDGER_HTTP_WRITER", "process").strip() or "process"
        if http_writer not in HTTP_WRITERS:
            raise SettingsError(
                f"LEDGER_HTTP_WRITER must be one of {', '.join(HTTP_WRITERS)}, not {http_writer!r}"
            )
        replication = max(1, _int(env, "LEDGER_REPLICATION", 1))
        min_insync = max(1, _int(env, "LEDGER_MIN_INSYNC", 1))
        if backend == "kafka" and min_insync > replication:
            # Kafka caps min.insync.replicas at the replica count (since 3.7): the topics
            # would be made, and every fact acknowledged with fewer copies than asked.
            raise SettingsError(
                f"LEDGER_MIN_INSYNC ({min_insync}) must not exceed LEDGER_REPLICATION "
                f"({replication}): Kafka would acknowledge a write once {replication} "
                "replica(s) hold it"
            )
        topic_prefix = env.get("LEDGER_TOPIC_PREFIX", "consent") or "consent"
        if backend == "kafka" and not _TOPIC_PREFIX.match(topic_prefix):
            # Kafka's own rule for a topic name (letters, digits, '.', '_', '-'; at most 249),
            # with room for ".rejected". A broker refuses such a topic; the client then waited
            # for it to appear and said no broker had answered.
            raise SettingsError(
                f"LEDGER_TOPIC_PREFIX must be 1 to {_TOPIC_PREFIX_MAX} letters, digits, '.', "
                "'_' or '-' (Kafka's topic names), not "
                + (repr(topic_prefix) if len(topic_prefix) <= 64 else "that")
            )
        tls_cert, tls_key = env.get("LEDGER_TLS_CERT") or None, env.get("LEDGER_TLS_KEY") or None
        if (tls_cert is None) != (tls_key is None):
            # One without the other would serve plain HTTP where HTTPS was meant.
            raise SettingsError(
                "LEDGER_TLS_CERT and LEDGER_TLS_KEY go together: set both or neither"
            )
        kafka_security = _kafka_security(env)
        if failpoint := env.get("LEDGER_FAILPOINT", "").strip():
            try:
                failpoints.parse(failpoint)
            except ValueError as error:
                raise SettingsError(str(error)) from None
        telemetry = env.get("LEDGER_HTTP_TELEMETRY", "off").strip().lower() or "off"
        if telemetry not in SWITCHES:
            raise SettingsError(f"LEDGER_HTTP_TELEMETRY must be on or off, not {telemetry!r}")
        return cls(
            data_dir=Path(env.get("LEDGER_DATA_DIR", "./var") or "./var"),
            backend=backend,
            master_key=env.get("LEDGER_MASTER_KEY") or None,
            new_master_key=env.get("LEDGER_NEW_MASTER_KEY") or None,
            kafka_bootstrap=_bootstrap(env) if backend == "kafka" else env.get("KAFKA_BOOTSTRAP"),
            **kafka_security,
            topic_prefix=topic_prefix,
            max_future_skew_s=_int(env, "LEDGER_MAX_FUTURE_SKEW_S", 300, maximum=86_400),
            aggregate_cache=_int(env, "LEDGER_AGGREGATE_CACHE", 10000),
            aggregate_cache_facts=_int(env, "LEDGER_AGGREGATE_CACHE_FACTS", 2_000_000),
            views_cache_facts=_int(env, "LEDGER_VIEWS_CACHE_FACTS", 1_200_000),
            sqlite_memory_mib=_int(env, "LEDGER_SQLITE_MEMORY_MIB", 0, maximum=1 << 20),
            request_due_days=_int(env, "LEDGER_REQUEST_DUE_DAYS", 30, maximum=3650),
            request_due_days_by_kind=_days_by_kind(env, "LEDGER_REQUEST_DUE_DAYS_BY_KIND"),
            partitions=max(1, _int(env, "LEDGER_PARTITIONS", 3)),
            replication=replication,
            min_insync=min_insync,
            rejected_retention_ms=_int(env, "LEDGER_REJECTED_RETENTION_MS", 7 * 24 * 3600 * 1000),
            intake_batch=max(1, _int(env, "LEDGER_INTAKE_BATCH", 500)),
            intake_max_bytes=max(1, _int(env, "LEDGER_INTAKE_MAX_BYTES", 1024 * 1024)),
            http_writer=http_writer,
            api_key_recheck_ms=max(0, _int(env, "LEDGER_API_KEY_RECHECK_MS", 1000)),
            http_telemetry=SWITCHES[telemetry],
            http_max_body=max(1, _int(env, "LEDGER_HTTP_MAX_BODY_BYTES", 16 * 1024 * 1024)),
            access_log_days=_int(env, "LEDGER_ACCESS_LOG_DAYS", 0, maximum=36_500),
            erasure_journal=Path(journal)
            if (journal := env.get("LEDGER_ERASURE_JOURNAL"))
            else None,
            tls_cert=None if tls_cert is None else Path(tls_cert),
            tls_key=None if tls_key is None else Path(tls_key),
            http_cors_origins=_origins(env, "LEDGER_HTTP_CORS_ORIGINS"),
        )

    def bootstrap(self) -> str:
        """KAFKA_BOOTSTRAP, required in Kafka mode."""
        if not self.kafka_bootstrap:
            raise SettingsError("LEDGER_BACKEND=kafka needs KAFKA_BOOTSTRAP (host:port)")
        return self.kafka_bootstrap

    @property
    def log_path(self) -> Path:
        """The SQLite log (embedded), or the writer's replica of the ledger topic (Kafka)."""
        return self.data_dir / ("ledger.db" if self.backend == "embedded" else "ledger-replica.db")

    @property
    def views_path(self) -> Path:
        return self.data_dir / "views.db"

    @property
    def keystore_path(self) -> Path:
        return self.data_dir / "keys.db"

    @property
    def master_key_path(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def access_log_path(self) -> Path:
        """Who read or erased which subject's data over HTTP (sids and key ids only)."""
        return self.data_dir / "access.db"

    @property
    def refusals_path(self) -> Path:
        """Kafka mode: the rejected topic's refusals as far as the HTTP service read them
        (ledger.kafka.refusal_index), a cache of the topic."""
        return self.data_dir / "refusals.db"

    @property
    def api_keys_path(self) -> Path:
        """The HTTP service's API keys (hashes only)."""
        return self.data_dir / "api_keys.db"


def _bootstrap(env: Mapping[str, str]) -> str | None:
    """KAFKA_BOOTSTRAP, each address in a form kafka-python takes (`host:port`, `host` for
    port 9092, `[v6]:port`, `[v6]`, a bare IPv6 address), or one line saying which is not.

    Unchecked, a port that was not a number, a host name no resolver can be asked (an empty
    label, one past 63 characters, bytes that are not text) or an unclosed bracket failed
    deep in the client, an internal error (exit 70); an empty address (`a:9092,`) or host
    (`:9092`) was waited on for 10 s and reported as no broker answering.
    """
    bootstrap = env.get("KAFKA_BOOTSTRAP") or None
    if bootstrap is None:
        return None
    for entry in (e.strip() for e in bootstrap.split(",")):
        problem = _address_problem(entry)
        if problem is not None:
            raise SettingsError(
                f"KAFKA_BOOTSTRAP takes host:port addresses, comma-separated ([v6]:port for "
                f"an IPv6 address): {problem} in {entry!r}"
            )
    return bootstrap


def _address_problem(entry: str) -> str | None:
    if not entry:
        return "an empty address"
    port = "9092"
    if entry.startswith("["):
        host, closed, rest = entry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return "a bracket not closed before the port"
        port = rest[1:] if rest else port
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "no IPv6 address in brackets"
    elif entry.count(":") > 1:
        try:
            ipaddress.IPv6Address(entry)
        except ValueError:
            return "an IPv6 address with a port must be in brackets: [v6]:port"
        return None
    else:
        host, _, given = entry.partition(":")
        port = given if ":" in entry else port
        if not host:
            return "no host"
        try:
            host.encode("idna")
        except UnicodeError:
            return "a host name no resolver takes (an empty label, one past 63 bytes, not text)"
        if any(c.isspace() for c in host):
            return "a host name with a space"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "a port that is not a number from 1 to 65535"
    return None


def _kafka_security(env: Mapping[str, str]) -> dict[str, Any]:
    """How the Kafka clients reach the brokers. A setting that the protocol does not use
    is refused, not ignored: a CA file given with PLAINTEXT meant TLS, and the ledger would
    have sent its facts in the clear."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").strip().upper() or "PLAINTEXT"
    if protocol not in KAFKA_PROTOCOLS:
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_PROTOCOLS)}, not "
            + (repr(protocol) if len(protocol) <= 32 else "that")
        )
    given = {name: env.get(name) or None for name in _KAFKA_TLS + _KAFKA_SASL}
    tls, sasl = protocol in ("SSL", "SASL_SSL"), protocol.startswith("SASL_")
    for name in (_KAFKA_TLS if not tls else ()) + (_KAFKA_SASL if not sasl else ()):
        if given[name] is not None:
            raise SettingsError(f"{name} is not used with KAFKA_SECURITY_PROTOCOL={protocol}")
    if (given["KAFKA_SSL_CERTFILE"] is None) != (given["KAFKA_SSL_KEYFILE"] is None):
        raise SettingsError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
    mechanism = (given["KAFKA_SASL_MECHANISM"] or "").strip().upper() or None
    if sasl:
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM, one of "
                + ", ".join(KAFKA_SASL_MECHANISMS)
            )
        oauth = mechanism == "OAUTHBEARER"
        needed = ["KAFKA_SASL_OAUTH_TOKEN_FILE"] if oauth else [_KAFKA_SASL[1], _KAFKA_SASL[2]]
        for name in needed:
            if given[name] is None:
                raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {name}")
        for name in _KAFKA_SASL[1:]:
            if name not in needed and given[name] is not None:
                raise SettingsError(f"{name} is not used with KAFKA_SASL_MECHANISM={mechanism}")

    def path(name: str) -> Path | None:
        value = given[name]
        return None if value is None else Path(value)

    return {
        "kafka_security_protocol": protocol,
        "kafka_ssl_cafile": path("KAFKA_SSL_CAFILE"),
        "kafka_ssl_certfile": path("KAFKA_SSL_CERTFILE"),
        "kafka_ssl_keyfile": path("KAFKA_SSL_KEYFILE"),
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": given["KAFKA_SASL_USERNAME"],
        "kafka_sasl_password": given["KAFKA_SASL_PASSWORD"],
        "kafka_sasl_oauth_token_file": path("KAFKA_SASL_OAUTH_TOKEN_FILE"),
    }


_ORIGIN = re.compile(
    r"https?://[a-z0-9.\-]+(?::[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](?::[0-9]{1,5})?"
)


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Web origins as a browser sends them (`Origin`): scheme, host and port, nothing else.
    `*` is refused: which pages may hold a key to this ledger is named, not everyone."""
    raw = env.get(name) or ""
    origins = tuple(o.strip().lower().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise SettingsError(
                f"{name} takes origins as scheme://host[:port], comma-separated, not "
                + (repr(origin) if len(origin) <= 80 else "that")
            )
    return origins


_KAFKA_TLS = ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")
_KAFKA_SASL = (
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_OAUTH_TOKEN_FILE",
)


def _int(env: Mapping[str, str], name: str, default: int, maximum: int | None = None) -> int:
    """A whole-number setting; `maximum` where a larger one would carry a time past the
    calendar's end (OverflowError on every write or query instead of a refused start)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}")
    return value


def _days_by_kind(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    """`kind=days,...`: each a kind of subject request, each days a whole number to 3650."""
    found: dict[str, int] = {}
    for part in (env.get(name) or "").split(","):
        if not part.strip():
            continue
        kind, sep, days = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in REQUEST_KINDS or not days.strip():
            raise SettingsError(
                f"{name} is kind=days,... with kinds among {', '.join(sorted(REQUEST_KINDS))}"
            )
        found[kind] = _int({name: days}, name, 0, maximum=3650)
    return tuple(sorted(found.items()))
