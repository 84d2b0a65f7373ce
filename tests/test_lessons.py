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


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_cell_has_its_own_id(path):
    import json
    cells = json.loads(path.read_text())["cells"]   # raw: nbformat.read would fill missing ids in, with a warning
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), \
        f"cells {[i for i, x in enumerate(ids) if x is None]} have no id: nbformat 4.5 wants one per cell " \
        "(nbformat.validator.normalize adds them); convtips run warns about every missing one"


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


# ---------------------------------------------------------------- prose follows the verdict
import ast  # noqa: E402

# words that state an outcome: a sentence holding one must be chosen by the verdict (ctl.says / describe / showed)
OUTCOME = re.compile(r"\b(held|holds|confirm\w*|beats?|won|wins|better than|worse than|helps|hurts|as (?:the tip|"
                     r"claimed|expected|promised)|measured\.|proves?|indeed)\b", re.I)
CHOOSERS = {"says", "describe", "showed", "claim"}


def _called(node) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _outcome_strings(src: str) -> list:
    """String pieces inside `Markdown(...)` that state an outcome without going through a verdict chooser, and
    dicts keyed by verdict names (a hand-made chooser)."""
    tree = ast.parse(re.sub(r"^(\s*)[!%].*$", r"\1pass", src, flags=re.M))
    chosen = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.Call) and _called(node) in CHOOSERS
              for sub in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and id(node) not in chosen:
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & {"supported", "refuted", "inconclusive"}) >= 2:
                found.append(f"a dict keyed by verdicts: {sorted(keys)} (use ctl.says)")
        if isinstance(node, ast.Call) and _called(node) == "Markdown":
            found += [sub.value for sub in ast.walk(node) if isinstance(sub, ast.Constant) and
                      isinstance(sub.value, str) and id(sub) not in chosen and OUTCOME.search(sub.value)]
    return found


def test_outcome_sentences_are_chosen_by_the_verdict(nb):
    bad = [(i, s[:90]) for i, c in enumerate(nb.cells) if c.cell_type == "code" for s in _outcome_strings(c.source)]
    assert not bad, f"outcome sentences typed outside ctl.says (cell, text): {bad}"


def test_the_checker_catches_a_sentence_typed_by_hand():
    assert _outcome_strings('display(Markdown(f"The ensemble beats its members — measured."))')
    assert _outcome_strings('x = {"supported": "a", "refuted": "b", "inconclusive": "c"}[r["verdict"]]')
    assert not _outcome_strings('display(Markdown(ctl.says(r, supported="It beats them.", refuted="No.", '
                                'inconclusive="?")))')
    assert not _outcome_strings('display(Markdown(f"Ensemble minus mean member: **{ctl.describe(r)}**."))')


def test_ends_with_what_this_run_showed(nb):
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("res.showed(" in c for c in code[-3:]), \
        "the lesson ends with display(Markdown(res.showed(why=...))): what this run showed, by verdict"
