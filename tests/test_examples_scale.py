"""The scale of the property-based tests' examples (`tests.examples`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples import examples, scale_from

ROOT = Path(__file__).resolve().parent.parent


def test_examples_scale_and_never_drop_to_none() -> None:
    assert examples(80, 1.0) == 80
    assert examples(60, 15.0) == 900
    assert examples(3, 0.1) == 1


@pytest.mark.parametrize("given", ["", "fifteen", "0", "-1", "nan", "inf"])
def test_a_scale_that_is_not_a_positive_number_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="TEST_EXAMPLES_SCALE must be a positive number"):
        scale_from(given)


def test_a_scale_given_is_read() -> None:
    assert scale_from("15") == 15.0
    assert scale_from("0.5") == 0.5


def test_a_bad_scale_stops_the_run_with_one_line(tmp_path: Path) -> None:
    """Before any test runs, as pytest's usage error: no traceback, no test run with fewer
    examples than asked."""
    pytest_alone = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
    ]
    run = subprocess.run(
        [*pytest_alone, "--basetemp", str(tmp_path / "t"), "tests/test_examples_scale.py"],
        cwd=ROOT,
        env={**os.environ, "TEST_EXAMPLES_SCALE": "fifteen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    said = run.stdout + run.stderr
    assert "ERROR: TEST_EXAMPLES_SCALE must be a positive number, not 'fifteen'" in said
    assert "Traceback" not in said and "passed" not in said
