#!/usr/bin/env python3
"""The three-broker KRaft cluster of deploy/compose.yaml, run on this machine without Docker.

No Docker engine runs where the tests run, so nothing but a real deployment would ever
start the compose file's brokers, and a mistake in their settings would first show there.
This starts each Kafka service of compose.yaml as a JVM of the jars `broker.sh` fetched,
with the server.properties the apache/kafka image writes from the service's environment:
each KAFKA_* variable (but the image's JVM and logging ones) becomes a property by the
image's documented rule (KAFKA_ dropped; `_` a dot, `__` an underscore, `___` a dash; lower
case), listeners default to the advertised ones on every interface, and CLUSTER_ID formats
the storage. `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in a broker's environment
are replaced from this process's environment, as compose does. A listener whose advertised
address says SSL gets the keystore's location and passwords from the files its
KAFKA_SSL_*_FILENAME and KAFKA_SSL_*_CREDENTIALS name in /etc/kafka/secrets, as the image
sets them, and one that says SASL needs KAFKA_OPTS (the JVM's options, with the JAAS file),
as the image does. Only what must differ outside a container differs: every `HOST:PORT` of a
service's own ports (`kafka-2:9093`, `://:9092`), or of a port it publishes (`ports:
["19094:9094"]` makes `localhost:19094` its port 9094), becomes 127.0.0.1 on a free port of
its own; the data directory is DIR/<service>/data; and /etc/kafka/secrets is DIR/secrets,
made by make_secrets.py (for 127.0.0.1) when DIR has none.

  deploy/kafka/cluster.py start [DIR]          render, format and start every broker; prints
                                               the bootstrap list once all serve metadata
  deploy/kafka/cluster.py stop [DIR]           stop them all (SIGTERM, side by side; with
                                               --kill, SIGKILL: for data thrown away)
  deploy/kafka/cluster.py stop-node DIR NAME   stop one (SIGTERM; with --kill, SIGKILL)
  deploy/kafka/cluster.py start-node DIR NAME  start it again on its data and ports
  deploy/kafka/cluster.py scram-user DIR USER  add a SCRAM-SHA-512 user (its password: the
                                               first line of input), for the SASL_SSL
                                               listener, as kafka-configs.sh does

DIR defaults to ./var/cluster. Each broker's files are in DIR/<service>/ (server.properties,
broker.pid, broker.log); DIR/bootstrap holds the bootstrap list (each broker's first
advertised listener: the compose network's PLAINTEXT one), DIR/bootstrap-external that of
their SASL_SSL listeners, if they have one (trusting DIR/secrets/ca.pem).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
COMPOSE = HERE.parent / "compose.yaml"
BROKER = HERE / "broker.sh"
MAKE_SECRETS = HERE / "make_secrets.py"
LOCAL = "127.0.0.1"
# Variables the image leaves out of server.properties (its kafka-propertiesSpec.json).
NOT_PROPERTIES = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPT",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    }
)
# A lone underscore between two other characters: the image's pattern, matched the same way
# (left to right, without overlaps), so that `__` and `___` survive to be replaced after.
_LONE_UNDERSCORE = re.compile("[^_]_[^_]")
_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9.-]*):(?P<port>\d+)")
_LISTENER_HOST = re.compile(r"://[^:]*:")
_DATA = "/var/lib/kafka/data"
_SECRETS = "/etc/kafka/secrets"
# What make_secrets.py writes (its FILES), looked for before a start.
_SECRET_FILES = ("broker.p12", "broker-keystore-password", "kafka_server_jaas.conf", "ca.pem")
# Compose's interpolation: `$$` is a dollar; `${NAME}`, `${NAME:-default}` (unset or empty),
# `${NAME-default}` (unset), `${NAME:?message}` and `${NAME?message}` (an error).
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30


def property_name(variable: str) -> str:
    """The server property the apache/kafka image makes of a KAFKA_* variable."""
    key = variable[len("KAFKA_") :]
    dotted = _LONE_UNDERSCORE.sub(lambda m: m.group(0).replace("_", "."), key)
    return dotted.replace("___", "-").replace("__", "_").lower()


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """`value` with compose's variables replaced from `environ`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        if name is None:
            return "$"
        given = environ.get(name)
        missing = not given if op is not None and op.startswith(":") else given is None
        if not missing:
            return given or ""
        if op is not None and op.endswith("?"):
            raise SystemExit(f"cluster.py: {name}: {arg or 'not set'}")
        return arg if op is not None else ""

    return _VARIABLE.sub(one, value)


def brokers(
    compose: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """The Kafka services of a compose file (those of an apache/kafka image), each with its
    environment (merge keys resolved by the YAML loader, variables from `environ`, by
    default this process's)."""
    given = os.environ if environ is None else environ
    return {
        name: {
            str(k): interpolate(str(v), given)
            for k, v in (service.get("environment") or {}).items()
        }
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("apache/kafka")
    }


def published(compose: Mapping[str, Any], service: str) -> dict[int, int]:
    """Host port -> container port, of the ports a service publishes (`"19094:9094"`,
    `"127.0.0.1:19094:9094/tcp"`, or the long form)."""
    out: dict[int, int] = {}
    for entry in compose["services"][service].get("ports") or []:
        if isinstance(entry, Mapping):
            if entry.get("published") is not None:
                out[int(entry["published"])] = int(entry["target"])
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        if len(parts) >= 2 and parts[-2].isdigit():
            out[int(parts[-2])] = int(parts[-1])
    return out


def hostnames(compose: Mapping[str, Any]) -> dict[str, str]:
    """Host name -> service, for the Kafka services (a service is reachable by either)."""
    out: dict[str, str] = {}
    for name in brokers(compose):
        out[name] = name
        out[str(compose["services"][name].get("hostname", name))] = name
    return out


def listeners(env: Mapping[str, str]) -> str:
    """KAFKA_LISTENERS, or what the image derives from the advertised listeners."""
    given = env.get("KAFKA_LISTENERS")
    if given:
        return given
    if env.get("KAFKA_PROCESS_ROLES") == "controller":
        return ""
    return _LISTENER_HOST.sub("://0.0.0.0:", env.get("KAFKA_ADVERTISED_LISTENERS", ""))


def container_ports(env: Mapping[str, str]) -> list[int]:
    return [int(m.group("port")) for m in _ENDPOINT.finditer(listeners(env))]


def secured(env: dict[str, str], service: str, secrets: Path) -> None:
    """What the image's `configure` adds to the environment of a broker advertising an SSL or
    SASL listener: the keystore's location and passwords read from the files the
    environment names (in /etc/kafka/secrets, here `secrets`), and its refusals."""
    advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")

    def secret(variable: str) -> Path:
        name = env.get(variable)
        if not name:
            raise SystemExit(f"cluster.py: {service}: {variable} environment variable not set")
        if not (secrets / name).is_file():
            raise SystemExit(f"cluster.py: {service}: {_SECRETS}/{name} file does not exist")
        return secrets / name

    def credential(variable: str) -> str:
        return secret(variable).read_text().rstrip("\n")  # as the shell's $(cat FILE)

    if "SSL://" in advertised:
        secret("KAFKA_SSL_KEYSTORE_FILENAME")
        env["KAFKA_SSL_KEYSTORE_LOCATION"] = f"{_SECRETS}/{env['KAFKA_SSL_KEYSTORE_FILENAME']}"
        env["KAFKA_SSL_KEY_PASSWORD"] = credential("KAFKA_SSL_KEY_CREDENTIALS")
        env["KAFKA_SSL_KEYSTORE_PASSWORD"] = credential("KAFKA_SSL_KEYSTORE_CREDENTIALS")
        if any(m in env.get("KAFKA_SSL_CLIENT_AUTH", "") for m in ("required", "requested")):
            secret("KAFKA_SSL_TRUSTSTORE_FILENAME")
            env["KAFKA_SSL_TRUSTSTORE_LOCATION"] = (
                f"{_SECRETS}/{env['KAFKA_SSL_TRUSTSTORE_FILENAME']}"
            )
            env["KAFKA_SSL_TRUSTSTORE_PASSWORD"] = credential("KAFKA_SSL_TRUSTSTORE_CREDENTIALS")
    if re.search("SASL_.*://", advertised) and not env.get("KAFKA_OPTS"):
        raise SystemExit(f"cluster.py: {service}: KAFKA_OPTS environment variable not set")


def jvm_options(compose: Mapping[str, Any], service: str, secrets: Path) -> list[str]:
    """KAFKA_OPTS of a service, its secrets' directory moved onto this machine."""
    given = brokers(compose)[service].get("KAFKA_OPTS", "")
    return shlex.split(given.replace(_SECRETS, str(secrets)))


def render(
    compose: Mapping[str, Any],
    service: str,
    ports: Mapping[tuple[str, int], int],
    data: Path,
    secrets: Path,
) -> dict[str, str]:
    """server.properties of one service, as the image would write it, moved onto this
    machine: `ports` maps (service, port in its container) to a local port; `data` and
    `secrets` stand for the data directory and /etc/kafka/secrets."""
    env = dict(brokers(compose)[service])
    env["KAFKA_LISTENERS"] = listeners(env)
    secured(env, service, secrets)
    hosts = hostnames(compose)
    publishes = published(compose, service)

    def local(match: re.Match[str]) -> str:
        host, port = match.group("host"), int(match.group("port"))
        owner = service if host in ("", "0.0.0.0") else hosts.get(host)
        if owner is None and port in publishes:  # this machine's port, published
            owner, port = service, publishes[port]
        if owner is None or (owner, port) not in ports:
            return match.group(0)
        return f"{LOCAL}:{ports[owner, port]}"

    properties: dict[str, str] = {}
    for variable, value in sorted(env.items()):
        if not variable.startswith("KAFKA_") or variable in NOT_PROPERTIES or value == "":
            continue
        value = _ENDPOINT.sub(local, value)
        if value == _DATA or value.startswith(_DATA + "/"):
            value = str(data) + value[len(_DATA) :]
        value = value.replace(_SECRETS, str(secrets))
        properties[property_name(variable)] = value
    return properties


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((LOCAL, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOCAL, port)) == 0


class Cluster:
    """The brokers of compose.yaml under one directory."""

    def __init__(self, root: Path, compose_file: Path = COMPOSE) -> None:
        self.root = root.resolve()
        self.secrets = self.root / "secrets"
        self.compose = yaml.safe_load(compose_file.read_text())
        self.services = list(brokers(self.compose))
        if not self.services:
            raise SystemExit(f"cluster.py: {compose_file} has no apache/kafka service")
        self.cluster_id = brokers(self.compose)[self.services[0]].get("CLUSTER_ID", "")
        if not self.cluster_id:
            raise SystemExit("cluster.py: the brokers' environment sets no CLUSTER_ID")
        self.cache = Path(
            subprocess.run(
                [str(BROKER), "cache"], check=True, capture_output=True, text=True
            ).stdout.strip()
        )

    def node(self, service: str) -> Path:
        if service not in self.services:
            raise SystemExit(f"cluster.py: no broker service {service!r} (of {self.services})")
        return self.root / service

    def client_port(self, service: str) -> int:
        """The local port of the service's first advertised listener."""
        props = self._properties(service)
        first = props["advertised.listeners"].split(",")[0]
        return int(first.rsplit(":", 1)[1])

    def bootstrap(self) -> str:
        return ",".join(f"{LOCAL}:{self.client_port(s)}" for s in self.services)

    def external_bootstrap(self) -> str:
        """The brokers' advertised SASL_SSL listeners (those publishing services reach), or
        "" if they have none."""
        addresses = []
        for service in self.services:
            props = self._properties(service)
            protocols = dict(
                pair.split(":", 1)
                for pair in props.get("listener.security.protocol.map", "").split(",")
                if ":" in pair
            )
            for listener in props["advertised.listeners"].split(","):
                name, _, address = listener.partition("://")
                if protocols.get(name, name) == "SASL_SSL":
                    addresses.append(address)
        return ",".join(addresses)

    def add_scram_user(self, name: str, password: str) -> None:
        """A SCRAM-SHA-512 user in the cluster's metadata, as `kafka-configs.sh --alter
        --entity-type users --add-config` does in a broker's container."""
        done = subprocess.run(
            [
                *self._jvm(self.services[0]),
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                self.bootstrap(),
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                name,
                "--add-config",
                f"SCRAM-SHA-512=[password={password}]",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"cluster.py: the user was not added: {done.stderr.strip()}")

    def start(self) -> str:
        if not all((self.secrets / name).is_file() for name in _SECRET_FILES):
            subprocess.run(
                [sys.executable, str(MAKE_SECRETS), str(self.secrets), "--replace"], check=True
            )
        for attempt in (1, 2, 3):
            self.stop()
            self._configure()
            with ThreadPoolExecutor(len(self.services)) as pool:
                formatted = list(pool.map(self._format, self.services))
            if all(formatted):
                for service in self.services:
                    self._launch(service)
                if self._all_serving():
                    bootstrap = self.bootstrap()
                    (self.root / "bootstrap").write_text(bootstrap + "\n")
                    external = self.external_bootstrap()
                    if external:
                        (self.root / "bootstrap-external").write_text(external + "\n")
                    return bootstrap
            print(f"cluster.py: start attempt {attempt} failed", file=sys.stderr)
        self.stop()
        raise SystemExit(f"cluster.py: the cluster did not start (logs in {self.root})")

    def stop(self, kill: bool = False) -> None:
        with ThreadPoolExecutor(max(1, len(self.services))) as pool:
            list(pool.map(lambda service: self.stop_node(service, kill), self.services))

    def stop_node(self, service: str, kill: bool = False) -> None:
        pid = self._running(service)
        if pid is not None:
            # It may exit between the check and each signal: a stop that finds it gone is done.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            killed = kill
            while _alive(pid):
                if not killed and time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.1)
        (self.node(service) / "broker.pid").unlink(missing_ok=True)

    def start_node(self, service: str) -> None:
        if not (self.node(service) / "server.properties").exists():
            raise SystemExit(f"cluster.py: {service} was never started in {self.root}")
        if self._running(service) is None:
            self._launch(service)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.client_port(service)):
            if self._running(service) is None or time.monotonic() >= deadline:
                raise SystemExit(f"cluster.py: {service} did not start again (see its log)")
            time.sleep(0.2)

    def _configure(self) -> None:
        taken: set[int] = set()
        ports = {
            (service, port): free_port(taken)
            for service in self.services
            for port in container_ports(brokers(self.compose)[service])
        }
        for service in self.services:
            node = self.node(service)
            shutil.rmtree(node, ignore_errors=True)
            node.mkdir(parents=True, exist_ok=True)
            props = render(self.compose, service, ports, node / "data", self.secrets)
            (node / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
            (node / "log4j2.properties").write_text(
                "rootLogger.level=WARN\n"
                "rootLogger.appenderRef.file.ref=FILE\n"
                "appender.file.type=File\n"
                "appender.file.name=FILE\n"
                f"appender.file.fileName={node}/broker.log\n"
                "appender.file.layout.type=PatternLayout\n"
                "appender.file.layout.pattern=[%d] %p %m (%c)%n\n"
            )

    def _properties(self, service: str) -> dict[str, str]:
        text = (self.node(service) / "server.properties").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def _jvm(self, service: str) -> list[str]:
        node = self.node(service)
        jvm = [
            "java",
            # The heap at its maximum from the start, as broker.sh and Kafka's own start
            # script set it: a growing heap's concurrent collections take the CPU the
            # ledger's writer needs (broker.sh says how much).
            "-Xms512m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node}",
            f"-Dlog4j2.configurationFile={node}/log4j2.properties",
            *jvm_options(self.compose, service, self.secrets),
        ]
        if (self.cache / "classes.jsa").exists():
            jvm.append(f"-XX:SharedArchiveFile={self.cache / 'classes.jsa'}")
        return [*jvm, "-cp", str(self.cache / "libs" / "*")]

    def _format(self, service: str) -> bool:
        node = self.node(service)
        with open(node / "format.log", "wb") as log:
            done = subprocess.run(
                [
                    *self._jvm(service),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id,
                    "-c",
                    str(node / "server.properties"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        return done.returncode == 0

    def _launch(self, service: str) -> None:
        node = self.node(service)
        with open(node / "stdout.log", "ab") as out:
            process = subprocess.Popen(
                [*self._jvm(service), "kafka.Kafka", str(node / "server.properties")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (node / "broker.pid").write_text(f"{process.pid}\n")

    def _running(self, service: str) -> int | None:
        try:
            pid = int((self.node(service) / "broker.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _all_serving(self) -> bool:
        """Every broker's port open, then every broker registered in the metadata: a cluster
        is of use once a client's first metadata names all of them."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for service in self.services:
            while not port_open(self.client_port(service)):
                if self._running(service) is None or time.monotonic() >= deadline:
                    return False
                time.sleep(0.2)
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap())
        try:
            while len(admin.describe_cluster()["brokers"]) < len(self.services):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.2)
        finally:
            admin.close()
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of this process that exited stays a zombie until reaped; reap it if so.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", choices=["start", "stop", "stop-node", "start-node", "scram-user"]
    )
    parser.add_argument("dir", nargs="?", default="./var/cluster")
    parser.add_argument("service", nargs="?", help="a broker service; for scram-user, the user")
    parser.add_argument("--kill", action="store_true", help="stop or stop-node with SIGKILL")
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.dir))
    if args.command in ("stop-node", "start-node") and not args.service:
        parser.error(f"{args.command} needs a service name ({', '.join(cluster.services)})")
    if args.command == "scram-user":
        if not args.service:
            parser.error("scram-user needs a user name")
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            parser.error("scram-user reads the user's password from its first line of input")
        cluster.add_scram_user(args.service, password)
    elif args.command == "start":
        print(cluster.start())
    elif args.command == "stop":
        cluster.stop(kill=args.kill)
    elif args.command == "stop-node":
        cluster.stop_node(args.service, kill=args.kill)
    else:
        cluster.start_node(args.service)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
