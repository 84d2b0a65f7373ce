"""Tests for convtips_lib.core.compat: a renamed keyword keeps working, with a DeprecationWarning naming the new one."""
import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:    # Python 3.10
    tomllib = pytest.importorskip("tomli")

from convtips_lib.core.compat import ConvtipsDeprecationWarning, renamed_kwargs
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


# ---------------------------------------------------------------- pyproject: the project's deprecations fail its tests
_IMG = np.full((8, 8, 3), 128, np.uint8)
_STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
ROOT = Path(__file__).resolve().parents[1]


def _error_filter() -> str:
    """The category pyproject's error filter names."""
    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    (category,) = [f.split(":")[2] for f in filters if f.startswith("error:")]
    return category


def test_the_error_filter_names_the_projects_own_category():
    assert _error_filter() == f"{ConvtipsDeprecationWarning.__module__}.{ConvtipsDeprecationWarning.__name__}"
    assert issubclass(ConvtipsDeprecationWarning, DeprecationWarning)   # pytest.deprecated_call still catches it


def test_a_test_that_uses_a_deprecated_name_by_accident_fails():
    with pytest.raises(ConvtipsDeprecationWarning, match=r"preprocess\(size=\.\.\.\) is deprecated: use img_size="):
        preprocess(_IMG, size=4, stats=_STATS)


def test_a_test_that_uses_a_deprecated_name_on_purpose_says_so():
    with pytest.deprecated_call(match="img_size"):
        old = preprocess(_IMG, size=4, stats=_STATS)
    assert torch.equal(old, preprocess(_IMG, img_size=4, stats=_STATS))


def test_an_old_profile_field_by_accident_fails_too():
    from convtips_lib.core.profiles import profile
    with pytest.raises(ConvtipsDeprecationWarning, match="cfg.aug.fracs"):
        profile("smoke").aug_fracs


def _warn_from(module: str, category=DeprecationWarning, message: str = "np.thing is deprecated"):
    """Warn as code of `module` does (a warning's module is that of the frame it is attributed to)."""
    exec(f"import warnings\nwarnings.warn({message!r}, {category.__name__})", {"__name__": module})


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_third_party_deprecations_stay_ignored_even_when_library_code_triggers_them(category):
    with warnings.catch_warnings(record=True) as rec:   # keeps the configured filters, records what they let through
        for module in ("torch.fake", "convtips_lib.studies.fake", "test_compat"):
            _warn_from(module, category)
    assert rec == []


def test_every_deprecation_in_the_library_goes_through_warn_deprecated():
    """A bare warnings.warn(..., DeprecationWarning) would slip past the error filter."""
    bare = []
    for path in sorted((ROOT / "convtips_lib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("warnings.warn", "warn") and \
                    any("DeprecationWarning" in ast.unparse(a) for a in [*node.args[1:], *node.keywords]):
                if "ConvtipsDeprecationWarning" not in ast.unparse(node):
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, f"warn with convtips_lib.core.compat.warn_deprecated instead: {bare}"
