"""A log written before a subject's first fact registered it still reads, verifies, projects
and takes new facts.

Up to commit 8c24960 every new subject cost two events: `Subject.Registered` (the sealed
reference) and then its first fact. Since then the first fact registers the subject itself
(`Subject.FirstConsentGranted` and its kin). `fixtures/registered_log/` is a data directory
written by that older code (see `fixtures/write_registered_log.py`); a deployment upgrading
carries exactly such a log, and nothing of it may change meaning.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import seed_policy_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.subject import Subject
from ledger.verify import verify_log
from projections.queries import consents_at, who_had_consent
from projections.rebuild import rebuild
from projections.runner import APPLICATION
from projections.store import ConsentViews
from projections.trail import subject_trail
from projections.views import Views
from tests.facts import grant, withdraw
from tests.fixtures.write_registered_log import MASTER_KEY
from tests.views_support import dump

FIXTURE = Path(__file__).parent / "fixtures" / "registered_log"


def at(day: int) -> datetime:
    return datetime.fromisoformat(f"2025-03-{day:02d}T12:00:00+05:00")


def test_a_log_with_registrations_of_their_own_keeps_its_meaning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    ledger = ConsentLedger(Settings(data_dir=data, master_key=MASTER_KEY))
    a, b, c = (ledger.sid("demo", ref) for ref in ("old-a", "old-b", "old-c"))
    try:
        checked = verify_log(ledger.ledger_recorder)
        assert checked.ok and checked.facts_checked == 10, checked.problems

        trail = subject_trail(ledger, "demo", a)
        assert trail is not None and trail["subject"] == "old-a"
        assert [f["type"] for f in trail["facts"]] == [
            "subject.registered",
            "consent.granted",
            "consent.withdrawn",
        ]
        assert trail["facts"][1]["personal_data"] == {
            "personal_data": {"full_name": "Old Subject A"}
        }
        erased = subject_trail(ledger, "demo", b)
        assert erased is not None and erased["erased"] and erased["subject"] is None
        assert erased["facts"][0]["personal_data"] == {"erased": True}

        # New facts: one about a subject the old log registered, one registering a new one.
        outcomes = ledger.record(
            [
                parse_fact(
                    withdraw("old-c", ("support",), occurred_at="2025-03-08T12:00:00+05:00")
                ),
                parse_fact(grant("new-d", ("marketing",), personal_data={"full_name": "New D"})),
            ]
        )
        assert all(isinstance(o, Receipt) for o in outcomes), outcomes
        d = ledger.sid("demo", "new-d")
        assert [type(e) for e in ledger.events.get(d)] == [Subject.FirstConsentGranted]
        assert [e.originator_version for e in ledger.events.get(c)] == [1, 2, 3]
        checked = verify_log(ledger.ledger_recorder)
        assert checked.ok and checked.facts_checked == 12, checked.problems
        new = subject_trail(ledger, "demo", d)
        assert new is not None and new["subject"] == "new-d"
        assert [f["type"] for f in new["facts"]] == ["consent.granted"]

        # The live views, a replay in one process and one split over two agree, and say
        # what the facts say.
        live = Views(ledger, tmp_path / "live.db")
        live.refresh()
        for workers in (1, 2):
            rebuild(ledger, tmp_path / f"replay-{workers}" / "views.db", workers=workers)
            replayed = ConsentViews.open(tmp_path / f"replay-{workers}" / "views.db")
            assert dump(replayed) == dump(live.store)
            assert replayed.max_tracking_id(APPLICATION) == live.store.max_tracking_id(APPLICATION)
            replayed.close()
        views = live.store
        states = consents_at(views, "demo", a.hex, at(3))
        assert states is not None
        assert {p: s.state for p, s in states.items()} == {
            "marketing": "granted",
            "support": "granted",
        }
        states = consents_at(views, "demo", a.hex, at(6))
        assert states is not None and states["marketing"].state == "withdrawn"
        assert who_had_consent(views, "demo", "support", at(7)) == sorted([a.hex, c.hex])
        assert who_had_consent(views, "demo", "support", at(9)) == [a.hex]
        assert d.hex in who_had_consent(views, "demo", "marketing", datetime.now().astimezone())
        live.close()
    finally:
        ledger.close()


def test_an_old_log_takes_the_facts_it_holds_again_as_retries(tmp_path: Path) -> None:
    """A fact recorded by older code and sent again is a retry, not a conflict: its canonical
    bytes (the idempotency digest) must not change when a later version of the envelope
    learns an optional field. `init` sends the seed policy again each time it runs."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    ledger = ConsentLedger(Settings(data_dir=data, master_key=MASTER_KEY))
    try:
        again = ledger.record([parse_fact(seed_policy_fact())])[0]
        assert isinstance(again, Receipt) and again.duplicate, again
        ledger.init_demo()
    finally:
        ledger.close()
