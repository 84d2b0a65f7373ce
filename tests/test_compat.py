"""Tests for convtips_lib.core.compat: a renamed keyword keeps working, with a DeprecationWarning naming the new one."""
import warnings

import pytest

from convtips_lib.core.compat import renamed_kwargs


@renamed_kwargs(size="img_size", n="depth")
def _f(x, img_size=1, depth="head"):
    """The docstring survives."""
    return x, img_size, depth


def test_old_name_warns_naming_the_new_one_and_passes_the_value():
    with pytest.warns(DeprecationWarning, match=r"_f\(size=\.\.\.\) is deprecated: use img_size=\.\.\.") as rec:
        assert _f(0, size=64) == (0, 64, "head")
    assert len(rec) == 1


def test_each_old_name_warns_once():
    with pytest.warns(DeprecationWarning) as rec:
        assert _f(0, size=32, n=7) == (0, 32, 7)
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in rec) == ["n", "size"]


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _f(0, img_size=64, depth=3) == (0, 64, 3)
        assert _f(0) == (0, 1, "head")


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(TypeError, match="both 'size'.*'img_size'"):
        _f(0, size=1, img_size=2)


def test_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as rec:
        _f(0, size=8)
    assert rec[0].filename == __file__


def test_wrapper_keeps_name_and_docstring():
    assert _f.__name__ == "_f" and _f.__doc__ == "The docstring survives."


def test_unrelated_keywords_reach_the_function_untouched():
    with pytest.raises(TypeError, match="bogus"):
        _f(0, bogus=1)
