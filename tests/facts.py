"""Builders of contract facts for tests (plain dicts, as a publisher would send them)."""

from __future__ import annotations

from itertools import count
from typing import Any

from ledger.policy import SEED_POLICY_VERSION, seed_policy_fact

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


def policy(
    version: str,
    effective_at: str = "2025-01-01T00:00:00+05:00",
    purposes: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A `policy.published` fact of another version of the seed policy, published as it takes
    effect: the seed's catalogue unless `purposes` is given."""
    out = {
        **seed_policy_fact(f"policy-{version}"),
        "policy_version": version,
        "effective_at": effective_at,
        "occurred_at": effective_at,
        "text": f"policy {version}",
    }
    if purposes is not None:
        out["purposes"] = purposes
    out.update(fields)
    return out


def terms(retention_days: int | None = None, *categories: str) -> dict[str, Any]:
    """One purpose of a policy: on consent, for `categories` (default email)."""
    return {
        "legal_basis": "consent",
        "categories": list(categories or ("email",)),
        "retention_days": retention_days,
    }


def request(subject: str, rid: str, kind: str, occurred_at: str, **fields: Any) -> dict[str, Any]:
    """A `request.received` fact of the demo tenant."""
    when = occurred_at
    return fact("request.received", subject, request_id=rid, kind=kind, occurred_at=when, **fields)


def closed(subject: str, request_id: str, outcome: str, occurred_at: str) -> dict[str, Any]:
    """A `request.closed` fact of the demo tenant, its reason the outcome's."""
    return fact(
        "request.closed",
        subject,
        request_id=request_id,
        outcome=outcome,
        reason=f"{outcome} as asked",
        occurred_at=occurred_at,
    )


def one_of_each_type() -> dict[str, dict[str, Any]]:
    """A fact of every type the contract defines, by type: the demo stream's first of each,
    and a policy and a complaint, which it does not tell."""
    from ledger.demo import demo_stream

    kinds: dict[str, dict[str, Any]] = {}
    given = [policy("crmpro-2.0"), fact("complaint.lodged", authority="Agency", reference="C-1")]
    for one in [*given, *demo_stream(60)]:
        kinds.setdefault(one["type"], one)
    return kinds
