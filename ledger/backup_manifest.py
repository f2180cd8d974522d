"""A backup's manifest: the SHA-256 of each file it holds, signed with the ledger's key.

A backup may sit for years before it is restored. The log inside it proves itself (`verify`),
but the key store, the API keys, the views and the access log do not: a flipped bit in
`keys.db` makes people's data unreadable, and a row added to `api_keys.db` is a key that
works once the backup is restored. `backup` writes `manifest.json` beside the files it
copied, and `restore` refuses a backup whose files do not match it, or whose signature is
not by the signing key its own key store holds (only a holder of the master key can sign).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.checkpoint import public_key_text

NAME = "manifest.json"
FORMAT = 1
# The manifest's members that must be text for it to be checked at all.
_SIGNED_TEXTS = ("made_at", "public_key", "signature")


class ManifestMismatch(Exception):
    """The backup is not what its manifest says: refused, like a log that does not verify."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _message(body: dict[str, Any]) -> bytes:
    return b"consent-ledger backup manifest\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def write_manifest(directory: Path, names: Iterable[str], key: Ed25519PrivateKey) -> Path:
    body = {
        "format": FORMAT,
        "made_at": datetime.now(UTC).isoformat(),
        "files": [
            {"name": n, "bytes": (directory / n).stat().st_size, "sha256": sha256_of(directory / n)}
            for n in names
        ],
        "public_key": public_key_text(key.public_key()),
    }
    signed = {**body, "signature": base64.b64encode(key.sign(_message(body))).decode()}
    path = directory / NAME
    path.write_bytes(orjson.dumps(signed, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest as written (None for a backup made before manifests), its files checked:
    each listed file present with its SHA-256, and no database file it does not list."""
    path = directory / NAME
    if not path.exists():
        return None
    try:
        manifest = orjson.loads(path.read_bytes())
        files = {f["name"]: f["sha256"] for f in manifest["files"]}
        texts = [*files, *files.values(), *(manifest[k] for k in _SIGNED_TEXTS)]
        if manifest["format"] != FORMAT or not all(isinstance(t, str) for t in texts):
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ManifestMismatch(f"{NAME} is not a manifest `consent-ledger backup` wrote") from None
    for name, digest in files.items():
        if "/" in name or not (directory / name).is_file():
            raise ManifestMismatch(f"{name}, which {NAME} lists, is missing")
        if sha256_of(directory / name) != digest:
            raise ManifestMismatch(f"{name} is not the file {NAME} lists (its SHA-256 differs)")
    for extra in sorted(p.name for p in directory.glob("*.db")):
        if extra not in files:
            raise ManifestMismatch(f"{extra} is not listed in {NAME}")
    assert isinstance(manifest, dict)
    return manifest


def check_signature(manifest: dict[str, Any], signers: Iterable[str]) -> None:
    """Signed by one of `signers` (the restored key store's signing key and the keys it
    took over from): the key the backup was made under."""
    key = manifest["public_key"]
    if key not in set(signers):
        raise ManifestMismatch(f"{NAME} is signed by a key this backup's key store never held")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
        public.verify(base64.b64decode(manifest["signature"]), _message(body))
    except (InvalidSignature, ValueError):
        raise ManifestMismatch(f"{NAME}'s signature does not verify") from None
