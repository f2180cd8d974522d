"""The intake key a publishing service without the key store uses: one person's facts share
it, and it says nothing about who they are (Kafka keys are not encrypted)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.kafka.publish import intake_key

references = st.text(min_size=1, max_size=40)


@given(secret=st.binary(min_size=16, max_size=32), tenant=st.text(max_size=12), subject=references)
def test_one_persons_facts_share_a_key_that_does_not_hold_the_reference(
    secret: bytes, tenant: str, subject: str
) -> None:
    key = intake_key(secret, tenant, subject)
    assert key == intake_key(secret, tenant, subject)
    assert len(key) == 32 and set(key) <= set(b"0123456789abcdef")
    assert intake_key(secret, tenant + "x", subject) != key
    assert intake_key(secret[::-1] + b"!", tenant, subject) != key  # keyed: another secret
    assert len(subject) < 8 or subject.encode() not in key  # a short one may occur by chance


def test_a_phone_number_is_not_in_its_key() -> None:
    assert b"998901234567" not in intake_key(b"s" * 32, "demo", "+998901234567")
