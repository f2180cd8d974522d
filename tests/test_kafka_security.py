"""Kafka mode on a cluster that asks for TLS and a SASL login, or for a client certificate
(the broker's SASL_SSL listener, with PLAIN and SCRAM users, and its SSL listener,
`deploy/kafka/broker.sh`): every client of the ledger reaches it as configured,
and a login or a certificate the brokers refuse is said in one line."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.kafka.names import Topics
from ledger.settings import Settings, SettingsError
from tests.cli_support import run_with
from tests.conftest import SecuredBroker
from tests.facts import grant
from tests.kafka_support import headers, kafka_env, kafka_settings, read_committed

pytestmark = pytest.mark.kafka

SASL_SSL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "ledger",
    "KAFKA_SASL_PASSWORD": "ledger-secret",
}


@pytest.fixture
def secured(kafka_sasl_ssl: SecuredBroker, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a CLI process on the SASL_SSL listener, on topics of its own."""
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    ca = str(kafka_sasl_ssl.ca)
    yield {**os.environ, **kafka_env(settings), **SASL_SSL, "KAFKA_SSL_CAFILE": ca}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_ledger_records_and_reads_through_tls_and_a_sasl_login(
    secured: dict[str, str], kafka_sasl_ssl: SecuredBroker, mechanism: str
) -> None:
    secured = {**secured, "KAFKA_SASL_MECHANISM": mechanism}
    assert run_with(secured, "init").returncode == 0
    fact = orjson.dumps(grant("sec-1", event_id="sec-g1")).decode()
    recorded = run_with(secured, "record", stdin=fact)
    assert recorded.returncode == 0, recorded.stderr
    verified = run_with(secured, "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("verify: OK"), verified.stderr
    trail = run_with(secured, "trail", "sec-1", "--tenant", "demo", "--json")
    assert [f["event_id"] for f in orjson.loads(trail.stdout)["facts"]] == ["sec-g1"]
    # On the cluster itself: the same topic, read through the broker's PLAINTEXT listener.
    topics = Topics.of(secured["LEDGER_TOPIC_PREFIX"])
    on_the_topic = read_committed(kafka_sasl_ssl.plaintext, topics.ledger)
    landed = [headers(r).get("event_id") for r in on_the_topic]
    assert "sec-g1" in landed


def test_the_http_service_writes_and_answers_through_tls_and_a_sasl_login(
    kafka_sasl_ssl: SecuredBroker, tmp_path: Path
) -> None:
    """The service's writer and admin client, and its intake writer taking what `publish`
    sends (its producer, and its reads of the writer's progress and the rejected topic)."""
    env = {
        **kafka_env(kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)),
        **SASL_SSL,
        "KAFKA_SSL_CAFILE": str(kafka_sasl_ssl.ca),
    }
    settings = Settings.from_env(env)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    keys = ApiKeys(keys_path(settings))
    key = keys.create("demo", {"publisher"})[1]
    keys.close()
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200  # its admin client reached the broker
        body = {k: v for k, v in grant("sec-2").items() if k != "tenant"}
        created = client.post("/v1/facts", json=body, headers={"Authorization": f"Bearer {key}"})
        assert created.status_code == 201, created.text
        facts = [grant("sec-3", event_id="sec-p1"), grant("sec-3", purposes=("astrology",))]
        published = run_with(
            {**os.environ, **env},
            *("publish", "--wait", "120"),
            stdin="\n".join(orjson.dumps(f).decode() for f in facts),
        )
        assert published.returncode == 1, published.stderr  # the second refused
        answers = [orjson.loads(line) for line in published.stdout.splitlines()]
        assert answers[0]["receipt"]["event_id"] == "sec-p1"
        assert answers[1]["rejected"]["code"] == "unknown_purpose"


def test_the_ledger_records_and_reads_with_a_client_certificate(
    kafka_sasl_ssl: SecuredBroker, tmp_path: Path
) -> None:
    """Mutual TLS (KAFKA_SECURITY_PROTOCOL=SSL with a certificate and key): the listener
    refuses a client without one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    key, cert, _ = pkcs12.load_key_and_certificates(
        kafka_sasl_ssl.client.read_bytes(), b"broker-keystore"
    )
    assert key is not None and cert is not None
    key_pem, cert_pem = tmp_path / "client-key.pem", tmp_path / "client-cert.pem"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    env = {
        **os.environ,
        **kafka_env(kafka_settings(tmp_path / "data", kafka_sasl_ssl.ssl)),
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(kafka_sasl_ssl.ca),
        "KAFKA_SSL_CERTFILE": str(cert_pem),
        "KAFKA_SSL_KEYFILE": str(key_pem),
    }
    assert run_with(env, "init").returncode == 0
    fact = orjson.dumps(grant("mtls-1", event_id="mtls-g1")).decode()
    assert run_with(env, "record", stdin=fact).returncode == 0
    trail = run_with(env, "trail", "mtls-1", "--tenant", "demo", "--json")
    assert [f["event_id"] for f in orjson.loads(trail.stdout)["facts"]] == ["mtls-g1"]
    without = {k: v for k, v in env.items() if k not in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
    refused = run_with(without, "verify")
    assert refused.returncode == 6 and refused.stderr.count("\n") == 1, refused.stderr
    assert "CERTIFICATE" in refused.stderr  # the broker's TLS alert, named


def test_a_refused_login_or_an_untrusted_broker_is_said_in_one_line(
    secured: dict[str, str],
) -> None:
    for changed, said in [
        ({"KAFKA_SASL_PASSWORD": "not-the-password"}, "Authentication failed"),
        ({"KAFKA_SSL_CAFILE": ""}, "CERTIFICATE_VERIFY_FAILED"),  # the system's CAs
    ]:
        refused = run_with({**secured, **changed}, "init")
        assert refused.returncode == 6, refused.stderr
        assert refused.stderr.count("\n") == 1 and said in refused.stderr, refused.stderr
        assert "not-the-password" not in refused.stderr + refused.stdout


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        (  # a CA file meant TLS: the facts would have gone in the clear
            {"KAFKA_SSL_CAFILE": "/ca.pem"},
            "KAFKA_SSL_CAFILE is not used with KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_USERNAME is not used with KAFKA_SECURITY_PROTOCOL=SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"},
            "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "needs KAFKA_SASL_MECHANISM, one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        (
            {**SASL_SSL, "KAFKA_SASL_PASSWORD": ""},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_OAUTH_TOKEN_FILE",
        ),
        (  # a password given with a token: which one logs in was not what the operator meant
            {**SASL_SSL, "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_SASL_OAUTH_TOKEN_FILE": "t"},
            "KAFKA_SASL_USERNAME is not used with KAFKA_SASL_MECHANISM=OAUTHBEARER",
        ),
        (
            {**SASL_SSL, "KAFKA_SASL_OAUTH_TOKEN_FILE": "t"},
            "KAFKA_SASL_OAUTH_TOKEN_FILE is not used with KAFKA_SASL_MECHANISM=PLAIN",
        ),
        (
            {"KAFKA_SASL_OAUTH_TOKEN_FILE": "t"},
            "KAFKA_SASL_OAUTH_TOKEN_FILE is not used with KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
    ],
)
def test_a_kafka_security_setting_that_does_not_fit_is_refused(
    env: dict[str, str], said: str
) -> None:
    with pytest.raises(SettingsError, match=said) as refused:
        Settings.from_env(env)
    assert "ledger-secret" not in str(refused.value)


def test_the_password_is_never_in_the_settings_repr() -> None:
    settings = Settings.from_env({**SASL_SSL, "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"})
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"
    assert settings.kafka_sasl_password == "ledger-secret"
    assert "ledger-secret" not in repr(settings)


def unsecured_token(principal: str, lifetime_s: int = 3600) -> str:
    """A JWT with no signature (`alg: none`), which the development broker's OAUTHBEARER
    takes as Kafka's default validator does: `sub` is the principal. A real cluster checks
    its identity provider's signature; the ledger only hands the token over."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": principal, "iat": now, "exp": now + lifetime_s}
    return f"{part({'alg': 'none'})}.{part(claims)}."


def test_the_ledger_logs_in_with_an_oauth_token_read_from_a_file(
    kafka_sasl_ssl: SecuredBroker, tmp_path: Path
) -> None:
    """OAUTHBEARER (managed clusters behind an OIDC identity provider): the token file is
    read at each connection, so a renewed token is used without a restart; the principal is
    the token's, as the cluster's ACLs see it; a file that cannot be read or holds no token
    is said at once in one line (exit 2), never its contents."""
    token = tmp_path / "token"
    token.write_text(unsecured_token("ledger") + "\n")
    settings = kafka_settings(tmp_path / "data", kafka_sasl_ssl.sasl_ssl)
    env = {
        **os.environ,
        **kafka_env(settings),
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_SASL_OAUTH_TOKEN_FILE": str(token),
        "KAFKA_SSL_CAFILE": str(kafka_sasl_ssl.ca),
    }
    assert run_with(env, "init").returncode == 0
    fact = orjson.dumps(grant("oauth-1", event_id="oauth-g1")).decode()
    recorded = run_with(env, "record", stdin=fact)
    assert recorded.returncode == 0, recorded.stderr
    verified = run_with(env, "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("verify: OK"), verified.stderr

    # A token of a principal the cluster grants nothing (tests/test_kafka_acls.py's user):
    # the ledger connects as the token says, and is refused its ACLs.
    token.write_text(unsecured_token("acl-ledger"))
    refused = run_with(env, "verify")
    assert refused.returncode == 6, refused.stderr
    assert "refused this client" in refused.stderr and "kafka-acls" in refused.stderr

    for content, said in [(None, "No such file or directory"), ("", "holds no token")]:
        if content is None:
            token.unlink()
        else:
            token.write_text(content)
        out = run_with(env, "verify")
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and said in out.stderr, out.stderr
        assert out.stderr.startswith(
            f"consent-ledger: configuration: KAFKA_SASL_OAUTH_TOKEN_FILE {token}"
        ), out.stderr


def test_the_token_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    """kafka-python asks its token provider at each connection's login: a token renewed in
    the file is the next connection's, in the same process; the token is never in a repr."""
    from ledger.kafka.clients import TokenFile

    path = tmp_path / "token"
    path.write_text(unsecured_token("first"))
    tokens = TokenFile(path)
    assert tokens.token() == path.read_text()
    renewed = unsecured_token("renewed")
    path.write_text(f"  {renewed}\n")
    assert tokens.token() == renewed
    assert renewed not in repr(tokens) and str(path) in repr(tokens)
    path.write_text(f"{renewed} {renewed}")  # two tokens, or a token and something else
    with pytest.raises(ValueError, match="holds no token"):
        tokens.token()
