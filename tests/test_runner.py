"""Tests for convtips_lib.course.runner: one tiny notebook executed on a real kernel (ok, failing, unreadable), the
outcome's row and place, the run folder, and a run's exit codes (130 on Ctrl-C, 143 on SIGTERM)."""
import json
import signal

import nbformat
import pytest

from convtips_lib.course.runner import (STATUSES, Outcome, Run, UsageError, find_lessons, finish_run, kernel_env,
                                        prepare_out, run_lessons, run_notebook)
from convtips_lib.core.profiles import profile


def _notebook(path, *codes):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# tiny"),
                                         *(nbformat.v4.new_code_cell(c) for c in codes)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_notebook_that_prints_runs_ok_and_keeps_its_output(tmp_path):
    nb = _notebook(tmp_path / "00_hello.ipynb", "x = 6 * 7", "print('hello', x)")
    o = run_notebook(nb, tmp_path / "out" / "00_hello.ipynb", timeout=60)
    assert (o.lesson, o.status, o.cells, o.cell, o.error) == ("00_hello", "ok", 2, None, "")
    assert o.seconds > 0 and o.notebook == str(tmp_path / "out" / "00_hello.ipynb") and o.where() == ""
    done = nbformat.read(o.notebook, as_version=4)
    assert done.metadata["convtips"]["complete"] and done.metadata["convtips"]["status"] == "ok"
    assert done.cells[0].source == "# tiny"                                   # no 'Incomplete' note
    assert done.cells[2].outputs[0]["text"] == "hello 42\n"
    assert (tmp_path / "out" / "00_hello.log").is_file()                     # the kernel log beside it by default


def test_a_failing_cell_is_named_with_its_line_and_the_notebook_is_marked(tmp_path):
    nb = _notebook(tmp_path / "01_bad.ipynb", "y = 0", "def f(v):\n    return 1 / v\n\nz = f(y)", "print('never')")
    log = tmp_path / "logs" / "01_bad.log"
    o = run_notebook(nb, tmp_path / "01_bad_out.ipynb", timeout=60, log_path=log)
    assert o.status == "failed" and o.status in STATUSES
    assert (o.cell, o.cells, o.line, o.source) == (2, 3, 2, "return 1 / v")     # the innermost frame in the cell
    assert o.error == "ZeroDivisionError: division by zero"
    assert o.where() == "cell 2 of 3, line 2: return 1 / v"
    marked = nbformat.read(tmp_path / "01_bad_out.ipynb", as_version=4)
    assert marked.metadata["convtips"]["status"] == "failed" and not marked.metadata["convtips"]["complete"]
    assert marked.cells[0].source.startswith("**Incomplete: failed** during cell 2 of 3, line 2: return 1 / v")
    assert not marked.cells[-1].get("outputs")                              # the cell after it did not run
    assert log.is_file()


def test_an_unreadable_notebook_fails_without_a_kernel(tmp_path):
    broken = tmp_path / "02_broken.ipynb"
    broken.write_text("{ not json")
    o = run_notebook(broken, tmp_path / "out.ipynb")
    assert o.status == "failed" and o.error.startswith(f"cannot read {broken}:") and o.cells is None
    assert not (tmp_path / "out.ipynb").exists()


def test_outcome_row_rounds_seconds_and_keeps_every_field():
    o = Outcome("03_x", "timed out", 12.345, cell=3, cells=8, line=2, source="x = f(y)", error="no reply")
    assert o.row() == dict(lesson="03_x", status="timed out", seconds=12.3, cell=3, cells=8, line=2,
                           source="x = f(y)", error="no reply", notebook="")
    assert o.where() == "cell 3 of 8, line 2: x = f(y)"
    assert Outcome("04_y", cell=1, cells=5).where() == "cell 1 of 5" and Outcome("05_z").status == "not run"


def test_prepare_out_makes_the_run_folder_and_drops_the_last_runs_summary(tmp_path):
    out = tmp_path / "run"
    (out / "results").mkdir(parents=True)
    (out / "run.json").write_text("[]")
    (out / "report.html").write_text("old")
    assert prepare_out(out) == out.resolve()
    assert (out / "logs").is_dir() and not (out / "run.json").exists() and not (out / "report.html").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        prepare_out(tmp_path / "file")


def test_kernel_env_sets_profile_results_and_seed(tmp_path):
    env = kernel_env(profile("smoke"), tmp_path, seed=3)
    assert (env["CONVTIPS_PROFILE"], env["CONVTIPS_RESULTS"], env["CONVTIPS_SEED"]) == ("smoke",
                                                                                      str(tmp_path / "results"), "3")
    assert "CONVTIPS_SEED" not in kernel_env(profile("smoke"), tmp_path)


def test_run_lessons_runs_each_lesson_into_the_run_folder(tmp_path, capsys):
    folder, out = tmp_path / "lessons", prepare_out(tmp_path / "out")
    folder.mkdir()
    _notebook(folder / "00_ok.ipynb", "print('fine')")
    _notebook(folder / "01_fails.ipynb", "raise KeyError('gone')")
    run = run_lessons(find_lessons((), folder), out, kernel_env(profile("smoke"), out), 60)
    assert [(o.lesson, o.status) for o in run.outcomes] == [("00_ok", "ok"), ("01_fails", "failed")]
    assert run.signum is None and (out / "00_ok.ipynb").is_file() and (out / "logs" / "01_fails.log").is_file()
    assert "[2/2] 01_fails  failed" in capsys.readouterr().out
    assert finish_run(run, out) == 1
    said = capsys.readouterr()
    assert f"report: {out / 'report.html'}" in said.out and "01_fails did not finish" in said.err
    assert [r["status"] for r in json.loads((out / "run.json").read_text())] == ["ok", "failed"]


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_finish_run_exit_codes_after_a_signal(tmp_path, capsys, signum, code, word):
    out = prepare_out(tmp_path / "out")
    run = Run([Outcome("00_a", "ok", 1.0), Outcome("01_b", "interrupted", 2.0, cell=2, cells=3, notebook="nb"),
               Outcome("02_c")], signum)
    assert finish_run(run, out) == code
    assert f"convtips: {word} during lesson 01_b, cell 2 of 3; partial notebook kept at nb" in capsys.readouterr().err
    assert [r["status"] for r in json.loads((out / "run.json").read_text())] == ["ok", "interrupted", "not run"]
    assert finish_run(Run([Outcome("00_a", "ok", 1.0), Outcome("01_b")], signum), out) == code
    assert f"{word} after lesson 00_a; the lessons after it did not run" in capsys.readouterr().err


def test_prepare_out_refuses_to_overwrite_the_lessons_it_runs(tmp_path):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    source = _notebook(lessons / "00_a.ipynb", "x = 1")
    original = source.read_bytes()
    with pytest.raises(UsageError, match="is the lessons folder .*Choose a folder outside it"):
        prepare_out(lessons, [source])
    with pytest.raises(UsageError, match="is inside the lessons folder"):
        prepare_out(lessons / "runs" / "latest", [source])
    copy = tmp_path / "copy"                                  # any folder holding a notebook no run wrote
    copy.mkdir()
    (copy / "00_a.ipynb").write_bytes(original)
    with pytest.raises(UsageError, match="holds 00_a.ipynb, a notebook no `convtips run` wrote"):
        prepare_out(copy, [source])
    assert source.read_bytes() == original and sorted(p.name for p in lessons.iterdir()) == ["00_a.ipynb"]
    assert sorted(p.name for p in copy.iterdir()) == ["00_a.ipynb"]   # refused before anything was written


def test_prepare_out_reuses_a_folder_of_an_earlier_run(tmp_path):
    lessons, out = tmp_path / "lessons", tmp_path / "out"
    lessons.mkdir()
    source = _notebook(lessons / "00_a.ipynb", "x = 1")
    run_notebook(source, out / "00_a.ipynb", timeout=60)          # marked as written by a run
    assert prepare_out(out, [source]) == out.resolve() and (out / "logs").is_dir()
