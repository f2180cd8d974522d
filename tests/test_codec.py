"""The orjson transcoder meets the library's own transcoder test case, and round-trips exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Transcoder, Transcoding
from eventsourcing.tests import persistence as library_tests
from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import OrjsonTranscoder, isoformat


class _AsData(Transcoding):
    def __init__(self, cls: type, name: str) -> None:
        self.type = cls
        self.name = name

    def encode(self, obj: Any) -> Any:
        base = self.type.__mro__[1]
        return base(obj)

    def decode(self, data: Any) -> Any:
        return self.type(data)


class TestOrjsonTranscoder(library_tests.TranscoderTestCase):
    def construct_transcoder(self) -> Transcoder:
        transcoder = OrjsonTranscoder()
        transcoder.register(library_tests.CustomType1AsDict())
        transcoder.register(library_tests.CustomType2AsDict())
        transcoder.register(_AsData(library_tests.Mydict, "mydict"))
        transcoder.register(_AsData(library_tests.MyList, "mylist"))
        transcoder.register(_AsData(library_tests.MyStr, "mystr"))
        transcoder.register(_AsData(library_tests.MyInt, "myint"))
        return transcoder


offsets: st.SearchStrategy[Any] = (
    st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    # Offsets with seconds, which orjson alone would not write in full. (Not microseconds:
    # Python 3.11's fromisoformat reads "+00:00:00.000001" back as UTC.)
    | st.integers(min_value=-86_399, max_value=86_399).map(lambda s: timezone(timedelta(seconds=s)))
    | st.just(UTC)
)
datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets | st.none()
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | datetimes
    | st.uuids().map(lambda u: UUID(int=u.int))
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(
            st.text(max_size=8).filter(lambda k: k not in ("_type_", "_data_")), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip_is_exact(value: Any) -> None:
    transcoder = OrjsonTranscoder()
    decoded = transcoder.decode(transcoder.encode(value))
    assert decoded == value
    assert _types(decoded) == _types(value)
    # Deterministic: what the chain hash covers is the same bytes every time.
    assert transcoder.encode(decoded) == transcoder.encode(value)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, datetime):
        return (datetime, value.utcoffset())
    return type(value)


def _tagged(value: Any) -> Any:
    """The stored format, written the plain way: every tuple, datetime and UUID tagged."""
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, tuple):
        return {"_type_": "tuple_as_list", "_data_": [_tagged(v) for v in value]}
    if isinstance(value, datetime):
        return {"_type_": "datetime_iso", "_data_": value.isoformat()}
    if isinstance(value, UUID):
        return {"_type_": "uuid_hex", "_data_": value.hex}
    return value


@given(values)
def test_encoding_is_the_plain_tagging(value: Any) -> None:
    """The chain hash covers these bytes: the transcoder's shortcuts must not change them."""
    assert OrjsonTranscoder().encode(value) == orjson.dumps(_tagged(value))
    assert OrjsonTranscoder().encode({"fact": value}) == orjson.dumps({"fact": _tagged(value)})


@given(
    st.datetimes(
        timezones=st.none()
        | st.timedeltas(
            min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
        ).map(timezone)
    )
)
def test_isoformat_is_the_standard_one(value: datetime) -> None:
    assert isoformat(value) == value.isoformat()


class _ISOAsText(Transcoding):
    """Another transcoding registered under the datetime's name: its decode must be used."""

    type = datetime
    name = "datetime_iso"

    def encode(self, obj: datetime) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> Any:
        return f"read:{data}"


def test_a_transcoding_registered_for_datetime_decodes_it_where_it_is_nested() -> None:
    transcoder = OrjsonTranscoder()
    transcoder.register(_ISOAsText())
    stored = orjson.dumps(
        {"at": {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+05:00"}, "n": 1}
    )
    assert transcoder.decode(stored) == {"at": "read:2026-01-01T00:00:00+05:00", "n": 1}
