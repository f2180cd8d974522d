"""The base of every aggregate in the ledger: each event names the hash of the one before it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from eventsourcing.domain import Aggregate

from ledger.chain import GENESIS, event_hash


class ChainedAggregate(Aggregate):
    """An aggregate whose events form a hash chain (see `ledger.chain`).

    The head hash is computed lazily from the last event through the same mapper the recorder
    uses, so it equals the hash the recorder stores and `verify` recomputes from the bytes.
    """

    # Plain class attributes, not annotations: the library turns annotated aggregate
    # attributes into dataclass fields of __init__.
    _last_event = cast(Any, None)
    _head_hash = cast("str | None", None)

    class Created(Aggregate.Created):
        def mutate(self, aggregate: Any) -> Any:
            agg = super().mutate(aggregate)
            assert agg is not None
            agg._last_event = self
            agg._head_hash = None
            return agg

    class Fact(Aggregate.Event):
        """A fact a publisher stated: idempotent by `event_id`, chained by `prev_hash`."""

        event_id: str
        occurred_at: datetime
        source: str
        channel: str
        prev_hash: str

        def apply(self, aggregate: Any) -> None:
            aggregate._last_event = self
            aggregate._head_hash = None
            aggregate.fact_types[self.event_id] = self.fact_type
            self.apply_fact(aggregate)

        fact_type = ""

        def apply_fact(self, aggregate: Any) -> None:
            """Change the aggregate's state; each fact class says how."""

    @property
    def head_hash(self) -> str:
        if self._last_event is None:
            return GENESIS
        if self._head_hash is None:
            self._head_hash = event_hash(self._last_event)
        return self._head_hash
