"""Tests for convtips_lib.core.compat: a renamed keyword keeps working, with a DeprecationWarning naming the new one."""
import ast
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:    # Python 3.10
    tomllib = pytest.importorskip("tomli")

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


# ---------------------------------------------------------------- pyproject: the project's deprecations fail its tests
_IMG = np.full((8, 8, 3), 128, np.uint8)
_STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
ROOT = Path(__file__).resolve().parents[1]


def _error_filter() -> str:
    """The message regex of pyproject's error filter for DeprecationWarning."""
    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    (message,) = [f.split(":")[1] for f in filters if f.split(":")[0::2] == ["error", "DeprecationWarning"]]
    return message


def test_a_test_that_uses_a_deprecated_name_by_accident_fails():
    """The warning names the test as its module (stacklevel): the filter on the message makes it an error."""
    with pytest.raises(DeprecationWarning, match=r"preprocess\(size=\.\.\.\) is deprecated: use img_size="):
        preprocess(_IMG, size=4, stats=_STATS)


def test_a_test_that_uses_a_deprecated_name_on_purpose_says_so():
    with pytest.deprecated_call(match="img_size"):
        old = preprocess(_IMG, size=4, stats=_STATS)
    assert torch.equal(old, preprocess(_IMG, img_size=4, stats=_STATS))


def _warn_from(module: str, category=DeprecationWarning, message: str = "np.thing is deprecated"):
    """Warn as code of `module` does (a warning's module is that of the frame it is attributed to)."""
    exec(f"import warnings\nwarnings.warn({message!r}, {category.__name__})", {"__name__": module})


def test_the_librarys_deprecation_is_an_error_whoever_calls():
    for module in ("convtips_lib.topics.fake", "test_fake", "__main__"):
        with pytest.raises(DeprecationWarning, match="is deprecated: use"):
            _warn_from(module, message="f(old=...) is deprecated: use new=...")


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_third_party_deprecations_stay_ignored_even_when_library_code_triggers_them(category):
    with warnings.catch_warnings(record=True) as rec:   # keeps the configured filters, records what they let through
        for module in ("torch.fake", "convtips_lib.studies.fake", "test_compat"):
            _warn_from(module, category)
    assert rec == []


def _warning_templates():
    """(file:line, message) of each warnings.warn(..., DeprecationWarning) in convtips_lib; f-string fields as 'x'."""
    for path in sorted((ROOT / "convtips_lib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("warnings.warn", "warn") and \
                    any(ast.unparse(a) == "DeprecationWarning" for a in node.args[1:]):
                msg = node.args[0]
                parts = msg.values if isinstance(msg, ast.JoinedStr) else [msg]
                text = "".join(p.value if isinstance(p, ast.Constant) else "x" for p in parts)
                yield f"{path.relative_to(ROOT)}:{node.lineno}", text


def test_every_deprecation_in_the_library_is_caught_by_the_filter():
    found = dict(_warning_templates())
    assert len(found) >= 3                                # compat's renamed keywords, pretrained=, trainable_stages=
    missed = {where: text for where, text in found.items() if not re.match(_error_filter(), text, re.I)}
    assert not missed, f"word these as 'f(old=...) is deprecated: use new=...' or widen the filter: {missed}"
