"""Policy versions (§9): what a new one changes and whose consent to ask again, and the text
people were shown.

The rule is held to a plain statement of what consent covers (a property test); the routes
and the CLI (on both backends, the real process) answer the same.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import (
    PolicyVersion,
    PurposeTerms,
    policy_changes,
    previous_version,
    seed_policy_text,
)
from ledger.settings import Settings
from ledger.vocabulary import LEGAL_BASES
from tests.cli_support import run
from tests.facts import policy, terms

PURPOSES = ("marketing", "support", "service_improvement", "profiling")
CATEGORIES = ("full_name", "email", "phone", "cookies")
START = datetime(2025, 1, 1, tzinfo=UTC)


def version(name: str, purposes: dict[str, PurposeTerms], day: int = 0, **kw: Any) -> PolicyVersion:
    fields: dict[str, Any] = {
        "language": "uz",
        "text_sha256": "0" * 64,
        "operator_name": "MEGABITE-CRM LLC",
        "operator_tin": "309519699",
        **kw,
    }
    return PolicyVersion(name, START + timedelta(days=day), purposes=purposes, **fields)


def on(basis: str, *categories: str, days: int | None = None) -> PurposeTerms:
    return PurposeTerms(basis, tuple(categories), days)


def test_each_widening_of_a_consent_purpose_asks_again_and_narrowing_does_not() -> None:
    old = version(
        "v1",
        {
            "marketing": on("consent", "email", days=365),
            "support": on("contract", "email"),
            "analytics": on("consent", "cookies", "email", days=90),
            "newsletter": on("consent", "email"),
            "gone": on("consent", "email"),
        },
    )
    new = version(
        "v2",
        {
            "marketing": on("consent", "email", "phone", days=730),  # more, and kept longer
            "support": on("consent", "email"),  # was on a contract
            "analytics": on("consent", "cookies", days=30),  # narrowed only
            "newsletter": on("consent", "email"),  # the same
            "profiling": on("consent", "cookies"),  # new
            "billing": on("contract", "full_name"),  # new, not on consent
        },
        day=30,
        text_sha256="1" * 64,
    )
    changes = policy_changes(old, new)
    assert changes["consent_needed"] == [
        {"purpose": "marketing", "reasons": ["categories_added", "retention_extended"]},
        {"purpose": "support", "reasons": ["basis_now_consent"]},
        {"purpose": "profiling", "reasons": ["purpose_added"]},
    ]
    assert (changes["purposes_added"], changes["purposes_removed"]) == (
        ["profiling", "billing"],
        ["gone"],
    )
    assert changes["purposes_changed"] == [
        {
            "purpose": "marketing",
            "categories_added": ["phone"],
            "retention_days": {"from": 365, "to": 730},
        },
        {"purpose": "support", "legal_basis": {"from": "contract", "to": "consent"}},
        {
            "purpose": "analytics",
            "categories_removed": ["email"],
            "retention_days": {"from": 90, "to": 30},
        },
    ]
    assert (changes["from"], changes["policy_version"]) == ("v1", "v2")
    assert (changes["text_changed"], changes["operator_changed"]) == (True, False)


def test_a_bounded_retention_made_unbounded_asks_again() -> None:
    old = version("v1", {"marketing": on("consent", "email", days=365)})
    new = version("v2", {"marketing": on("consent", "email")}, day=1)
    assert policy_changes(old, new)["consent_needed"] == [
        {"purpose": "marketing", "reasons": ["retention_extended"]}
    ]
    assert policy_changes(new, old)["consent_needed"] == []


def test_a_change_of_the_promised_request_deadlines_is_reported() -> None:
    old = version("v1", {}, request_due_days={"information": 30})
    new = version("v2", {}, day=1, request_due_days={"information": 10, "erasure": 30})
    assert policy_changes(old, new)["request_due_days"] == {
        "from": {"information": 30},
        "to": {"information": 10, "erasure": 30},
    }
    assert policy_changes(new, new)["request_due_days"] is None
    assert policy_changes(None, version("v0", {}))["request_due_days"] is None


def test_the_first_version_compares_with_none() -> None:
    first = version("v1", {"marketing": on("consent", "email"), "support": on("contract")})
    changes = policy_changes(None, first)
    assert changes["from"] is None and changes["purposes_added"] == ["marketing", "support"]
    assert changes["consent_needed"] == [{"purpose": "marketing", "reasons": ["purpose_added"]}]


def test_the_version_before_is_the_one_in_force_before_it_took_effect() -> None:
    # Published out of order: v3 first, then v1, then v2 (and v2b taking effect with v2).
    v1 = version("v1", {}, day=0)
    v2 = version("v2", {}, day=10)
    v2b = version("v2b", {}, day=10)
    v3 = version("v3", {}, day=20)
    catalogue = {p.version: p for p in (v3, v1, v2, v2b)}
    assert previous_version(catalogue, v3) is v2b  # of two at once, the later published
    assert previous_version(catalogue, v2) is v1
    assert previous_version(catalogue, v2b) is v1
    assert previous_version(catalogue, v1) is None


purpose_terms = st.builds(
    PurposeTerms,
    legal_basis=st.sampled_from(sorted(LEGAL_BASES)),
    categories=st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=4).map(tuple),
    retention_days=st.none() | st.integers(min_value=1, max_value=5),
)
catalogues = st.dictionaries(st.sampled_from(PURPOSES), purpose_terms, max_size=len(PURPOSES))


def covers(old: PurposeTerms | None, new: PurposeTerms) -> bool:
    """Consent given for `old` also agreed to `new`: the same purpose on consent, no category
    it did not name, kept no longer (unbounded is longest)."""
    if old is None or old.legal_basis != "consent":
        return False
    longest = float("inf")
    return set(new.categories) <= set(old.categories) and (new.retention_days or longest) <= (
        old.retention_days or longest
    )


def meaning(t: PurposeTerms) -> tuple[str, frozenset[str], int | None]:
    """What a purpose's terms say, whatever order they list categories in."""
    return t.legal_basis, frozenset(t.categories), t.retention_days


@given(catalogues, catalogues)
def test_consent_is_asked_again_exactly_where_the_old_consent_does_not_cover(
    before: dict[str, PurposeTerms], after: dict[str, PurposeTerms]
) -> None:
    old, new = version("old", before), version("new", after, day=1)
    changes = policy_changes(old, new)
    needed = [n["purpose"] for n in changes["consent_needed"]]
    assert needed == [
        p for p, t in after.items() if t.legal_basis == "consent" and not covers(before.get(p), t)
    ]
    changed = {c["purpose"] for c in changes["purposes_changed"]}
    assert changed == {p for p in after if p in before and meaning(before[p]) != meaning(after[p])}
    same = policy_changes(new, new)
    assert same["consent_needed"] == same["purposes_changed"] == same["purposes_added"] == []


def second_version() -> dict[str, Any]:
    """crmpro-2.0: marketing over what people submit too, kept two years (not longer: the
    seed keeps it as long as the purpose needs); support narrowed; profiling new."""
    return policy(
        "crmpro-2.0",
        "2026-01-01T00:00:00+05:00",
        {
            "marketing": terms(730, "full_name", "email", "phone", "user_provided"),
            "support": {"legal_basis": "contract", "categories": ["email"], "retention_days": None},
            "profiling": terms(None, "cookies"),
        },
        request_due_days={"information": 10},
    )


def test_the_route_answers_the_change_from_the_version_before(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
        ledger.record([parse_fact(second_version())])
        tenant = ledger.tenant("demo")
        assert tenant is not None
        expected = policy_changes(tenant.policies["crmpro-1.0"], tenant.policies["crmpro-2.0"])
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        key = api_keys.create("demo", {"publisher"})[1]
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        got = client.get("/v1/policies/crmpro-2.0/changes", headers=headers)
        named = client.get("/v1/policies/crmpro-2.0/changes?from=crmpro-1.0", headers=headers)
        first = client.get("/v1/policies/crmpro-1.0/changes", headers=headers)
        unknown = client.get("/v1/policies/crmpro-9/changes", headers=headers)
        unknown_from = client.get("/v1/policies/crmpro-2.0/changes?from=crmpro-9", headers=headers)
        text = client.get("/v1/policies/crmpro-1.0/text", headers=headers)
        no_text = client.get("/v1/policies/crmpro-9/text", headers=headers)
    assert got.status_code == 200 and got.json() == expected == named.json()
    assert [n["purpose"] for n in expected["consent_needed"]] == ["marketing", "profiling"]
    assert (first.json()["from"], first.json()["purposes_removed"]) == (None, [])
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_policy_version")
    seed = seed_policy_text()
    assert text.status_code == 200 and text.json()["text"] == seed
    assert text.json()["text_sha256"] == hashlib.sha256(seed.encode()).hexdigest()
    assert (no_text.status_code, no_text.json()["code"]) == (404, "unknown_policy_version")
    problem = unknown_from.json()
    assert (unknown_from.status_code, problem["code"], problem["field"]) == (
        422,
        "unknown_policy_version",
        "from",
    )


def test_a_copy_of_a_tenant_changes_apart_from_it_and_shares_each_published_version(
    tmp_path: Path,
) -> None:
    """A batch publishes on a copy while readers hold the tenant: every mutable mapping of
    it is the copy's own (a new attribute of one fails here until the copy takes it); the
    versions, never changed once published, are shared rather than copied again."""
    with contextlib.closing(ConsentLedger(Settings(data_dir=tmp_path / "data"))) as ledger:
        ledger.init_demo()
        ledger.record([parse_fact(second_version())])
        tenant = ledger.tenant("demo", shared=True)
        assert tenant is not None
        copied = copy.deepcopy(tenant)
        for name, value in vars(tenant).items():
            if isinstance(value, dict | list | set | bytearray):
                assert vars(copied)[name] is not value and vars(copied)[name] == value, name
        assert all(copied.policies[v] is p for v, p in tenant.policies.items())
        copied.policies["crmpro-3.0"] = copied.policies["crmpro-2.0"]
        assert "crmpro-3.0" not in tenant.policies


def test_policies_from_the_command_line(data: Path) -> None:
    stored = run(data, "record", stdin=orjson.dumps(second_version()).decode())
    assert stored.returncode == 0, stored.stdout
    listed = run(data, "policies", "list", "--tenant", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [p["policy_version"] for p in orjson.loads(listed.stdout)["policies"]] == [
        "crmpro-1.0",
        "crmpro-2.0",
    ]
    table = run(data, "policies", "list", "--tenant", "demo").stdout.splitlines()
    assert [line.split()[:2] for line in table] == [
        ["crmpro-1.0", "effective"],
        ["crmpro-2.0", "effective"],
    ]
    hashes = [p["text_sha256"] for p in orjson.loads(listed.stdout)["policies"]]
    assert [line.split()[-1] for line in table] == hashes
    empty = run(data, "tenants", "create", "acme")
    assert empty.returncode == 0, empty.stderr
    none = run(data, "policies", "list", "--tenant", "acme").stdout
    assert none == "tenant 'acme' has published no policy version\n"
    shown = run(data, "policies", "show", "crmpro-2.0", "--tenant", "demo", "--json")
    assert orjson.loads(shown.stdout)["purposes"]["marketing"]["retention_days"] == 730
    as_json = run(data, "policies", "changes", "crmpro-2.0", "--tenant", "demo", "--json")
    assert as_json.returncode == 0, as_json.stderr
    changes = orjson.loads(as_json.stdout)
    assert changes["from"] == "crmpro-1.0"
    assert changes["consent_needed"] == [
        {"purpose": "marketing", "reasons": ["categories_added"]},
        {"purpose": "profiling", "reasons": ["purpose_added"]},
    ]
    text = run(data, "policies", "changes", "crmpro-2.0", "--tenant", "demo").stdout.splitlines()
    assert "  request deadlines: none (the settings') -> information 10 days" in text
    published = run(data, "policies", "show", "crmpro-1.0", "--tenant", "demo", "--text")
    assert published.stdout == seed_policy_text()  # word for word, nothing added
    text_json = run(data, "policies", "show", "crmpro-2.0", "--tenant=demo", "--text", "--json")
    assert orjson.loads(text_json.stdout)["text"] == "policy crmpro-2.0"
    shown_text = run(data, "policies", "show", "crmpro-2.0", "--tenant", "demo").stdout
    assert "  answers requests within: information 10 days\n" in shown_text
    assert "  + profiling" in text and "  marketing: categories_added" in text
    assert any(line.startswith("  - ") and "legal_compliance" in line for line in text)
    back = run(data, "policies", "changes", "crmpro-1.0", "--tenant=demo", "--from=crmpro-2.0")
    assert back.stdout.splitlines()[-2:] == [  # in the policy's own order
        "  service_improvement: purpose_added",
        "  marketing: retention_extended",  # 730 days back to as long as the purpose needs
    ]
    same = run(data, "policies", "changes", "crmpro-2.0", "--tenant=demo", "--from=crmpro-2.0")
    assert same.stdout.splitlines()[-1] == (
        "no consent given under the earlier version needs asking again"
    )
    first = run(data, "policies", "changes", "crmpro-1.0", "--tenant", "demo")
    assert first.stdout.splitlines()[0] == (
        "policy crmpro-1.0 is the tenant's first: every purpose is new"
    )
    assert first.stdout.splitlines()[-3:] == [  # none to ask again: nobody held any before
        "consent to ask for, none given before (the purposes on the consent basis):",
        "  service_improvement",
        "  marketing",
    ]
    missing = run(data, "policies", "changes", "crmpro-9", "--tenant", "demo")
    assert missing.returncode == 3 and "unknown_policy_version" in missing.stderr
    nobody = run(data, "policies", "list", "--tenant", "nobody")
    assert (nobody.returncode, nobody.stderr.strip()) == (3, "consent-ledger: no such tenant")
