"""Policy versions: the catalogue of purposes, categories, bases and retention, as data.

A tenant publishes versions of its own policy; every grant names the version the person saw.
The seed policy (crmpro.uz, under ZRU-547) ships as the default version of the `demo` tenant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

DEMO_TENANT = "demo"
SEED_POLICY_VERSION = "crmpro-1.0"
SEED_EFFECTIVE_AT = "2020-01-01T00:00:00+05:00"
SEED_OPERATOR = {"name": "MEGABITE-CRM LLC", "tin": "309519699"}


@dataclass(frozen=True)
class PurposeTerms:
    legal_basis: str
    categories: tuple[str, ...]
    retention_days: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "legal_basis": self.legal_basis,
            "categories": list(self.categories),
            "retention_days": self.retention_days,
        }


@dataclass(frozen=True)
class PolicyVersion:
    version: str
    effective_at: datetime
    language: str
    text_sha256: str
    operator_name: str
    operator_tin: str
    purposes: dict[str, PurposeTerms]
    # The days within which this version promises to answer each kind of subject request.
    request_due_days: dict[str, int] = field(default_factory=dict)
    # The full text people were shown (what text_sha256 hashes); kept out of as_dict.
    text: str = field(default="", repr=False, compare=False)
    # categories_of's answers: every grant asks twice, and publishers send few combinations.
    _categories_of: dict[tuple[str, ...], tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def as_dict(self) -> dict[str, Any]:
        """As the policy routes answer (`GET /v1/policies/{version}`)."""
        return {
            "policy_version": self.version,
            "effective_at": self.effective_at.isoformat(),
            "language": self.language,
            "text_sha256": self.text_sha256,
            "operator": {"name": self.operator_name, "tin": self.operator_tin},
            "purposes": {name: t.as_dict() for name, t in self.purposes.items()},
            "request_due_days": dict(self.request_due_days),
        }

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(c for terms in self.purposes.values() for c in terms.categories)

    def categories_of(self, purposes: tuple[str, ...]) -> tuple[str, ...]:
        """The categories the purposes cover, in the policy's order, each once."""
        known = self._categories_of.get(purposes)
        if known is not None:
            return known
        seen: dict[str, None] = {}
        for purpose in purposes:
            for category in self.purposes[purpose].categories:
                seen.setdefault(category, None)
        found = tuple(seen)
        if len(self._categories_of) < 1024:  # a publisher's odd orderings cannot grow it
            self._categories_of[purposes] = found
        return found


def policy_text(policy: PolicyVersion) -> dict[str, Any]:
    """The text people were shown under this version, with what identifies it."""
    return {
        "policy_version": policy.version,
        "effective_at": policy.effective_at.isoformat(),
        "language": policy.language,
        "text_sha256": policy.text_sha256,
        "text": policy.text,
    }


def previous_version(
    policies: Mapping[str, PolicyVersion], version: PolicyVersion
) -> PolicyVersion | None:
    """The version in force just before `version` took effect: the latest to take effect
    earlier (of two taking effect at once, the later published), None for the first."""
    earlier = [p for p in policies.values() if p.effective_at < version.effective_at]
    return max(reversed(earlier), key=lambda p: p.effective_at, default=None)


def version_in_force(policies: Mapping[str, PolicyVersion], at: datetime) -> PolicyVersion | None:
    """The version in force at `at`: the latest to have taken effect by then (of two taking
    effect at once, the later published), None before the first."""
    taken = [p for p in policies.values() if p.effective_at <= at]
    return max(reversed(taken), key=lambda p: p.effective_at, default=None)


def policy_changes(old: PolicyVersion | None, new: PolicyVersion) -> dict[str, Any]:
    """What a new policy version changes (§9), and the purposes whose consent given under
    `old` does not cover what `new` asks: those to ask again (`consent_needed`).

    Consent covers the purpose, the categories and the keeping the person was shown, so a
    purpose on the consent basis needs it again when it is new, was on another basis
    before, covers categories it did not, or keeps data longer (or unbounded where it was
    bounded). Narrowing (a purpose or category removed, a shorter retention) needs none;
    nor does a purpose on a contract or a legal obligation, whose ground is not consent.
    A new text alone is reported, not judged: whether it changes what people agreed to is
    for the people who wrote it.
    """
    before = old.purposes if old is not None else {}
    was_due = dict(old.request_due_days) if old is not None else {}
    added = [p for p in new.purposes if p not in before]
    removed = [p for p in before if p not in new.purposes]
    changed: list[dict[str, Any]] = []
    needed: list[dict[str, Any]] = []
    for purpose, terms in new.purposes.items():
        reasons: list[str] = []
        if purpose not in before:
            if terms.legal_basis == "consent":
                needed.append({"purpose": purpose, "reasons": ["purpose_added"]})
            continue
        was = before[purpose]
        change: dict[str, Any] = {"purpose": purpose}
        if was.legal_basis != terms.legal_basis:
            change["legal_basis"] = {"from": was.legal_basis, "to": terms.legal_basis}
            reasons.append("basis_now_consent")
        more = [c for c in terms.categories if c not in was.categories]
        fewer = [c for c in was.categories if c not in terms.categories]
        if more:
            change["categories_added"] = more
            reasons.append("categories_added")
        if fewer:
            change["categories_removed"] = fewer
        if was.retention_days != terms.retention_days:
            change["retention_days"] = {"from": was.retention_days, "to": terms.retention_days}
            if was.retention_days is not None and (
                terms.retention_days is None or terms.retention_days > was.retention_days
            ):
                reasons.append("retention_extended")
        if len(change) > 1:
            changed.append(change)
        if terms.legal_basis == "consent" and reasons:
            needed.append({"purpose": purpose, "reasons": reasons})
    return {
        "policy_version": new.version,
        "effective_at": new.effective_at.isoformat(),
        "from": old.version if old is not None else None,
        "from_effective_at": old.effective_at.isoformat() if old is not None else None,
        "text_changed": old is None or old.text_sha256 != new.text_sha256,
        "operator_changed": old is None
        or (old.operator_name, old.operator_tin) != (new.operator_name, new.operator_tin),
        "language_changed": old is None or old.language != new.language,
        "request_due_days": (
            {"from": was_due, "to": dict(new.request_due_days)}
            if was_due != new.request_due_days
            else None
        ),
        "purposes_added": added,
        "purposes_removed": removed,
        "purposes_changed": changed,
        "consent_needed": needed,
    }


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seed_policy_text() -> str:
    return (resources.files("ledger") / "seed" / "privacy-policy.uz.txt").read_text("utf-8")


def seed_policy_fact(event_id: str = "seed-policy-crmpro-1.0") -> dict[str, Any]:
    """The seed policy as a `policy.published` fact of the demo tenant (§2.1, §3.1, §4.1)."""
    personal = ["full_name", "email", "phone", "user_provided"]
    return {
        "event_id": event_id,
        "type": "policy.published",
        "tenant": DEMO_TENANT,
        "occurred_at": SEED_EFFECTIVE_AT,
        "source": "policy-admin",
        "channel": "import",
        "policy_version": SEED_POLICY_VERSION,
        "effective_at": SEED_EFFECTIVE_AT,
        "language": "uz",
        "text": seed_policy_text(),
        "operator": dict(SEED_OPERATOR),
        "purposes": {
            "service_provision": {
                "legal_basis": "contract",
                "categories": [*personal, "network_device"],
                "retention_days": None,
            },
            "contract": {"legal_basis": "contract", "categories": personal, "retention_days": None},
            "support": {"legal_basis": "contract", "categories": personal, "retention_days": None},
            "service_improvement": {
                "legal_basis": "consent",
                "categories": ["network_device", "cookies"],
                "retention_days": None,
            },
            "marketing": {
                "legal_basis": "consent",
                "categories": ["full_name", "email", "phone"],
                "retention_days": None,
            },
            "legal_compliance": {
                "legal_basis": "legal_obligation",
                "categories": [*personal, "network_device", "cookies"],
                "retention_days": None,
            },
        },
    }
