"""The views checked against the reference model (tests/histories.py) over random histories:
shared by the projection tests on both backends and the transaction-time tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.queries import (
    check_recipients,
    consent_summary,
    consents_at,
    who_had_consent,
)
from projections.rebuild import rebuild
from projections.runner import APPLICATION, catch_up
from projections.store import ConsentViews
from tests.histories import (
    BASE,
    PURPOSES,
    SUBJECTS,
    VERSIONS,
    Reference,
    hours,
    in_batches,
    init_ledger,
    operations,
)


def dump(views: ConsentViews) -> dict[str, list[tuple[Any, ...]]]:
    tables = [
        "view_subjects",
        "view_erasures",
        "view_entries",
        "view_corrections",
        "view_intervals",
        "view_requests",
    ]
    return {
        t: sorted((tuple(r) for r in views.rows(f"SELECT * FROM {t}")), key=repr) for t in tables
    }


histories = {
    "ops": operations(),
    "cuts": st.lists(st.integers(min_value=1, max_value=6), min_size=30, max_size=30),
    "instants": st.lists(hours, min_size=6, max_size=6),
    "known": st.lists(st.integers(min_value=0, max_value=40), min_size=6, max_size=6),
}


def views_agree(
    ledger_settings: Settings,
    tmp: Path,
    ops: list[dict[str, Any]],
    cuts: list[int],
    instants: list[int],
    known: list[int],
) -> None:
    ledger = ConsentLedger(ledger_settings)
    views = ConsentViews.open(Path(tmp) / "views.db")
    projection = ConsentProjection(view=views)
    try:
        init_ledger(ledger)
        accepted: list[tuple[datetime, dict[str, Any]]] = []
        snapshots: list[tuple[datetime, dict[str, Any]]] = []
        for batch in in_batches(ops, cuts):
            outcomes = ledger.record([parse_fact(f) for f in batch])
            for f, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Receipt) and not outcome.duplicate:
                    accepted.append((datetime.fromisoformat(outcome.recorded_at), f))
            catch_up(ledger, projection)  # the live view follows the log batch by batch
            if accepted:
                snapshots.append((accepted[-1][0], dump(views)))

        recorded = [r for r, _ in accepted] or [BASE]
        for h, k in zip(instants, known, strict=True):
            at = BASE + timedelta(hours=h)
            known_at = recorded[k % len(recorded)] if k < 35 else None
            reference = Reference()
            for r, f in accepted:
                if known_at is None or r <= known_at:
                    reference.record(f)
            for subject in SUBJECTS:
                sid = ledger.sid("demo", subject).hex
                states = consents_at(views, "demo", sid, at, known_at) or {}
                for purpose in PURPOSES:
                    got = states[purpose].state if purpose in states else "none"
                    assert got == reference.state(subject, purpose, at), (subject, purpose)
                    if got == "granted":
                        version = reference.version(subject, purpose, at)
                        assert states[purpose].policy_version == version, (subject, purpose)
            for purpose in PURPOSES:
                expected = {
                    ledger.sid("demo", s).hex
                    for s in SUBJECTS
                    if reference.state(s, purpose, at) == "granted"
                    and not erased_by(accepted, s, at, known_at)
                }
                # A list: in sid order, each subject once.
                assert who_had_consent(views, "demo", purpose, at, known_at) == sorted(expected)
                counted: dict[str, int] = {}
                for version in VERSIONS:
                    under = {
                        ledger.sid("demo", s).hex
                        for s in SUBJECTS
                        if ledger.sid("demo", s).hex in expected
                        and reference.version(s, purpose, at) == version
                    }
                    assert who_had_consent(
                        views, "demo", purpose, at, known_at, policy_version=version
                    ) == sorted(under), (purpose, version)
                    if under:
                        counted[version] = len(under)
                summary = consent_summary(views, "demo", purpose, at, known_at)
                assert (summary["with_consent"], summary["by_policy_version"]) == (
                    len(expected),
                    counted,
                ), purpose
                recipients = [ledger.sid("demo", s).hex for s in SUBJECTS]
                checked = check_recipients(
                    views, "demo", purpose, at, [*recipients, "0" * 32], known_at
                )
                assert {c.sid for c in checked if c.consent} == expected
                for subject, result in zip(SUBJECTS, checked, strict=False):
                    assert result.reason == _reason(
                        reference, accepted, subject, purpose, at, known_at
                    ), (subject, purpose, result)
                assert checked[-1].reason == "unknown_subject"

        # Replay into a fresh store (subject by subject) and catching up an empty store (in
        # log order) both equal the live view at its position; replay up to an instant
        # equals the view the live projection had then.
        position = views.max_tracking_id(APPLICATION)
        rebuild(ledger, Path(tmp) / "replay.db", batch=2)  # never splits a history
        empty = ConsentViews.open(Path(tmp) / "empty.db")
        catch_up(ledger, ConsentProjection(view=empty))
        for fresh in (ConsentViews.open(Path(tmp) / "replay.db"), empty):
            assert dump(fresh) == dump(views)
            assert fresh.max_tracking_id(APPLICATION) == position
            fresh.close()
        for n, (instant, snapshot) in enumerate(snapshots[:3]):
            rebuild(ledger, Path(tmp) / f"then-{n}.db", known_at=instant)
            then = ConsentViews.open(Path(tmp) / f"then-{n}.db")
            assert dump(then) == snapshot
            then.close()
    finally:
        views.close()
        ledger.close()


def erased_by(
    accepted: list[tuple[datetime, dict[str, Any]]],
    subject: str,
    at: datetime,
    known_at: datetime | None,
) -> bool:
    return any(
        f["type"] == "subject.erased"
        and f["subject"] == subject
        and datetime.fromisoformat(f["occurred_at"]) <= at
        and (known_at is None or r <= known_at)
        for r, f in accepted
    )


def _reason(
    reference: Reference,
    accepted: list[tuple[datetime, dict[str, Any]]],
    subject: str,
    purpose: str,
    at: datetime,
    known_at: datetime | None,
) -> str:
    if not any(
        f["subject"] == subject and (known_at is None or r <= known_at) for r, f in accepted
    ):
        return "unknown_subject"
    if erased_by(accepted, subject, at, known_at):
        return "erased"
    state = reference.state(subject, purpose, at)
    return {"none": "never_granted"}.get(state, state)


def refused_after_a_restore(settings: Settings, backup: Path, facts: list[dict[str, Any]]) -> None:
    """`ledger.db` restored by hand from `backup` (its write-ahead log and index removed
    first, the ledger's processes stopped), `facts` recorded on it since: the views kept
    from before are refused as another log's, by their first refresh."""
    import shutil

    import pytest

    from projections.store import ViewsOfAnotherLog
    from projections.views import Views

    for leftover in settings.data_dir.glob("ledger.db*"):
        leftover.unlink()
    shutil.copy(backup, settings.log_path)
    ledger = ConsentLedger(settings)
    try:
        ledger.record([parse_fact(f) for f in facts])
        views = Views(ledger)
        with pytest.raises(ViewsOfAnotherLog, match="fact at position"):
            views.refresh()
        views.close()
    finally:
        ledger.close()
