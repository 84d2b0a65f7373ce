"""The lesson standard, checked on every notebook in lessons/: stripped, Colab cell first, results, claims, widget, exercises."""
import re
from pathlib import Path

import nbformat
import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("[0-9][0-9]_*.ipynb"))


def _code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.fixture(params=LESSONS, ids=[p.stem for p in LESSONS])
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_there_are_lessons():
    assert [p.stem[:2] for p in LESSONS][:3] == ["00", "01", "02"]


def test_committed_without_outputs(nb):
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} have outputs: strip them before committing (clean diffs)"


def test_first_cell_installs_only_in_colab(nb):
    first = nb.cells[0].source
    assert '"google.colab" in sys.modules' in first and "pip install" in first


def test_reads_sizes_from_the_profile_and_warns_without_gpu(nb):
    code = _code(nb)
    assert "cfg = ctl.profile()" in code and "ctl.gpu_hint(cfg)" in code
    literal = re.search(r"\b(img_size|epochs|bs|frac|n_seeds)\s*=\s*\d|\bsize\s*=\s*\d{2,}", code)  # not figure sizes
    assert not literal, f"{literal.group()}: sizes belong in the profile"


def test_records_claims_and_saves_results(nb):
    code = _code(nb)
    assert "ctl.Results(" in code and "res.claim(" in code and "res.save()" in code and "res.figure(" in code


def test_states_results_from_the_run(nb):
    assert "display(Markdown(f" in _code(nb), "prose that states a result must read its numbers from the run"


def test_has_a_widget_and_exercises(nb):
    code = _code(nb)
    assert re.search(r"ctl\.\w+_(widget|browser)\(", code), "a widget for the learner to change the experiment"
    assert len(re.findall(r"ctl\.check_\w+\(", code)) >= 2, "at least two exercises with checks"
