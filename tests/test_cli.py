"""Tests for convtips_lib.cli: lesson selection, clear errors, `info`, and `run` on a tiny notebook."""
import json

import nbformat
import pytest

from convtips_lib.cli import find_lessons, main


def _notebook(path, code):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def lessons(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    code = ("import os, convtips_lib as ctl\ncfg = ctl.profile()\nres = ctl.Results('00_tiny', cfg)\n"
            "res.metric('profile', cfg.name)\nres.save()")
    _notebook(folder / "00_tiny.ipynb", code)
    _notebook(folder / "01_broken.ipynb", "raise RuntimeError('this lesson fails')")
    return folder


def test_find_lessons_by_prefix_and_glob(lessons):
    assert [p.stem for p in find_lessons((), lessons)] == ["00_tiny", "01_broken"]
    assert [p.stem for p in find_lessons(("01*",), lessons)] == ["01_broken"]


def test_unknown_lesson_lists_the_choices(lessons, capsys):
    assert main(["run", "07", "--lessons-dir", str(lessons)]) == 2
    assert "00_tiny, 01_broken" in capsys.readouterr().err


def test_unknown_profile_is_a_clear_error(lessons, capsys):
    assert main(["run", "--profile", "huge", "--lessons-dir", str(lessons)]) == 2
    assert "smoke, cpu, gpu" in capsys.readouterr().err


def test_run_writes_notebooks_results_and_report(lessons, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--profile", "smoke", "--out", str(out), "--lessons-dir", str(lessons), "--timeout", "120"])
    captured = capsys.readouterr()
    assert rc == 1 and "01_broken" in captured.err                  # one failure is reported, the other ran
    assert (out / "00_tiny.ipynb").exists() and (out / "01_broken.ipynb").exists()
    record = json.loads((out / "results" / "00_tiny.json").read_text())
    assert record["metrics"]["profile"] == "smoke"
    assert "00_tiny" in (out / "report.html").read_text()


def test_info_prints_profile_and_verified_weights(capsys):
    assert main(["info", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert '"profile": "smoke"' in out and "2624 images" in out
    assert out.count("sha256 verified") == 3
