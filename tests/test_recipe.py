"""Tests for convtips_lib.topics.recipe: the recipe's configuration round-trips and refuses bad settings, it trains
on a tiny generated image folder (plain, over-sampled, without a head-only phase, with tta, inside fastai's
distributed context), the ablation switches one tip at a time at the same budget and its table has one row per tip,
fastai's out-of-the-box recipe trains, and the error and cost views compute what they say. Every choice (the epoch
kept, the recipe's settings, tta) follows the tune images and never the images that judge."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from convtips_lib.core.measure import Evaluation
from convtips_lib.core.profiles import profile
from convtips_lib.core.train import Run, best_epoch
from convtips_lib.topics.recipe import BALANCES, BestOnTune, Recipe, recipe_eval, split_tune, train_recipe
from convtips_lib.studies.lesson08 import (PAPER, ablation_runs, accuracy_by, binary_from_4class, choose_tta, confident_mistakes, fastai_default, inference_costs, paper_table, recipe_dls, threshold_metrics)
from convtips_lib.topics.ablation import (ABLATION_TIPS, TIPS, TUNE_TIPS, ablation_plan, ablation_table, choose_recipe, compare_configs, ensemble_preds, plain_recipe, toggle_tip, tune_runs, uses_tip, with_tip, without_tip)
from convtips_lib.core.data import elpv_roles  # noqa: E402

TINY = dict(img_size=32, epochs=1, freeze_epochs=1, bs=4)


def test_recipe_round_trips_through_a_dict_and_a_file(tmp_path):
    r = Recipe(epochs=7, policy="flips+crop+rotation", balance="oversample", tta=True, keep_best=False)
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.load(r.save(tmp_path / "recipe.json")) == r
    assert json.loads((tmp_path / "recipe.json").read_text())["epochs"] == 7


@pytest.mark.parametrize("bad, match", [(dict(epochs=0), "epochs"), (dict(img_size=1.5), "img_size"),
                                        (dict(lr=3), "lr"), (dict(policy="wild"), "flips"),
                                        (dict(balance="smote"), "oversample"), (dict(freeze_epochs=-1), "freeze"),
                                        (dict(schedule="cosine"), "one-cycle, constant"),
                                        (dict(weights="yes"), "'imagenet'.*or None"), (dict(tta=1), "true or false"),
                                        (dict(keep_best="yes"), "keep_best must be true or false")])
def test_bad_settings_say_what_is_allowed(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**bad)


def test_weights_are_the_projects_vocabulary_and_saved_as_such(tmp_path):
    assert Recipe().weights == "imagenet" and Recipe(weights=None).weights is None
    saved = json.loads(Recipe(weights=None).save(tmp_path / "recipe.json").read_text())
    assert saved["weights"] is None and "pretrained" not in saved
    assert Recipe.load(tmp_path / "recipe.json") == Recipe(weights=None)


def test_the_old_pretrained_flag_still_works_with_a_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"Recipe\(pretrained=\.\.\.\) is deprecated: use weights="):
        assert Recipe(pretrained=False) == Recipe(weights=None)
    with pytest.warns(DeprecationWarning, match="use weights="):
        assert Recipe(pretrained=True, epochs=2) == Recipe(epochs=2)
    with pytest.warns(DeprecationWarning, match="use weights="):
        assert Recipe().with_(pretrained=False) == Recipe(weights=None)
    old = {k: v for k, v in Recipe(epochs=3).to_dict().items() if k != "weights"}
    (tmp_path / "old.json").write_text(json.dumps({**old, "pretrained": False}))   # a recipe.json from before
    with pytest.warns(DeprecationWarning, match="use weights="):
        assert Recipe.load(tmp_path / "old.json") == Recipe(epochs=3, weights=None)
    with pytest.warns(DeprecationWarning, match=r"Recipe.pretrained is deprecated: read recipe.weights"):
        assert Recipe().pretrained is True and Recipe(weights=None).pretrained is False
    with pytest.raises(TypeError, match="both 'pretrained'.*'weights'"):
        Recipe(pretrained=True, weights="imagenet")


def test_unknown_settings_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe setting.*epochs"):
        Recipe.from_dict({"epoch": 3})
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read recipe file"):
        Recipe.load(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        Recipe.load(tmp_path / "r.json")


def test_every_balance_makes_a_recipe_and_an_unknown_one_lists_them():
    assert [Recipe(balance=b).balance for b in BALANCES] == list(BALANCES)
    with pytest.raises(ValueError) as info:
        Recipe(balance="smote")
    assert str(info.value).endswith(", ".join(BALANCES))


def test_train_recipe_on_a_tiny_folder(tmp_path, image_folder):
    learn = train_recipe(image_folder(tmp_path / "data"), Recipe(**TINY), profile("smoke"))
    assert list(learn.dls.vocab) == ["bright", "dark"]
    assert [r["phase"] for r in learn.history.rows] == ["frozen", "unfrozen"]
    ev = recipe_eval(learn, Recipe(**TINY))
    assert len(ev.y_true) == 4 and 0 <= ev.metrics["balanced_accuracy"] <= 1


def _paths(items) -> set:
    return {str(p) for p in items}


def test_split_tune_holds_out_training_images_only_a_share_of_each_class(tmp_path, image_folder):
    from convtips_lib.core.data import folder_dls
    root = image_folder(tmp_path / "data", counts=(("bright", 20), ("dark", 12)))
    dls = folder_dls(root, profile("smoke"), 0.25, seed=0, bs=4, img_size=32)
    train, valid = _paths(dls.train_ds.items), _paths(dls.valid_ds.items)
    split_tune(dls, 0.25, seed=0, balance="oversample")
    fit, tune = _paths(dls.train_ds.items), _paths(dls.tune.dataset.items)
    assert tune and fit and fit | tune == train and not fit & tune      # the training images, split in two
    assert _paths(dls.valid_ds.items) == valid and not tune & valid       # the images that report: untouched
    assert {p.split("/")[-2] for p in tune} == {"bright", "dark"}       # every class has tune images
    assert type(dls.train).__name__ == "WeightedDL" and len(dls.train.wgts) == len(fit)
    xb, yb = dls.one_batch()
    assert xb.shape[-1] == 32 and len(dls.tune.dataset) == len(tune)


def test_split_tune_without_a_share_leaves_the_training_images_alone(tmp_path, image_folder):
    from convtips_lib.core.data import folder_dls
    dls = folder_dls(image_folder(tmp_path / "data"), profile("smoke"), 0.25, seed=0, bs=4, img_size=32)
    before = _paths(dls.train_ds.items)
    split_tune(dls, 0.0)
    assert _paths(dls.train_ds.items) == before and getattr(dls, "tune", None) is None


def test_split_tune_leaves_a_batch_to_train_on_when_few_images_are_left(tmp_path, image_folder):
    from convtips_lib.core.data import folder_dls
    root = image_folder(tmp_path / "data", counts=(("bright", 6), ("dark", 6)))
    dls = folder_dls(root, profile("smoke"), 0.25, seed=0, bs=8, img_size=32)   # 8 training images, batches of 8
    split_tune(dls, 0.25, seed=0)                                               # 6 left: no batch of 8 without the fix
    assert len(dls.train) >= 1 and dls.train.bs == len(dls.train_ds)


def test_a_fit_whose_training_images_fill_no_batch_is_refused(tmp_path, image_folder):
    from convtips_lib.core.data import folder_dls
    from convtips_lib.core.train import check_trains, fit, make_learner
    dls = folder_dls(image_folder(tmp_path / "data"), profile("smoke"), 0.25, seed=0, bs=4, img_size=32)
    dls.train = dls.train.new(bs=len(dls.train_ds) + 1)    # the last incomplete batch is dropped: nothing to train
    learn = make_learner(dls, "efficientnet_lite0", weights=None, depth="head", seed=0)
    with pytest.raises(ValueError, match="make no batch of .*nothing would train"):
        check_trains(learn)
    with pytest.raises(ValueError, match="nothing would train"):
        fit(learn, 1, 1e-3)


def test_the_recipe_keeps_the_epoch_its_tune_images_chose(tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16)))
    r = Recipe(**dict(TINY, epochs=3))
    learn = train_recipe(root, r, profile("smoke"))
    run = Run.of(learn, {}, 0.0)
    scores = list(run.history["tune_balanced_accuracy"])   # the protocol's selector, on tune only (ties: lower loss)
    assert scores[learn.kept_epoch - 1] == max(scores) and learn.kept_epoch >= best_epoch(run)
    assert not _paths(learn.dls.tune.dataset.items) & _paths(learn.dls.valid_ds.items)
    from convtips_lib.core.train import predict_loader
    probs, _ = predict_loader(learn.model, learn.dls.tune)               # the weights held are that epoch's
    assert probs == pytest.approx(run.tune_epoch_probs[learn.kept_epoch - 1], abs=1e-5)
    plain = train_recipe(root, r.with_(keep_best=False), profile("smoke"))
    assert plain.kept_epoch is None and getattr(plain.dls, "tune", None) is None
    assert len(plain.dls.train_ds) == len(learn.dls.train_ds) + len(learn.dls.tune.dataset)


def _tensor_learner(y_valid_flip: bool = False, seed: int = 0):
    import torch
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import learner
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    yv = 1 - y[64:112] if y_valid_flip else y[64:112]                   # the judging labels, poisoned or not
    dls = tensor_dls(x[:64], y[:64], x[64:112], yv, ["a", "b"], bs=16, tune=(x[112:], y[112:]))
    torch.manual_seed(seed)                                              # the same initial weights every time
    return learner(dls, torch.nn.Linear(6, 2), cbs=[BestOnTune()], seed=seed)


def test_best_on_tune_follows_the_tune_cells_and_never_the_test_cells():
    from convtips_lib.core.train import fit
    kept = []
    for poisoned in (False, True):
        learn = _tensor_learner(poisoned)
        fit(learn, 6, 0.3, schedule="constant")
        cb = next(c for c in learn.cbs if isinstance(c, BestOnTune))
        run = Run.of(learn, {}, 0.0)
        kept.append(cb.restore(learn.model))
        best = max(run.history["tune_balanced_accuracy"])
        tied = [i + 1 for i, v in enumerate(run.history["tune_balanced_accuracy"]) if v == pytest.approx(best)]
        assert kept[-1] in tied and kept[-1] >= best_epoch(run) and cb.score[0] == pytest.approx(best)
    assert kept[0] == kept[1]                                             # flipping the test labels changes nothing


def test_best_on_tune_breaks_a_tie_by_the_lower_tune_loss():
    from types import SimpleNamespace
    cb = BestOnTune()
    hist = SimpleNamespace(tune_y=np.array([0, 1]), tune_probs=[])
    cb.learn = SimpleNamespace(history=hist, model=__import__("torch").nn.Linear(1, 1))
    for p1 in (0.6, 0.9, 0.7):                                            # all right each time; epoch 2 most sure
        hist.tune_probs.append(np.array([[p1, 1 - p1], [1 - p1, p1]]))
        cb.after_epoch()
    assert cb.kept == 2 and cb.score[0] == 1.0


def test_train_recipe_over_samples_skips_the_head_phase_and_uses_tta(tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts=(("bright", 14), ("dark", 4)))
    r = Recipe(**dict(TINY, freeze_epochs=0, balance="oversample", tta=True))
    learn = train_recipe(root, r, profile("smoke"))
    assert [row["phase"] for row in learn.history.rows] == ["fit"]
    assert type(learn.dls.train).__name__ == "WeightedDL"
    assert all(p.requires_grad for p in learn.model.parameters())          # the whole network trained
    assert len(recipe_eval(learn, r).y_pred) == len(learn.dls.valid_ds)


def test_train_recipe_in_fastais_distributed_context_runs_in_one_process(tmp_path, image_folder):
    pytest.importorskip("accelerate")
    learn = train_recipe(image_folder(tmp_path / "data"), Recipe(**TINY), profile("smoke"), distributed=True)
    assert [r["phase"] for r in learn.history.rows] == ["frozen", "unfrozen"]
    assert not any(type(cb).__name__ == "DistributedTrainer" for cb in learn.cbs)   # detached after training


def test_best_on_tune_restores_the_network_inside_a_parallel_wrapper():
    import torch
    from convtips_lib.core.train import fit
    learn = _tensor_learner()
    learn.model = torch.nn.DataParallel(learn.model)                      # as accelerate launch wraps it (DDP)
    fit(learn, 2, 0.3, schedule="constant")
    cb = next(c for c in learn.cbs if isinstance(c, BestOnTune))
    net = learn.model.module
    with torch.no_grad():
        net.weight.zero_()
    assert cb.restore(net) == cb.kept and net.weight.abs().sum() > 0


# ------------------------------------------------------------------ the ablation
FULL = Recipe(img_size=32, epochs=3, freeze_epochs=1, bs=16, balance="oversample", seed=0)   # every tip on


@pytest.mark.parametrize("tip", list(TIPS))
def test_each_tip_switches_one_setting_and_keeps_the_budget(tip):
    off, plain = without_tip(FULL, tip), plain_recipe(FULL)
    changed = {k for k, v in FULL.to_dict().items() if off.to_dict()[k] != v}
    assert changed == ({"freeze_epochs", "epochs"} if tip == "head first" else {TIPS[tip][1]})
    for r in (off, plain, with_tip(plain, tip, FULL)):
        assert r.freeze_epochs + r.epochs == FULL.freeze_epochs + FULL.epochs     # the same number of epochs
    assert with_tip(off, tip, FULL) == FULL                                       # off and on again: the full recipe


def test_plain_recipe_has_every_tip_off_and_unknown_tips_are_refused():
    plain = plain_recipe(FULL)
    assert (plain.weights, plain.freeze_epochs, plain.policy, plain.balance, plain.schedule, plain.tta) == \
        (None, 0, "none", "none", "constant", False)
    with pytest.raises(ValueError, match="choose one of pretrained weights"):
        without_tip(FULL, "dropout")


def test_ablation_plan_has_full_plain_and_one_toggle_and_add_per_tip():
    plan = ablation_plan(FULL)
    assert len(plan) == 2 + 2 * len(TIPS) and plan["config"].is_unique
    assert list(plan.loc[plan["kind"] == "toggle", "tip"]) == list(TIPS) == list(plan.loc[plan["kind"] == "add", "tip"])
    assert all(c.startswith("full - ") for c in plan.loc[plan["kind"] == "toggle", "config"])


def test_a_tip_the_recipe_leaves_out_is_measured_by_adding_it():
    lean = FULL.with_(balance="none")
    assert not uses_tip(lean, "balanced sampling") and uses_tip(FULL, "balanced sampling")
    assert toggle_tip(lean, "balanced sampling") == ("full + balanced sampling", FULL)
    plan = ablation_plan(lean).set_index("config")
    assert "full - balanced sampling" not in plan.index
    assert plan.loc["plain + balanced sampling", "recipe"].balance == "oversample"   # its TIPS value, not the recipe's


def _fake_runs(n=400, seeds=(0, 1), full=FULL, acc=None):
    """Runs of every ablation configuration: 'full' right on 90 % of the cells, 'plain' on 60 %, the others 75 %
    (or as `acc` says)."""
    rng, rows = np.random.default_rng(0), []
    y = rng.integers(0, 2, n)
    for config in ablation_plan(full)["config"]:
        acc_ = {"full": 0.9, "plain": 0.6, **(acc or {})}.get(config, 0.75)
        for s in seeds:
            right = rng.random(n) < acc_
            pred = np.where(right, y, 1 - y)
            probs = np.eye(2)[pred] * 0.8 + 0.1
            rows.append(dict(config=config, seed=s, y_true=y, y_pred=pred, probs=probs))
    return pd.DataFrame(rows)


def test_ablation_table_has_one_row_per_tip_direction_and_metric():
    table = ablation_table(_fake_runs(), metrics=("accuracy", "balanced_accuracy"), n=200)
    assert list(dict.fromkeys(table["tip"])) == list(ABLATION_TIPS)
    assert len(table) == len(ABLATION_TIPS) * 2 * 2
    per_tip = table.groupby("tip").size()
    assert (per_tip == 4).all()
    removed = table[(table["direction"] == "in the full recipe") & (table["metric"] == "accuracy")].set_index("tip")
    assert (removed.loc[list(TIPS), "value"] > 0.05).all()                  # full (90 %) beats every 'full - tip' (75 %)
    assert removed["in_recipe"].all()
    assert (table["low"] <= table["value"]).all() and (table["value"] <= table["high"]).all()


def test_ablation_table_signs_a_left_out_tip_as_adding_it_to_the_full_recipe():
    lean = FULL.with_(balance="none")
    runs = _fake_runs(full=lean, acc={"full + balanced sampling": 0.97})
    table = ablation_table(runs, metrics=("accuracy",), n=200)
    row = table[(table["tip"] == "balanced sampling") & (table["direction"] == "in the full recipe")].iloc[0]
    assert not row["in_recipe"] and row["value"] > 0.03                       # 'full + tip' (97 %) minus full (90 %)
    others = table[(table["tip"] != "balanced sampling") & (table["direction"] == "in the full recipe")]
    assert others["in_recipe"].all() and (others.loc[others["tip"] != "ensemble", "value"] > 0.05).all()


def test_ensemble_preds_average_the_seeds_probabilities_and_compare_configs_reads_either_side():
    runs = pd.DataFrame([dict(config="a", seed=0, y_true=np.array([0, 1]), y_pred=np.array([0, 0]),
                              probs=np.array([[0.9, 0.1], [0.6, 0.4]])),
                         dict(config="a", seed=1, y_true=np.array([0, 1]), y_pred=np.array([1, 1]),
                              probs=np.array([[0.4, 0.6], [0.1, 0.9]]))])
    assert list(ensemble_preds(runs, "a")) == [0, 1]                   # (0.65, 0.35) and (0.35, 0.65)
    est = compare_configs(runs, "a", ensemble_preds(runs, "a"), "accuracy", n=100)
    assert est.effect == pytest.approx(1.0 - 0.5)


@pytest.mark.slow
def test_ablation_runs_train_once_for_configs_that_differ_only_in_tta():
    cfg = profile("smoke")
    tiny = Recipe(img_size=32, epochs=1, bs=32, seed=0)
    plan = ablation_plan(tiny)
    plan = plan[plan["config"].isin(["full", "full - test-time augmentation"])]
    runs = ablation_runs(plan, cfg, 0.03, [0])
    assert list(runs["config"]) == ["full", "full - test-time augmentation"]
    assert runs["train_s"].nunique() == 1                                   # one trained network, evaluated twice
    n_valid = int(elpv_roles(cfg.cap.valid_n)["is_valid"].sum())          # the profile's stratified subset
    assert len(runs["y_pred"].iloc[0]) == n_valid == len(runs["y_true"].iloc[1]) < 656
    n_tune = int((elpv_roles(cfg.cap.valid_n, cfg.cap.tune_n)["role"] == "tune").sum())
    assert len(runs["tune_pred"].iloc[0]) == n_tune and runs["kept_epoch"].between(1, 2).all()
    assert runs["tune_balanced_accuracy"].nunique() == 1                    # tta never enters the tune columns


@pytest.mark.slow
def test_fastai_default_trains_fastais_head_with_its_augmentation():
    row = fastai_default(Recipe(img_size=32, epochs=1, bs=32, seed=0), profile("smoke"), 0.03)
    assert row["config"] == "fastai defaults" and row["kind"] == "fastai"
    assert 0 <= row["accuracy"] <= 1 and row["probs"].shape == (len(row["y_true"]), 2)


def test_capstone_frame_keeps_a_stratified_validation_subset_in_order():
    df, all_ = elpv_roles(96), elpv_roles(0)
    valid = df[df["is_valid"]]
    assert len(valid) == pytest.approx(96, abs=4) and int(all_["is_valid"].sum()) == 656
    assert list(valid.index) == sorted(valid.index)
    assert set(valid["label_4"]) == set(all_["label_4"]) and set(valid["type"]) == {"mono", "poly"}
    assert (df["role"] == "test").equals(df["is_valid"])                   # the three roles, test subsampled only
    assert (df["role"] == "tune").sum() == 394 and (df["role"] == "train").sum() == 1574
    both = elpv_roles(96, 96)
    tune = both[both["role"] == "tune"]
    assert len(tune) == pytest.approx(96, abs=4) and list(tune.index) == sorted(tune.index)
    assert set(tune["label_4"]) == set(all_.loc[all_["role"] == "tune", "label_4"])
    assert (both["role"] == "train").sum() == 1574 and both[both["is_valid"]].index.equals(valid.index)


def test_recipe_dls_train_on_train_cells_judge_on_test_cells_and_choose_on_tune_cells():
    from convtips_lib.core.data import elpv_roles
    cfg = profile("smoke")
    roles = elpv_roles().assign(path=lambda d: d["path"].astype(str)).set_index("path")["role"]
    for balance in BALANCES:
        dls = recipe_dls(Recipe(img_size=32, bs=16, balance=balance), cfg, 0.05)
        role = lambda items: {roles[str(p)] for p in items["path"]}   # noqa: E731
        assert role(dls.train_ds.items) == {"train"} and role(dls.valid_ds.items) == {"test"}
        assert role(dls.tune.dataset.items) == {"tune"}
        frame = elpv_roles(cfg.cap.valid_n, cfg.cap.tune_n)
        assert len(dls.valid_ds) == int(frame["is_valid"].sum())
        assert len(dls.tune.dataset) == int((frame["role"] == "tune").sum()) < 394   # the profile's stratified subset


# ------------------------------------------------------------------ four classes, errors, threshold, costs
def test_binary_from_4class_adds_the_defect_levels_above_one_half():
    probs4 = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    out = binary_from_4class(probs4, ["0", "1/3", "2/3", "1"], ["defective", "functional"])
    assert out == pytest.approx(np.array([[0.2, 0.8], [0.8, 0.2]]))


def _ev():
    y_true, y_pred = np.array([0, 0, 1, 1, 1, 0]), np.array([0, 1, 1, 0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.95, 0.05], [0.4, 0.6], [0.6, 0.4]])
    items = pd.DataFrame(dict(path=[f"c{i}.png" for i in range(6)], type=["mono", "poly"] * 3,
                              label_4=["1", "1/3", "0", "2/3", "0", "1"]))
    return Evaluation.of(["defective", "functional"], y_true, y_pred, probs), items


def test_accuracy_by_group_and_the_most_confident_mistakes():
    ev, items = _ev()
    by = accuracy_by(ev, items, "type").set_index("type")
    assert by.loc["mono", "accuracy"] == 1.0 and by.loc["poly", "accuracy"] == pytest.approx(1 / 3)
    assert by.loc["poly", "cells"] == 3
    assert (by["low"] <= by["accuracy"]).all() and (by["accuracy"] <= by["high"]).all()
    worst = confident_mistakes(ev, items, 5)
    assert list(worst["path"]) == ["c3.png", "c1.png"]                 # probability 0.95 first, then 0.7
    assert list(worst["true"]) == ["functional", "defective"] and list(worst["defect_level"]) == ["2/3", "1/3"]


def test_threshold_metrics_trade_defects_found_for_false_alarms():
    ev, _ = _ev()
    low, high = threshold_metrics(ev, 0.05), threshold_metrics(ev, 0.85)
    assert low["minority_recall"] == 1.0 and low["false_alarms"] == 1.0
    assert high["minority_recall"] == pytest.approx(1 / 3) and high["false_alarms"] == pytest.approx(1 / 3)
    assert threshold_metrics(ev, 0.5)["accuracy"] == pytest.approx(ev.metrics["accuracy"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_metrics(ev, 1.0)


def test_inference_costs_multiply_the_measured_latency_by_the_passes():
    from torch import nn
    models = {"a": nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))}
    costs = inference_costs(models, {"one": ("a", 1), "five": ("a", 5)}, 16, {"a": [8.0, 10.0, 12.0]}, bs=2)
    assert list(costs["cpu_ms_per_image"]) == pytest.approx([5.0, 25.0])
    assert costs["mflops"].iloc[1] == pytest.approx(5 * costs["mflops"].iloc[0]) and costs["params"].nunique() == 1


def test_paper_table_puts_the_published_figures_above_this_runs():
    runs = _fake_runs()
    table = paper_table(runs[runs["config"].isin(["full", "plain"])])
    assert list(table["model"]) == [*PAPER, "full", "plain"]
    assert table["accuracy"].iloc[:2].tolist() == list(PAPER.values()) and table["low"].iloc[:2].isna().all()
    assert table.set_index("model").loc["full", "accuracy"] > table.set_index("model").loc["plain", "accuracy"]


def test_one_threshold_rule_a_probability_at_the_threshold_is_the_minority():
    from convtips_lib.core.measure import Evaluation
    from convtips_lib.topics.imbalance import threshold_preds
    probs = np.array([[0.5, 0.5], [0.2, 0.8], [0.7, 0.3]])
    ev = Evaluation.of(["defective", "functional"], [0, 1, 0], probs.argmax(1), probs)
    assert threshold_metrics(ev, 0.5)["minority_recall"] == 1.0      # 0.5 >= 0.5: the first cell is called defective
    assert threshold_preds(probs, 0.5, 0).tolist() == [0, 1, 0]
    with pytest.deprecated_call():
        assert threshold_metrics(ev, 0.5, positive="defective") == threshold_metrics(ev, 0.5)


# ------------------------------------------------------------------ the recipe's settings, chosen on the tune cells
def _tune_fake_runs(tune_acc: dict, test_acc: dict, n=394, seeds=(0, 1), full=FULL):
    """Ablation runs with tune and test predictions: each config right on `tune_acc` of the tune cells (default
    0.7) and on `test_acc` of the test cells (default 0.7)."""
    rng, rows = np.random.default_rng(1), []
    yt, yv = rng.integers(0, 2, n), rng.integers(0, 2, 300)
    for config in ablation_plan(full)["config"]:
        for s in seeds:
            ok_t, ok_v = rng.random(n) < tune_acc.get(config, 0.7), rng.random(300) < test_acc.get(config, 0.7)
            rows.append(dict(config=config, seed=s, y_true=yv, y_pred=np.where(ok_v, yv, 1 - yv), tune_y=yt,
                             tune_pred=np.where(ok_t, yt, 1 - yt)))
    return pd.DataFrame(rows)


def test_choose_recipe_switches_a_tip_only_where_the_tune_cells_clearly_prefer_it():
    # the tune cells clearly prefer a constant rate; the test cells say the opposite and prefer dropping augmentation
    runs = _tune_fake_runs({"full - one-cycle schedule": 0.9}, {"full - one-cycle schedule": 0.4,
                                                                  "full - augmentation": 0.99})
    chosen, table = choose_recipe(runs, FULL, n=300)
    assert list(table["tip"]) == list(TUNE_TIPS) and "test-time augmentation" not in TUNE_TIPS
    assert table.set_index("tip")["switched"].to_dict() == {t: t == "one-cycle schedule" for t in TUNE_TIPS}
    assert chosen == FULL.with_(schedule="constant")
    poisoned = runs.assign(y_pred=list(np.random.default_rng(0).permutation(np.stack(runs["y_pred"]))),
                           y_true=[1 - y for y in runs["y_true"]])
    again, table2 = choose_recipe(poisoned, FULL, n=300)
    assert again == chosen and table2[["value", "low", "high"]].equals(table[["value", "low", "high"]])


def test_choose_recipe_keeps_the_course_settings_when_the_tune_cells_are_unclear():
    chosen, table = choose_recipe(_tune_fake_runs({}, {"plain": 0.5}), FULL, n=300)
    assert chosen == FULL and not table["switched"].any()
    assert (table["low"] <= table["value"]).all() and (table["value"] <= table["high"]).all()


def test_choose_recipe_switches_head_first_at_the_same_budget():
    chosen, _ = choose_recipe(_tune_fake_runs({"full - head first": 0.95}, {}), FULL, n=300)
    assert chosen.freeze_epochs == 0 and chosen.epochs == FULL.epochs + FULL.freeze_epochs


def test_tune_runs_leave_the_test_cells_behind():
    runs = _tune_fake_runs({}, {})
    tr = tune_runs(runs)
    assert set(tr.columns) == {"config", "seed", "y_true", "y_pred"} and len(tr) == len(runs)
    assert all(np.array_equal(a, b) for a, b in zip(tr["y_pred"], runs["tune_pred"]))


def test_choose_tta_predicts_the_tune_images_only(tmp_path, image_folder):
    r = Recipe(**TINY, tta=True)
    learn = train_recipe(image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16))), r, profile("smoke"))
    seen, get_preds = [], learn.get_preds

    def spy(*args, dl=None, **kw):
        seen.append(dl)
        return get_preds(*args, dl=dl, **kw)
    learn.get_preds = spy
    chosen, row, ev_tune = choose_tta(learn, r, n=200)
    assert seen and all(dl is learn.dls.tune for dl in seen)            # never the validation loader
    assert row["tip"] == "test-time augmentation" and row["course"] is True and row["other"] is False
    assert chosen.tta == (not row["switched"]) and len(ev_tune.y_true) == len(learn.dls.tune.dataset)


@pytest.mark.parametrize("bad, words", [
    (dict(img_size=1), "recipe img_size must be a whole number from 32 to 2,048 (px"),
    (dict(img_size=4096), "img_size must be a whole number from 32 to 2,048"),
    (dict(seed="abc"), "recipe seed must be a whole number from 0 to 4,294,967,295 (numpy's range), got 'abc'"),
    (dict(seed=-1), "seed must be a whole number from 0"),
    (dict(seed=2.0), "seed must be a whole number"),
    (dict(bs=1), "recipe bs must be a whole number from 2 to 4,096"),
    (dict(epochs=True), "recipe epochs must be a whole number from 1"),
    (dict(freeze_epochs=10 ** 6), "freeze_epochs must be a whole number from 0 to 1,000"),
    (dict(lr=float("nan")), "recipe lr must be a number between 0 and 1"),
    (dict(lr="0.01"), "recipe lr must be a number between 0 and 1"),
    (dict(arch=""), "recipe arch must be an architecture name"),
    (dict(arch=3), "recipe arch must be an architecture name"),
    (dict(policy=["flips"]), "recipe policy ['flips'] is unknown"),
    (dict(schedule=None), "recipe schedule None is unknown"),
])
def test_every_setting_is_range_and_type_checked_naming_field_value_and_range(bad, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        Recipe(**bad)


def test_a_recipe_file_and_the_command_line_go_through_the_same_checks(tmp_path):
    from convtips_lib.course.train_job import load_recipe
    (tmp_path / "r.json").write_text(json.dumps({"seed": "abc"}))
    with pytest.raises(ValueError, match="recipe seed must be a whole number.*got 'abc'"):
        load_recipe(tmp_path / "r.json")
    with pytest.raises(ValueError, match="recipe img_size must be a whole number from 32"):
        load_recipe(None, img_size=1)


def test_numpy_integers_are_stored_as_plain_ints(tmp_path):
    r = Recipe(seed=np.int64(7), epochs=np.int32(2))
    assert type(r.seed) is int and Recipe.load(r.save(tmp_path / "r.json")) == Recipe(seed=7, epochs=2)


# ---------------------------------------------------------------- a recipe that adapts to the user's folder
from convtips_lib.topics import recipe as recipe_mod  # noqa: E402
from convtips_lib.topics.recipe import choose_lr, n_epochs, pixel_baseline, recipe_folder_dls  # noqa: E402


@pytest.mark.parametrize("steps, batches, epochs", [(None, 11, 8), (500, 62, 8), (500, 8, 62), (500, 11, 45),
                                                     (5, 40, 1), (10 ** 6, 1, 1000)])
def test_a_step_budget_makes_as_many_epochs_as_the_batches_need(steps, batches, epochs):
    assert n_epochs(Recipe(epochs=8, steps=steps), batches) == epochs


@pytest.mark.parametrize("bad, words", [(dict(steps=0), "recipe steps must be a whole number from 1"),
                                        (dict(steps=2.5), "recipe steps must be a whole number"),
                                        (dict(steps=True), "recipe steps must be a whole number"),
                                        (dict(find_lr="yes"), "recipe find_lr must be true or false")])
def test_the_new_settings_are_checked(bad, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        Recipe(**bad)


def test_a_recipe_file_from_before_steps_and_find_lr_still_loads(tmp_path):
    old = {k: v for k, v in Recipe(epochs=3).to_dict().items() if k not in ("steps", "find_lr")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    r = Recipe.load(tmp_path / "old.json")
    assert r == Recipe(epochs=3) and r.steps is None and r.find_lr is False
    assert Recipe.load(Recipe(steps=40, find_lr=True).save(tmp_path / "new.json")) == Recipe(steps=40, find_lr=True)


def test_a_step_budget_trains_that_many_steps_on_the_folder(tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16)))
    r = Recipe(**dict(TINY, steps=10))
    learn = train_recipe(root, r, profile("smoke"))
    batches = len(learn.dls.train)                                      # 24 - 4 tune images, batches of 4
    assert batches == 5 and learn.n_epochs == 2 == n_epochs(r, batches)
    assert [row["phase"] for row in learn.history.rows] == ["frozen"] + ["unfrozen"] * 2
    assert learn.lr_choice is None                                      # find_lr off: the recipe's rate


class _Fake:
    """What choose_lr reads of a trained probe: its history rows."""
    def __init__(self, rows):
        self.history = type("H", (), {"rows": rows})()


def _fake_probes(monkeypatch, tune_score, valid_score, found=0.05):
    seen = []

    def fake_fit(dls, recipe, distributed=False):
        seen.append(recipe)
        return _Fake([dict(tune_balanced_accuracy=tune_score(recipe.lr), balanced_accuracy=valid_score(recipe.lr))])
    monkeypatch.setattr(recipe_mod, "_fit", fake_fit)
    monkeypatch.setattr(recipe_mod, "found_lr", lambda dls, recipe: found)
    return seen


def _tuned_dls(tmp_path, image_folder, tune_pct=0.25):
    root = image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16)))
    r = Recipe(**dict(TINY, steps=8, find_lr=True))
    return recipe_folder_dls(root, r, profile("smoke"), tune_pct=tune_pct, valid_pct=0.25), r


def test_the_rate_is_chosen_on_the_tune_images_never_the_validation_images(tmp_path, monkeypatch, image_folder):
    dls, r = _tuned_dls(tmp_path, image_folder)
    seen = _fake_probes(monkeypatch, tune_score=lambda lr: 0.9 if lr == 0.05 else 0.6,
                        valid_score=lambda lr: 0.1 if lr == 0.05 else 1.0)   # validation prefers the other rate
    c = choose_lr(dls, r)
    assert c["found"] == 0.05 and c["default"] == 2e-3 and c["used"] == 0.05
    assert c["tune_scores"] == {"0.002": 0.6, "0.05": 0.9} and "0.05 used" in c["why"]
    assert [p.lr for p in seen] == [2e-3, 0.05] and all(p.steps == 2 and not p.find_lr for p in seen)   # a quarter
    seen.clear()
    _fake_probes(monkeypatch, tune_score=lambda lr: 0.6 if lr == 0.05 else 0.9, valid_score=lambda lr: 0.5)
    assert choose_lr(dls, r)["used"] == 2e-3


def test_a_tie_on_tune_keeps_the_recipes_rate_and_no_tune_images_keep_the_suggestion(tmp_path, monkeypatch,
                                                                                      image_folder):
    dls, r = _tuned_dls(tmp_path, image_folder)
    _fake_probes(monkeypatch, tune_score=lambda lr: 0.75, valid_score=lambda lr: 0.0)
    assert choose_lr(dls, r)["used"] == 2e-3
    del dls.tune                                                            # nothing to check it on
    c = choose_lr(dls, r)
    assert c["used"] == 0.05 and c["tune_scores"] == {} and "no tune images" in c["why"]


def test_fit_recipe_trains_at_the_rate_chosen(tmp_path, monkeypatch, image_folder):
    monkeypatch.setattr(recipe_mod, "LR_FIND_ITERS", 8)                     # a short lr_find: this is a test
    root = image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16)))
    learn = train_recipe(root, Recipe(**dict(TINY, steps=4, find_lr=True)), profile("smoke"))
    c = learn.lr_choice
    assert 1e-6 <= c["found"] <= 0.5 and c["used"] in (c["default"], c["found"])
    assert set(c["tune_scores"]) == {f"{lr:.3g}" for lr in (c["default"], c["found"])}
    assert learn.opt.hypers[-1]["lr"] <= c["used"] / 2 + 1e-12              # fine_tune's whole network: up to lr/2


def test_the_pixel_baseline_learns_on_the_training_images_and_is_scored_on_validation(tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts=(("bright", 16), ("dark", 16)))
    dls = recipe_folder_dls(root, Recipe(**TINY), profile("smoke"))
    base = pixel_baseline(dls)
    assert base["metrics"]["accuracy"] == 1.0 and base["C"] in (0.1, 1.0, 10.0)
    assert set(base["tune_scores"]) == {"0.1", "1", "10"}
    vocab = list(dls.vocab)
    assert list(base["y_true"]) == [vocab.index(p.parent.name) for p in dls.valid_ds.items]   # the loader's order


def test_top_mistakes_are_the_wrong_predictions_most_confident_first():
    from convtips_lib.core.measure import top_mistakes
    ev, items = _ev()
    worst = top_mistakes(ev, list(items["path"]), 5)
    assert list(worst["path"]) == ["c3.png", "c1.png"] and list(worst["probability"]) == [0.95, 0.7]
    assert list(worst.columns) == ["path", "true", "predicted", "probability"]
    assert top_mistakes(ev, list(items["path"]), 1)["path"].tolist() == ["c3.png"]


def test_native_img_size_rounds_the_images_side_up_within_the_range(tmp_path, image_folder):
    from convtips_lib.topics.recipe import native_img_size
    root = image_folder(tmp_path / "a", size=(100, 70))
    assert native_img_size(sorted(root.rglob("*.png"))) == 96
    assert native_img_size(sorted(image_folder(tmp_path / "b").rglob("*.png"))) == 64          # 30 px: at least 64
    assert native_img_size(sorted(image_folder(tmp_path / "c", size=(400, 300)).rglob("*.png"))) == 160
