"""What the ledger tells a person who asks what is done with their data (§7.1: "information
about their data and its processing").

The audit trail answers a regulator: every fact, its bytes' hashes, in log order. A person
who sends an information request (`request.received`, kind `information`) is owed something
else: the personal data held about them now, the purposes it is processed for and on which
legal basis, how long it is kept, who it was passed to and whether it left the country, the
operator, where it came from, and what became of their own requests and complaints. This is
that answer, built from the same trail and consent state the other questions read, so it
cannot say other than they do. Personal data shows while the subject's key exists; after an
erasure the answer says so and holds none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ledger.application import ConsentLedger
from ledger.policy import PolicyVersion
from projections.consents import subject_consents
from projections.requests import deadline
from projections.trail import subject_trail


def subject_report(ledger: ConsentLedger, tenant: str, sid: UUID) -> dict[str, Any] | None:
    trail = subject_trail(ledger, tenant, sid)
    consents = subject_consents(ledger, tenant, sid)
    if trail is None or consents is None:
        return None
    found = ledger.tenant(tenant, shared=True)  # read only: no copy of the catalogue
    policies = found.policies if found else {}
    now = datetime.now(UTC)

    held: dict[str, Any] = {}
    collected: list[dict[str, Any]] = []
    transfers: list[dict[str, Any]] = []
    requests: dict[str, dict[str, Any]] = {}
    complaints: list[dict[str, Any]] = []
    operators: dict[tuple[str, str], dict[str, str]] = {}
    sources: set[tuple[str, str]] = set()
    # The policy version each purpose was last granted under: the terms a withdrawn or
    # expired consent was given on (its state names no version).
    granted_under: dict[str, str] = {}
    for fact in trail["facts"]:
        kind, details = fact["type"], fact["details"]
        sealed = fact["personal_data"] or {}
        if fact["source"]:
            sources.add((fact["source"], fact["channel"] or ""))
        # In log order: a rectification overrides what a grant (or an earlier one) said.
        held.update(sealed.get("personal_data") or {})
        if sealed.get("evidence"):
            collected.append(
                {
                    "occurred_at": fact["occurred_at"],
                    "source": fact["source"],
                    "channel": fact["channel"],
                    "evidence": sealed["evidence"],
                }
            )
        if kind == "consent.granted":
            operator = details.get("operator") or {}
            operators[(operator.get("name", ""), operator.get("tin", ""))] = operator
            for purpose in details["purposes"]:
                granted_under[purpose] = details["policy_version"]
        elif kind == "transfer.recorded":
            transfers.append(
                {
                    "occurred_at": fact["occurred_at"],
                    "recipient": details["recipient"],
                    "categories": details["categories"],
                    "ground": details["ground"],
                    "cross_border": details["cross_border"],
                }
            )
        elif kind == "request.received":
            received = datetime.fromisoformat(fact["occurred_at"])
            own = details.get("due_at")
            due, _, _ = deadline(
                details["kind"],
                received,
                datetime.fromisoformat(own) if own else None,
                policies,
                ledger.settings.request_due_days,
                dict(ledger.settings.request_due_days_by_kind),
            )
            requests[details["request_id"]] = {
                "request_id": details["request_id"],
                "kind": details["kind"],
                "received_at": fact["occurred_at"],
                # When the person is owed the answer: the register's deadline.
                "due_at": due.isoformat(),
                "closed_at": None,
                "outcome": None,
            }
        elif kind == "request.closed" and details["request_id"] in requests:
            requests[details["request_id"]].update(
                closed_at=fact["occurred_at"], outcome=details["outcome"]
            )
        elif kind == "complaint.lodged":
            complaints.append(
                {
                    "occurred_at": fact["occurred_at"],
                    "authority": details["authority"],
                    "reference": details["reference"],
                }
            )

    in_force = _policy_in_force(policies, now)
    return {
        "tenant": tenant,
        "sid": sid.hex,
        "as_of": now.isoformat(),
        "subject": trail["subject"],
        "erased": trail["erased"],
        "erased_at": trail["erased_at"],
        "operators": sorted(
            operators.values(), key=lambda o: (o.get("name", ""), o.get("tin", ""))
        ),
        # None once erased: nothing is held (the key that could read it is destroyed).
        "personal_data": None if trail["erased"] else held,
        # Held, but not readable here: sealed under a key the key store lacks (restored from
        # a backup older than the log). The answer to the person is then incomplete.
        "personal_data_unreadable": any(
            fact["personal_data"] == {"key_missing": True} for fact in trail["facts"]
        ),
        # Destroyed, not held: the key store erased the key in an erasure the log does not
        # hold (a log restored from a backup older than it), which is still to be recorded.
        "personal_data_key_erased": any(
            fact["personal_data"] == {"key_erased": True} for fact in trail["facts"]
        ),
        "collected_with": collected,  # empty once erased: the trail decrypts nothing then
        "consents": [
            {
                **state,
                **_terms(
                    policies,
                    state["policy_version"] or granted_under.get(state["purpose"]),
                    state["purpose"],
                ),
            }
            for state in consents["purposes"]
            if state["state"] != "none"
        ],
        "policy_in_force": None if in_force is None else in_force.as_dict(),
        "transfers": transfers,
        "requests": list(requests.values()),
        "complaints": complaints,
        "sources": [{"source": s, "channel": c} for s, c in sorted(sources)],
    }


def _terms(policies: dict[str, PolicyVersion], version: str | None, purpose: str) -> dict[str, Any]:
    """What the policy version a consent was given under says of its purpose."""
    policy = policies.get(version) if version else None
    terms = policy.purposes.get(purpose) if policy else None
    if terms is None:
        return {
            "granted_under": version,
            "legal_basis": None,
            "categories": [],
            "retention_days": None,
        }
    return {"granted_under": version, **terms.as_dict()}


def _policy_in_force(policies: dict[str, PolicyVersion], now: datetime) -> PolicyVersion | None:
    effective = [p for p in policies.values() if p.effective_at <= now]
    return max(effective, key=lambda p: p.effective_at, default=None)
