"""Policy versions: the catalogue of purposes, categories, bases and retention, as data.

A tenant publishes versions of its own policy; every grant names the version the person saw.
The seed policy (crmpro.uz, under ZRU-547) ships as the default version of the `demo` tenant.
"""

from __future__ import annotations

import hashlib
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
