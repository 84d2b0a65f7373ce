"""Tests for convtips_lib.core.env: seeding, quiet mode, the GPU hint and the environment record."""
import random
import warnings

import numpy as np
import pytest
import torch

from convtips_lib.core.env import environment, gpu_hint, in_colab, is_quiet, seed_everything, versions
from convtips_lib.core.profiles import profile


def test_seed_everything_repeats_all_generators():
    draw = lambda: (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: E731
    seed_everything(3); a = draw()
    seed_everything(3); b = draw()
    seed_everything(4); c = draw()
    assert a == b and a != c


@pytest.mark.parametrize("env, quiet", [({}, False), ({"CI": "true"}, True), ({"CONVTIPS_QUIET": "1"}, True),
                                        ({"CONVTIPS_QUIET": "0"}, False)])
def test_is_quiet(monkeypatch, env, quiet):
    for k in ("CI", "CONVTIPS_QUIET"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_quiet() is quiet


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for machines without a GPU")
def test_gpu_hint_prints_a_note_naming_colab_and_does_not_warn(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a hint, not a warning: nothing is emitted
        msg = gpu_hint(profile("cpu"))
    assert "'cpu'" in msg and "Colab" in msg
    assert capsys.readouterr().out == f"note: {msg}\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for machines without a GPU")
def test_gpu_hint_in_a_notebook_is_markdown(monkeypatch, capsys):
    import IPython
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    msg = gpu_hint(profile("smoke"))
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Markdown) and msg in shown[0].data
    assert capsys.readouterr().out == ""


def test_gpu_hint_is_silent_on_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_hint(profile("gpu")) is None and capsys.readouterr().out == ""


def test_environment_record():
    env = environment(profile("smoke"))
    assert env["profile"] == "smoke" and env["colab"] is in_colab() is False
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.__version__.startswith(env["torch"].split("+")[0])
    assert set(versions()) <= set(env) and env["fastai"]
