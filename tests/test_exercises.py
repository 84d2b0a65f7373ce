"""Tests for convtips_lib.exercises: right answers pass, wrong and missing ones get a hint."""
import pytest

from convtips_lib.data import elpv_frame
from convtips_lib.exercises import check_poly_defect_rate, check_valid_defectives


@pytest.fixture(scope="module")
def df():
    return elpv_frame()


def test_valid_defectives(df, capsys):
    truth = int((df["is_valid"] & df["defective"]).sum())
    assert check_valid_defectives(truth) is True
    assert "Correct" in capsys.readouterr().out
    assert check_valid_defectives(truth + 1) is False
    assert "Hint" in capsys.readouterr().out


def test_unanswered_gets_a_hint(capsys):
    assert check_valid_defectives(None) is False
    assert "Not answered yet" in capsys.readouterr().out


def test_poly_rate_tolerance_and_percent_hint(df, capsys):
    truth = float(df.loc[df["type"] == "poly", "defective"].mean())
    assert check_poly_defect_rate(truth + 0.001) is True
    assert check_poly_defect_rate(100 * truth) is False     # a percentage, not a fraction
    assert "fraction between 0 and 1" in capsys.readouterr().out
