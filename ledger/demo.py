"""A realistic stream of consent facts for the demo tenant (deterministic, so reruns are retries).

Names, phones and emails are invented; they exist so the demo shows personal data being sealed,
decrypted in a trail, and destroyed by erasure.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from ledger.policy import DEMO_TENANT, SEED_POLICY_VERSION

TASHKENT = timezone(timedelta(hours=5))
FIRST = [
    "Aziz",
    "Dilnoza",
    "Jasur",
    "Malika",
    "Otabek",
    "Nodira",
    "Sardor",
    "Gulnora",
    "Bekzod",
    "Shahnoza",
    "Javlon",
    "Madina",
    "Rustam",
    "Zarina",
    "Timur",
    "Laylo",
]
LAST = [
    "Karimov",
    "Yusupova",
    "Rahimov",
    "Tursunova",
    "Aliyev",
    "Saidova",
    "Qodirov",
    "Nazarova",
    "Ergashev",
    "Mirzayeva",
    "Xolmatov",
    "Abdullayeva",
]
FORMS = ["signup", "newsletter", "trial", "webinar"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5)",
    "Mozilla/5.0 (Linux; Android 14; SM-A546E)",
]


def contact(i: int) -> str:
    return f"crm-contact-{i:05d}"


# The stream's story is told about subjects 3 (corrections, a transfer, a request) and 7
# (an erasure), so it needs at least this many.
MIN_SUBJECTS = 8
MAX_SUBJECTS = 100_000  # a few minutes of facts; the story is the same at any size


def demo_stream(subjects: int = 300, seed: int = 547) -> list[dict[str, Any]]:
    """Grants for every subject; withdrawals, a late fact, corrections, a transfer, requests
    and an erasure for some. Ordered as publishers would send them."""
    if subjects < MIN_SUBJECTS:
        raise ValueError(f"the demo stream needs at least {MIN_SUBJECTS} subjects")
    rng = random.Random(seed)
    start = datetime(2025, 1, 6, 9, 0, tzinfo=TASHKENT)
    facts: list[dict[str, Any]] = []
    for i in range(subjects):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        at = start + timedelta(minutes=37 * i + rng.randint(0, 30))
        purposes = ["service_provision", "support"]
        if rng.random() < 0.7:
            purposes.append("marketing")
        if rng.random() < 0.5:
            purposes.append("service_improvement")
        facts.append(
            {
                "event_id": f"grant-{i:05d}",
                "type": "consent.granted",
                "tenant": DEMO_TENANT,
                "subject": contact(i),
                "occurred_at": at.isoformat(),
                "source": "signup-form",
                "channel": "web_form",
                "evidence": {
                    "ip": f"84.54.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                    "user_agent": rng.choice(AGENTS),
                    "form_id": rng.choice(FORMS),
                    "locale": rng.choice(["uz-UZ", "ru-UZ"]),
                },
                "policy_version": SEED_POLICY_VERSION,
                "purposes": purposes,
                "third_party_transfer": i % 10 == 0,
                "expires_at": (at + timedelta(days=730)).isoformat() if i % 7 == 0 else None,
                "personal_data": {
                    "full_name": f"{last} {first}",
                    "email": f"{first.lower()}.{last.lower()}{i}@example.uz",
                    "phone": f"+99890{rng.randint(1000000, 9999999)}",
                },
            }
        )
        if "marketing" in purposes and rng.random() < 0.25:
            facts.append(
                {
                    "event_id": f"withdraw-{i:05d}",
                    "type": "consent.withdrawn",
                    "tenant": DEMO_TENANT,
                    "subject": contact(i),
                    "occurred_at": (at + timedelta(days=rng.randint(5, 90))).isoformat(),
                    "source": "email-unsubscribe",
                    "channel": "email",
                    "purposes": ["marketing"],
                }
            )
    for fact in facts:
        if fact.get("expires_at") is None:
            fact.pop("expires_at", None)
    story = contact(3)
    s_at = datetime.fromisoformat(facts[_index_of(facts, "grant-00003")]["occurred_at"])
    facts += [
        # A late fact: the support desk recorded a phone consent a week after it happened.
        {
            "event_id": "support-call-00003",
            "type": "consent.granted",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=2)).isoformat(),
            "source": "support-desk",
            "channel": "phone_call",
            "policy_version": SEED_POLICY_VERSION,
            "purposes": ["marketing"],
            "third_party_transfer": True,
        },
        {
            "event_id": "transfer-00003",
            "type": "transfer.recorded",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=3)).isoformat(),
            "source": "billing",
            "recipient": {"name": "Click LLC", "country": "UZ"},
            "categories": ["full_name", "phone"],
            "ground": "explicit_consent",
        },
        {
            "event_id": "fix-00003",
            "type": "consent.corrected",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=4)).isoformat(),
            "source": "dpo-console",
            "corrects": "support-call-00003",
            "reason": "the call log shows the call a day earlier than entered",
            "changes": {"occurred_at": (s_at + timedelta(days=1)).isoformat()},
        },
        {
            "event_id": "request-00003",
            "type": "request.received",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=20)).isoformat(),
            "source": "support-desk",
            "channel": "email",
            "request_id": "REQ-2025-0003",
            "kind": "information",
        },
        {
            "event_id": "request-00003-closed",
            "type": "request.closed",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=24)).isoformat(),
            "source": "dpo-console",
            "request_id": "REQ-2025-0003",
            "outcome": "fulfilled",
        },
        {
            "event_id": "rectify-00003",
            "type": "subject.rectified",
            "tenant": DEMO_TENANT,
            "subject": story,
            "occurred_at": (s_at + timedelta(days=25)).isoformat(),
            "source": "crm",
            "personal_data": {"email": "updated.address3@example.uz"},
            "request_id": "REQ-2025-0003",
        },
    ]
    gone = contact(7)
    g_at = datetime.fromisoformat(facts[_index_of(facts, "grant-00007")]["occurred_at"])
    facts += [
        {
            "event_id": "request-00007",
            "type": "request.received",
            "tenant": DEMO_TENANT,
            "subject": gone,
            "occurred_at": (g_at + timedelta(days=30)).isoformat(),
            "source": "support-desk",
            "channel": "email",
            "request_id": "REQ-2025-0007",
            "kind": "erasure",
        },
        {
            "event_id": "erase-00007",
            "type": "subject.erased",
            "tenant": DEMO_TENANT,
            "subject": gone,
            "occurred_at": (g_at + timedelta(days=31)).isoformat(),
            "source": "dpo-console",
            "ground": "subject_request",
            "request_id": "REQ-2025-0007",
        },
        {
            "event_id": "request-00007-closed",
            "type": "request.closed",
            "tenant": DEMO_TENANT,
            "subject": gone,
            "occurred_at": (g_at + timedelta(days=31, hours=1)).isoformat(),
            "source": "dpo-console",
            "request_id": "REQ-2025-0007",
            "outcome": "fulfilled",
        },
    ]
    return facts


def _index_of(facts: list[dict[str, Any]], event_id: str) -> int:
    return next(i for i, f in enumerate(facts) if f["event_id"] == event_id)
