#!/usr/bin/env python3
"""The three-broker KRaft cluster of deploy/compose.yaml, run on this machine without Docker.

No Docker engine runs where the tests run, so nothing but a real deployment would ever
start the compose file's brokers, and a mistake in their settings would first show there.
This starts each Kafka service of compose.yaml as a JVM of the jars `broker.sh` fetched,
with the server.properties the apache/kafka image writes from the service's environment:
each KAFKA_* variable (but the image's JVM and logging ones) becomes a property by the
image's documented rule (KAFKA_ dropped; `_` a dot, `__` an underscore, `___` a dash; lower
case), listeners default to the advertised ones on every interface, and CLUSTER_ID formats
the storage. Only what must differ outside a container differs: every `HOST:PORT` of a
service's own ports (`kafka-2:9093`, `://:9092`) becomes 127.0.0.1 on a free port of its
own, and the data directory is DIR/<service>/data.

  deploy/kafka/cluster.py start [DIR]          render, format and start every broker; prints
                                               the bootstrap list once all serve metadata
  deploy/kafka/cluster.py stop [DIR]           stop them all (SIGTERM, side by side; with
                                               --kill, SIGKILL: for data thrown away)
  deploy/kafka/cluster.py stop-node DIR NAME   stop one (SIGTERM; with --kill, SIGKILL)
  deploy/kafka/cluster.py start-node DIR NAME  start it again on its data and ports

DIR defaults to ./var/cluster. Each broker's files are in DIR/<service>/ (server.properties,
broker.pid, broker.log); DIR/bootstrap holds the bootstrap list.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
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
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30


def property_name(variable: str) -> str:
    """The server property the apache/kafka image makes of a KAFKA_* variable."""
    key = variable[len("KAFKA_") :]
    dotted = _LONE_UNDERSCORE.sub(lambda m: m.group(0).replace("_", "."), key)
    return dotted.replace("___", "-").replace("__", "_").lower()


def brokers(compose: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The Kafka services of a compose file (those of an apache/kafka image), each with its
    environment (merge keys resolved by the YAML loader)."""
    return {
        name: {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("apache/kafka")
    }


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


def render(
    compose: Mapping[str, Any], service: str, ports: Mapping[tuple[str, int], int], data: Path
) -> dict[str, str]:
    """server.properties of one service, as the image would write it, moved onto this
    machine: `ports` maps (service, port in its container) to a local port."""
    env = dict(brokers(compose)[service])
    env["KAFKA_LISTENERS"] = listeners(env)
    hosts = hostnames(compose)

    def local(match: re.Match[str]) -> str:
        host, port = match.group("host"), int(match.group("port"))
        owner = service if host in ("", "0.0.0.0") else hosts.get(host)
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

    def start(self) -> str:
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
            props = render(self.compose, service, ports, node / "data")
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
    parser.add_argument("command", choices=["start", "stop", "stop-node", "start-node"])
    parser.add_argument("dir", nargs="?", default="./var/cluster")
    parser.add_argument("service", nargs="?")
    parser.add_argument("--kill", action="store_true", help="stop or stop-node with SIGKILL")
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.dir))
    if args.command in ("stop-node", "start-node") and not args.service:
        parser.error(f"{args.command} needs a service name ({', '.join(cluster.services)})")
    if args.command == "start":
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
