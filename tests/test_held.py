"""Lesson 09: every tip found in its lesson's record, worded by its verdict; the widget's callback and the checks."""
import json
from pathlib import Path

import pytest

from convtips_lib.course.exercises import check_held_count, check_unsettled_tip
from convtips_lib.studies.lesson09 import COURSE_TIPS, decided_share, held_markdown, held_view, what_held
from convtips_lib.ui.widgets import held_widget

LESSONS = Path(__file__).resolve().parents[1] / "lessons"


def _claim(text, verdict, effect=0.02, low=0.01, high=0.03):
    return dict(claim=text, effect=effect, ci=[low, high], unit="balanced accuracy", verdict=verdict,
                method="paired bootstrap", half_width=(high - low) / 2)


def _record(lesson, claims, profile="cpu"):
    return dict(lesson=lesson, profile=dict(name=profile), seed=42, saved_at="now", claims=claims)


TWO = (dict(tip="Over-sample", lesson="04_x", claim=r"Over-sampling raises", rule="Over-sample the rare class",
            instead="Do not over-sample here", ref=("Buda 2018", "https://arxiv.org/abs/1710.05381")),
       dict(tip="Ensemble", lesson="06_x", claim=r"An ensemble of \d+ beats", rule="Average several networks",
            instead="One network was enough", ref=("Lakshminarayanan 2017", "https://arxiv.org/abs/1612.01474")),
       dict(tip="Prune", lesson="07_x", claim=r"Pruning keeps", rule="Prune and fine-tune", instead="Do not prune",
            ref=("Li 2017", "https://arxiv.org/abs/1608.08710")))


@pytest.mark.parametrize("verdict, says, avoids", [
    ("supported", "**Over-sample the rare class.** Held in this run", "Do not over-sample"),
    ("refuted", "**Do not over-sample here.** The tip (over-sample the rare class) did not hold", "Held in"),
    ("inconclusive", "*Unsettled:* over-sample the rare class — this run could not tell", "Held in"),
    ("undecided", "*Not decided* in the cpu profile", "Held in")])
def test_the_rule_is_worded_by_the_verdict(verdict, says, avoids):
    records = [_record("04_x", [_claim("Over-sampling raises balanced accuracy", verdict)]),
               _record("06_x", [_claim("An ensemble of 5 beats its average member", "supported")])]
    table = what_held(records, TWO)
    assert list(table["verdict"]) == [verdict, "supported", "not run"]
    text = held_markdown(table)
    first = text.splitlines()[1]
    assert says in first and avoids not in first and "(https://arxiv.org/abs/1710.05381)" in first
    assert "*Not measured:* lesson 07" in text                       # the lesson that left no record


def test_a_tip_whose_claim_is_missing_from_its_record_is_an_error_naming_it():
    records = [_record("04_x", [_claim("Over-sampling lifts accuracy", "supported")])]   # renamed in the lesson
    with pytest.raises(ValueError, match="'Over-sample'.*Over-sampling lifts"):
        what_held(records, TWO)


def test_decided_share_counts_supported_and_refuted_of_the_tips_with_a_record():
    records = [_record("04_x", [_claim("Over-sampling raises it", "refuted")]),
               _record("06_x", [_claim("An ensemble of 3 beats it", "inconclusive")])]
    assert decided_share(what_held(records, TWO)) == (1, 2)


def test_held_view_filters_and_the_widget_drives_it():
    records = [_record("04_x", [_claim("Over-sampling raises it", "refuted")]),
               _record("06_x", [_claim("An ensemble of 3 beats it", "inconclusive")])]
    table = what_held(records, TWO)
    assert list(held_view(table, "refuted")["tip"]) == ["Over-sample"]
    assert list(held_view(table, lesson="06_x")["verdict"]) == ["inconclusive"]
    assert held_view(table, "supported").empty
    box = held_widget(table)
    shown = box.run(verdict="inconclusive")
    shown = shown[0] if isinstance(shown, tuple) else shown
    assert list(shown["tip"]) == ["Ensemble"] and box.error is None


def test_the_checks_read_the_table(capsys):
    records = [_record("04_x", [_claim("Over-sampling raises it", "supported")]),
               _record("06_x", [_claim("An ensemble of 3 beats it", "inconclusive", low=-0.05, high=0.09)])]
    table = what_held(records, TWO)
    assert check_held_count(1, table) and not check_held_count(2, table)
    assert check_unsettled_tip("Ensemble", table) and not check_unsettled_tip("Over-sample", table)
    assert not check_held_count(None, table) and "Not answered yet" in capsys.readouterr().out


def _code(lesson: str) -> str:
    nb = json.loads((LESSONS / f"{lesson}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _literal_start(pattern: str) -> str:
    """The text a regex starts with, up to its first operator (escaped characters read as themselves)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            out, i = out + pattern[i + 1], i + 2
        elif pattern[i] in "\\.*+?[](){}|^$":
            break
        else:
            out, i = out + pattern[i], i + 1
    return out


def test_every_tip_names_a_lesson_and_the_start_of_one_of_its_claims():
    for t in COURSE_TIPS:
        literal = _literal_start(t["claim"])[:20]   # a claim's text may go on with a value filled in by the run
        assert len(literal) >= 8, t["tip"]
        assert f'"{literal}' in _code(t["lesson"]), \
            f"tip {t['tip']!r}: no claim of {t['lesson']} starts with {literal!r}"
        assert t["ref"][1].startswith("https://") and t["rule"] and t["instead"]


def test_a_binomial_share_is_described_with_its_interval_and_acronyms_keep_their_case():
    from convtips_lib.core.measure import exact, proportion
    from convtips_lib.core.results import describe
    share = proportion(13, 27, "share")
    row = dict(claim="x", effect=share.effect, ci=[share.low, share.high], unit="share", verdict="inconclusive",
               method=share.method)
    assert "95 % CI" in describe(row) and "exact" not in describe(row)
    check = exact(1.0)
    assert "exact" in describe(dict(row, ci=[1.0, 1.0], method=check.method, verdict="supported"))
    tip = dict(TWO[0], rule="Train with SGD and momentum")
    records = [_record("04_x", [_claim("Over-sampling raises it", "inconclusive")])]
    assert "train with SGD and momentum" in held_markdown(what_held(records, (tip,)))
