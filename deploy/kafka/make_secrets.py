#!/usr/bin/env python3
"""The files deploy/compose.yaml's brokers read from /etc/kafka/secrets for their SASL_SSL
listener, the one publishing services outside the compose network reach.

The brokers' TLS key is a deployment's own, made where it runs, never one from the
repository: this makes a CA and a key and certificate signed by it for the names publishing
services connect to, and the rest of what the apache/kafka image asks for once a listener
is SSL or SASL. The CA's private key is not kept: a name added later means running this
again (a new CA), and giving publishing services the new `ca.pem`.

  deploy/kafka/make_secrets.py DIR [--host NAME]... [--ip ADDRESS]... [--days N] [--replace]

writes into DIR (made 0700; each file 0600):
  broker.p12               the brokers' key and certificate (PKCS12) and the CA's certificate
  broker-keystore-password its password, random (KAFKA_SSL_KEYSTORE_CREDENTIALS and
                           KAFKA_SSL_KEY_CREDENTIALS name this file)
  kafka_server_jaas.conf   the SCRAM login module (KAFKA_OPTS points at it); no passwords:
                           each SCRAM user lives in the cluster's metadata (kafka-configs.sh)
  ca.pem                   the CA's certificate, for publishing services to trust
                           (KAFKA_SSL_CAFILE, or kafka-python's `ssl_cafile`)

A DIR that already holds any of them is refused unless --replace is given: the brokers and
every publishing service trust the CA it holds, and a new one breaks their connections
until each has the new `ca.pem`.

The certificate names `localhost` and 127.0.0.1 besides every --host and --ip: the name in
each broker's advertised SASL_SSL listener (KAFKA_EXTERNAL_HOST in compose.yaml) must be
one of them, since clients check it. Needs the `cryptography` package (in the project's
virtual environment, `make install`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEYSTORE = "broker.p12"
PASSWORD = "broker-keystore-password"
JAAS = "kafka_server_jaas.conf"
CA = "ca.pem"
FILES = (KEYSTORE, PASSWORD, JAAS, CA)
# A hundred years: X.509's dates end in 9999, Python's too.
MAX_DAYS = 36_500

# The brokers' login module for SCRAM: the users and their salted credentials are kept by the
# cluster (KRaft metadata), so brokers hold no password of a publishing service.
JAAS_TEXT = (
    "KafkaServer {\n    org.apache.kafka.common.security.scram.ScramLoginModule required;\n};\n"
)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make(out: Path, hosts: list[str], ips: list[str], days: int) -> None:
    """Every file of FILES in `out`, made anew."""
    now = datetime.now(UTC) - timedelta(minutes=5)  # a broker's clock a little behind
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("consent-ledger kafka CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(["localhost", *hosts])]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(["127.0.0.1", *ips])]
    broker = (
        x509.CertificateBuilder()
        .subject_name(_name("consent-ledger kafka broker"))  # clients check the names below
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_urlsafe(24)
    keystore = pkcs12.serialize_key_and_certificates(
        b"broker",
        key,
        broker,
        [ca],
        serialization.BestAvailableEncryption(password.encode()),
    )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(out / KEYSTORE, keystore)
    _write(out / PASSWORD, password.encode())
    _write(out / JAAS, JAAS_TEXT.encode())
    _write(out / CA, ca.public_bytes(serialization.Encoding.PEM))


def _write(path: Path, data: bytes) -> None:
    """Written whole under a temporary name, 0600 from its first byte, then renamed."""
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    part.replace(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make_secrets.py", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--host", action="append", default=[], help="a DNS name clients use")
    parser.add_argument("--ip", action="append", default=[], help="an IP address clients use")
    parser.add_argument("--days", type=int, default=825, help="validity (default 825)")
    parser.add_argument(
        "--replace", action="store_true", help="make them anew where DIR already holds some"
    )
    args = parser.parse_args(argv)
    try:
        for address in args.ip:
            ipaddress.ip_address(address)
        for host in args.host:
            if not host or any(c.isspace() for c in host):
                raise ValueError(f"--host {host!r} is no DNS name")
            x509.DNSName(host)  # an A-label: a name of other letters is refused here
    except ValueError as error:
        parser.error(str(error))
    if not 1 <= args.days <= MAX_DAYS:  # past it, a date beyond what a certificate holds
        parser.error(f"--days must be from 1 to {MAX_DAYS}")
    held = [name for name in FILES if (args.dir / name).exists()]
    if held and not args.replace:
        parser.error(
            f"{args.dir} already holds {', '.join(held)}: the brokers and publishing services "
            "trust its CA; --replace makes a new one, which each of them must then be given"
        )
    make(args.dir, args.host, args.ip, args.days)
    print(f"wrote {', '.join(FILES)} in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
