"""Tests for convtips_lib.core.compat: a renamed keyword keeps working, with a DeprecationWarning naming the new one."""
import warnings

import numpy as np
import pytest
import torch

from convtips_lib.core.compat import renamed_kwargs
from convtips_lib.topics.imagenet import preprocess


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


# ---------------------------------------------------------------- pyproject: the project's DeprecationWarnings fail its tests
_IMG = np.full((8, 8, 3), 128, np.uint8)
_STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_a_test_that_uses_a_deprecated_name_by_accident_fails():
    """The warning names the test as its module (stacklevel): the filter on the library's message makes it an error."""
    with pytest.raises(DeprecationWarning, match=r"preprocess\(size=\.\.\.\) is deprecated: use img_size="):
        preprocess(_IMG, size=4, stats=_STATS)


def test_a_test_that_uses_a_deprecated_name_on_purpose_says_so():
    with pytest.deprecated_call(match="img_size"):
        old = preprocess(_IMG, size=4, stats=_STATS)
    assert torch.equal(old, preprocess(_IMG, img_size=4, stats=_STATS))


def _warn_from(module: str, category=DeprecationWarning, message: str = "something old"):
    """Warn as code of `module` does (a warning's module is that of the frame it is attributed to)."""
    exec(f"import warnings\nwarnings.warn({message!r}, {category.__name__})", {"__name__": module})


def test_library_code_that_calls_something_deprecated_fails():
    with pytest.raises(DeprecationWarning, match="something old"):
        _warn_from("convtips_lib.topics.fake")


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_third_party_deprecations_stay_ignored(category):
    with warnings.catch_warnings(record=True) as rec:   # keeps the configured filters, records what they let through
        _warn_from("torch.fake", category)
        _warn_from("test_compat", category)               # a test calling a third-party deprecated function directly
    assert rec == []
