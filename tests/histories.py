"""Random histories of facts (hypothesis strategies) and a plain reference model that folds
them, written independently of `ledger.consent` and `ledger.subject`: what the property
tests of the ledger (tests/test_properties.py) and of the views (tests/views_support.py)
are checked against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION
from ledger.receipt import Receipt
from tests.facts import policy

BASE = datetime.fromisoformat("2025-03-01T00:00:00+05:00")
SUBJECTS = ["s0", "s1", "s2"]
PURPOSES = ["marketing", "support", "service_improvement"]
CATEGORIES = {  # the seed policy's catalogue, as data
    "marketing": {"full_name", "email", "phone"},
    "support": {"full_name", "email", "phone", "user_provided"},
    "service_improvement": {"network_device", "cookies"},
}

# Two policy versions with the seed's catalogue, both in effect before BASE: grants name
# either, and corrections move a grant from one to the other (who consented under which).
VERSIONS = [SEED_POLICY_VERSION, "crmpro-1.1"]


def init_ledger(ledger: ConsentLedger) -> None:
    """The demo tenant with both policy versions."""
    ledger.init_demo()
    second = policy(VERSIONS[1], "2024-01-01T00:00:00+05:00")
    assert isinstance(ledger.record([parse_fact(second)])[0], Receipt)


hours = st.integers(min_value=0, max_value=24 * 20)
# An unknown purpose now and then (refused); mostly known ones, so that several subjects
# hold consent for one purpose at once (who had consent lists more than one).
purpose_sets = st.lists(
    st.sampled_from([*PURPOSES, *PURPOSES, *PURPOSES, "lottery"]),
    min_size=1,
    max_size=3,
    unique=True,
)


def at(h: int) -> str:
    return (BASE + timedelta(hours=h)).isoformat()


KINDS = [
    *["grant"] * 4,
    *["withdraw"] * 3,
    *["correct"] * 3,
    "erase",
    *["transfer"] * 2,
    *["retry"] * 2,
]


@st.composite
def operations(draw: st.DrawFn) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for n in range(draw(st.integers(min_value=1, max_value=30))):
        # Erasure rare enough that subjects mostly live to hold consent side by side.
        kind = draw(st.sampled_from(KINDS))
        subject = draw(st.sampled_from(SUBJECTS))
        base = {"event_id": f"e{n}", "tenant": "demo", "subject": subject, "source": "prop"}
        h = draw(hours)
        if kind == "retry" and ops:
            previous = draw(st.sampled_from(ops))
            if draw(st.booleans()):
                ops.append(dict(previous))  # the same fact again
            else:  # the same id, other content
                ops.append({**previous, "occurred_at": at(h + 1000)})
            continue
        if kind in ("grant", "retry"):
            f = {
                **base,
                "type": "consent.granted",
                "occurred_at": at(h),
                "policy_version": draw(st.sampled_from(VERSIONS)),
                "purposes": draw(purpose_sets),
                "third_party_transfer": draw(st.booleans()),
                "cross_border_transfer": draw(st.booleans()),
            }
            if draw(st.booleans()):
                f["expires_at"] = at(h + draw(st.integers(min_value=-2, max_value=200)))
        elif kind == "withdraw":
            purposes = ["*"] if draw(st.booleans()) else draw(purpose_sets)
            grants = [o for o in ops if o["subject"] == subject and o["type"] == "consent.granted"]
            after_a_grant = draw(st.booleans())
            if grants and after_a_grant:
                # After a grant of the subject, of its purposes: drawn blind, a withdrawal
                # mostly came before any grant and was refused, and so were corrections of it.
                granted = draw(st.sampled_from(grants))
                since = datetime.fromisoformat(granted["occurred_at"]) - BASE
                h = int(since / timedelta(hours=1)) + draw(st.integers(min_value=0, max_value=48))
                purposes = granted["purposes"][: draw(st.integers(1, len(granted["purposes"])))]
            f = {**base, "type": "consent.withdrawn", "occurred_at": at(h), "purposes": purposes}
        elif kind == "correct":
            own = [
                o["event_id"]
                for o in ops
                if o["subject"] == subject and o["type"] in ("consent.granted", "consent.withdrawn")
            ]
            withdrawals = [
                o["event_id"]
                for o in ops
                if o["subject"] == subject and o["type"] == "consent.withdrawn"
            ]
            if withdrawals and draw(st.integers(min_value=0, max_value=9)) < 3:
                target = draw(st.sampled_from(withdrawals))  # rarer, and rarely accepted
            elif own and draw(st.integers(min_value=0, max_value=9)) < 7:
                target = draw(st.sampled_from(own))  # mostly a fact that can be corrected
            else:
                target = f"e{draw(st.integers(min_value=0, max_value=max(n, 1)))}"
            f = {
                **base,
                "type": "consent.corrected",
                "occurred_at": at(h),
                "corrects": target,
                "reason": "correction",
            }
            # A withdrawal's correction mostly changes what one may change of it (its time,
            # its purposes), so that the rules of a withdrawal as corrected are reached.
            of_withdrawal = any(
                o["event_id"] == target and o["type"] == "consent.withdrawn" for o in ops
            )
            change = draw(
                st.sampled_from(
                    ["void", "occurred_at", "purposes", "occurred_at", "purposes", "expires_at"]
                    if of_withdrawal
                    else ["void", "occurred_at", "purposes", "expires_at", "policy_version"]
                )
            )
            if change == "void":
                f["void"] = True
            elif change == "occurred_at":
                f["changes"] = {"occurred_at": at(draw(hours))}
            elif change == "purposes":
                f["changes"] = {"purposes": draw(purpose_sets)}
            elif change == "policy_version":
                f["changes"] = {"policy_version": draw(st.sampled_from(VERSIONS))}
            else:
                f["changes"] = {"expires_at": at(draw(hours))}
        elif kind == "erase":
            f = {
                **base,
                "type": "subject.erased",
                "occurred_at": at(h),
                "ground": "subject_request",
            }
        else:
            f = {
                **base,
                "type": "transfer.recorded",
                "occurred_at": at(h),
                "recipient": {"name": "Partner", "country": "KZ"},
                "categories": draw(
                    st.lists(
                        st.sampled_from(["email", "phone", "cookies"]),
                        min_size=1,
                        max_size=2,
                        unique=True,
                    )
                ),
                "ground": "explicit_consent",
                "cross_border": draw(st.booleans()),
            }
        ops.append(f)
    return ops


@dataclass
class RefSubject:
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # consent facts by id
    kinds: dict[str, str] = field(default_factory=dict)  # every accepted fact id -> type
    corrections: list[dict[str, Any]] = field(default_factory=list)
    erased: bool = False


class Reference:
    """The rules, restated plainly."""

    def __init__(self) -> None:
        self.subjects: dict[str, RefSubject] = {s: RefSubject() for s in SUBJECTS}
        self.recorded: dict[str, dict[str, Any]] = {}  # event_id -> the fact as first accepted
        self.owner: dict[str, str] = {}
        self.seq = 0

    def effective(self, s: RefSubject) -> list[dict[str, Any]]:
        facts = {k: dict(v) for k, v in s.facts.items()}
        for c in s.corrections:
            if c["corrects"] in facts:
                if c.get("void"):
                    facts[c["corrects"]]["void"] = True
                else:
                    facts[c["corrects"]].update(c["changes"])
        return [f for f in facts.values() if not f.get("void")]

    def state(self, subject: str, purpose: str, t: datetime, leaving_out: str | None = None) -> str:
        best = self.deciding(subject, purpose, t, leaving_out)
        if best is None:
            return "none"
        if best["kind"] == "withdrawal":
            return "withdrawn"
        if best["expires_at"] is not None and best["expires_at"] <= t:
            return "expired"
        return "granted"

    def version(self, subject: str, purpose: str, t: datetime) -> str | None:
        """The policy version of the grant in force, as corrected (None if none is)."""
        if self.state(subject, purpose, t) != "granted":
            return None
        best = self.deciding(subject, purpose, t)
        assert best is not None
        return str(best["policy_version"])

    def in_force(self, subject: str, t: datetime, leaving_out: str | None = None) -> set[str]:
        return {p for p in PURPOSES if self.state(subject, p, t, leaving_out) == "granted"}

    def apply(self, f: dict[str, Any]) -> str:
        """Returns 'accepted', 'duplicate' or the refusal code."""
        if f["event_id"] in self.recorded:
            return "duplicate" if self.recorded[f["event_id"]] == f else "event_id_conflict"
        code = self.check(f)
        if code == "accepted":
            self.record(f)
        return code

    def check(self, f: dict[str, Any]) -> str:
        s = self.subjects[f["subject"]]
        t = datetime.fromisoformat(f["occurred_at"])
        if f["type"] == "consent.granted":
            if s.erased:
                return "subject_erased"
            if "lottery" in f["purposes"]:
                return "unknown_purpose"
            if "expires_at" in f and datetime.fromisoformat(f["expires_at"]) <= t:
                return "expiry_before_grant"
        elif f["type"] == "consent.withdrawn":
            force = self.in_force(f["subject"], t)
            if f["purposes"] == ["*"]:
                return "accepted" if force else "purpose_not_in_force"
            return "accepted" if set(f["purposes"]) <= force else "purpose_not_in_force"
        elif f["type"] == "consent.corrected":
            target = f["corrects"]
            if target not in s.kinds:
                other = target in self.owner and self.owner[target] != f["subject"]
                return "correction_target_other_subject" if other else "correction_target_unknown"
            if s.kinds[target] not in ("consent.granted", "consent.withdrawn"):
                return "correction_target_not_consent"
            changes = f.get("changes", {})
            current = next(x for x in self.effective_with_void(s) if x["id"] == target)
            if current["kind"] == "withdrawal":
                if set(changes) - {"occurred_at", "purposes"}:
                    return "invalid_field"
                voided = any(c["corrects"] == target and c["void"] for c in s.corrections)
                if not voided and not f.get("void"):
                    # As corrected, it withdraws only what the others left in force then.
                    # Voiding it withdraws nothing, so nothing need be in force.
                    when = current["occurred_at"]
                    if "occurred_at" in changes:
                        when = _parse("occurred_at", changes["occurred_at"])
                    force = self.in_force(f["subject"], when, leaving_out=target)
                    if not set(changes.get("purposes", current["purposes"])) <= force:
                        return "purpose_not_in_force"
            else:
                merged = {**current, **{k: _parse(k, v) for k, v in changes.items()}}
                if "lottery" in merged["purposes"]:
                    return "unknown_purpose"
                # Categories stay as granted unless corrected; they must fit the new purposes.
                if not set(merged["categories"]) <= set().union(
                    *(CATEGORIES[p] for p in merged["purposes"])
                ):
                    return "unknown_category"
                if (
                    merged["expires_at"] is not None
                    and merged["expires_at"] <= merged["occurred_at"]
                ):
                    return "expiry_before_grant"
        elif f["type"] == "transfer.recorded":
            allowed: set[str] = set()
            for p in self.in_force(f["subject"], t):
                g = self.deciding(f["subject"], p, t)
                assert g is not None
                if g["third_party"] and (g["cross_border"] or not f["cross_border"]):
                    allowed |= set(g["categories"])
            if not set(f["categories"]) <= allowed:
                return "transfer_without_consent"
        return "accepted"

    def deciding(
        self, subject: str, purpose: str, t: datetime, leaving_out: str | None = None
    ) -> dict[str, Any] | None:
        """The last grant or withdrawal of `purpose` at or before `t` (ties: recording order),
        of every fact but `leaving_out`."""
        best: dict[str, Any] | None = None
        for f in self.effective(self.subjects[subject]):
            if (
                f["id"] != leaving_out
                and purpose in f["purposes"]
                and f["occurred_at"] <= t
                and (
                    best is None
                    or (f["occurred_at"], f["seq"]) > (best["occurred_at"], best["seq"])
                )
            ):
                best = f
        return best

    def effective_with_void(self, s: RefSubject) -> list[dict[str, Any]]:
        facts = {k: dict(v) for k, v in s.facts.items()}
        for c in s.corrections:
            if c["corrects"] in facts and not c.get("void"):
                facts[c["corrects"]].update(c["changes"])
        return list(facts.values())

    def record(self, f: dict[str, Any]) -> None:
        self.seq += 1
        s = self.subjects[f["subject"]]
        self.recorded[f["event_id"]] = f
        self.owner[f["event_id"]] = f["subject"]
        s.kinds[f["event_id"]] = f["type"]
        t = datetime.fromisoformat(f["occurred_at"])
        if f["type"] == "consent.granted":
            purposes = f["purposes"]
            s.facts[f["event_id"]] = {
                "id": f["event_id"],
                "kind": "grant",
                "seq": self.seq,
                "occurred_at": t,
                "purposes": purposes,
                "expires_at": datetime.fromisoformat(f["expires_at"])
                if "expires_at" in f
                else None,
                "policy_version": f["policy_version"],
                "third_party": f["third_party_transfer"],
                "cross_border": f["cross_border_transfer"],
                "categories": sorted(set().union(*(CATEGORIES[p] for p in purposes))),
            }
        elif f["type"] == "consent.withdrawn":
            purposes = (
                sorted(self.in_force(f["subject"], t)) if f["purposes"] == ["*"] else f["purposes"]
            )
            s.facts[f["event_id"]] = {
                "id": f["event_id"],
                "kind": "withdrawal",
                "seq": self.seq,
                "occurred_at": t,
                "purposes": purposes,
                "expires_at": None,
            }
        elif f["type"] == "consent.corrected":
            s.corrections.append(
                {
                    "corrects": f["corrects"],
                    "void": f.get("void", False),
                    "changes": {k: _parse(k, v) for k, v in f.get("changes", {}).items()},
                }
            )
        elif f["type"] == "subject.erased":
            s.erased = True


def _parse(key: str, value: Any) -> Any:
    return datetime.fromisoformat(value) if key in ("occurred_at", "expires_at") else value


def in_batches(ops: list[dict[str, Any]], cuts: list[int]) -> Iterator[list[dict[str, Any]]]:
    """The stream cut into batches of the drawn sizes, until it runs out."""
    i = 0
    for cut in cuts:
        if i >= len(ops):
            return
        yield ops[i : i + cut]
        i += cut
