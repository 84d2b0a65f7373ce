"""Tests for convtips_lib.course.ablate_job and `convtips ablate`: the budget (what gives way, in which order, and what
is said when nothing fits), which tips apply to a folder, the same ablation code as lesson 08 (`run_plan`), end to
end on a small generated folder (record, report, recipe.json that `convtips train --recipe` reads), and Ctrl-C
keeping what finished."""
import json

import numpy as np
import pandas as pd
import pytest

import convtips_lib.course.ablate_job as job_mod
from convtips_lib.core.profiles import profile
from convtips_lib.course.ablate_job import (ABLATE_RECIPE, STEP_CHOICES, ablate_folder, fit_budget, folder_tips)
from convtips_lib.course.cli import main
from convtips_lib.course.runner import UsageError
from convtips_lib.topics.ablation import ablation_plan, trained_configs
from convtips_lib.topics.recipe import Recipe

R = Recipe(img_size=128, steps=500, freeze_epochs=1, tta=True)


def _budget(minutes, seeds=3, s_step=0.1, **kw):
    return fit_budget(kw.pop("recipe", R), 12, s_step, 20, 10, 60 * minutes, seeds)


def test_a_large_budget_keeps_everything_asked_for():
    b = _budget(10_000)
    assert (b.seeds, b.steps, b.img_size, b.fits) == (3, 500, 128, True) and "reduced" not in b.why


def test_the_seeds_give_way_first_then_the_steps_then_one_seed_then_the_image_size():
    full = _budget(10_000).estimate_s / 60
    per_seed = full / 3
    assert _budget(per_seed * 2.5).seeds == 2 and _budget(per_seed * 2.5).steps == 500   # seeds first, to two
    b = _budget(per_seed * 1.5)
    assert b.seeds == 2 and b.steps < 500 and "steps reduced" in b.why.replace("seeds, ", "")
    small = _budget(per_seed * 0.5)                       # under one seed at full steps: steps shrink with two seeds
    assert small.seeds in (1, 2) and small.steps in STEP_CHOICES and small.fits
    tiny = _budget(per_seed * 0.06)                        # nothing at 128 px fits: the image shrinks, one seed
    assert tiny.seeds == 1 and tiny.img_size < 128 and tiny.fits and "image size" in tiny.why
    assert tiny.estimate_s <= 60 * per_seed * 0.06


def test_when_nothing_fits_the_smallest_run_is_said_to_be_over_the_budget():
    b = _budget(1e-4)
    assert not b.fits and (b.seeds, b.steps, b.img_size) == (1, STEP_CHOICES[-1], 64)
    assert "over the" in b.why and "--budget" in b.why


def test_a_bad_budget_or_seed_count_is_refused():
    with pytest.raises(UsageError, match="--budget"):
        _budget(0)
    with pytest.raises(UsageError, match="--seeds"):
        _budget(10, seeds=0)


def test_balanced_sampling_is_not_measured_on_balanced_classes_nor_the_ensemble_with_one_seed():
    tips, why = folder_tips(["a"] * 10 + ["b"] * 9, ["balanced sampling", "ensemble", "head first"], 1)
    assert tips == ["head first"] and set(why) == {"balanced sampling", "ensemble"}
    assert "1.11" in why["balanced sampling"]
    tips, why = folder_tips(["a"] * 30 + ["b"] * 9, ["balanced sampling", "ensemble"], 2)
    assert tips == ["balanced sampling", "ensemble"] and not why


def test_an_unknown_tip_is_refused_naming_the_known():
    with pytest.raises(UsageError, match="'mixup'.*'head first'"):
        folder_tips(["a", "b"], ["mixup"], 2)


def test_the_plan_trains_tta_partners_once():
    plan = ablation_plan(R)
    assert trained_configs(plan) == len(plan) - 2          # 'full - tta' and 'plain + tta' share a network


def _tiny(tmp_path, image_folder, counts=(("bright", 12), ("dark", 12))):
    return image_folder(tmp_path / "data", counts=counts, size=(32, 32))


TINY = ABLATE_RECIPE.with_(img_size=32, bs=4, policy="rotation")


@pytest.mark.slow
def test_ablate_end_to_end_on_a_small_folder(tmp_path, image_folder, capsys):
    data = _tiny(tmp_path, image_folder)
    out = tmp_path / "run"
    TINY.save(tmp_path / "recipe.json")
    code = main(["ablate", str(data), "--out", str(out), "--recipe", str(tmp_path / "recipe.json"), "--tips",
                 "head-first", "balanced-sampling", "ensemble", "--steps", "2", "--profile", "smoke"])
    said = capsys.readouterr().out
    assert code == 0 and "head first:" in said and "report" in said
    rec = json.loads((out / "results" / "ablate.json").read_text())
    a = rec["metrics"]["ablate"]
    assert a["skipped_tips"].keys() == {"balanced sampling"} and not a["interrupted"]
    assert a["networks_finished"] == a["networks_planned"] == 2 * 4   # full, plain, full - head first, plain + hf
    assert {c["config"] for c in a["configs"]} == {"full", "plain", "full - head first", "plain + head first"}
    assert all(c["seeds"] == 2 for c in a["configs"])
    assert [c["claim"].split(" (")[0] for c in rec["claims"]] == ["head first", "ensemble"]
    assert all(c["verdict"] == "undecided" for c in rec["claims"])         # the smoke profile decides nothing
    html = (out / "report.html").read_text()
    assert "What ran" in html and "Not measured" in html and "full - head first" in html and "<img" in html
    chosen = Recipe.load(out / "recipe.json")                              # what convtips train --recipe reads
    assert chosen.with_(freeze_epochs=1) == TINY.with_(steps=2, freeze_epochs=1)


@pytest.mark.slow
def test_every_seed_shares_one_split_of_the_folder(tmp_path, image_folder):
    data = _tiny(tmp_path, image_folder)
    run = ablate_folder(data, TINY, profile("smoke"), tmp_path / "run", ["head first"], 2, steps=2, log=lambda s: None)
    ys = [tuple(y) for y in run.runs["y_true"]] + [tuple(y) for y in run.runs["tune_y"]]
    assert len(set(ys[:len(run.runs)])) == 1 and len(set(ys[len(run.runs):])) == 1
    assert run.runs["seed"].nunique() == 2


@pytest.mark.slow
def test_ctrl_c_keeps_the_networks_that_finished_and_the_report_says_so(tmp_path, image_folder, monkeypatch):
    data = _tiny(tmp_path, image_folder)
    calls = []
    real = job_mod.fit_recipe

    def fit_then_stop(dls, recipe):
        calls.append(recipe)
        if len(calls) == 5:     # the first seed's four networks done, then Ctrl-C
            raise KeyboardInterrupt
        return real(dls, recipe)

    monkeypatch.setattr(job_mod, "fit_recipe", fit_then_stop)
    run = ablate_folder(data, TINY, profile("smoke"), tmp_path / "run", ["head first", "ensemble"], 2, steps=2,
                        log=lambda s: None)
    assert run.interrupted and set(run.runs["seed"]) == {TINY.seed} and len(run.runs) == 4
    assert set(run.table["tip"]) == {"head first"}                         # the ensemble needs the second seed
    a = json.loads((tmp_path / "run" / "results" / "ablate.json").read_text())["metrics"]["ablate"]
    assert a["interrupted"] and a["networks_finished"] == 4 and a["networks_planned"] == 8
    assert "Interrupted" in (tmp_path / "run" / "report.html").read_text()


def test_ablate_refuses_an_out_inside_the_data_folder_before_training(tmp_path, image_folder, capsys):
    data = _tiny(tmp_path, image_folder)
    assert main(["ablate", str(data), "--out", str(data / "run"), "--profile", "smoke"]) == 2
    assert "inside the data folder" in capsys.readouterr().err and not (data / "run").exists()


def test_ablate_refuses_an_unknown_tip_before_training(tmp_path, image_folder, capsys, monkeypatch):
    data = _tiny(tmp_path, image_folder)
    monkeypatch.setattr(job_mod, "seconds_per_step", lambda *a, **k: pytest.fail("timed before the tips were checked"))
    assert main(["ablate", str(data), "--out", str(tmp_path / "run"), "--tips", "mixup", "--img-size", "32",
                 "--profile", "smoke"]) == 2
    assert "unknown tip" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_report_escapes_the_folders_class_names(tmp_path):
    from convtips_lib.course.report import _ablate_html
    a = dict(budget=dict(why="1 seed"), networks_finished=1, networks_planned=1, interrupted=True,
             skipped_tips={"ensemble": "<one seed>"},
             configs=[dict(config="<b>full</b>", balanced_accuracy=0.5, low=0.4, high=0.6, accuracy=0.5, acc_low=0.4,
                           acc_high=0.6, seeds=1, train_s=3.0)], choices=[])
    html = _ablate_html(dict(ablate=a))
    assert "&lt;b&gt;full" in html and "&lt;one seed&gt;" in html and "Interrupted" in html


def test_configs_table_pools_seeds(monkeypatch):
    y = np.array([0, 1, 0, 1])
    runs = pd.DataFrame([dict(config=c, seed=s, y_true=y, y_pred=p, train_s=1.0, kept_epoch=1.0)
                         for c, p in (("full", y), ("plain", 1 - y)) for s in (0, 1)])
    t = job_mod._configs_table(runs)
    assert list(t["config"]) == ["full", "plain"] and list(t["balanced_accuracy"]) == [1.0, 0.0]
    assert list(t["seeds"]) == [2, 2]


def test_seconds_per_step_times_a_few_whole_network_steps(tmp_path, image_folder):
    from convtips_lib.core.data import folder_dls
    from convtips_lib.course.ablate_job import seconds_per_step
    dls = folder_dls(_tiny(tmp_path, image_folder), profile("smoke"), bs=4, img_size=32)
    s = seconds_per_step(dls, TINY, steps=2)
    assert 1e-4 <= s < 5.0


def test_tip_names_are_read_with_dashes_or_spaces():
    from convtips_lib.course.cli import _tip_names
    from convtips_lib.topics.ablation import ABLATION_TIPS
    assert _tip_names(["head-first", "One-Cycle-Schedule", "test-time augmentation"]) == [
        "head first", "one-cycle schedule", "test-time augmentation"]
    assert _tip_names(list(ABLATION_TIPS)) == list(ABLATION_TIPS) and _tip_names(["mixup"]) == ["mixup"]
