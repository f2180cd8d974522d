"""Builders of contract facts for tests (plain dicts, as a publisher would send them)."""

from __future__ import annotations

from itertools import count
from typing import Any

from ledger.policy import SEED_POLICY_VERSION

_ids = count()


def fact(type_: str, subject: str | None = "contact-1", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": fields.pop("event_id", f"ev-{next(_ids)}"),
        "type": type_,
        "tenant": fields.pop("tenant", "demo"),
        "occurred_at": fields.pop("occurred_at", "2025-03-01T10:00:00+05:00"),
        "source": fields.pop("source", "test"),
    }
    if subject is not None:
        out["subject"] = subject
    out.update(fields)
    return out


def grant(
    subject: str = "contact-1", purposes: tuple[str, ...] = ("marketing",), **fields: Any
) -> dict[str, Any]:
    fields.setdefault("policy_version", SEED_POLICY_VERSION)
    return fact("consent.granted", subject, purposes=list(purposes), **fields)


def withdraw(
    subject: str = "contact-1", purposes: tuple[str, ...] = ("marketing",), **fields: Any
) -> dict[str, Any]:
    return fact("consent.withdrawn", subject, purposes=list(purposes), **fields)


def erase(subject: str = "contact-1", **fields: Any) -> dict[str, Any]:
    fields.setdefault("ground", "subject_request")
    return fact("subject.erased", subject, **fields)
