"""Every route, every role, own tenant against another tenant: a matrix, not a sample."""

from __future__ import annotations

import contextlib
import gzip
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.checkpoint import verify_checkpoint
from ledger.envelope import parse_fact
from ledger.policy import seed_policy_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.evidence import verify_evidence
from tests.answers_support import conforms
from tests.facts import fact, grant, policy
from tests.kafka_support import kafka_settings

ROLES = ("publisher", "compliance", "admin")


@dataclass
class World:
    client: TestClient
    keys: dict[tuple[str, str], str]  # (tenant, role) -> key
    sids: dict[str, str]  # tenant -> a sid of that tenant
    revoked: str
    expired: str  # a key with every role, past its expiry


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The whole matrix on both backends; in Kafka mode the service is the ledger writer."""
    data_dir = tmp_path_factory.mktemp("api") / "data"
    if request.param == "kafka":
        settings = kafka_settings(data_dir, request.getfixturevalue("kafka_bootstrap"))
    else:
        settings = Settings(data_dir=data_dir)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.create_tenant("acme")
    ledger.record([parse_fact({**seed_policy_fact("acme-policy"), "tenant": "acme"})])
    sids = {}
    for tenant in ("demo", "acme"):
        person = grant("person-1", tenant=tenant, event_id="person-1-grant")
        [receipt] = ledger.record([parse_fact(person)])
        assert not isinstance(receipt, Exception)
        assert receipt.sid is not None
        sids[tenant] = receipt.sid
    ledger.close()
    store = ApiKeys(keys_path(settings))
    keys = {(t, r): store.create(t, {r})[1] for t in ("demo", "acme") for r in ROLES}
    key_id, revoked = store.create("demo", set(ROLES))
    store.revoke(key_id)
    store.close()
    past = datetime(2026, 1, 1, tzinfo=UTC)  # its expiry has come: the store refuses one past
    expiring = ApiKeys(keys_path(settings), wall_clock=lambda: past - timedelta(days=1))
    expired = expiring.create("demo", set(ROLES), expires_at=past)[1]
    expiring.close()
    with TestClient(create_app(settings)) as client:
        yield World(client, keys, sids, revoked, expired)


def call(world: World, route: dict[str, Any], key: str | None, sid: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    path = route["path"].format(sid=sid)
    body = route.get("body")
    if callable(body):
        body = body()
    return world.client.request(route["method"], path, json=body, headers=headers)


_n = iter(range(1_000_000))


def fresh_grant() -> dict[str, Any]:
    fact = grant(f"api-{next(_n)}", event_id=f"api-{next(_n)}")
    del fact["tenant"]
    return fact


ROUTES: list[dict[str, Any]] = [
    {
        "method": "POST",
        "path": "/v1/facts",
        "body": fresh_grant,
        "roles": {"publisher", "admin"},
        "ok": 201,
    },
    {
        "method": "POST",
        "path": "/v1/facts:batch",
        "body": lambda: {"facts": [fresh_grant()]},
        "roles": {"publisher", "admin"},
        "ok": 200,
    },
    {
        "method": "POST",
        "path": "/v1/facts:lookup",
        "body": {"event_ids": ["person-1-grant", "never-sent"]},
        "roles": set(ROLES),
        "ok": 200,
    },
    {
        "method": "POST",
        "path": "/v1/subjects:resolve",
        "body": {"subject": "person-1"},
        "roles": set(ROLES),
        "ok": 200,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/consents",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/trail",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/trail?format=csv",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/evidence",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/report",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "GET",
        "path": "/v1/subjects/{sid}/accesses",
        "roles": {"compliance", "admin"},
        "ok": 200,
        "by_sid": True,
    },
    {
        "method": "POST",
        "path": "/v1/consents:check",
        "body": {
            "purpose": "marketing",
            "at": "2025-03-02T00:00:00+05:00",
            "subjects": ["person-1"],
        },
        "roles": {"compliance", "admin"},
        "ok": 200,
    },
    {
        "method": "GET",
        "path": "/v1/purposes/marketing/subjects?as_of=2025-03-02T00:00:00Z",
        "roles": {"compliance", "admin"},
        "ok": 200,
    },
    {"method": "GET", "path": "/v1/policies", "roles": set(ROLES), "ok": 200},
    {"method": "GET", "path": "/v1/policies/crmpro-1.0", "roles": set(ROLES), "ok": 200},
    {"method": "GET", "path": "/v1/policies/crmpro-1.0/changes", "roles": set(ROLES), "ok": 200},
    {"method": "GET", "path": "/v1/policies/crmpro-1.0/text", "roles": set(ROLES), "ok": 200},
    {
        "method": "GET",
        "path": "/v1/purposes/marketing/summary?as_of=2025-03-02T00:00:00Z",
        "roles": {"compliance", "admin"},
        "ok": 200,
    },
    {"method": "GET", "path": "/v1/due", "roles": {"compliance", "admin"}, "ok": 200},
    {"method": "GET", "path": "/v1/requests", "roles": {"compliance", "admin"}, "ok": 200},
    {"method": "GET", "path": "/v1/verify", "roles": {"compliance", "admin"}, "ok": 200},
    {"method": "GET", "path": "/v1/checkpoint", "roles": {"compliance", "admin"}, "ok": 200},
]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r['method']} {r['path']}")
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(world: World, route: dict[str, Any], role: str) -> None:
    response = call(world, route, world.keys[("demo", role)], world.sids["demo"])
    if role in route["roles"]:
        assert response.status_code == route["ok"], response.text
        if "format=csv" not in route["path"]:
            conforms(world.client, response)  # on both backends: Kafka's partitions too
    else:
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize("route", [r for r in ROUTES if r.get("by_sid")], ids=lambda r: r["path"])
@pytest.mark.parametrize("role", ["compliance", "admin"])
def test_another_tenants_sid_is_not_found(world: World, route: dict[str, Any], role: str) -> None:
    response = call(world, route, world.keys[("demo", role)], world.sids["acme"])
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_subject"
    own = call(world, route, world.keys[("acme", role)], world.sids["acme"])
    assert own.status_code == 200


def test_an_evidence_package_over_http_verifies_on_its_own(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    package = world.client.get(f"/v1/subjects/{sid}/evidence", headers=headers).json()
    result = verify_evidence(package)
    assert result.ok, result.problems
    trail = world.client.get(f"/v1/subjects/{sid}/trail", headers=headers).json()
    assert package["trail"]["facts"] == trail["facts"][: len(package["trail"]["facts"])]
    assert package["sid"] == sid and package["tenant"] == "demo"


def test_checkpoints_over_http_prove_the_log_grew(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    old = world.client.get("/v1/checkpoint", headers=headers).json()
    sizes = ",".join(str(t["size"]) for t in old["tree_head"]["trees"])
    publisher = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    assert world.client.post("/v1/facts", json=fresh_grant(), headers=publisher).status_code == 201
    new = world.client.get(f"/v1/checkpoint?since_sizes={sizes}", headers=headers).json()
    assert verify_checkpoint(new, old).ok
    sid = world.sids["demo"]
    package = world.client.get(
        f"/v1/subjects/{sid}/evidence?since_sizes={sizes}", headers=headers
    ).json()
    assert verify_evidence(package, None, old).ok
    ahead = world.client.get(f"/v1/checkpoint?since_sizes={10**9}", headers=headers)
    assert ahead.status_code == 422 and ahead.json()["field"] == "since_sizes"
    garbled = world.client.get("/v1/checkpoint?since_sizes=1,x", headers=headers)
    assert garbled.status_code == 422 and garbled.json()["code"] == "invalid_field"


def test_no_proof_is_signed_over_http_for_a_log_that_does_not_verify(tmp_path: Path) -> None:
    """A checkpoint and an evidence package vouch for the log with the ledger's key: for a
    log whose fact index no longer hashes to its recorded root (another subject's row
    rewritten), each is refused, 503 `log_not_intact`, as the README says, and not signed."""
    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    mine, other = ledger.record([parse_fact(grant("mine")), parse_fact(grant("someone-else"))])
    ledger.close()
    assert isinstance(mine, Receipt) and isinstance(other, Receipt)
    with contextlib.closing(sqlite3.connect(settings.log_path)) as db, db:
        rewritten = db.execute(
            "UPDATE stored_events_index SET hash = ? WHERE originator_id = ?",
            ("0" * 64, other.sid),
        )
        assert rewritten.rowcount == 1
    store = ApiKeys(keys_path(settings))
    headers = {"Authorization": f"Bearer {store.create('demo', {'compliance'})[1]}"}
    store.close()
    with TestClient(create_app(settings)) as client:
        for path in ("/v1/checkpoint", f"/v1/subjects/{mine.sid}/evidence"):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 503, (path, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "log_not_intact"


def test_a_campaign_check_treats_another_tenants_sid_as_unknown(world: World) -> None:
    """Both tenants' person-1 granted marketing: each tenant's check sees its own consent and
    the other's sid as no subject at all, never as granted, withdrawn or erased."""
    for tenant, other in (("demo", "acme"), ("acme", "demo")):
        response = world.client.post(
            "/v1/consents:check",
            headers={"Authorization": f"Bearer {world.keys[(tenant, 'compliance')]}"},
            json={
                "purpose": "marketing",
                "at": "2025-03-02T00:00:00Z",
                "sids": [world.sids[tenant], world.sids[other]],
            },
        )
        assert response.status_code == 200, response.text
        report = response.json()
        assert (report["checked"], report["with_consent"]) == (2, 1)
        [lacking] = report["without_consent"]
        assert (lacking["index"], lacking["sid"], lacking["reason"]) == (
            1,
            world.sids[other],
            "unknown_subject",
        )


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r['method']} {r['path']}")
def test_no_key_bad_key_revoked_key(world: World, route: dict[str, Any]) -> None:
    # Every 401 names the scheme to use (RFC 9110 15.5.2: it MUST), and says whether the
    # key given was refused (RFC 6750 3.1), so a client library can tell the two apart.
    asked = 'Bearer realm="consent-ledger"'
    refused = f'{asked}, error="invalid_token"'
    for key in (None, "cl_nope_nope", world.revoked, "not-even-a-key"):
        response = call(world, route, key, world.sids["demo"])
        assert response.status_code == 401, (key, response.text)
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == (asked if key is None else refused)
    expired = call(world, route, world.expired, world.sids["demo"])
    assert expired.status_code == 401, expired.text
    assert expired.json()["code"] == "api_key_expired"
    assert "2026-01-01T00:00:00+00:00" in expired.json()["detail"]
    assert expired.headers["www-authenticate"] == refused


def test_erasure_is_admin_only_and_tenant_bound(world: World) -> None:
    [grant_receipt] = [
        world.client.post(
            "/v1/facts",
            json=fresh_grant(),
            headers={"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"},
        ).json()
    ]
    sid = grant_receipt["sid"]
    path = f"/v1/subjects/{sid}/erasure"
    body = {"ground": "subject_request"}
    for role in ("publisher", "compliance"):
        headers = {"Authorization": f"Bearer {world.keys[('demo', role)]}"}
        assert world.client.post(path, json=body, headers=headers).status_code == 403
    other = {"Authorization": f"Bearer {world.keys[('acme', 'admin')]}"}
    assert world.client.post(path, json=body, headers=other).status_code == 404
    admin = {"Authorization": f"Bearer {world.keys[('demo', 'admin')]}"}
    bad = world.client.post(path, json={"ground": "because"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_field"
    done = world.client.post(path, json=body, headers=admin)
    assert done.status_code == 201, done.text
    trail = world.client.get(f"/v1/subjects/{sid}/trail", headers=admin).json()
    assert trail["erased"] is True and trail["facts"][-1]["type"] == "subject.erased"


def test_an_erasure_retried_with_its_event_id_gets_the_first_receipt(world: World) -> None:
    """The route sets `occurred_at` itself; a retry must not read as other content."""
    publisher = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    sid = world.client.post("/v1/facts", json=fresh_grant(), headers=publisher).json()["sid"]
    admin = {"Authorization": f"Bearer {world.keys[('demo', 'admin')]}"}
    path = f"/v1/subjects/{sid}/erasure"
    body = {"ground": "subject_request", "event_id": f"erasure-{sid}"}
    first = world.client.post(path, json=body, headers=admin)
    assert first.status_code == 201, first.text
    again = world.client.post(path, json=body, headers=admin)
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "duplicate": True}
    other = world.client.post(path, json={**body, "ground": "court_decision"}, headers=admin)
    assert other.status_code == 409 and other.json()["code"] == "event_id_conflict"


def test_an_erasure_body_is_refused_exactly_when_its_documented_schema_refuses_it(
    world: World,
) -> None:
    """`event_id` and `request_id` may be null, as not given: the route takes that, and the
    document said so in an `anyOf`, but beside it a `not` of the control-character pattern
    that a null fails (a pattern holds of anything but a string, so its `not` of nothing
    but a string). Schemathesis sent `"event_id": null` as a body the document refuses, and
    the route recorded the erasure (`TEST_EXAMPLES_SCALE=20`, 2026-12-08)."""
    from jsonschema import Draft202012Validator

    document = world.client.get("/openapi.json").json()
    validator = Draft202012Validator(document["components"]["schemas"]["Erasure"])
    publisher = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    admin = {"Authorization": f"Bearer {world.keys[('demo', 'admin')]}"}
    ground = {"ground": "court_decision"}
    for body in (
        ground,
        {**ground, "event_id": None},
        {**ground, "request_id": None},
        {**ground, "event_id": None, "request_id": None},
        {**ground, "event_id": f"erasure-{next(_n)}", "request_id": "req-1"},
        {**ground, "event_id": "erasure\n1"},
        {**ground, "request_id": "req\u202e1"},
        {**ground, "event_id": ""},
        {**ground, "request_id": "r" * 129},
        {**ground, "event_id": 7},
        {"ground": "because"},
        {"ground": None},
        {},
        {**ground, "reason": "asked"},
    ):
        sid = world.client.post("/v1/facts", json=fresh_grant(), headers=publisher).json()["sid"]
        answer = world.client.post(f"/v1/subjects/{sid}/erasure", json=body, headers=admin)
        assert answer.status_code in (201, 422), answer.text
        assert validator.is_valid(body) == (answer.status_code == 201), (body, answer.text)


def test_publishing_is_idempotent_and_conflicts_are_409(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    fact = fresh_grant()
    first = world.client.post("/v1/facts", json=fact, headers=headers)
    again = world.client.post("/v1/facts", json=fact, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert {**first.json(), "duplicate": True} == again.json()
    clash = world.client.post("/v1/facts", json={**fact, "purposes": ["support"]}, headers=headers)
    assert clash.status_code == 409 and clash.json()["code"] == "event_id_conflict"
    other_tenant = world.client.post(
        "/v1/facts", json={**fresh_grant(), "tenant": "acme"}, headers=headers
    )
    assert other_tenant.status_code == 422 and other_tenant.json()["code"] == "tenant_mismatch"


def test_receipts_are_looked_up_by_event_id_within_the_tenant(world: World) -> None:
    """A publisher that lost its answers learns which facts landed, each receipt as first
    given, on both backends; another tenant's event ids read as never recorded."""
    publisher = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    facts = [fresh_grant(), fresh_grant()]
    results = world.client.post("/v1/facts:batch", json={"facts": facts}, headers=publisher)
    first = [r["receipt"] for r in results.json()["results"]]
    asked = [facts[1]["event_id"], "never-sent", facts[0]["event_id"], facts[1]["event_id"]]
    for role in ROLES:
        headers = {"Authorization": f"Bearer {world.keys[('demo', role)]}"}
        found = world.client.post("/v1/facts:lookup", json={"event_ids": asked}, headers=headers)
        assert found.status_code == 200, found.text
        answer = found.json()
        assert (answer["recorded"], answer["not_recorded"]) == (3, 1)
        assert answer["results"] == [
            {"index": 0, "event_id": asked[0], "recorded": True, "receipt": first[1]},
            {"index": 1, "event_id": "never-sent", "recorded": False},
            {"index": 2, "event_id": asked[2], "recorded": True, "receipt": first[0]},
            {"index": 3, "event_id": asked[3], "recorded": True, "receipt": first[1]},
        ]
    acme = {"Authorization": f"Bearer {world.keys[('acme', 'publisher')]}"}
    theirs = world.client.post("/v1/facts:lookup", json={"event_ids": asked}, headers=acme).json()
    assert [r["recorded"] for r in theirs["results"]] == [False] * 4
    for body, code, field in [
        ({"event_ids": []}, "invalid_field", "event_ids"),
        ({"event_ids": ["x"] * 1001}, "invalid_field", "event_ids"),
        ({"event_ids": ["x" * 129]}, "invalid_field", "event_ids.0"),
        ({"event_ids": [5]}, "invalid_field", "event_ids.0"),
        ({}, "missing_field", "event_ids"),
        ({"event_ids": ["x"], "tenant": "acme"}, "invalid_field", "tenant"),
    ]:
        refused = world.client.post("/v1/facts:lookup", json=body, headers=publisher)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert (refused.json()["code"], refused.json().get("field")) == (code, field)


@pytest.mark.parametrize(
    "body,code",
    [
        (b"{not json", "invalid_json"),
        (b"[1]", "not_an_object"),
        (b'{"type": "consent.granted"}', "missing_field"),
        (
            b'{"event_id": "x", "type": "nope", "occurred_at": "2025-01-01T00:00:00Z", '
            b'"source": "s"}',
            "unknown_type",
        ),
        (  # a member named twice: one parser reads one value, another the other
            b'{"event_id": "x", "type": "consent.granted", "event_id": "y"}',
            "invalid_json",
        ),
        (  # nested past what any fact needs: was a 500 from 255 levels of evidence on
            b'{"event_id": "x", "evidence": {"d": ' + b"[" * 300 + b"]" * 300 + b"}}",
            "invalid_json",
        ),
        (
            orjson.dumps({**grant("deep"), "evidence": {"d": [[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]}}),
            "invalid_field",
        ),
    ],
)
def test_bad_input_is_a_problem_never_a_500(world: World, body: bytes, code: str) -> None:
    headers = {
        "Authorization": f"Bearer {world.keys[('demo', 'publisher')]}",
        "Content-Type": "application/json",
    }
    response = world.client.post("/v1/facts", content=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def test_evidence_over_its_limit_is_413_oversize_alone_and_in_a_batch(world: World) -> None:
    """The envelope bounds evidence at 16 KiB inside a body the server takes: the fact is
    refused as too large (413, naming the field), not as malformed."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    large = {k: v for k, v in grant("ev-large", event_id="ev-large").items() if k != "tenant"} | {
        "evidence": {"form": "x" * 16_400}
    }
    single = world.client.post("/v1/facts", json=large, headers=headers)
    assert single.status_code == 413, single.text
    assert single.headers["content-type"] == "application/problem+json"
    assert (single.json()["code"], single.json()["field"]) == ("oversize", "evidence")
    batch = world.client.post("/v1/facts:batch", json={"facts": [large]}, headers=headers)
    assert batch.status_code == 200, batch.text
    (result,) = batch.json()["results"]
    assert (result["status"], result["problem"]["code"]) == (413, "oversize")


def test_a_fact_over_a_mebibyte_is_413_oversize_alone_and_in_a_batch(world: World) -> None:
    """A policy's text has no limit of its own, only the fact's 1 MiB. A batch's items were
    not measured: a 2 MB policy refused alone was recorded in a batch."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'admin')]}"}

    def long_policy(version: str) -> dict[str, Any]:
        made = {**policy(version, text="x" * 2_000_000), "event_id": f"long-{version}"}
        return {k: v for k, v in made.items() if k != "tenant"}

    single = world.client.post("/v1/facts", json=long_policy("v-long-1"), headers=headers)
    assert (single.status_code, single.json()["code"]) == (413, "oversize"), single.text
    good = {k: v for k, v in fresh_grant().items() if k != "tenant"}
    batch = world.client.post(
        "/v1/facts:batch", json={"facts": [long_policy("v-long-2"), good]}, headers=headers
    )
    assert batch.status_code == 200, batch.text
    long, other = batch.json()["results"]
    assert (long["status"], long["problem"]["code"]) == (413, "oversize")
    assert other["status"] == 201
    versions = str(world.client.get("/v1/policies", headers=headers).json())
    assert "crmpro-1.0" in versions and "v-long-2" not in versions


def test_batch_results_in_order(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    good = fresh_grant()
    bad = {**fresh_grant(), "purposes": ["lottery"]}
    response = world.client.post(
        "/v1/facts:batch", json={"facts": [good, bad, good, 5]}, headers=headers
    )
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 422, 200, 422]
    assert results[1]["problem"]["code"] == "unknown_purpose"
    assert results[3]["problem"]["code"] == "not_an_object"
    too_many = world.client.post("/v1/facts:batch", json={"facts": [good] * 1001}, headers=headers)
    assert too_many.status_code == 422 and too_many.json()["code"] == "batch_size"
    # A body that is not {"facts": [1 to 1,000 facts]} is refused whole, each for its reason.
    for body, code in (
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_field"),
        (b'{"facts": 5}', "invalid_field"),
        (b'{"fact": []}', "invalid_field"),
        (b'{"facts": []}', "batch_size"),
    ):
        whole = world.client.post(
            "/v1/facts:batch",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert whole.headers["content-type"] == "application/problem+json"
        assert (whole.status_code, whole.json()["code"]) == (422, code), body
        assert code == "invalid_json" or whole.json()["field"] == "facts"


def test_a_body_that_begins_with_a_byte_order_mark_is_read(world: World) -> None:
    """.NET's and Windows PowerShell's UTF-8 writers begin with a BOM, which RFC 8259 lets a
    parser ignore: the orjson routes refused such a body as "not valid JSON" while the
    routes FastAPI parses took it. Once at the start, and no more: two are not JSON."""
    headers = {
        "Authorization": f"Bearer {world.keys[('demo', 'publisher')]}",
        "Content-Type": "application/json",
    }
    bom = b"\xef\xbb\xbf"
    single = world.client.post(
        "/v1/facts", content=bom + orjson.dumps(fresh_grant()), headers=headers
    )
    assert single.status_code == 201, single.text
    batch = bom + orjson.dumps({"facts": [fresh_grant()]})
    results = world.client.post("/v1/facts:batch", content=batch, headers=headers)
    assert [r["status"] for r in results.json()["results"]] == [201], results.text
    twice = world.client.post(
        "/v1/facts", content=bom * 2 + orjson.dumps(fresh_grant()), headers=headers
    )
    assert twice.status_code == 422 and twice.json()["code"] == "invalid_json"


def test_a_batch_refuses_a_fact_that_names_a_member_twice_in_its_place(world: World) -> None:
    headers = {
        "Authorization": f"Bearer {world.keys[('demo', 'publisher')]}",
        "Content-Type": "application/json",
    }
    good = orjson.dumps(fresh_grant())
    twice = orjson.dumps(fresh_grant())[:-1] + b', "purposes" : ["service_improvement"]}'
    body = b'{"facts": [' + good + b"," + twice + b"]}"
    results = world.client.post("/v1/facts:batch", content=body, headers=headers).json()["results"]
    assert [r["status"] for r in results] == [201, 422]
    assert results[1]["problem"]["code"] == "invalid_json"
    facts_twice = b'{"facts": [' + good + b'], "facts": []}'
    too_deep = b'{"facts": [' + good + b"," + b"[" * 100 + b"]" * 100 + b"]}"
    for body in (facts_twice, too_deep):
        whole = world.client.post("/v1/facts:batch", content=body, headers=headers)
        assert whole.status_code == 422 and whole.json()["code"] == "invalid_json"


def refused_total(world: World, code: str) -> int:
    prefix = f'ledger_facts_refused_total{{code="{code}"}} '
    for line in world.client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return int(line.removeprefix(prefix))
    return 0


def test_every_refused_fact_is_counted_by_its_code_one_that_did_not_parse_too(
    world: World,
) -> None:
    """A single publish is parsed by the writer, a batch's items on the event loop: the
    metrics count a refusal the same wherever it was found."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'publisher')]}"}
    before = refused_total(world, "not_an_object"), refused_total(world, "unknown_purpose")
    single = world.client.post("/v1/facts", content=b"[1]", headers=headers)
    assert single.status_code == 422 and single.json()["code"] == "not_an_object"
    bad = {**fresh_grant(), "purposes": ["lottery"]}
    batch = world.client.post("/v1/facts:batch", json={"facts": [5, bad]}, headers=headers)
    assert [r["status"] for r in batch.json()["results"]] == [422, 422]
    after = refused_total(world, "not_an_object"), refused_total(world, "unknown_purpose")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


def test_a_sid_is_taken_in_the_spellings_the_document_gives(world: World) -> None:
    """32 hex digits, or a UUID's written form (hyphens, braces, `urn:uuid:`), either case,
    as the document's pattern says and the routes always served. `UUID(hex=...)` alone also
    took a hyphen anywhere and a sign, spellings the document did not give."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    spelled = str(UUID(hex=sid))
    for same in (sid, sid.upper(), spelled, "{" + spelled.upper() + "}", "urn:uuid:" + spelled):
        answer = world.client.get(f"/v1/subjects/{quote(same)}/consents", headers=headers)
        assert answer.status_code == 200, same
    for other in (sid[:3] + "-" + sid[3:], "+" + sid[1:], sid + " ", sid[:-1], sid + "0"):
        answer = world.client.get(f"/v1/subjects/{quote(other)}/consents", headers=headers)
        assert answer.status_code == 404 and answer.json()["code"] == "unknown_subject", other


def test_a_campaign_check_body_is_refused_exactly_when_its_documented_schema_refuses_it(
    world: World,
) -> None:
    """Exactly one of `subjects` and `sids`, each item in its shape: the document said only
    that both were optional lists of strings, and the route refused the rest itself."""
    from jsonschema import Draft202012Validator

    document = world.client.get("/openapi.json").json()
    validator = Draft202012Validator(document["components"]["schemas"]["Check"])
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    common = {"purpose": "marketing", "at": "2025-03-02T00:00:00Z"}
    for lists in (
        {"subjects": ["person-1"]},
        {"sids": [sid.upper()]},
        {"subjects": ["person-1"], "sids": [sid]},
        {},
        {"subjects": None, "sids": None},
        {"subjects": None, "sids": [sid]},
        {"subjects": [""]},
        {"subjects": ["x" * 257]},
        {"sids": [sid[:-1]]},
        {"sids": [str(UUID(hex=sid))]},
    ):
        body = {**common, **lists}
        answer = world.client.post("/v1/consents:check", json=body, headers=headers)
        assert answer.status_code in (200, 422), answer.text
        assert validator.is_valid(body) == (answer.status_code == 200), (lists, answer.text)


def test_query_errors(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    bad_time = world.client.get(f"/v1/subjects/{sid}/consents?as_of=yesterday", headers=headers)
    assert bad_time.status_code == 422 and bad_time.json()["code"] == "invalid_timestamp"
    # A '+' left unencoded in the query reaches the ledger as a space; the problem says so.
    plus = world.client.get(
        f"/v1/subjects/{sid}/consents?as_of=2025-03-01T10:00:00+05:00", headers=headers
    )
    assert plus.status_code == 422 and "%2B" in plus.json()["detail"], plus.json()
    encoded = world.client.get(
        f"/v1/subjects/{sid}/consents?as_of=2025-03-01t10:00:00%2B05:00", headers=headers
    )
    assert encoded.status_code == 200, encoded.json()
    # An empty instant (a script's variable left unset) was taken as not given by the
    # who-had-consent routes and the register: answered as of now, or for every period.
    for path in (
        f"/v1/subjects/{sid}/consents?as_of=",
        "/v1/purposes/marketing/subjects?as_of=",
        "/v1/purposes/marketing/summary?as_of=",
        "/v1/purposes/marketing/subjects?known_at=",
        "/v1/requests?received_from=",
        "/v1/requests?received_to=",
    ):
        empty = world.client.get(path, headers=headers)
        assert empty.status_code == 422 and empty.json()["code"] == "invalid_timestamp", path
    # Valid RFC 3339, but past the calendar once in UTC.
    for path in (
        f"/v1/subjects/{sid}/consents?as_of=9999-12-31T23:59:59-14:00",
        f"/v1/subjects/{sid}/consents?known_at=0001-01-01T00:00:00%2B14:00",
        "/v1/purposes/marketing/subjects?as_of=9999-12-31T23:59:59-14:00",
    ):
        far = world.client.get(path, headers=headers)
        assert far.status_code == 422 and far.json()["code"] == "invalid_timestamp", path
    far_check = world.client.post(
        "/v1/consents:check",
        headers=headers,
        json={"purpose": "marketing", "at": "9999-12-31T23:59:59-14:00", "sids": [sid]},
    )
    assert far_check.status_code == 422 and far_check.json()["code"] == "invalid_timestamp"
    at = "2025-03-02T00:00:00Z"
    for sids, status in (([sid.upper()], 200), ([sid[:-1] + "g"], 422), ([sid + "0"], 422)):
        checked = world.client.post(
            "/v1/consents:check",
            headers=headers,
            json={"purpose": "marketing", "at": at, "sids": sids},
        )
        assert checked.status_code == status, (sids, checked.text)
        if status == 422:
            assert checked.json()["detail"] == "a sid is 32 hex digits", checked.json()
            assert checked.json()["field"] == "sids.0"
    # A reference is 1 to 256 characters; the problem names which, by its place.
    for subjects in (["c-1", ""], ["c-1", "x" * 257]):
        checked = world.client.post(
            "/v1/consents:check",
            headers=headers,
            json={"purpose": "marketing", "at": at, "subjects": subjects},
        )
        assert checked.status_code == 422 and checked.json()["code"] == "invalid_field"
        assert checked.json()["field"] == "subjects.1" and "x" * 10 not in checked.text
    bad_cursor = world.client.get("/v1/purposes/marketing/subjects?cursor=zz", headers=headers)
    assert bad_cursor.status_code == 422 and bad_cursor.json()["code"] == "invalid_cursor"
    bad_due = world.client.get("/v1/due?limit=5&cursor=zz", headers=headers)
    assert bad_due.status_code == 422 and bad_due.json()["code"] == "invalid_cursor"
    check = world.client.post(
        "/v1/consents:check",
        headers=headers,
        json={"purpose": "marketing", "at": "2025-03-02T00:00:00Z"},
    )
    assert check.status_code == 422
    typo = world.client.post(
        "/v1/consents:check",
        headers=headers,
        json={"purpose": "marketting", "at": "2025-03-02T00:00:00Z", "sids": []},
    )
    assert typo.status_code == 422
    assert (typo.json()["code"], typo.json()["field"]) == ("unknown_purpose", "purpose")
    no_such = world.client.get("/v1/purposes/marketting/subjects", headers=headers)
    assert no_such.status_code == 404 and no_such.json()["code"] == "unknown_purpose"
    # A policy version the tenant never published: a typo, not "nobody consented under it".
    version = world.client.get(
        "/v1/purposes/marketing/subjects?policy_version=crmpro-9", headers=headers
    )
    assert version.status_code == 422
    assert (version.json()["code"], version.json()["field"]) == (
        "unknown_policy_version",
        "policy_version",
    )
    under = world.client.get(
        "/v1/purposes/marketing/subjects?as_of=2025-03-02T00:00:00Z&policy_version=crmpro-1.0",
        headers=headers,
    )
    everyone = world.client.get(
        "/v1/purposes/marketing/subjects?as_of=2025-03-02T00:00:00Z", headers=headers
    )
    assert under.json()["policy_version"] == "crmpro-1.0" and under.json()["sids"]
    assert under.json()["sids"] == everyone.json()["sids"]  # the seed is its one version
    unknown_route = world.client.get("/v1/nothing", headers=headers)
    assert unknown_route.status_code == 404 and unknown_route.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/verify/"),
        ("POST", "/v1/facts/"),
        ("GET", "/v1/policies/"),
        ("GET", "/healthz/"),
    ],
)
def test_a_path_with_a_slash_the_contract_does_not_name_is_not_found(
    world: World, method: str, path: str
) -> None:
    """Answered with a 307 to the path without it, no body: the redirect named the host and
    scheme the service saw, so behind a TLS proxy that did not say it was one, a client that
    follows it sent its key and the fact in the clear. Any path the contract does not name is
    a 404 problem."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'admin')]}"}
    answer = world.client.request(method, path, headers=headers, follow_redirects=False)
    assert answer.status_code == 404, answer.headers
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "not_found"
    assert "location" not in answer.headers


def test_known_at_still_to_come_is_refused_and_a_fast_clock_is_taken_as_now(
    world: World,
) -> None:
    """ "As known at" an instant still to come was answered with what the ledger knew then,
    labelled with that instant: the same question asked later (a report reproduced, the
    next page) got another answer. Refused past the clock skew the ledger allows; within
    it, answered as now."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+", "%2B")
    soon = (datetime.now(UTC) + timedelta(seconds=60)).isoformat().replace("+", "%2B")
    asked = [
        (f"/v1/subjects/{sid}/consents?known_at={{}}", None),
        ("/v1/purposes/marketing/subjects?known_at={}", None),
        ("/v1/purposes/marketing/summary?known_at={}", None),
        ("/v1/consents:check", {"purpose": "marketing", "at": "2025-03-02T00:00:00Z"}),
    ]
    for path, body in asked:
        answers = []
        for when in (later, soon):
            if body is None:
                answers.append(world.client.get(path.format(when), headers=headers))
            else:
                known = when.replace("%2B", "+")
                answers.append(
                    world.client.post(
                        path, headers=headers, json={**body, "known_at": known, "sids": [sid]}
                    )
                )
        refused, taken = answers
        assert refused.status_code == 422, (path, refused.json())
        assert (refused.json()["code"], refused.json()["field"]) == (
            "known_at_in_future",
            "known_at",
        )
        assert taken.status_code == 200, (path, taken.json())
        echoed = taken.json().get("known_at")
        if echoed is not None:
            assert datetime.fromisoformat(echoed) <= datetime.now(UTC), path


def test_operations(world: World) -> None:
    assert world.client.get("/healthz").json() == {"status": "ok"}
    assert world.client.get("/readyz").json()["status"] == "ready"
    metrics = world.client.get("/metrics").text
    assert "ledger_facts_accepted_total" in metrics and "ledger_projection_lag" in metrics
    assert "person-1" not in metrics


def test_requests_are_counted_by_route_template(world: World) -> None:
    """FastAPI's routes and Starlette's (the OpenAPI document) by their template, a URL that
    matched nothing as "unmatched"; never a URL's own values."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    world.client.get("/openapi.json")
    world.client.get(f"/v1/subjects/{world.sids['demo']}/consents", headers=headers)
    world.client.get("/v1/no-such-route-9f3e")
    metrics = world.client.get("/metrics").text
    assert 'ledger_http_requests_total{route="/openapi.json",method="GET",status="200"}' in metrics
    assert 'route="/v1/subjects/{sid}/consents",method="GET",status="200"' in metrics
    assert 'route="unmatched",method="GET",status="404"' in metrics
    assert world.sids["demo"] not in metrics and "no-such-route" not in metrics


def test_head_is_answered_as_get_without_the_body(world: World) -> None:
    """RFC 9110 9.1: a general-purpose server must answer HEAD. FastAPI's routes list GET
    alone, so `curl -I` and monitors that probe with HEAD got 405."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    consents = f"/v1/subjects/{world.sids['demo']}/consents"
    for path, given in (("/healthz", {}), ("/v1/verify", headers), (consents, headers)):
        got = world.client.get(path, headers=given)
        head = world.client.head(path, headers=given)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"]
    refused = world.client.head("/v1/verify")
    assert (refused.status_code, refused.content) == (401, b"")
    assert refused.headers["www-authenticate"] == 'Bearer realm="consent-ledger"'
    post_only = world.client.head("/v1/facts", headers=headers)
    assert (post_only.status_code, post_only.headers["allow"]) == (405, "POST")
    metrics = world.client.get("/metrics").text
    assert 'route="/v1/subjects/{sid}/consents",method="HEAD",status="200"' in metrics


def test_openapi_is_served_and_kept_in_the_repo(world: World) -> None:
    import json

    served = world.client.get("/openapi.json").json()
    kept = json.loads((Path(__file__).parent.parent / "api" / "openapi.json").read_text())
    assert served == kept, "the API changed: run make openapi and commit api/openapi.json"


def test_the_openapi_document_names_the_key_and_the_roles_of_each_route(world: World) -> None:
    """The roles each operation declares are the ones the role matrix finds it admits."""
    served = world.client.get("/openapi.json").json()
    assert served["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": served["components"]["securitySchemes"]["apiKey"]["description"],
    }
    templates = {"marketing": "{purpose}", "crmpro-1.0": "{version}"}
    expected = {("post", "/v1/subjects/{sid}/erasure"): {"admin"}}  # its own test, above
    for route in ROUTES:
        path = route["path"].split("?")[0]
        for value, template in templates.items():
            path = path.replace(value, template)
        expected[(route["method"].lower(), path)] = route["roles"]
    declared = {}
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                [requirement] = operation["security"]
                declared[(method, path)] = set(requirement["apiKey"])
            else:
                assert "security" not in operation, path  # health, readiness, metrics
    assert declared == expected


def test_a_client_chosen_key_is_not_echoed(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    secret = "+998901234567"
    response = world.client.post(
        "/v1/subjects:resolve", json={"subject": "x", secret: 1}, headers=headers
    )
    assert response.status_code == 422
    assert secret not in response.text


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """A service whose bodies may be at most 200 bytes (LEDGER_HTTP_MAX_BODY_BYTES)."""
    settings = Settings.from_env(
        {
            "LEDGER_DATA_DIR": str(tmp_path_factory.mktemp("limited")),
            "LEDGER_HTTP_MAX_BODY_BYTES": "200",
            "LEDGER_HTTP_WRITER": "thread",
        }
    )
    ConsentLedger(settings).init_demo()
    store = ApiKeys(keys_path(settings))
    key = store.create("demo", set(ROLES))[1]
    store.close()
    with TestClient(create_app(settings)) as client:
        yield client, key


def chunks(body: bytes) -> Iterator[bytes]:
    """A body sent in pieces, without Content-Length (chunked transfer encoding)."""
    for i in range(0, len(body), 50):
        yield body[i : i + 50]


@pytest.mark.parametrize("path", ["/v1/facts", "/v1/facts:batch", "/v1/subjects:resolve"])
@pytest.mark.parametrize("sent", ["with its length", "chunked"])
def test_a_body_over_the_configured_limit_is_413(
    limited: tuple[TestClient, str], path: str, sent: str
) -> None:
    """Refused whether it declares its length (before the route runs) or not (as it is
    read), from routes that read their body themselves and from one FastAPI reads."""
    client, key = limited
    body = b'{"subject": "' + b"x" * 300 + b'"}'
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    content: bytes | Iterator[bytes] = body if sent == "with its length" else chunks(body)
    response = client.post(path, content=content, headers=headers)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "oversize"
    assert "200 bytes" in response.json()["detail"]


@pytest.mark.parametrize("length", ["+2jyt;KIxDP", "+12", "1, 1", "", "١٢"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_content_length_that_is_no_number_is_400_malformed_request(
    limited: tuple[TestClient, str], length: str, method: str
) -> None:
    """Found by schemathesis: such a header on a GET was 413 `oversize`, a refusal naming a
    size limit the request never came near. The real server's parser refuses it as
    unreadable (tests/test_server.py); the app, reached by an ASGI client, answers alike,
    before it asks for a key. Arabic-Indic digits are digits to Python, not to HTTP."""
    client, _ = limited
    path = "/v1/verify" if method == "GET" else "/v1/facts"
    response = client.request(method, path, headers={"Content-Length": length.encode()})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "malformed_request"
    assert response.json()["detail"] == "the Content-Length header is not a number of bytes"


def test_a_chunked_body_under_the_limit_is_read_whole(limited: tuple[TestClient, str]) -> None:
    client, key = limited
    body = b'{"subject": "' + b"x" * 120 + b'"}'
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    response = client.post("/v1/subjects:resolve", content=chunks(body), headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["sid"]) == 32


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
def test_a_body_declared_as_anything_but_json_is_415(world: World, content_type: str) -> None:
    """Every route with a body answers alike (the publishing routes took any type, the
    others refused it as `model_attributes_type at the body`), and records nothing."""
    key = world.keys[("demo", "admin")]
    fact = grant("media-1", event_id=f"media-{content_type}")  # one per case: a shared world
    bodies = {
        "/v1/facts": fact,
        "/v1/facts:batch": {"facts": [fact]},
        "/v1/consents:check": {
            "purpose": "marketing",
            "at": "2025-03-02T00:00:00Z",
            "sids": [world.sids["demo"]],
        },
        "/v1/subjects:resolve": {"subject": "media-1"},
    }
    for path, body in bodies.items():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
        response = world.client.post(path, content=orjson.dumps(body), headers=headers)
        assert response.status_code == 415, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unsupported_media_type"
        assert content_type not in response.text
    first = world.client.post("/v1/facts", json=fact, headers={"Authorization": f"Bearer {key}"})
    assert first.status_code == 201, first.text  # not 200, a retry: nothing was recorded


@pytest.mark.parametrize("coding", ["gzip", "br", "GZIP", "deflate, gzip"])
def test_a_content_encoded_body_is_415_not_a_json_error(world: World, coding: str) -> None:
    """A gzip body was read as it came and refused as `invalid_json` (the body below, sent
    plain with the label, was even recorded); it is refused for its encoding, on every route
    with a body, and nothing is recorded."""
    key = world.keys[("demo", "admin")]
    fact = grant("coded-1", event_id=f"coded-{coding}")
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Encoding": coding,
    }
    for path, body in (
        ("/v1/facts", orjson.dumps(fact)),
        ("/v1/facts", gzip.compress(orjson.dumps(fact))),
        ("/v1/facts:batch", orjson.dumps({"facts": [fact]})),
        ("/v1/subjects:resolve", orjson.dumps({"subject": "coded-1"})),
    ):
        response = world.client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["accept-encoding"] == "identity"
        assert response.json()["code"] == "unsupported_media_type"
    plain = {"Authorization": f"Bearer {key}", "Content-Encoding": "identity"}
    first = world.client.post("/v1/facts", json=fact, headers=plain)
    assert first.status_code == 201, first.text  # not 200, a retry: nothing was recorded


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json; charset=UTF-8", "Application/JSON", "application/fact+json"],
)
def test_a_json_body_is_read_on_every_route_whatever_its_json_type_says(
    world: World, content_type: str | None
) -> None:
    """No Content-Type (Python's `requests` posting bytes) is read as JSON too, on the routes
    FastAPI parses as on those that parse their own body."""
    key = world.keys[("demo", "admin")]
    headers = {"Authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    event = f"json-type-{content_type}"
    fact = grant("json-type-1", event_id=event)
    published = world.client.post("/v1/facts", content=orjson.dumps(fact), headers=headers)
    assert published.status_code in (200, 201), published.text
    check = world.client.post(
        "/v1/consents:check",
        content=orjson.dumps(
            {"purpose": "marketing", "at": "2025-03-02T00:00:00Z", "sids": [world.sids["demo"]]}
        ),
        headers=headers,
    )
    assert check.status_code == 200, check.text


def test_a_query_parameter_mistyped_or_given_twice_is_refused(world: World) -> None:
    """FastAPI ignored a parameter the route does not take and kept the last of two: a typo
    for `as_of` was answered as of now, as if the question had been asked as written."""
    headers = {"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    sid = world.sids["demo"]
    at = "2025-03-01T10:00:00Z"
    for path, code, said in (
        (f"/v1/subjects/{sid}/consents?as-of={at}", "unknown_field", "(unnamed)"),
        (f"/v1/subjects/{sid}/consents?asof={at}", "unknown_field", "'asof'"),
        (f"/v1/subjects/{sid}/consents?as_of={at}&as_of={at}", "invalid_field", "'as_of'"),
        (f"/v1/purposes/marketing/subjects?as_of={at}&limits=5", "unknown_field", "'limits'"),
        (f"/v1/subjects/{sid}/trail?format=csv&format=json", "invalid_field", "'format'"),
    ):
        answer = world.client.get(path, headers=headers)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["code"] == code and said in answer.json()["detail"], answer.json()
    for path in (
        f"/v1/subjects/{sid}/consents?as_of={at}&known_at={at}",
        f"/v1/purposes/marketing/subjects?as_of={at}&limit=5",
        "/v1/due?within_days=3",
        "/v1/policies/crmpro-1.0/changes?from=crmpro-1.0",  # a parameter under an alias
        "/v1/requests?state=open&limit=2&format=csv",
    ):
        answer = world.client.get(path, headers=headers)
        assert answer.status_code == 200, (path, answer.text)


def test_an_unexpected_failure_is_a_500_problem_that_quotes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: a bug becomes a problem+json naming only the error's type."""
    from ledger.application import ConsentLedger

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("Karimov Aziz +998901112233")

    monkeypatch.setattr(ConsentLedger, "tenant", broken)
    response = world.client.get(
        "/v1/policies", headers={"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    )
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "Karimov" not in response.text and "+998" not in response.text
    metrics = world.client.get("/metrics").text
    assert 'status="500"' in metrics


def test_a_kafka_topic_refused_while_serving_is_a_503_for_the_operator(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Met when the writer takes the ledger again after an outage and finds its topic lost
    records or gained partitions: not a bug (it was a 500 `internal_error`), and the reason
    is in the log for whoever must act."""
    from ledger.application import ConsentLedger
    from ledger.kafka.topics import TopicRefused

    reason = "topic t.ledger partition 0 ends at offset 0, short of offset 7"

    def refused(*_: object, **__: object) -> None:
        raise TopicRefused(reason)

    monkeypatch.setattr(ConsentLedger, "tenant", refused)
    response = world.client.get(
        "/v1/policies", headers={"Authorization": f"Bearer {world.keys[('demo', 'compliance')]}"}
    )
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "topic_refused"
    assert reason in caplog.text


@pytest.mark.parametrize(("setting", "on"), [({}, False), ({"LEDGER_HTTP_TELEMETRY": "on"}, True)])
def test_fastapis_own_telemetry_is_off_unless_asked_for(
    tmp_path: Path, setting: dict[str, str], on: bool
) -> None:
    """Off, FastAPI never asks the OpenTelemetry API whether providers are configured; on,
    it traces and measures requests once they are (FastAPI's own configuration, read back)."""
    settings = Settings.from_env({"LEDGER_DATA_DIR": str(tmp_path), **setting})
    config = create_app(settings)._telemetry
    assert (config["tracing"], config["metrics"], config["logs"]) == (on, on, on)


def test_who_had_consent_under_one_policy_version_over_http(tmp_path: Path) -> None:
    """After a new policy version: the route names only those still on the old one."""
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
        ledger.record(
            [
                parse_fact(f)
                for f in (
                    policy("crmpro-2.0"),
                    grant("on-old"),
                    grant("on-new", policy_version="crmpro-2.0"),
                )
            ]
        )
        old = ledger.sid("demo", "on-old").hex
    with contextlib.closing(ApiKeys(keys_path(settings))) as keys:
        key = keys.create("demo", {"compliance"})[1]
    with TestClient(create_app(settings)) as client:
        page = client.get(
            "/v1/purposes/marketing/subjects",
            params={"as_of": "2025-06-01T00:00:00Z", "policy_version": "crmpro-1.0"},
            headers={"Authorization": f"Bearer {key}"},
        )
        summary = client.get(
            "/v1/purposes/marketing/summary",
            params={"as_of": "2025-06-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {key}"},
        )
        unknown = client.get(
            "/v1/purposes/astrology/summary", headers={"Authorization": f"Bearer {key}"}
        )
    assert page.status_code == 200, page.text
    assert (page.json()["sids"], page.json()["policy_version"]) == ([old], "crmpro-1.0")
    # Counted, not named: how many are still on the old version.
    assert summary.json()["with_consent"] == 2
    assert summary.json()["by_policy_version"] == {"crmpro-1.0": 1, "crmpro-2.0": 1}
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_purpose")


def test_the_due_route_gives_each_kind_of_request_its_deadline(tmp_path: Path) -> None:
    settings = replace(
        Settings(data_dir=tmp_path / "data"), request_due_days_by_kind=(("information", 10),)
    )
    received = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    asked = fact(
        "request.received", "due-1", request_id="R", kind="information", occurred_at=received
    )
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
        ledger.record([parse_fact(asked)])
    with contextlib.closing(ApiKeys(keys_path(settings))) as keys:
        key = keys.create("demo", {"compliance"})[1]
    with TestClient(create_app(settings)) as client:
        due = client.get("/v1/due", headers={"Authorization": f"Bearer {key}"})
    assert [r["request_id"] for r in due.json()["requests"]] == ["R"]  # in 2 days, not 22


def test_pages_of_the_configured_origins_may_call_the_api_from_a_browser(
    tmp_path: Path, world: World
) -> None:
    """LEDGER_HTTP_CORS_ORIGINS: a browser's preflight from a named origin is answered with
    the methods and headers a page needs (the key travels in Authorization); any other
    origin, or a service with none configured, gets no CORS header at all."""
    settings = Settings.from_env(
        {
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "LEDGER_HTTP_WRITER": "thread",
            "LEDGER_HTTP_CORS_ORIGINS": "https://compliance.example.uz, http://localhost:5173/",
        }
    )
    assert settings.http_cors_origins == ("https://compliance.example.uz", "http://localhost:5173")
    ConsentLedger(settings).init_demo()
    store = ApiKeys(keys_path(settings))
    key = store.create("demo", {"compliance"})[1]
    store.close()
    page = "https://compliance.example.uz"
    asking = {"Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/v1/consents:check",
            headers={
                "Origin": page,
                **asking,
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == page
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        answered = client.get(
            "/v1/verify", headers={"Origin": page, "Authorization": f"Bearer {key}"}
        )
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == page
        assert "Next-Cursor" in answered.headers["access-control-expose-headers"]
        other = {"Origin": "https://elsewhere.example.com"}
        refused = client.options("/v1/consents:check", headers={**other, **asking})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        plain = client.get("/v1/verify", headers={**other, "Authorization": f"Bearer {key}"})
        assert "access-control-allow-origin" not in plain.headers
    unset = world.client.get("/healthz", headers={"Origin": page})
    assert "access-control-allow-origin" not in unset.headers


@pytest.mark.parametrize(
    "origins", ["*", "https://app.example.uz/path", "ftp://app.example.uz", "app.example.uz"]
)
def test_an_origin_that_is_not_scheme_host_and_port_is_refused(origins: str) -> None:
    from ledger.settings import SettingsError

    with pytest.raises(SettingsError, match="LEDGER_HTTP_CORS_ORIGINS takes origins as"):
        Settings.from_env({"LEDGER_HTTP_CORS_ORIGINS": origins})
