"""A self-signed certificate for 127.0.0.1, made with `cryptography` for the TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Pem(NamedTuple):
    cert: Path
    key: Path  # its key, not encrypted
    encrypted_key: Path  # the same key under a passphrase
    other_key: Path  # a key of no certificate here


def self_signed(directory: Path) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = Pem(*(directory / n for n in ("cert.pem", "key.pem", "encrypted.pem", "other.pem")))
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    pem.encrypted_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, pkcs8, serialization.BestAvailableEncryption(b"secret")
        )
    )
    other = ec.generate_private_key(ec.SECP256R1())
    pem.other_key.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    return pem
