"""The long-running processes: `serve` (HTTP) and `worker` (Kafka mode)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ledger.bug_report import SaysNoData
from ledger.cli.common import (
    EXIT_BUG,
    EXIT_FENCED,
    EXIT_UNAVAILABLE,
    CliError,
    demo_subjects,
    fail,
    open_ledger,
    say,
    seconds,
    whole,
)
from ledger.cli.failures import bug, said
from ledger.cli.records import cmd_demo
from ledger.cli.stopping import stopped_by_signals, stopping_signals
from ledger.settings import Settings, SettingsError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser's subcommands."""
    p = sub.add_parser("worker", help="Kafka mode: the intake writer and the projections")
    p.add_argument("--no-projections", action="store_true", help="run only the intake writer")
    p.add_argument("--interval", type=seconds, default=0.5, help="projection poll when idle (s)")
    p.add_argument(
        "--metrics-port",
        type=whole(0, 65_535),
        help="serve /metrics (Prometheus) and /healthz on this port (0: any free one)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="the address to serve them on")
    p.set_defaults(run=cmd_worker, until_stopped=True)

    p = sub.add_parser("serve", help="the HTTP service (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=whole(0, 65_535), default=8000, help="0: any free port")
    p.add_argument("--demo", action="store_true", help="load the demo and print a key first")
    p.add_argument(
        "--subjects", type=demo_subjects, default=300, help="at least 8, at most 100,000"
    )
    p.set_defaults(run=cmd_serve, until_stopped=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app, keys_path
    from api.http_protocol import ProblemHttpToolsProtocol
    from api.keys import ApiKeys
    from ledger.keystore import KeyStore, load_master_key

    # What would stop the service as it starts (a data directory that is a file, a master
    # key that does not open the key store, a certificate that is not one), said in one
    # line with exit 2 rather than in the traceback of a failed startup that uvicorn prints
    # before exiting 3.
    tls_checked(settings)
    KeyStore(settings.keystore_path, load_master_key(settings)).close()
    if settings.backend == "kafka":
        with stopped_by_signals() as stop:
            if not wait_for_brokers(settings, stop, "serve"):
                say("serve: stopped before a Kafka broker answered", flush=True)
                return 0
    # What the log refuses (a key store that is not the log's; Kafka mode: a topic that lost
    # records or gained partitions, found as the replica catches up) is said here too, not
    # in uvicorn's traceback; the service's own catch-up then starts where this one ended.
    ledger = open_ledger(settings)
    try:
        if settings.views_path.exists():
            from projections.views import Views

            views = Views(ledger)
            try:
                views.check()  # views of another log (a hand restore), as the worker's
            finally:
                views.close()
        # A log restored alone from before erasures: the service runs (the data is
        # destroyed all the same), but the operator is told the facts are to be recorded.
        lost = len(ledger.erasures_not_in_log())
        if lost:
            say(
                f"serve: warning: {lost} subjects were erased in the key store but the log "
                "holds no erasure of them (a ledger.db restored from before the erasures?): "
                "`consent-ledger verify` names them, to record each again",
                file=sys.stderr,
                flush=True,
            )
    finally:
        ledger.close()
    # The address is taken before the demo is loaded and a key made: a port in use ended
    # in uvicorn's own error and exit 3, this CLI's "no such subject", after both.
    listening = listening_socket(args.host, args.port)
    port = listening.getsockname()[1]  # the one taken, for --port 0 too
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"{'https' if settings.tls_cert else 'http'}://{host}:{port}"
    if settings.tls_cert is None and not loopback(listening):
        say(
            f"serve: warning: plain HTTP on {args.host}: API keys and personal data cross the "
            "network in the clear unless a proxy in front terminates TLS (or set "
            "LEDGER_TLS_CERT and LEDGER_TLS_KEY)",
            file=sys.stderr,
            flush=True,
        )
    # curl trusts the service's own certificate file (as a partial chain: a self-signed
    # certificate, or one a CA issued with its chain after it).
    curl = f"curl -s --cacert {settings.tls_cert}" if settings.tls_cert else "curl -s"
    if args.demo:
        cmd_demo(argparse.Namespace(subjects=args.subjects), settings)
        keys = ApiKeys(keys_path(settings))
        try:
            _, key = keys.create("demo", {"publisher", "compliance", "admin"})
        finally:
            keys.close()
        banner = f"""
serving the demo tenant on {base}  (OpenAPI: {base}/docs)
API key (demo tenant; publisher, compliance, admin): {key}

record a grant:
  {curl} -X POST {base}/v1/facts -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' -d '{{"event_id": "curl-1", "type": "consent.granted",
    "subject": "curl-contact-1", "occurred_at": "2025-06-01T10:00:00+05:00", "source": "curl",
    "policy_version": "crmpro-1.0", "purposes": ["marketing"]}}'
read it back (the sid is in the receipt):
  {curl} {base}/v1/subjects/SID/consents -H 'Authorization: Bearer {key}'
"""
    else:
        banner = ""
    from api.logs import configure

    configure()
    stopping = threading.Event()
    captured: list[int] = []  # the stopping signals received, in order

    class Server(uvicorn.Server):
        """uvicorn's server, telling the service when a signal asks it to stop: uvicorn
        then waits for the requests in flight, and a question whose views were waiting for
        a Kafka broker that is away held the shutdown for the broker's 30 s timeout."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stopping.set()
            if sig not in captured:
                captured.append(sig)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """uvicorn's, with SIGHUP among the signals that stop the server cleanly
            (`stopping_signals`); like uvicorn, each signal that stopped it is raised again
            once it has stopped, with the handler it had before, so the process ends by it
            (-15 for SIGTERM, -1 for SIGHUP) as it always did. The log says it stopped,
            and by which signal, once its requests in flight are answered and its writer
            stopped: the signal's status alone does not tell a clean stop from a kill."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            before = {sig: signal.signal(sig, self.handle_exit) for sig in stopping_signals()}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)
            if captured:
                names = [signal.Signals(sig).name for sig in captured]
                logging.getLogger("consent_ledger.api").info("stopped", extra={"by": names})
            for received in reversed(captured):
                signal.raise_signal(received)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # Said once the service answers, for whoever waits on it (uvicorn's own line is
            # below the log level); the demo's banner too: printed before, the curl it
            # showed was refused while the application was still starting.
            await super().startup(sockets)
            if self.started:
                logging.getLogger("consent_ledger.api").info("listening", extra={"url": base})
                for line in banner.splitlines():  # say() keeps each line one line
                    say(line, flush=True)

    app = create_app(settings, stopping=stopping.is_set)
    bugs: list[BaseException] = []
    app.router.lifespan_context = _bugs_said_here(app.router.lifespan_context, bugs)
    # uvicorn's own access log would print URLs and client addresses; ours names routes only.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # uvicorn's parser, with its refusal of an unreadable request as a problem.
        http=ProblemHttpToolsProtocol,
        ssl_certfile=None if settings.tls_cert is None else str(settings.tls_cert),
        ssl_keyfile=None if settings.tls_key is None else str(settings.tls_key),
    )
    server = Server(config)
    with stacks_on_sigusr1(), contextlib.suppress(KeyboardInterrupt):  # uvicorn.run's too
        try:
            server.run(sockets=[listening])
        except SystemExit:
            # uvicorn exits 3 when the application's startup fails: this CLI's "not found".
            if server.started:
                raise
    if not server.started:
        # The application's startup failed (uvicorn printed why): a bug, or what it was
        # waiting for (the store, the brokers) failed it.
        status = EXIT_BUG if bugs else EXIT_UNAVAILABLE
        return fail("serve: the service did not start (the lines above say why)", status)
    return EXIT_BUG if bugs else 0


class ServiceBug(SaysNoData):
    """What uvicorn is told of a bug in the service's start or stop, once it is said."""


def _bugs_said_here(lifespan: Any, bugs: list[BaseException]) -> Any:
    """The application's lifespan, a bug in its start or stop said as a command's is
    (`failures.bug`: classes and frames, no message) and kept in `bugs`.

    uvicorn prints a failed lifespan's traceback, message and all (Starlette hands it the
    text of `traceback.format_exc()`), where a message may quote a value; an error the
    ledger expects, whose words are its own, still reaches it as it is.
    """

    @contextlib.asynccontextmanager
    async def said_here(app: Any) -> AsyncIterator[Any]:
        try:
            async with lifespan(app) as state:
                yield state
        except Exception as error:
            if said(error) is not None:
                raise
            bugs.append(error)
            bug(error, " in the service's start or stop")
            raise ServiceBug("a bug in the service's start or stop, said above") from None

    return said_here


def tls_checked(settings: Settings) -> ssl.SSLContext | None:
    """The certificate and key are readable and belong together, or one line and exit 2;
    the server context they make (None without them).

    Loaded by uvicorn only as the server starts, a key that does not match ended in its
    traceback, and an encrypted key in OpenSSL asking for a passphrase on the terminal of a
    service that has none.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    for name, path in (
        ("LEDGER_TLS_CERT", settings.tls_cert),
        ("LEDGER_TLS_KEY", settings.tls_key),
    ):
        try:
            path.open("rb").close()
        except OSError as e:
            raise SettingsError(f"{name}: cannot read {path}: {e.strerror}") from None
    if b"ENCRYPTED" in settings.tls_key.read_bytes():
        raise SettingsError(
            "LEDGER_TLS_KEY is encrypted, and a service has no one to give its passphrase: "
            "keep it decrypted, readable by the service's user only"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except ssl.SSLError as e:
        raise SettingsError(
            "LEDGER_TLS_CERT and LEDGER_TLS_KEY are not a PEM certificate and its private key, "
            f"not encrypted ({e.reason or e.strerror or 'refused by OpenSSL'})"
        ) from None
    return context


def loopback(listening: socket.socket) -> bool:
    """Whether the service listens on this host only (127.0.0.0/8, ::1)."""
    address = listening.getsockname()[0]
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int, who: str = "serve") -> socket.socket:
    """A socket bound to the address `serve` (or the worker's metrics) was given, to listen
    on; an address that cannot be had is one line and exit 6 (in use, not this host's) or 2
    (no such host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise CliError(f"{who}: --host {host!r} names no address here: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds its own
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise CliError(
            f"{who}: cannot listen on {host} port {port}: {e.strerror}", EXIT_UNAVAILABLE
        ) from None
    return sock


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Kafka mode's long-running process: the intake writer and the projections."""
    if settings.backend != "kafka":
        raise CliError(
            "the worker runs in Kafka mode: set LEDGER_BACKEND=kafka and KAFKA_BOOTSTRAP"
        )
    with stopped_by_signals() as stop, stacks_on_sigusr1():
        return _work(args, settings, stop)


def _work(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    """The worker until `stop` is set (SIGTERM or SIGINT)."""
    from ledger.kafka.intake import IntakeWriter
    from ledger.kafka.intake_thread import Supervised
    from ledger.kafka.recorder import WriterFenced
    from projections.views import Views

    # The metrics endpoint's certificate and key, checked before anything starts: exit 2.
    tls = None if args.metrics_port is None else tls_checked(settings)
    # The metrics address is taken first: one in use is said at once, exit 6, as `serve`.
    listening = (
        None
        if args.metrics_port is None
        else listening_socket(args.metrics_host, args.metrics_port, "worker")
    )
    if not wait_for_brokers(settings, stop, "worker"):
        say("worker: stopped before a Kafka broker answered", flush=True)
        return 0
    ledger = open_ledger(settings)
    writer = IntakeWriter(ledger)
    views = None if args.no_projections else Views(ledger, stopping=stop.is_set)
    if views is not None:
        try:
            views.check()  # views of another ledger topic: exit 2 before consuming anything
        except BaseException:
            views.close()
            ledger.close()
            raise
    metrics = None if listening is None else _serve_metrics(listening, writer, views, tls)
    project = threading.Thread(
        target=follow_views, args=(views, stop, args.interval), name="projections", daemon=True
    )
    topics = writer.link.topics
    try:
        writer.start()  # owns the ledger and has its intake positions: now it is consuming
        say(f"worker: consuming {topics.intake} into {topics.ledger}", flush=True)
        if views is not None:
            project.start()
        Supervised(writer).run(stop)
    except WriterFenced:
        return fail("worker: fenced — another writer owns the ledger partitions", EXIT_FENCED)
    finally:
        stop.set()
        if metrics is not None:
            metrics.close()
        if project.is_alive():
            project.join()
        writer.close()
        if views is not None:
            views.close()
        ledger.close()
    stats = writer.stats
    say(
        f"worker: stopped; {stats.accepted} accepted, {stats.duplicates} duplicates, "
        f"{sum(stats.rejected.values())} rejected in {stats.batches} batches; "
        f"{stats.retries} retries after the broker or the storage was unavailable",
        flush=True,
    )
    if stats.keyed_by_reference:
        say(
            f"worker: {stats.keyed_by_reference} intake records were keyed by their subject's "
            "reference in the clear (personal data in Kafka keys; the log names where)",
            flush=True,
        )
    if stats.restarts:
        say(
            "worker: the intake writer was started again after a failure it did not expect "
            f"({stats.restarts} in all; the log names each failure's type)",
            flush=True,
        )
    if stats.expired_unread:
        say(
            f"worker: up to {stats.expired_unread} intake records were deleted by the intake "
            "topic's retention before they were read (lost; the log names the partitions and "
            "offsets): keep the retention longer than the writer may be stopped",
            flush=True,
        )
    if stats.batches:
        per_batch = 1000 / stats.batches
        records = stats.accepted + stats.duplicates + sum(stats.rejected.values())
        say(
            f"worker: a batch on average: {records / stats.batches:.0f} records, poll "
            f"{stats.poll_s * per_batch:.1f} ms, parsing, checks, sealing and the replica "
            f"{(stats.write_s - stats.transaction_s) * per_batch:.1f} ms, Kafka transaction "
            f"{stats.transaction_s * per_batch:.1f} ms",
            flush=True,
        )
    return 0


def _serve_metrics(
    listening: socket.socket, writer: Any, views: Any, tls: ssl.SSLContext | None
) -> Any:
    """The worker's /metrics on its own thread: the intake writer's counts and lag, and the
    views' lag (read from the replica and the views' store, nothing from the broker); over
    TLS with `serve`'s certificate when LEDGER_TLS_CERT and LEDGER_TLS_KEY are set."""
    from api.metrics import worker_metrics
    from api.metrics_server import MetricsServer

    def render() -> str:
        return worker_metrics(None if views is None else views.lag(), writer.stats)

    server = MetricsServer(listening, render, tls)
    host, port = server.address[:2]
    shown = f"[{host}]" if ":" in host else host
    scheme = "http" if tls is None else "https"
    say(f"worker: metrics on {scheme}://{shown}:{port}/metrics", flush=True)
    return server


# Longest pause between two projection rounds that failed in a row.
VIEWS_RETRY_MAX_S = 5.0


def follow_views(views: Any, stop: Any, interval: float) -> None:
    """Keep the views up with the ledger topic until stopped. A round that fails is logged
    and tried again after a pause that doubles while they go on failing (to
    VIEWS_RETRY_MAX_S): a revoked ACL logged its line twice a second for as long as it
    lasted."""
    from ledger.kafka.acls import refused_access
    from ledger.kafka.recorder import LedgerUnavailable

    log = logging.getLogger("consent_ledger.projections")
    pause = interval
    while not stop.is_set():
        failed = True
        try:
            done = views.refresh()
            failed = False
        except LedgerUnavailable as error:
            if not stop.is_set():  # a read ended by the stop itself is not news
                log.warning("views not brought up to date: %s", error)
            done = 0
        except SettingsError as error:  # views not of this log: what to do is in the message
            log.error("%s", error)
            done = 0
        except Exception as error:  # a broker outage surfaces as several kafka errors
            refused = refused_access(error)  # an ACL: the words say which and what to do
            log.error(
                "projection round failed (%s)",
                type(error).__name__ if refused is None else refused,
            )
            done = 0
        if done == 0:
            stop.wait(pause if failed else interval)
        pause = min(pause * 2, VIEWS_RETRY_MAX_S) if failed else interval


# Longest pause between two attempts to reach the brokers.
BROKER_WAIT_MAX_S = 30.0


def wait_for_brokers(settings: Settings, stop: threading.Event, who: str) -> bool:
    """Wait until a broker answers and the topics are as the ledger needs; False if stopped.

    A long-running process starts before its cluster as often as after it (a compose file
    starts them together; brokers restart one by one): it waits, saying so on stderr, where
    a one-shot command exits 6 at once. A topic the ledger refuses is not waited for: no
    retry mends a compacted ledger topic.
    """
    from ledger.kafka.topics import BrokersUnreachable, ensure_topics

    pause = 1.0
    while not stop.is_set():
        try:
            ensure_topics(settings)
            return True
        except BrokersUnreachable as error:
            say(f"{who}: trying again in {pause:.0f} s: {error}", file=sys.stderr, flush=True)
        if stop.wait(pause):
            break
        pause = min(pause * 2, BROKER_WAIT_MAX_S)
    return False


@contextmanager
def stacks_on_sigusr1() -> Iterator[None]:
    """While the block runs, SIGUSR1 prints every thread's stack to stderr (`faulthandler`)
    and the process runs on: a worker or server that stops making progress can be asked
    where it waits without being stopped. The stacks name code only (files, lines,
    functions), never a value."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        yield
    finally:
        faulthandler.unregister(signal.SIGUSR1)
