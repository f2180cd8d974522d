"""Granted intervals agree with the point-in-time fold at every instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ledger.consent import GRANTED, ConsentEntry, consent_at, granted_intervals

BASE = datetime(2025, 1, 1, tzinfo=UTC)
PURPOSES = ["marketing", "support"]


@st.composite
def entries(draw: st.DrawFn) -> list[ConsentEntry]:
    out = []
    for seq in range(draw(st.integers(min_value=0, max_value=12))):
        kind = draw(st.sampled_from(["grant", "grant", "withdrawal"]))
        at = BASE + timedelta(hours=draw(st.integers(min_value=0, max_value=40)))
        expires = None
        if kind == "grant" and draw(st.booleans()):
            expires = at + timedelta(hours=draw(st.integers(min_value=1, max_value=20)))
        out.append(
            ConsentEntry(
                event_id=f"e{seq}",
                kind=kind,
                seq=seq,
                recorded_at=BASE,
                occurred_at=at,
                purposes=tuple(draw(st.lists(st.sampled_from(PURPOSES), min_size=1, unique=True))),
                expires_at=expires,
            )
        )
    return out


@given(entries(), st.lists(st.integers(min_value=-1, max_value=70), min_size=10, max_size=10))
def test_intervals_match_the_fold(items: list[ConsentEntry], hours: list[int]) -> None:
    intervals = granted_intervals(items)
    for h in hours:
        for minutes in (0, 30):
            t = BASE + timedelta(hours=h, minutes=minutes)
            states = consent_at(items, [], t)
            for purpose in PURPOSES:
                folded = purpose in states and states[purpose].state == GRANTED
                covered = [
                    i
                    for i in intervals
                    if i.purpose == purpose and i.start <= t and (i.end is None or t < i.end)
                ]
                assert folded == bool(covered), (purpose, t)
                assert len(covered) <= 1
                if covered:
                    assert covered[0].event_id == states[purpose].event_id
