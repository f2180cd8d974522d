"""The contract: read commands with `--json` print the same JSON as the matching HTTP route.

Each read command is run as a real process on the data directory the app serves, and its
answer compared with the route's, whole. Set aside: the instant of asking where the question
names none (`as_of` of a report, of the due list, of the request register), and what the
command line adds for its own reader, documented in the README (a campaign check's and a
receipts lookup's `line` in the file; who had consent's `at`). `verify` is asked with
`--tenant`, as the route answers for its caller's tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.demo import contact
from ledger.settings import Settings
from tests.answers_support import V2, rich_ledger
from tests.cli_support import run

AT = "2025-03-01T00:00:00+05:00"
RECIPIENTS = [contact(i) for i in range(12)] + ["nobody"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TestClient, str]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("cli-answers") / "data")
    rich_ledger(settings)
    keys = ApiKeys(keys_path(settings))
    key = keys.create("demo", {"compliance"})[1]
    keys.close()
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        sid = client.post("/v1/subjects:resolve", json={"subject": contact(3)}).json()["sid"]
        yield settings.data_dir, client, sid


def without(answer: Any, *names: str) -> Any:
    """The answer less the named fields, at any depth."""
    if isinstance(answer, dict):
        return {k: without(v, *names) for k, v in answer.items() if k not in names}
    if isinstance(answer, list):
        return [without(v, *names) for v in answer]
    return answer


CASES: list[tuple[str, tuple[str, ...], str, Any, tuple[str, ...]]] = [
    # (name, command, route, body, fields set aside)
    (
        "consents",
        ("consents", "{sid}", "--sid", "--as-of", AT, "--known-at", "2026-01-01T00:00:00Z"),
        "/v1/subjects/{sid}/consents?as_of=2025-03-01T00:00:00%2B05:00"
        "&known_at=2026-01-01T00:00:00Z",
        None,
        (),
    ),
    ("trail", ("trail", "{sid}", "--sid"), "/v1/subjects/{sid}/trail", None, ()),
    ("report", ("report", "{sid}", "--sid"), "/v1/subjects/{sid}/report", None, ("as_of",)),
    (
        "check",
        ("check", "--purpose", "marketing", "--at", AT, "-"),
        "/v1/consents:check",
        {"purpose": "marketing", "at": AT, "subjects": RECIPIENTS},
        ("line",),
    ),
    (
        "who",
        ("who", "--purpose", "marketing", "--at", AT, "--limit", "3"),
        "/v1/purposes/marketing/subjects?as_of=2025-03-01T00:00:00%2B05:00&limit=3",
        None,
        ("at", "next"),  # the cursor holds the moment its first page was asked
    ),
    (
        "who --summary",
        ("who", "--purpose", "marketing", "--at", AT, "--summary"),
        "/v1/purposes/marketing/summary?as_of=2025-03-01T00:00:00%2B05:00",
        None,
        (),
    ),
    ("due", ("due", "--within", "3650"), "/v1/due?within_days=3650", None, ("as_of",)),
    (
        "due --limit",
        ("due", "--within", "3650", "--limit", "1"),
        "/v1/due?within_days=3650&limit=1",
        None,
        ("as_of", "next"),  # the cursor holds the instant of its page
    ),
    (
        "requests",
        ("requests", "--limit", "2"),
        "/v1/requests?limit=2",
        None,
        ("as_of", "next"),  # the cursor holds the instant of its page
    ),
    (
        "receipts",
        ("receipts", "-"),
        "/v1/facts:lookup",
        {"event_ids": ["grant-00000", "fix-00003", "erase-00007", "grant-00000"]},
        ("line",),
    ),
    ("verify", ("verify",), "/v1/verify", None, ()),
    ("policies list", ("policies", "list"), "/v1/policies", None, ()),
    ("policies show", ("policies", "show", V2), f"/v1/policies/{V2}", None, ()),
    (
        "policies show --text",
        ("policies", "show", V2, "--text"),
        f"/v1/policies/{V2}/text",
        None,
        (),
    ),
    ("policies changes", ("policies", "changes", V2), f"/v1/policies/{V2}/changes", None, ()),
]


@pytest.mark.parametrize(
    ("command", "route", "body", "aside"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_read_command_prints_its_routes_answer(
    served: tuple[Path, TestClient, str],
    command: tuple[str, ...],
    route: str,
    body: Any,
    aside: tuple[str, ...],
) -> None:
    data, client, sid = served
    args = [a.format(sid=sid) for a in command]
    args += ["--tenant", "demo"]
    given = (body.get("subjects") or body.get("event_ids")) if body else None
    printed = run(data, *args, "--json", stdin="\n".join(given) + "\n" if given else None)
    assert printed.returncode == 0, printed.stderr
    path = route.format(sid=sid)
    answered = client.post(path, json=body) if body is not None else client.get(path)
    assert answered.status_code == 200, answered.text
    expected = without(answered.json(), *aside)
    assert without(orjson.loads(printed.stdout), *aside) == expected
    # Not an empty answer on both sides: each case asks something the ledger holds.
    assert any(v not in (None, [], {}, 0, False) for v in expected.values())
