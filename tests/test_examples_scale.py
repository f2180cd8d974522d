"""The scale of the property-based tests' examples (`tests.examples`)."""

from __future__ import annotations

import pytest

from tests.examples import examples, scale_from


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
