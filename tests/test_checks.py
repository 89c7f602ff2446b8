"""The numeric checks every entry point uses (atspeed.decoding.checks)."""

import numpy as np
import pytest

from atspeed.decoding.checks import check_int, check_positive, is_int


@pytest.mark.parametrize("value", [0, 3, -2, np.int64(5)])
def test_python_and_numpy_integers_are_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, 2.0, "2", None])
def test_bools_floats_text_and_none_are_not(value):
    assert not is_int(value)


def test_check_int_returns_a_valid_value():
    assert check_int("gamma", 3) == 3


def test_check_int_returns_a_numpy_integer_as_a_python_int():
    """Settings flow into JSON results and messages: a numpy integer would not serialise."""
    value = check_int("users", np.int64(7))
    assert value == 7 and type(value) is int


def test_check_int_names_the_setting_its_least_value_and_what_else_is_accepted():
    with pytest.raises(ValueError, match=r"^users must be an integer >= 1 \(or None for all\), got 0\.$"):
        check_int("users", 0, note=" (or None for all)")


def test_check_int_names_a_least_value_that_comes_from_another_setting():
    with pytest.raises(ValueError, match=r"max_gamma must be an integer >= gamma \(3\), got 2"):
        check_int("max_gamma", 2, 3, bound="gamma (3)")


@pytest.mark.parametrize("value", [1e-4, 3, np.float32(0.5)])
def test_check_positive_returns_a_finite_positive_number_as_a_float(value):
    assert check_positive("lr", value) == float(value) and isinstance(check_positive("lr", value), float)


@pytest.mark.parametrize("value", [0, -1e-3, float("nan"), float("inf"), True, "1e-3", None])
def test_check_positive_refuses_zero_negatives_non_finite_bools_and_text(value):
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got "):
        check_positive("lr", value)
