"""Events built by `ledger.chained.new_event` are the events the library's constructor builds:
equal, with the same instance dict in the same order, so the mapper stores the same bytes and
the chain hashes what it always hashed; what the constructor refuses is refused too. The
ledger's mapper (`ledger.chain.ChainMapper`) stores them as the library's mapper does."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import Mapper, StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from ledger.chain import MAPPER
from ledger.chained import new_event
from ledger.codec import TRANSCODER
from ledger.subject import _FIRST, _TOPIC, Subject
from ledger.tenant import Tenant

EVENT_CLASSES = sorted(
    {
        value
        for owner in (Subject, Tenant)
        for value in vars(owner).values()
        if isinstance(value, type)
        and dataclasses.is_dataclass(value)
        and "originator_id" in {f.name for f in dataclasses.fields(value)}
    },
    key=lambda cls: cls.__qualname__,
)


def test_every_fact_class_is_covered() -> None:
    names = {cls.__qualname__ for cls in EVENT_CLASSES}
    assert {
        "Subject.ConsentGranted",
        "Subject.ConsentWithdrawn",
        "Subject.FirstConsentGranted",
        "Tenant.PolicyPublished",
    } <= names
    assert len(EVENT_CLASSES) >= 15, names


@st.composite
def fields_of(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {
        name: draw(
            st.text(max_size=8) | st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
        )
        for name in names
    }
    values["originator_id"] = UUID(int=draw(st.integers(min_value=0, max_value=2**128 - 1)))
    values["originator_version"] = draw(st.integers(min_value=1, max_value=10**6))
    values["timestamp"] = datetime(2025, 1, 1, tzinfo=UTC)
    order = draw(st.permutations(names))  # callers pass fields in any order
    return {name: values[name] for name in order}


@given(st.sampled_from(EVENT_CLASSES).flatmap(lambda cls: st.tuples(st.just(cls), fields_of(cls))))
def test_new_event_is_the_constructors_event(drawn: tuple[type, dict[str, Any]]) -> None:
    cls, fields = drawn
    built: Any = new_event(cls, dict(fields))
    constructed: Any = cls(**fields)
    # ...and the ledger's mapper stores it as the library's own mapper stores the other.
    stored = MAPPER.to_stored_event(built)
    assert stored == Mapper(transcoder=TRANSCODER).to_stored_event(constructed)
    assert type(stored) is StoredEvent
    assert list(vars(built).items()) == list(vars(constructed).items())
    assert built == constructed
    assert type(built) is cls


@given(st.sampled_from(EVENT_CLASSES).flatmap(lambda cls: st.tuples(st.just(cls), fields_of(cls))))
def test_new_event_refuses_what_the_constructor_refuses(drawn: tuple[type, dict[str, Any]]) -> None:
    cls, fields = drawn
    missing = dict(fields)
    missing.pop("event_id" if "event_id" in missing else "timestamp")
    unknown = {**fields, "not_a_field": 1}
    not_a_uuid = {**fields, "originator_id": str(fields["originator_id"])}
    swapped = dict(missing, not_a_field=1)  # as many fields, one of them wrong
    for bad in (missing, unknown, not_a_uuid, swapped):
        with pytest.raises(TypeError):
            cls(**bad)
        with pytest.raises(TypeError):
            new_event(cls, bad)


FIRST_FACTS = sorted(set(_FIRST.values()), key=lambda cls: cls.__qualname__)


@given(st.sampled_from(FIRST_FACTS).flatmap(lambda cls: st.tuples(st.just(cls), fields_of(cls))))
def test_a_subjects_first_fact_makes_what_the_librarys_mutate_makes(
    drawn: tuple[type, dict[str, Any]],
) -> None:
    """`Subject._register` against `created.mutate(None)`: the same state, or the same error."""
    cls, fields = drawn
    created: Any = new_event(cls, {**fields, "originator_topic": _TOPIC})
    outcomes: list[Any] = []
    for make in (_by_the_library, _by_register):
        try:
            outcomes.append(vars(make(created)))
        except Exception as error:  # arbitrary field values: apply_fact may refuse them
            outcomes.append(type(error))
    assert outcomes[0] == outcomes[1]
    assert not isinstance(outcomes[1], dict) or outcomes[1]["_pending_events"] == [created]


def _by_the_library(created: Any) -> Subject:
    subject: Subject = created.mutate(None)
    subject.pending_events.append(created)
    return subject


def _by_register(created: Any) -> Subject:
    subject = Subject.unregistered(created.originator_id, "another tenant, replaced")
    subject._register(created)
    return subject
