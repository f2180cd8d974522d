"""The deployment documents stay true to the code: every setting documented, compose valid."""

from __future__ import annotations

import inspect
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ledger.settings import VARIABLES, Settings, SettingsError, unknown_variables
from tests.conftest import ROOT

MAKE_SECRETS = ROOT / "deploy" / "kafka" / "make_secrets.py"

NAME = re.compile(
    r"\b(LEDGER_[A-Z_]+|PERSISTENCE_MODULE"
    r"|KAFKA_(?:BOOTSTRAP|SECURITY_PROTOCOL|SSL_[A-Z]+FILE|SASL_(?:MECHANISM|USERNAME|PASSWORD|OAUTH_TOKEN_FILE)))\b"
)


def read_by_the_code() -> set[str]:
    names: set[str] = set()
    for package in ("ledger", "api", "projections"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(NAME.findall(path.read_text()))
    return names


def test_every_setting_the_code_reads_is_documented() -> None:
    documented = set(NAME.findall((ROOT / "deploy" / "CONFIG.md").read_text()))
    missing = read_by_the_code() - documented
    assert not missing, f"not in deploy/CONFIG.md: {sorted(missing)}"
    assert len(read_by_the_code()) >= 15


def test_the_variables_the_ledger_knows_are_the_ones_it_reads() -> None:
    """A setting added to `from_env` and not to VARIABLES would be read and warned about."""
    read = set(NAME.findall(inspect.getsource(Settings.from_env)))
    assert {n for n in read if n.startswith("LEDGER_")} | {"LEDGER_FAILPOINT"} == set(VARIABLES)


# A row of a settings table whose first cell names one variable and whose second is one value
# in backticks (the README's and deploy/CONFIG.md's) or bare (the settings docstring's).
DEFAULT_ROW = re.compile(r"^\| `?([A-Z_]+)`? \| `?([^`| ]+)`? \|", re.MULTILINE)


def documented_defaults() -> list[tuple[str, str, str]]:
    """(where, variable, default) for every single-valued default the documents give of a
    LEDGER_ setting."""
    sources = {
        "README.md": (ROOT / "README.md").read_text(),
        "deploy/CONFIG.md": (ROOT / "deploy" / "CONFIG.md").read_text(),
        "ledger/settings.py": inspect.getdoc(Settings) or "",
    }
    return [
        (where, name, value)
        for where, text in sources.items()
        for name, value in DEFAULT_ROW.findall(text)
        if name in VARIABLES and not value.startswith("(")  # "(file)", "(none)": no value
    ]


def test_every_documented_default_is_the_codes() -> None:
    """Setting a variable to the default the documents give changes nothing: an operator who
    sizes memory or deadlines from the README gets what the code does. (The default of the
    views' cache moved in code and in three documents at once; one left behind would pass
    every other test.)"""
    rows = documented_defaults()
    wrong = [
        (where, name, value)
        for where, name, value in rows
        if Settings.from_env({name: value}) != Settings.from_env({})
    ]
    assert not wrong, f"documented defaults the code does not have: {wrong}"
    checked = {name for _, name, _ in rows}
    assert {"LEDGER_VIEWS_CACHE_FACTS", "LEDGER_AGGREGATE_CACHE", "LEDGER_BACKEND"} <= checked
    assert len(checked) >= 12, sorted(checked)


def test_a_ledger_variable_it_does_not_read_is_named_with_the_setting_it_resembles() -> None:
    env = {
        "LEDGER_REQUEST_DUE_DAY": "15",
        "LEDGER_MASTERKEY": "secret-value",
        "LEDGER_SOMETHING_ELSE": "1",
        "LEDGER_DATA_DIR": "/data",
        "PATH": "/bin",
        "KAFKA_BOOTSTRAP": "k:9092",
    }
    said = unknown_variables(env)
    assert said == [
        "LEDGER_MASTERKEY is not a setting of the ledger and is ignored "
        "(did you mean LEDGER_MASTER_KEY?)",
        "LEDGER_REQUEST_DUE_DAY is not a setting of the ledger and is ignored "
        "(did you mean LEDGER_REQUEST_DUE_DAYS?)",
        "LEDGER_SOMETHING_ELSE is not a setting of the ledger and is ignored",
    ]
    assert "secret-value" not in "".join(said)
    assert unknown_variables({name: "1" for name in VARIABLES}) == []


def test_the_compose_file_configures_a_three_broker_cluster_and_the_ledger() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    brokers = [s for s in services if s.startswith("kafka-")]
    assert len(brokers) == 3
    voters = services["kafka-1"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.count("@") == 3
    assert {services[b]["environment"]["KAFKA_NODE_ID"] for b in brokers} == {"1", "2", "3"}
    env = dict(services["ledger"]["environment"])
    documented = set(NAME.findall((ROOT / "deploy" / "CONFIG.md").read_text()))
    assert set(env) - {"LEDGER_MASTER_KEY"} <= documented
    env["LEDGER_MASTER_KEY"] = "unused"
    settings = Settings.from_env(env)
    assert settings.backend == "kafka"
    assert settings.replication == 3 and settings.min_insync == 2
    assert Path(ROOT / "deploy" / services["ledger"]["build"]["dockerfile"].split("/")[-1]).exists()


def test_settings_that_would_carry_dates_past_the_calendar_are_refused() -> None:
    for name, limit in (
        ("LEDGER_REQUEST_DUE_DAYS", 3650),
        ("LEDGER_MAX_FUTURE_SKEW_S", 86_400),
        ("LEDGER_ACCESS_LOG_DAYS", 36_500),
    ):
        assert getattr(Settings.from_env({name: str(limit)}), name[7:].lower()) == limit
        with pytest.raises(SettingsError, match=f"{name} must be at most {limit}"):
            Settings.from_env({name: str(limit + 1)})


def test_request_deadlines_by_kind_are_read_and_checked() -> None:
    name = "LEDGER_REQUEST_DUE_DAYS_BY_KIND"
    given = Settings.from_env({name: "information=10, erasure=3650"})
    assert dict(given.request_due_days_by_kind) == {"information": 10, "erasure": 3650}
    for bad, said in (
        ("information", "kind=days"),
        ("inquiry=3", "kind=days"),
        ("information=", "kind=days"),
        ("information=x", "whole number"),
        ("information=3651", "at most 3650"),
    ):
        with pytest.raises(SettingsError, match=said):
            Settings.from_env({name: bad})


def test_a_topic_prefix_kafka_would_refuse_is_a_configuration_error() -> None:
    """The broker refuses such a topic, and the client waited for it to appear until it
    said no broker had answered (exit 6, "is the cluster up?") instead of naming the prefix."""
    kafka = {"LEDGER_BACKEND": "kafka", "KAFKA_BOOTSTRAP": "broker:9092"}
    for good in ("consent", "crm.prod-2_x", "x" * 240, ".."):
        prefix = Settings.from_env({**kafka, "LEDGER_TOPIC_PREFIX": good}).topic_prefix
        assert prefix == good
    for bad in ("a b", "crm/prod", "consent\n", "x" * 241, "ledger:1", "consentë"):
        with pytest.raises(SettingsError, match="LEDGER_TOPIC_PREFIX must be 1 to 240"):
            Settings.from_env({**kafka, "LEDGER_TOPIC_PREFIX": bad})
    # Embedded mode makes no topic: the variable is not read.
    assert Settings.from_env({"LEDGER_TOPIC_PREFIX": "a b"}).backend == "embedded"


def test_make_secrets_makes_a_key_for_the_names_asked_and_keeps_every_file_private(
    tmp_path: Path,
) -> None:
    """The brokers' keystore opens with the password written beside it, holds a certificate
    the CA in ca.pem signed for every name clients may use, and no file is readable by
    another user of the machine. Run as a script, as an operator does."""
    out = tmp_path / "secrets"
    made = subprocess.run(
        [
            sys.executable,
            str(MAKE_SECRETS),
            str(out),
            "--host",
            "kafka.example.com",
            "--ip",
            "10.0.0.7",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    names = sorted(p.name for p in out.iterdir())
    assert names == ["broker-keystore-password", "broker.p12", "ca.pem", "kafka_server_jaas.conf"]
    assert all(stat.S_IMODE((out / n).stat().st_mode) == 0o600 for n in names)
    password = (out / "broker-keystore-password").read_bytes()
    key, certificate, chain = pkcs12.load_key_and_certificates(
        (out / "broker.p12").read_bytes(), password
    )
    assert key is not None and certificate is not None
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert [c.fingerprint(hashes.SHA256()) for c in chain] == [ca.fingerprint(hashes.SHA256())]
    certificate.verify_directly_issued_by(ca)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "kafka.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    jaas = (out / "kafka_server_jaas.conf").read_text()
    assert "ScramLoginModule required;" in jaas and "password" not in jaas

    refused = subprocess.run(
        [sys.executable, str(MAKE_SECRETS), str(tmp_path / "no"), "--ip", "kafka.example.com"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "does not appear to be an IPv4 or IPv6 address" in refused.stderr
    for args, said in (  # the second and third were tracebacks
        (("--days", "0"), "error: --days must be from 1 to 36500\n"),
        (("--days", "100000000"), "error: --days must be from 1 to 36500\n"),
        (("--host", ""), "error: --host '' is no DNS name\n"),
        (("--host", "a b"), "error: --host 'a b' is no DNS name\n"),
    ):
        wrong = subprocess.run(
            [sys.executable, str(MAKE_SECRETS), str(tmp_path / "no"), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (wrong.returncode, wrong.stderr.endswith(said)) == (2, True), wrong.stderr
    assert not (tmp_path / "no").exists()

    # Run again by mistake, it keeps the CA every client trusts; --replace makes a new one.
    again = subprocess.run(
        [sys.executable, str(MAKE_SECRETS), str(out)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2
    assert "already holds broker.p12, broker-keystore-password" in again.stderr, again.stderr
    assert (out / "ca.pem").read_bytes() == ca.public_bytes(serialization.Encoding.PEM)
    replaced = subprocess.run(
        [sys.executable, str(MAKE_SECRETS), str(out), "--replace"], capture_output=True, check=False
    )
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "ca.pem").read_bytes() != ca.public_bytes(serialization.Encoding.PEM)
