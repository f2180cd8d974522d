"""The consent views against the raw facts: bitemporal answers, replay, and who had consent."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.bug_report import WITHHELD
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION
from ledger.receipt import Receipt
from ledger.settings import Settings, SettingsError
from projections.consent_projection import ConsentProjection
from projections.queries import (
    check_recipients,
    consent_summary,
    consents_at,
    who_had_consent,
)
from projections.rebuild import (
    MAX_WORKERS,
    id_ranges,
    partition_shares,
    partition_workers,
    rebuild,
)
from projections.runner import APPLICATION, catch_up
from projections.store import ConsentViews, utc
from projections.views import Views
from tests import facts as built
from tests.examples import examples
from tests.histories import (
    SUBJECTS,
    in_batches,
    operations,
)
from tests.histories import at as at_hour
from tests.kafka_support import kafka_settings
from tests.views_support import dump, histories, refused_after_a_restore, views_agree


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**histories)
def test_views_answer_as_the_raw_facts_say(
    ops: list[dict[str, Any]], cuts: list[int], instants: list[int], known: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        views_agree(Settings(data_dir=Path(tmp) / "data"), Path(tmp), ops, cuts, instants, known)


@pytest.mark.kafka
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**histories)
def test_views_fed_from_the_ledger_topic_answer_the_same(
    kafka_bootstrap: str,
    ops: list[dict[str, Any]],
    cuts: list[int],
    instants: list[int],
    known: list[int],
) -> None:
    """Kafka mode: the projection reads the ledger topic, position per partition."""
    with tempfile.TemporaryDirectory() as tmp:
        settings_ = kafka_settings(Path(tmp) / "data", kafka_bootstrap)
        views_agree(settings_, Path(tmp), ops, cuts, instants, known)


def test_amendment_moving_a_grant_to_another_purpose(tmp_path: Path) -> None:
    """The projection recomputes only the purposes a fact touches: an amendment touches the
    purposes before and after it."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    base = {
        "tenant": "demo",
        "source": "t",
        "subject": "s0",
        "occurred_at": "2025-03-01T00:00:00+05:00",
    }
    grant = {
        **base,
        "event_id": "g",
        "type": "consent.granted",
        "purposes": ["marketing"],
        "policy_version": "crmpro-1.0",
    }
    fix = {
        **base,
        "event_id": "c",
        "type": "consent.corrected",
        "corrects": "g",
        "reason": "it was support",
        "changes": {"purposes": ["support"]},
    }
    first = ledger.record([parse_fact(grant)])[0]
    ledger.record([parse_fact(fix)])
    assert isinstance(first, Receipt)
    views = Views(ledger, tmp_path / "views.db")
    views.refresh()
    at = datetime.fromisoformat("2025-03-02T00:00:00+05:00")
    sid = ledger.sid("demo", "s0").hex
    assert who_had_consent(views.store, "demo", "support", at) == [sid]
    assert who_had_consent(views.store, "demo", "marketing", at) == []
    before_fix = datetime.fromisoformat(first.recorded_at)
    assert who_had_consent(views.store, "demo", "marketing", at, before_fix) == [sid]
    assert who_had_consent(views.store, "demo", "support", at, before_fix) == []
    views.close()
    ledger.close()


def test_who_had_consent_under_a_policy_version(ledger: ConsentLedger, tmp_path: Path) -> None:
    """After a new policy version (§9): whose consent in force still rests on the old one,
    a re-grant moving a subject to the new one and a correction of the version as of its
    recording."""
    v2 = "crmpro-2.0"
    facts = [
        built.policy(
            v2,
            "2025-02-01T00:00:00+05:00",
            {"marketing": built.terms(None, "full_name", "email", "phone")},
        ),
        built.grant("a", occurred_at="2025-01-10T00:00:00Z"),
        built.grant("b", occurred_at="2025-01-10T00:00:00Z"),
        built.grant("b", policy_version=v2, occurred_at="2025-03-01T00:00:00Z"),
        built.grant("c", policy_version=v2, occurred_at="2025-03-01T00:00:00Z"),
        built.grant("d", occurred_at="2025-02-10T00:00:00Z", event_id="d-grant"),
        built.grant("e", occurred_at="2025-01-10T00:00:00Z"),
        built.withdraw("e", occurred_at="2025-01-20T00:00:00Z"),
    ]
    assert all(isinstance(o, Receipt) for o in ledger.record([parse_fact(f) for f in facts]))
    fixed = ledger.record(
        [
            parse_fact(
                built.fact(
                    "consent.corrected",
                    "d",
                    corrects="d-grant",
                    reason="the form showed 2.0",
                    changes={"policy_version": v2},
                    occurred_at="2025-03-05T00:00:00Z",
                )
            )
        ]
    )[0]
    assert isinstance(fixed, Receipt)
    before_fix = datetime.fromisoformat(fixed.recorded_at) - timedelta(microseconds=1)
    sid = {name: ledger.sid("demo", name).hex for name in "abcde"}
    views = Views(ledger, tmp_path / "views.db")
    try:
        views.refresh()

        def who(at: str, version: str | None, known_at: datetime | None = None) -> list[str]:
            return who_had_consent(
                views.store,
                "demo",
                "marketing",
                datetime.fromisoformat(at),
                known_at,
                policy_version=version,
            )

        def named(*names: str) -> list[str]:
            return sorted(sid[n] for n in names)

        april = "2025-04-01T00:00:00+00:00"
        assert who(april, SEED_POLICY_VERSION) == named("a")
        assert who(april, v2) == named("b", "c", "d")
        assert who(april, None) == named("a", "b", "c", "d")
        assert who(april, SEED_POLICY_VERSION, before_fix) == named("a", "d")
        assert who(april, v2, before_fix) == named("b", "c")
        # Before b's re-grant; d's grant is of 2.0 as corrected, of 1.0 as known before.
        february = "2025-02-15T00:00:00+00:00"
        assert who(february, SEED_POLICY_VERSION) == named("a", "b")
        assert who(february, SEED_POLICY_VERSION, before_fix) == named("a", "b", "d")
        assert who(april, "no-such-version") == []

        # Counted, not named: the same subjects, by version.
        def summary(at: str, known_at: datetime | None = None) -> tuple[int, dict[str, int]]:
            got = consent_summary(
                views.store, "demo", "marketing", datetime.fromisoformat(at), known_at
            )
            return got["with_consent"], got["by_policy_version"]

        assert summary(april) == (4, {SEED_POLICY_VERSION: 1, v2: 3})
        assert summary(april, before_fix) == (4, {SEED_POLICY_VERSION: 2, v2: 2})
        assert summary(february) == (3, {SEED_POLICY_VERSION: 2, v2: 1})  # d as corrected
        assert summary("2025-01-01T00:00:00+00:00") == (0, {})
    finally:
        views.close()


def test_who_had_consent_reads_an_index_in_sid_order(tmp_path: Path) -> None:
    """Both forms of the question are answered from one index alone, with no sort (which
    paging through a large tenant would repeat page after page); as known now, from the
    partial index of the intervals never closed."""
    from projections.queries import WHO_HAD_CONSENT, WHO_HAD_CONSENT_NOW

    views = ConsentViews.open(tmp_path / "views.db")
    t = "2025-01-01T00:00:00.000000+00:00"
    plans = {
        sql: " / ".join(
            str(r[3]) for r in views.rows(f"EXPLAIN QUERY PLAN {sql}", (*args, "", t, t, 10))
        )
        for sql, args in (
            (WHO_HAD_CONSENT_NOW, ("demo", "marketing", t, t)),
            (WHO_HAD_CONSENT, ("demo", "marketing", t, t, t, t)),
        )
    }
    now, known = plans[WHO_HAD_CONSENT_NOW], plans[WHO_HAD_CONSENT]
    assert "USING COVERING INDEX view_intervals_now" in now, now
    assert "USING COVERING INDEX view_intervals_by_purpose" in known, known
    assert "TEMP B-TREE" not in now + known
    views.close()


def test_a_campaign_checks_intervals_come_from_an_index_alone(tmp_path: Path) -> None:
    """As known now from the partial index of intervals never closed (well under half the
    pages of the by-subject one, which also holds every superseded interval); as known at a
    past instant from the by-subject index. A store made before the partial index had its
    ends_by and event_id gets the new index and loses the old one when opened."""
    import sqlite3

    from projections.queries import INTERVALS_KNOWN_AT, INTERVALS_NOW

    path = tmp_path / "views.db"
    views = ConsentViews.open(path)
    views.close()
    old = sqlite3.connect(path)
    old.execute("DROP INDEX view_intervals_now")
    old.execute(
        "CREATE INDEX view_intervals_in_force ON view_intervals"
        " (tenant, purpose, sid, valid_from, valid_to, known_to) WHERE known_to IS NULL"
    )
    old.commit()
    old.close()
    views = ConsentViews.open(path)
    t = "2025-01-01T00:00:00.000000+00:00"
    now = views.rows(f"EXPLAIN QUERY PLAN {INTERVALS_NOW.format('?,?')}", ("d", "m", "a", "b", t))
    known = views.rows(
        f"EXPLAIN QUERY PLAN {INTERVALS_KNOWN_AT.format('?,?')}", ("a", "b", "m", t, t, t)
    )
    assert "USING COVERING INDEX view_intervals_now" in str(now[0][3]), now
    assert "USING COVERING INDEX view_intervals_by_subject" in str(known[0][3]), known
    indexes = {r[0] for r in views.rows("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "view_intervals_now" in indexes and "view_intervals_in_force" not in indexes
    views.close()


def test_rows_as_tuples_only_where_asked(tmp_path: Path) -> None:
    """The many-row questions read plain tuples (no row-factory call per row); the pooled
    connection they used still gives named rows to the next reader."""
    import sqlite3

    views = ConsentViews.open(tmp_path / "views.db")
    sql = "SELECT ? AS a, ? AS b"
    assert views.rows(sql, (1, 2), tuples=True) == [(1, 2)]
    in_list = "SELECT 7 AS a WHERE 'x' IN ({}) AND ? = 5"
    assert views.rows_in(in_list, ["x", "y"], (5,), tuples=True) == [(7,)]
    [row] = views.rows(sql, (1, 2))
    assert isinstance(row, sqlite3.Row) and row["b"] == 2
    views.close()


class _GeneralPathOnly(ConsentProjection):
    follow_in_order = False


def _fact(n: int, kind: str, hour: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"x{n}",
        "tenant": "demo",
        "subject": SUBJECTS[0],
        "source": "prop",
        "type": kind,
        "occurred_at": at_hour(hour),
        "purposes": ["marketing"],
        **fields,
    }


# The boundary: a grant that expires exactly when the next fact occurs keeps its interval.
_GRANT = {"policy_version": SEED_POLICY_VERSION}
_EXPIRES_AS_NEXT_OCCURS = [
    _fact(0, "consent.granted", 0, expires_at=at_hour(5), **_GRANT),
    _fact(1, "consent.granted", 5, expires_at=at_hour(9), **_GRANT),
    _fact(2, "consent.withdrawn", 9),
]


# Two grants at one instant (the later recorded decides), then a later fact.
_SAME_INSTANT_THEN_LATER = [
    _fact(0, "consent.granted", 0, **_GRANT),
    _fact(1, "consent.granted", 0, expires_at=at_hour(9), **_GRANT),
    _fact(2, "consent.withdrawn", 5),
]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations(), cuts=histories["cuts"], in_order=st.booleans())
@example(ops=_SAME_INSTANT_THEN_LATER, cuts=[1] * 30, in_order=False)
@example(ops=_EXPIRES_AS_NEXT_OCCURS, cuts=[1] * 30, in_order=False)
@example(ops=_EXPIRES_AS_NEXT_OCCURS, cuts=[3] * 30, in_order=False)
def test_in_order_facts_change_the_views_as_the_general_path_does(
    ops: list[dict[str, Any]], cuts: list[int], in_order: bool
) -> None:
    """The local path for facts that come after their purposes' last entry writes exactly the
    rows that recomputing the purposes' whole timelines writes, page by page (catching up)
    and history by history (replay). Half the streams are sorted by occurred_at, so most of
    their facts take the local path; the rest mix it with late facts and corrections. A
    projection whose cache holds at most two units (one subject of one fact; the others are
    dropped and read back from the views as they come and go) writes the same rows too."""
    if in_order:
        ops = sorted(ops, key=lambda f: f.get("occurred_at", ""))
    local_paths_agree(ops, cuts)


@st.composite
def late_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One subject's grants and withdrawals at few instants, sent in any order, now and then
    corrected: facts land before, between and after the entries of their purposes, before
    and after a correction moves, voids or narrows one, which the streams above seldom do."""
    ops: list[dict[str, Any]] = []
    purpose_lists = st.lists(
        st.sampled_from(["marketing", "support"]), min_size=1, max_size=2, unique=True
    )
    for n in range(draw(st.integers(min_value=2, max_value=25))):
        hour = draw(st.integers(min_value=0, max_value=40))
        kind = draw(st.integers(min_value=0, max_value=7))
        if kind == 0:
            ops.append(_fact(n, "consent.withdrawn", hour, purposes=draw(purpose_lists)))
        elif kind == 1 and ops:
            target = draw(st.sampled_from(ops))["event_id"]
            change = draw(st.sampled_from(["void", "occurred_at", "purposes"]))
            fields: dict[str, Any] = {"corrects": target, "reason": "recorded wrong"}
            if change == "void":
                fields["void"] = True
            elif change == "occurred_at":
                fields["changes"] = {"occurred_at": at_hour(draw(st.integers(0, 40)))}
            else:
                fields["changes"] = {"purposes": draw(purpose_lists)}
            correction = _fact(n, "consent.corrected", hour, **fields)
            del correction["purposes"]  # a correction names none of its own
            ops.append(correction)
        else:
            fields = {**_GRANT, "purposes": draw(purpose_lists)}
            if draw(st.booleans()):
                fields["expires_at"] = at_hour(hour + draw(st.integers(1, 30)))
            ops.append(_fact(n, "consent.granted", hour, **fields))
    return ops


# A grant slotted between two grants of its purpose: the first now ends at it.
_BETWEEN_TWO_GRANTS = [
    _fact(0, "consent.granted", 0, **_GRANT),
    _fact(1, "consent.granted", 10, **_GRANT),
    _fact(2, "consent.granted", 5, **_GRANT),
]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=late_histories(), cuts=histories["cuts"])
@example(ops=_BETWEEN_TWO_GRANTS, cuts=[1] * 30)
def test_late_facts_change_the_views_as_the_general_path_does(
    ops: list[dict[str, Any]], cuts: list[int]
) -> None:
    """The local paths for a fact that comes before an entry of its purposes (`_late`) or
    after them all (`_follow`), in a subject corrected or not, write exactly the rows that
    recomputing the purposes' whole timelines writes."""
    local_paths_agree(ops, cuts)


def local_paths_agree(ops: list[dict[str, Any]], cuts: list[int]) -> None:
    """Views caught up batch by batch through the local paths, through the general path
    alone, through a cache of two units, and replayed, hold the same rows."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp) / "data"))
        ledger.init_demo()
        local = ConsentProjection(view=ConsentViews.open(Path(tmp) / "local.db"))
        general = _GeneralPathOnly(view=ConsentViews.open(Path(tmp) / "general.db"))
        small = ConsentProjection(view=ConsentViews.open(Path(tmp) / "small.db"), cache_facts=2)
        for batch in in_batches(ops, cuts):
            ledger.record([parse_fact(f) for f in batch])
            catch_up(ledger, local)
            catch_up(ledger, general)
            catch_up(ledger, small)
            held = [1 + len(v.entries) + len(v.corrections) for v in small._cache.values()]
            assert sum(held) <= 2
        assert dump(local.view) == dump(general.view)
        assert dump(small.view) == dump(general.view)
        rebuild(ledger, Path(tmp) / "replayed.db", workers=1)
        replayed = ConsentViews.open(Path(tmp) / "replayed.db")
        assert dump(replayed) == dump(general.view)
        for views in (local.view, general.view, small.view, replayed):
            views.close()
        ledger.close()


def _record_some(ledger: ConsentLedger) -> None:
    from tests.facts import grant, withdraw

    for n in range(6):
        for fact in (
            grant(f"p-{n}", ("marketing", "support")),
            withdraw(f"p-{n}", occurred_at="2025-03-02T10:00:00+05:00"),
        ):
            assert isinstance(ledger.record([parse_fact(fact)])[0], Receipt)


def test_a_replay_that_dies_leaves_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay builds under a temporary name: a failure part-way leaves nothing at the
    target, and the next replay starts over instead of finishing a half-built store."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    _record_some(ledger)
    target = tmp_path / "inquiry" / "views.db"
    target.parent.mkdir()
    written = 0
    project = ConsentProjection.project_histories

    def dies_after_a_batch(self: ConsentProjection, events: Any) -> None:
        nonlocal written
        if written:
            raise KeyboardInterrupt
        project(self, events)
        written += 1

    monkeypatch.setattr(ConsentProjection, "project_histories", dies_after_a_batch)
    with pytest.raises(KeyboardInterrupt):
        rebuild(ledger, target, batch=2)
    assert written == 1 and not target.exists()
    monkeypatch.undo()
    assert rebuild(ledger, target, batch=2) == ledger.recorder.max_notification_id()
    assert sorted(p.name for p in target.parent.iterdir()) == ["views.db"]
    views = Views(ledger, tmp_path / "live.db")
    views.refresh()
    replayed = ConsentViews.open(target)
    assert dump(replayed) == dump(views.store)
    with pytest.raises(FileExistsError):
        rebuild(ledger, target)
    replayed.close()
    views.close()
    ledger.close()


def _schema(path: Path) -> dict[str, Any]:
    """Each table's columns and indexes, and each index's definition, by name."""
    db = sqlite3.connect(path)
    try:
        out: dict[str, Any] = {}
        for kind, name, table, sql in db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema"
        ).fetchall():
            if kind == "table":
                out[name] = (
                    db.execute(f"PRAGMA table_xinfo({name})").fetchall(),
                    sorted(db.execute(f"PRAGMA index_list({name})").fetchall()),
                    "WITHOUT ROWID" in sql,
                )
            else:
                out[name] = (kind, table, sql)
        return out
    finally:
        db.close()


@pytest.mark.parametrize("how", ["1 process", "2 processes", "kafka"])
def test_a_replayed_store_has_the_live_stores_tables_and_indexes(
    tmp_path: Path, how: str, request: pytest.FixtureRequest
) -> None:
    """Replay lays out its store (see rebuild): the store it hands over must be laid out
    differently, not defined differently."""
    if how == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        ledger = ConsentLedger(kafka_settings(tmp_path / "data", bootstrap))
    else:
        ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    _record_some(ledger)
    rebuild(ledger, tmp_path / "replayed.db", workers=None if how == "kafka" else int(how[0]))
    views = Views(ledger, tmp_path / "live.db")
    views.refresh()
    replayed = _schema(tmp_path / "replayed.db")
    assert replayed == _schema(tmp_path / "live.db")
    assert {"view_intervals_now", "view_intervals_by_subject", "view_subjects"} <= set(replayed)
    views.close()
    ledger.close()


def test_a_stale_batch_is_refused_not_applied_twice(tmp_path: Path) -> None:
    """Two processes on one views store: one commits part of what the other has read."""
    from eventsourcing.persistence import Tracking

    from projections.store import ViewMovedOn

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    _record_some(ledger)
    notifications = ledger.recorder.select_notifications(start=0, limit=1000)
    events = [ledger.mapper.to_domain_event(n) for n in notifications]
    first = ConsentProjection(ConsentViews.open(tmp_path / "views.db"))
    second = ConsentProjection(ConsentViews.open(tmp_path / "views.db"))
    first.process_batch(events[:5], Tracking(ledger.name, notifications[4].id), after=None)
    before = dump(first.view)
    with pytest.raises(ViewMovedOn):
        second.process_batch(events, Tracking(ledger.name, notifications[-1].id), after=None)
    assert dump(first.view) == before
    second.process_batch(
        events[5:], Tracking(ledger.name, notifications[-1].id), after=notifications[4].id
    )
    fresh = Views(ledger, tmp_path / "fresh.db")
    fresh.refresh()
    assert dump(second.view) == dump(fresh.store)
    ledger.close()


def test_catching_up_while_another_process_does(
    backend_ledger: ConsentLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other process gets ahead between this one's read and its commit: read again."""
    _record_some(backend_ledger)
    path = tmp_path / "shared-views.db"
    mine, theirs = Views(backend_ledger, path), Views(backend_ledger, path)
    apply = ConsentViews.apply_read  # every commit of a read's changes and positions
    overtaken: list[bool] = []

    def overtaken_once(self: ConsentViews, *args: Any, **kwargs: Any) -> None:
        if self is mine.store and not overtaken:
            overtaken.append(True)
            theirs.refresh(page=3)
        apply(self, *args, **kwargs)

    monkeypatch.setattr(ConsentViews, "apply_read", overtaken_once)
    mine.refresh(page=1000)
    assert overtaken
    monkeypatch.undo()
    fresh = Views(backend_ledger, tmp_path / "fresh.db")
    fresh.refresh()
    assert dump(mine.store) == dump(fresh.store)
    for views in (mine, theirs, fresh):
        views.close()


def test_a_withdrawal_after_an_expiry_is_the_reason_a_recipient_lacks_consent(
    tmp_path: Path,
) -> None:
    """Found by the property test: a late grant that expired, then a withdrawal.

    Granted at 00:00, everything withdrawn at 02:00, then a late grant at 00:00 that expired
    at 01:00 replaces the first grant's terms. The views' intervals end at the expiry; the
    deciding fact at 02:00 is the withdrawal, and the campaign check must say so, as
    consents_at does.
    """
    from tests.facts import grant, withdraw

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    day = "2025-03-01T{}:00:00+05:00"
    for fact in (
        grant("late", event_id="g1", occurred_at=day.format("00")),
        withdraw("late", ("*",), event_id="w1", occurred_at=day.format("02")),
        grant("late", event_id="g2", occurred_at=day.format("00"), expires_at=day.format("01")),
    ):
        assert isinstance(ledger.record([parse_fact(fact)])[0], Receipt)
    views = Views(ledger, tmp_path / "views.db")
    views.refresh()
    sid = ledger.sid("demo", "late").hex
    for hour, reason in (("01", "expired"), ("02", "withdrawn"), ("03", "withdrawn")):
        at = datetime.fromisoformat(day.format(hour))
        [checked] = check_recipients(views.store, "demo", "marketing", at, [sid])
        assert checked.reason == reason, hour
        assert (consents_at(views.store, "demo", sid, at) or {})["marketing"].state == reason
    views.close()
    ledger.close()


def test_an_interval_that_comes_to_end_by_expiry_instead_of_by_a_fact_says_so(
    tmp_path: Path,
) -> None:
    """Found by the property test: the same interval, ended for another reason.

    A grant at 02:00; a late grant at 01:00 expiring at 02:00, so its interval ends at 02:00,
    by the next fact. Voiding the 02:00 grant leaves the late grant's interval where it was
    (01:00 to 02:00) but ending by its expiry: the views must record that change of reason
    from the void's recorded_at, or the campaign check, as known after the void, calls the
    lapse a withdrawal. As known before the void, the 02:00 grant is in force.
    """
    from tests.facts import fact, grant

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    day = "2025-03-01T{}:00:00+05:00"
    recorded = []
    for f in (
        grant("tie", event_id="g2", occurred_at=day.format("02")),
        grant("tie", event_id="g1", occurred_at=day.format("01"), expires_at=day.format("02")),
        fact("consent.corrected", "tie", event_id="v", corrects="g2", void=True, reason="x"),
    ):
        [receipt] = ledger.record([parse_fact(f)])
        assert isinstance(receipt, Receipt)
        recorded.append(datetime.fromisoformat(receipt.recorded_at))
    views = Views(ledger, tmp_path / "views.db")
    views.refresh()
    sid = ledger.sid("demo", "tie").hex
    for hour, known_at, reason in (
        ("01", None, "granted"),
        ("02", None, "expired"),
        ("03", None, "expired"),
        ("02", recorded[1], "granted"),  # before the void: the 02:00 grant decides
    ):
        at = datetime.fromisoformat(day.format(hour))
        [checked] = check_recipients(views.store, "demo", "marketing", at, [sid], known_at)
        assert checked.reason == reason, (hour, known_at)
        states = consents_at(views.store, "demo", sid, at, known_at) or {}
        assert states["marketing"].state == reason, (hour, known_at)
    # A replay writes what the live projection wrote.
    rebuild(ledger, tmp_path / "replayed.db")
    replayed = ConsentViews.open(tmp_path / "replayed.db")
    assert dump(replayed) == dump(views.store)
    replayed.close()
    views.close()
    ledger.close()


def live_views_of_two_halves(
    ledger: ConsentLedger, path: Path
) -> tuple[Views, datetime, dict[str, list[tuple[Any, ...]]], int]:
    """Live views following the demo stream of 120 subjects recorded in two halves; the
    instant between them, what the views held then, and how many facts were recorded."""
    from ledger.demo import demo_stream

    stream = [parse_fact(f) for f in demo_stream(subjects=120)]
    views = Views(ledger, path)
    ledger.record(stream[:60])
    views.refresh()
    then, snapshot = datetime.now(UTC), dump(views.store)
    ledger.record(stream[60:])
    views.refresh()
    return views, then, snapshot, len(stream)


def test_replay_split_over_processes_writes_what_one_process_would(tmp_path: Path) -> None:
    """Worker processes each fold one range of subjects into the shared temporary store:
    together they must write exactly the live view's rows, for every fact type, and up to an
    instant exactly the rows the live view had then."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    views, then, snapshot, _ = live_views_of_two_halves(ledger, tmp_path / "live.db")
    for workers in (1, 3):
        rebuild(ledger, tmp_path / f"now-{workers}" / "views.db", workers=workers)
        rebuild(ledger, tmp_path / f"then-{workers}" / "views.db", known_at=then, workers=workers)
    for workers in (1, 3):
        now = ConsentViews.open(tmp_path / f"now-{workers}" / "views.db")
        assert dump(now) == dump(views.store)
        assert now.max_tracking_id(APPLICATION) == views.store.max_tracking_id(APPLICATION)
        now.close()
        earlier = ConsentViews.open(tmp_path / f"then-{workers}" / "views.db")
        assert dump(earlier) == snapshot
        earlier.close()
    views.close()
    ledger.close()


def test_a_kafka_replay_split_by_partition_writes_what_one_process_would(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka mode: worker processes each read some partitions of the ledger topic into the
    shared temporary store: together they must write exactly the live view's rows, stand
    where it stands in every partition (positions and marks), and up to an instant write
    the rows the live view had then. More workers than partitions get one partition each;
    a worker that dies fails the replay and leaves no store."""
    from ledger.failpoints import EXIT_STATUS
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from projections.kafka_source import tracking_names

    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap))
    ledger.init_demo()
    views, then, snapshot, recorded = live_views_of_two_halves(ledger, tmp_path / "live.db")
    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    names = sorted(tracking_names(recorder, APPLICATION))

    def positions(store: ConsentViews) -> list[tuple[int | None, tuple[int, str] | None]]:
        return [(store.max_tracking_id(name), store.log_mark(name)) for name in names]

    live = positions(views.store)
    assert all(position for position, _ in live)  # every partition holds facts
    for workers in (1, 2, 3, 5):
        read = rebuild(ledger, tmp_path / f"now-{workers}" / "views.db", workers=workers)
        rebuild(ledger, tmp_path / f"then-{workers}" / "views.db", known_at=then, workers=workers)
        now = ConsentViews.open(tmp_path / f"now-{workers}" / "views.db")
        assert dump(now) == dump(views.store), workers
        assert positions(now) == live, workers
        assert read >= recorded, workers
        now.close()
        earlier = ConsentViews.open(tmp_path / f"then-{workers}" / "views.db")
        assert dump(earlier) == snapshot, workers
        assert positions(earlier) == live, workers  # read to the end, facts after `then` left
        earlier.close()
    target = tmp_path / "inquiry" / "views.db"
    target.parent.mkdir()
    # Read when a process imports the ledger: armed in the spawned worker, not in this one.
    monkeypatch.setenv("LEDGER_FAILPOINT", "replay-part-written:1")
    with pytest.raises(RuntimeError, match=rf"ended without finishing \(exit code {EXIT_STATUS}\)"):
        rebuild(ledger, target, workers=2)
    assert list(target.parent.iterdir()) == []
    views.close()
    ledger.close()


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=128))
def test_a_kafka_replay_takes_a_process_a_core_unless_partitions_would_be_left_over(
    partitions: int, cores: int
) -> None:
    """Never more processes than partitions, or cores beyond the cap; one a core when the
    partitions share out evenly; fewer partitions than twice the cores (and more than
    them) and not a multiple: one process a partition."""
    workers = partition_workers(partitions, cores)
    usable = min(cores, MAX_WORKERS)
    assert 1 <= workers <= partitions
    if partitions <= usable:
        assert workers == partitions
    elif partitions % usable == 0 or partitions >= 2 * usable:
        assert workers == usable
    else:
        assert workers == partitions


@given(
    st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=40),
)
def test_a_kafka_replays_partitions_are_shared_out_whole_and_evenly(
    sizes: list[int], workers: int
) -> None:
    """Every partition read by exactly one process, every process given one, and no
    process left with more offsets than another by more than the largest partition."""
    workers = min(workers, len(sizes))
    ends = dict(enumerate(sizes))
    shares = partition_shares(ends, workers)
    assert len(shares) == workers and all(shares)
    assert sorted(p for share in shares for p in share) == list(ends)
    loads = [sum(ends[p] for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes)


def test_a_replay_worker_that_dies_fails_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process killed after writing part of its range: the replay fails with the
    worker's exit status and leaves no store; the next replay builds a complete one."""
    from ledger.failpoints import EXIT_STATUS
    from tests.facts import grant

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    # 40 subjects with keyed-hash ids: each half of the id space holds some of them.
    ledger.record([parse_fact(grant(f"w-{n}", ("marketing",))) for n in range(40)])
    target = tmp_path / "inquiry" / "views.db"
    target.parent.mkdir()
    # Read when a process imports the ledger: armed in the spawned worker, not in this one.
    monkeypatch.setenv("LEDGER_FAILPOINT", "replay-part-written:1")
    with pytest.raises(RuntimeError, match=rf"ended without finishing \(exit code {EXIT_STATUS}\)"):
        rebuild(ledger, target, batch=2, workers=2)
    assert not target.exists()
    monkeypatch.delenv("LEDGER_FAILPOINT")
    assert rebuild(ledger, target, batch=2, workers=2) == ledger.recorder.max_notification_id()
    assert sorted(p.name for p in target.parent.iterdir()) == ["views.db"]
    views = Views(ledger, tmp_path / "live.db")
    views.refresh()
    replayed = ConsentViews.open(target)
    assert dump(replayed) == dump(views.store)
    replayed.close()
    views.close()
    ledger.close()


def test_a_replay_workers_exception_is_raised_by_the_replay_as_its_own(tmp_path: Path) -> None:
    """A worker process that fails (here its store's directory is a file) sends its
    exception to the process that started it, which raises it as its own (so `replay` says a
    broker gone or a full disk in one line, exit 6), the worker's traceback as its cause."""
    from projections import rebuild as rebuild_module

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    (tmp_path / "a-file").write_text("")
    partial = tmp_path / "a-file" / "views.db"
    args = (ledger.settings, partial, 1, "", None, None, 10, False)
    with pytest.raises(SettingsError, match="a-file is not a directory") as raised:
        rebuild_module._shared_out([(rebuild_module._build_part, args, "replay-test")], lambda: 0)
    assert isinstance(raised.value.__cause__, rebuild_module.WorkerFailure)
    assert "in replay worker replay-test:" in str(raised.value.__cause__)
    assert "ensure_dir" in str(raised.value.__cause__)  # where the worker failed
    # Its words are the raised error's own, said where the error is expected (`replay` says
    # this one); the frames withhold every message, for those that may quote a value.
    assert "a-file is not a directory" not in str(raised.value.__cause__)
    assert f"ledger.settings.SettingsError: {WITHHELD}" in str(raised.value.__cause__)
    ledger.close()


def test_a_replay_workers_exception_that_cannot_be_made_again_is_said_by_name() -> None:
    """An exception whose constructor takes more than its message pickles but cannot be
    unpickled: sent by its name instead of failing the receiving end (not its words, which
    may quote a value: `ledger.bug_report`)."""
    from types import SimpleNamespace

    from projections import rebuild as rebuild_module

    class Particular(Exception):
        def __init__(self, size: int, limit: int) -> None:
            super().__init__(f"{size} over {limit}")

    def work() -> int:
        raise Particular(3, 2)

    receiver, sender = rebuild_module._SPAWN.Pipe(duplex=False)
    rebuild_module._answer(sender, work)
    with pytest.raises(RuntimeError, match=r"<locals>\.Particular \(message withheld") as raised:
        rebuild_module._result_of(SimpleNamespace(name="replay-test"), receiver)
    assert "3 over 2" not in str(raised.value) + str(raised.value.__cause__)
    receiver.close()
    answered, sender = rebuild_module._SPAWN.Pipe(duplex=False)
    rebuild_module._answer(sender, lambda: 7)
    assert rebuild_module._result_of(SimpleNamespace(name="replay-test"), answered) == 7
    answered.close()


@given(st.integers(min_value=1, max_value=MAX_WORKERS), st.uuids())
def test_every_aggregate_id_falls_in_exactly_one_replay_range(parts: int, uuid: Any) -> None:
    ranges = id_ranges(parts)
    assert len(ranges) == parts
    holding = [(lo, hi) for lo, hi in ranges if lo <= uuid.hex and (hi is None or uuid.hex < hi)]
    assert len(holding) == 1


def test_a_store_being_built_has_no_write_ahead_log_and_takes_one_in_its_place(
    tmp_path: Path,
) -> None:
    """Replay's temporary store is written without a write-ahead log or a journal on the
    disk, while a failed transaction still rolls back; opened in its place, the store is in
    WAL mode like every live store (which readers beside a writer need)."""
    path = tmp_path / "views.db.partial"
    building = ConsentViews.open(path, indexes=False, building=True)
    assert [tuple(r) for r in building.rows("PRAGMA journal_mode")] == [("memory",)]
    with pytest.raises(IntegrityError), building.datastore.transaction(commit=True) as c:
        c.execute("INSERT INTO view_subjects VALUES ('a', 'demo', 'x', NULL, NULL)")
        c.execute("INSERT INTO view_subjects VALUES ('a', 'demo', 'y', NULL, NULL)")
    assert building.rows("SELECT COUNT(*) FROM view_subjects")[0][0] == 0
    with building.datastore.transaction(commit=True) as c:
        c.execute("INSERT INTO view_subjects VALUES ('b', 'demo', 'x', NULL, NULL)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views.db.partial"]
    building.close()
    path.rename(tmp_path / "views.db")
    placed = ConsentViews.open(tmp_path / "views.db")
    assert [tuple(r) for r in placed.rows("PRAGMA journal_mode")] == [("wal",)]
    assert placed.rows("SELECT sid FROM view_subjects")[0][0] == "b"
    placed.close()


def test_a_replay_worker_joins_a_build_while_another_process_writes(tmp_path: Path) -> None:
    """A replay's worker opens the store being built while the process that made it may be
    in a write transaction. Left to the library's own opening, its connection asked to put
    the file in WAL mode, which needs the file to itself: "database is locked", and the
    replay failed."""
    path = tmp_path / "views.db.partial"
    building = ConsentViews.open(path, indexes=False, building=True)
    with building.datastore.transaction(commit=True) as c:
        c.execute("INSERT INTO view_subjects VALUES ('a', 'demo', 'x', NULL, NULL)")
        worker = ConsentViews.open(path, indexes=False, building=True)
        assert [tuple(r) for r in worker.rows("PRAGMA journal_mode")] == [("memory",)]
        worker.close()
    building.close()


def test_replay_gives_each_index_and_the_subjects_table_one_run_of_pages(
    tmp_path: Path,
) -> None:
    """What the cold campaign check relies on (see rebuild): read in key order, each of these
    is read from consecutive pages of the file."""
    from ledger.demo import demo_stream

    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    ledger.record([parse_fact(f) for f in demo_stream(subjects=1500)])
    rebuild(ledger, tmp_path / "replayed.db", workers=2)
    ledger.close()
    db = sqlite3.connect(tmp_path / "replayed.db")
    runs = dict(
        db.execute(
            "WITH p AS (SELECT name, pageno - ROW_NUMBER() OVER "
            "(PARTITION BY name ORDER BY pageno) AS run FROM dbstat) "
            "SELECT name, COUNT(DISTINCT run) FROM p GROUP BY name"
        ).fetchall()
    )
    pages = dict(db.execute("SELECT name, COUNT(*) FROM dbstat GROUP BY name").fetchall())
    db.close()
    laid_out = [
        "view_subjects",
        "view_intervals_now",
        "view_intervals_by_subject",
        "view_intervals_by_purpose",
    ]
    assert all(pages[name] > 3 for name in laid_out), pages  # enough to be interleaved
    assert {name: runs[name] for name in laid_out} == dict.fromkeys(laid_out, 1)


zones: st.SearchStrategy[Any] = (
    st.none()
    | st.just(UTC)
    | st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ).map(timezone)
)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones))
def test_utc_writes_what_isoformat_would(instant: datetime) -> None:
    """The views compare stored instants as text: each must be written the one same way."""
    expected = instant.astimezone(UTC).isoformat(timespec="microseconds")
    assert utc.__wrapped__(instant) == expected


def test_views_of_a_longer_log_are_refused_not_answered_from(tmp_path: Path) -> None:
    """A ledger.db restored from an older backup next to the newer views: `who` counted a
    person the log did not hold (the trail said no such subject) and `project` said it had
    nothing to do. Every process refuses such views, in one line (exit 2; HTTP 503)."""

    import orjson

    from tests.cli_support import run

    settings, older = a_log_backed_up(tmp_path)
    data = settings.data_dir
    later = run(data, "record", stdin=orjson.dumps(built.grant("later", event_id="g2")).decode())
    assert later.returncode == 0, later.stderr
    assert run(data, "project").returncode == 0
    restore(settings, older)
    views_refused_everywhere(settings, "stand at log position", "views_ahead_of_log")
    (data / "views.db").unlink()  # what the message says to do
    assert run(data, "project").returncode == 0
    assert "1 subjects had consent" in run(data, *WHO, "--summary").stdout


WHO = ["who", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z", "--tenant", "demo"]


def a_log_backed_up(tmp_path: Path) -> tuple[Settings, Path]:
    """An embedded log with the demo tenant and one grant, and a copy of its ledger.db."""
    import shutil

    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(built.grant("kept", event_id="g1"))])
    ledger.close()
    older = tmp_path / "ledger.db"
    shutil.copy(settings.log_path, older)  # the log closed: its WAL is in the file
    return settings, older


def restore(settings: Settings, older: Path) -> None:
    """ledger.db put back from the copy, by hand: the views left as they are."""
    import shutil

    for leftover in settings.data_dir.glob("ledger.db*"):
        leftover.unlink()
    shutil.copy(older, settings.log_path)


def views_refused_everywhere(settings: Settings, says: str, code: str) -> None:
    """`project`, `who` and `serve` exit 2 with one line that `says`; HTTP answers 503 `code`."""
    from fastapi.testclient import TestClient

    from api.app import create_app, keys_path
    from api.keys import ApiKeys
    from tests.cli_support import run
    from tests.server_support import free_port

    for args in (["project"], WHO, ["serve", "--port", str(free_port())]):
        out = run(settings.data_dir, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("consent-ledger: configuration: the views ")
        assert says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"compliance"})
    store.close()
    with TestClient(create_app(settings)) as client:
        answer = client.get(
            "/v1/purposes/marketing/subjects?as_of=2025-06-01T00:00:00Z",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == code


def test_views_of_a_log_restored_and_written_since_are_refused(tmp_path: Path) -> None:
    """The same restore, then a fact recorded before anything read the views: the log is as
    long as the views again, and `who` named a person the log did not hold while leaving out
    the one it did, for good (the views stood past her fact). Now every process refuses the
    views, as it refuses views of a longer log; `replay` and `project` mark them too."""
    import shutil

    import orjson

    from tests.cli_support import run

    settings, older = a_log_backed_up(tmp_path)
    data = settings.data_dir
    lost = orjson.dumps(built.grant("lost", event_id="g2")).decode()
    assert run(data, "record", stdin=lost).returncode == 0
    # Views made by a rebuild are marked too: these are the operator's replay, put in place.
    assert run(data, "replay", "--into", str(tmp_path / "replayed")).returncode == 0
    shutil.move(tmp_path / "replayed" / "views.db", data / "views.db")
    restore(settings, older)
    since = orjson.dumps(built.grant("since", event_id="g3")).decode()
    assert run(data, "record", stdin=since).returncode == 0  # the log is as long as the views
    views_refused_everywhere(
        settings, "were built from another log: the log's fact at position", "views_of_another_log"
    )
    (data / "views.db").unlink()  # what the message says to do
    assert run(data, "project").returncode == 0
    listed = run(data, *WHO).stdout.split()
    ledger = ConsentLedger(settings)
    try:
        assert sorted(listed) == sorted(ledger.sid("demo", s).hex for s in ("kept", "since"))
    finally:
        ledger.close()


def test_views_caught_up_by_a_process_are_checked_by_the_next(tmp_path: Path) -> None:
    """Marks written page by page as a process catches up (not only by a rebuild): a
    restore after them is found by the next process, and views of this log are not refused."""
    import shutil

    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(built.grant("kept", event_id="g1"))])
    ledger.close()
    shutil.copy(settings.log_path, tmp_path / "older.db")
    for number in range(3):
        ledger = ConsentLedger(settings)
        ledger.record([parse_fact(built.grant(f"s{number}", event_id=f"n{number}"))])
        views = Views(ledger)
        assert views.refresh() > 0  # a fresh process each time: the check runs, and passes
        views.close()
        ledger.close()
    others = [built.grant(f"other{n}", event_id=f"o{n}") for n in range(3)]
    refused_after_a_restore(settings, tmp_path / "older.db", others)


def test_kafka_views_of_another_ledger_topic_are_refused(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Kafka mode. Views kept while the ledger topic was deleted and made again (and the
    replica built afresh from it) stood at offsets the new topic filled with other facts;
    views kept across a change of backend or topic prefix went on adding another log's
    facts to the ones they held. Each is refused (exit 2; the worker does not start)."""
    import time
    from dataclasses import replace

    from kafka.admin import KafkaAdminClient

    from ledger.kafka.names import Topics
    from ledger.kafka.topics import TopicRefused
    from tests.cli_support import run
    from tests.kafka_support import kafka_cli

    who = ["who", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z", "--tenant", "demo"]
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)

    def record(names: list[str]) -> None:
        ledger = ConsentLedger(settings)
        try:
            ledger.init_demo()
            ledger.record([parse_fact(built.grant(n, event_id=n)) for n in names])
        finally:
            ledger.close()

    record(["a0", "a1", "a2"])
    assert kafka_cli(settings, *who).returncode == 0  # views of this topic: marked
    assert kafka_cli(settings, *who).returncode == 0  # and found to be its own

    # The same data directory, first on another prefix (the replica, which would refuse the
    # other topic first, deleted: it is rebuilt from the topic), then in embedded mode.
    for leftover in settings.data_dir.glob("ledger-replica.db*"):
        leftover.unlink()
    moved = replace(settings, topic_prefix=f"{settings.topic_prefix}x")
    out = kafka_cli(moved, "project")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("consent-ledger: configuration: the views ")
    assert f"read from the ledger topic {settings.topic_prefix}.ledger," in out.stderr
    # In embedded mode the key store says first that the directory is a Kafka ledger's (an
    # embedded log beside it would be a new one; ledger.keystore.LogMissing).
    out = run(settings.data_dir, "project", LEDGER_BACKEND="embedded")
    assert out.returncode == 2, out.stderr
    assert "this data directory served Kafka mode" in out.stderr

    # The topic deleted and made again, and the replica built afresh from it.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([Topics.of(settings.topic_prefix).ledger])
    finally:
        admin.close()
    deadline = time.monotonic() + 60
    while True:
        for leftover in settings.data_dir.glob("ledger-replica.db*"):
            leftover.unlink()
        try:
            record(["b0", "b1", "b2"])
            break
        except TopicRefused as refused:  # the broker has not finished deleting it
            assert "cannot create topic" in str(refused), refused
            assert time.monotonic() < deadline, refused
    for args in (who, ["worker"]):
        out = kafka_cli(settings, *args, timeout=120)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "were built from another log: the ledger topic's record at" in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
    (settings.data_dir / "views.db").unlink()
    listed = kafka_cli(settings, *who).stdout.split()
    ledger = ConsentLedger(settings)
    try:
        assert sorted(listed) == sorted(ledger.sid("demo", s).hex for s in ("b0", "b1", "b2"))
    finally:
        ledger.close()
