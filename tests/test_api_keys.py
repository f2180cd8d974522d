"""API keys in a running service: a key revoked by another process is refused within the
recheck interval, and never because of what a wrong secret did."""

from __future__ import annotations

from pathlib import Path

from api.keys import ApiKeys


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_revoked_elsewhere_is_refused_within_the_recheck_interval(tmp_path: Path) -> None:
    clock = Clock()
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=1.0, clock=clock)
    cli = ApiKeys(tmp_path / "api_keys.db")  # `consent-ledger keys`, another process
    key_id, key = cli.create("demo", {"publisher"})
    principal = service.authenticate(key)
    assert principal is not None and principal.tenant == "demo"
    assert principal.roles == frozenset({"publisher"})
    cli.revoke(key_id)
    clock.now += 0.5
    assert service.authenticate(key) == principal  # trusted for the interval
    clock.now += 0.5
    assert service.authenticate(key) is None  # read again: revoked
    clock.now += 5
    assert service.authenticate(key) is None
    service.close()
    cli.close()


def test_a_wrong_secret_is_refused_even_for_a_remembered_key(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    _, key = service.create("demo", {"compliance"})
    assert service.authenticate(key) is not None
    forged = key[: key.rindex("_") + 1] + "x" * 43
    assert service.authenticate(forged) is None
    assert service.authenticate(key) is not None
    service.close()


def test_without_recheck_interval_revocation_is_immediate(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", clock=Clock())  # recheck_s=0
    cli = ApiKeys(tmp_path / "api_keys.db")
    key_id, key = cli.create("demo", {"admin"})
    assert service.authenticate(key) is not None
    cli.revoke(key_id)
    assert service.authenticate(key) is None
    service.close()
    cli.close()


def test_a_key_revoked_by_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    key_id, key = service.create("demo", {"publisher"})
    assert service.authenticate(key) is not None
    service.revoke(key_id)
    assert service.authenticate(key) is None
    service.close()


def test_unknown_key_ids_are_not_remembered(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    for n in range(100):
        assert service.authenticate(f"cl_{n:012x}_secret") is None
    assert not service._valid
    service.close()
