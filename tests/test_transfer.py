"""Tests for convtips_lib.topics.transfer and studies.lesson02: the step budget, one regime run, the grid with its
learning rates chosen on the tune cells, and the claims' statistics on known grids (choices on tune, verdicts on
test)."""
import numpy as np
import pandas as pd
import pytest
import torch

from convtips_lib.core.data import cell_labels, elpv_folds, elpv_frame, tensor_dls
from convtips_lib.core.profiles import PROFILES, profile
from convtips_lib.studies.lesson02 import (RULES, TransferCells, best_regime, best_regimes, cv_regime, depth_trend,
                                           gap_change, more_data_gain, quick_transfer, recipe_vs_best, regime_grid,
                                           rule_gain, train_fold)
from convtips_lib.topics.features import Features
from convtips_lib.topics.transfer import REGIMES, phases, train_on_features, train_regime, with_steps

CFG = profile("smoke").with_(img_size=32)


Y = np.arange(400) % 2


def _preds(right: float, seed: int) -> np.ndarray:
    """Predictions of Y that are right on a `right` share of the images."""
    rng = np.random.default_rng(seed)
    return np.where(rng.permutation(len(Y)) < right * len(Y), Y, 1 - Y)


def _grid(scores: dict, tune: dict | None = None) -> pd.DataFrame:
    """Runs from {frac: {regime: share right}} on the test cells: each row with metrics, y_true and y_pred (one
    seed), and a tune score: `tune` {frac: {regime: score}} where given, else the test score (they agree)."""
    rows = []
    for i, (f, row) in enumerate(scores.items()):
        for j, (r, v) in enumerate(row.items()):
            p = _preds(v, 10 * i + j)
            test = float((p == Y).mean())
            rows.append(dict(frac=f, regime=r, seed=0, balanced_accuracy=test, y_true=Y, y_pred=p,
                             tune_balanced_accuracy=(tune or {}).get(f, {}).get(r, test)))
    return pd.DataFrame(rows)


def test_trend_holds_when_more_data_favours_the_whole_network():
    g = _grid({0.1: {"head only": .80, "freeze to middle": .70, "whole network": .65},
               1.0: {"head only": .80, "freeze to middle": .85, "whole network": .95}})
    est = depth_trend(g)
    assert est.low > 0 and est.effect == pytest.approx(0.30, abs=0.02)      # (.95 - .80) - (.65 - .80)


def test_trend_fails_when_the_gain_shrinks_with_more_data_and_pools_seeds():
    scores = {0.1: {"head only": .70, "whole network": .85}, 1.0: {"head only": .85, "whole network": .80}}
    one = _grid(scores)
    assert depth_trend(one).high < 0
    other_seed = _grid({f: {r: v - .1 for r, v in row.items()} for f, row in scores.items()}).assign(seed=1)
    both = depth_trend(pd.concat([one, other_seed], ignore_index=True))
    assert both.effect == pytest.approx(depth_trend(one).effect, abs=0.02) and "two-level" in both.method


def test_each_rule_compares_its_regime_with_the_best_other_at_its_fraction():
    g = _grid({0.05: {"head only": .80, "freeze to middle": .70, "whole network": .65},
               0.2: {"head only": .70, "freeze to middle": .78, "whole network": .90},
               1.0: {"head only": .70, "freeze to middle": .80, "whole network": .95},
               2.0: {"fine_tune (fastai)": .99}})                         # a recipe is no manual regime
    g = g[g["frac"] != 2.0]
    little, moderate, plenty = (rule_gain(g, r) for r in ("little", "moderate", "plenty"))
    assert little.low > 0 and little.effect == pytest.approx(.80 - .70, abs=0.02)
    assert moderate.high < 0 and moderate.effect == pytest.approx(.78 - .90, abs=0.02)   # whole beat middle at 0.2
    assert plenty.low > 0 and plenty.effect == pytest.approx(.95 - .80, abs=0.02)
    assert set(RULES) == {"little", "moderate", "plenty"}


def test_best_regimes_per_fraction_follow_the_tune_cells():
    g = _grid({0.1: {"head only": .7, "from scratch": .5}, 0.5: {"head only": .7, "from scratch": .8}},
              tune={0.1: {"head only": .6, "from scratch": .65}})        # at 0.1 tune prefers the test's worse one
    best = best_regimes(g)
    assert list(best["regime"]) == ["from scratch", "from scratch"]
    assert list(best["balanced_accuracy"]) == pytest.approx([.5, .8])   # the chosen regime's test score
    assert list(best["tune_balanced_accuracy"]) == pytest.approx([.65, .8])


def _cells(n_acts: int = 128, img: int = 32) -> TransferCells:
    """Every ELPV cell with stand-in inputs whose first channel carries the label (images of `img` px, activations of
    `n_acts` numbers), two folds: what `train_fold` reads, without decoding a single image."""
    paths = [str(p) for p in elpv_frame()["path"]]
    y, vocab = cell_labels(paths, "binary")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(paths), 3, img, img, generator=g) + 2.0 * y[:, None, None, None]
    head = torch.randn(len(paths), 1280, generator=g)
    head[:, :n_acts] += 3.0 * y[:, None]
    return TransferCells(x, y, paths, vocab, {"head": head}, elpv_folds(2), "efficientnet_lite0")


def test_unknown_regime_lists_the_known():
    with pytest.raises(ValueError, match="head only.*from scratch"):
        train_fold(CFG, _cells(), "freeze everything", elpv_folds(2)[0], 0.05, 1e-3)


def test_a_cross_validated_head_judges_every_cell_once_with_equal_steps_at_every_fraction():
    cells, cfg = _cells(), CFG.with_(bs=16, transfer=dict(steps=8, epoch_steps=4))
    small, large = (cv_regime(cfg, cells, "head only", f, 1e-2, seed=0) for f in (0.02, 0.06))
    test = np.concatenate([f.loc[f.role == "test", "path"].to_numpy() for f in cells.folds])
    order = {p: i for i, p in enumerate(cells.paths)}
    for run in (small, large):
        row = run.row()
        assert np.array_equal(row["y_true"], cells.y.numpy()[[order[p] for p in test]])   # every cell, fold order
        assert row["steps"] == 8 and len(row["fold_tune"]) == 2 and row["lr"] == 1e-2
        assert row["tune_balanced_accuracy"] == pytest.approx(np.mean(row["fold_tune"]))
    assert small.extra["n_train"] < large.extra["n_train"] and small.extra["passes"] > large.extra["passes"]
    assert large.metrics["balanced_accuracy"] > 0.6                          # the label is in the activations: learnt
    with pytest.raises(ValueError, match="at least 2 epochs"):
        train_fold(cfg.with_(transfer=dict(steps=4)), cells, "fine_tune (fastai)", cells.folds[0], 0.02, 1e-3)


@pytest.mark.slow
def test_the_body_regimes_train_the_pretrained_network_for_the_same_steps():
    from convtips_lib.core.data import thin_roles
    cells = _cells()
    cells.folds = [thin_roles(f, 40, 20) for f in cells.folds]                # predict few cells: seconds
    cfg = CFG.with_(bs=16, transfer=dict(steps=4, epoch_steps=2))
    whole = cv_regime(cfg, cells, "whole network", 0.02, 1e-3, seed=0)
    tuned = cv_regime(cfg, cells, "fine_tune (fastai)", 0.02, 1e-3, seed=0)
    for run in (whole, tuned):
        assert run.extra["steps"] == 4 and len(run.y_true) == sum((f.role == "test").sum() for f in cells.folds)
    assert list(tuned.history["phase"].unique()) == ["frozen", "unfrozen"]   # 1 epoch head, 1 epoch everything
    with pytest.raises(ValueError, match="unknown regime"):
        cv_regime(cfg, cells, "freeze half", 0.02, 1e-3)


def _pooled_stand_in(regime, frac, seed, fold_lrs, tune_of, test_of):
    """A pooled Run stand-in: its fold runs score `tune_of[(regime, lr)][fold]` on the tune cells."""
    from types import SimpleNamespace
    folds = [SimpleNamespace(fold=i, lr=lr) for i, lr in enumerate(fold_lrs)]
    row = dict(regime=regime, frac=frac, seed=seed, lr=fold_lrs[0] if len(set(fold_lrs)) == 1 else "per fold",
               fold_lrs=list(fold_lrs), balanced_accuracy=np.mean([test_of[(regime, f.lr)] for f in folds]),
               fold_tune=[tune_of[(regime, f.lr)][f.fold] for f in folds])
    return SimpleNamespace(row=lambda: dict(row), extra=dict(fold_lrs=list(fold_lrs), fold_tune=row["fold_tune"]),
                           fold_runs=folds)


def test_the_grid_chooses_each_folds_rate_on_its_tune_cells_and_reuses_the_search(monkeypatch):
    import convtips_lib.studies.lesson02 as lesson02
    calls = []
    tune = {("whole network", 1e-3): [.60, .90], ("whole network", 1e-2): [.80, .70],
            ("head only", 1e-2): [.5, .5], ("head only", 3e-2): [.6, .4]}
    test = {("whole network", 1e-3): .95, ("whole network", 1e-2): .50, ("head only", 1e-2): .7,
            ("head only", 3e-2): .7}

    def fake_cv(cfg, cells, regime, frac, lrs, seed=0):
        lrs = [lrs, lrs] if np.ndim(lrs) == 0 else list(lrs)
        calls.append((regime, frac, seed, tuple(lrs)))
        return _pooled_stand_in(regime, frac, seed, lrs, tune, test)

    def fake_chosen(tried, keep=False):   # the library's rule, on the stand-ins
        pick = [int(np.argmax([r.extra["fold_tune"][i] for r in tried])) for i in range(2)]
        lrs = [tried[j].fold_runs[i].lr for i, j in enumerate(pick)]
        return lrs, _pooled_stand_in(tried[0].row()["regime"], tried[0].row()["frac"], tried[0].row()["seed"], lrs,
                                     tune, test)
    monkeypatch.setattr(lesson02, "cv_regime", fake_cv)
    monkeypatch.setattr(lesson02, "at_chosen_per_fold", fake_chosen)
    cfg = CFG.with_(transfer=dict(lrs=(1e-3, 1e-2), head_lrs=(1e-2, 3e-2), n_seeds=2))
    grid, search = regime_grid(cfg, None, ["head only", "whole network"], fractions=(0.1, 1.0))
    assert len(search) == 2 * 2 * 2 and len(grid) == 2 * 2 * 2              # (frac, regime) x (rates | seeds)
    whole = grid[(grid["regime"] == "whole network")]
    assert all(lrs == [1e-2, 1e-3] for lrs in whole["fold_lrs"])            # fold 0: .80 > .60; fold 1: .90 > .70
    head = grid[(grid["regime"] == "head only")]
    assert all(lrs == [3e-2, 1e-2] for lrs in head["fold_lrs"])             # the head tries its own rates
    second = [c for c in calls if c[2] == cfg.seed + 1]
    assert len(second) == 4 and all(c[3] in ((3e-2, 1e-2), (1e-2, 1e-3)) for c in second)   # at the chosen rates


# ---------------------------------------------------------------- the step budget

def test_with_steps_gives_small_and_large_data_the_same_batches():
    counts = {}
    for n in (10, 100):
        x = torch.arange(n, dtype=torch.float32)[:, None]
        dls = with_steps(tensor_dls(x, (x[:, 0] % 2).long(), x[:4], x[:4, 0].long(), ["a", "b"], bs=4), 5, seed=0)
        assert len(dls.train) == 5
        seen = [int(v) for _ in range(2) for xb, _ in dls.train for v in xb[:, 0]]
        assert len(seen) == 2 * 5 * 4
        counts[n] = np.bincount(seen, minlength=n)
    assert (counts[10] == 4).all()                                  # each of 10 items seen 4 times in 40 draws
    assert counts[100].max() == 1 and (counts[100] > 0).sum() == 40  # a larger set: 40 different items
    with pytest.raises(ValueError, match="steps"):
        with_steps(dls, 0)


def test_every_profile_fits_every_train_cell_in_an_epoch_and_every_recipe_in_its_steps():
    for cfg in PROFILES.values():
        t = cfg.transfer
        n_train = (elpv_folds(t.grid_folds)[0].role == "train").sum()
        assert t.epoch_steps * cfg.bs >= max(t.fractions) * n_train             # cycle_rows refuses less
        assert t.steps % t.epoch_steps == 0 and len(t.fractions) >= 3           # three sizes: three rules
        assert all(t.steps // t.epoch_steps >= phases(r) for r in t.recipes)
        assert all(lr > 0 for lr in (*t.lrs, *t.head_lrs)) and len(t.lrs) == len(set(t.lrs)) >= 1


def _features(n_train: int, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + 80, 1280, generator=g)
    y = (x[:, 0] > 0).long()
    return Features(x[:n_train], y[:n_train], x[n_train:n_train + 40], y[n_train:n_train + 40], ["a", "b"], key="k",
                    path=None, hit=False, seconds=0.0, x_tune=x[n_train + 40:], y_tune=y[n_train + 40:])


def test_a_cached_regime_takes_the_budget_whatever_its_fraction():
    feats, cfg = _features(200), CFG.with_(bs=8)
    keep = np.arange(200) < 16
    small = train_on_features(cfg, "head only", feats, keep, seed=0, steps=12, lr=1e-2, frac=0.08).row()
    large = train_on_features(cfg, "head only", feats, None, seed=0, steps=12, lr=1e-2, frac=1.0).row()
    assert small["steps"] == large["steps"] == 12 and (small["n_train"], large["n_train"]) == (16, 200)
    assert small["passes"] == pytest.approx(12 * 8 / 16) and large["passes"] == pytest.approx(12 * 8 / 200)
    assert small["lr"] == 1e-2 and "tune_balanced_accuracy" in small and len(small["y_pred"]) == 40
    with pytest.raises(ValueError, match="cached"):
        train_on_features(cfg, "whole network", feats)


def test_gap_change_is_a_difference_of_differences():
    rows = []
    for f, (a, b) in {0.1: (.8, .8), 1.0: (.7, .9)}.items():
        for name, v in (("hand", a), ("cnn", b)):
            p = _preds(v, int(10 * f) + len(name))
            rows.append(dict(features=name, frac=f, y_true=Y, y_pred=p))
    est = gap_change(pd.DataFrame(rows), "hand", "cnn")
    assert est.low > 0 and est.effect == pytest.approx(0.2, abs=0.02)


@pytest.mark.slow
def test_train_regime_history_matches_its_row():
    run = train_regime(CFG, "from scratch", 0.04, seed=1)
    hist, row = run.history, run.row()
    assert row["regime"] == "from scratch" and len(hist) == row["epochs"] == CFG.epochs
    assert hist["accuracy"].iloc[-1] == pytest.approx(row["accuracy"], abs=1e-6)
    assert len(row["y_pred"]) == len(row["y_true"]) == 656 and len(row["y_pred_first"]) == 656


@pytest.mark.slow
def test_image_regimes_take_the_same_steps_at_every_fraction():
    rows = [train_regime(CFG, r, f, seed=1, steps=6, lr=1e-3, tune=True).row()
            for r in ("from scratch", "gradual unfreezing") for f in (0.02, 0.08)]
    assert [r["steps"] for r in rows] == [6, 6, 6, 6] and [r["epochs"] for r in rows] == [1, 1, 3, 3]
    assert rows[0]["n_train"] < rows[1]["n_train"] and rows[0]["passes"] > rows[1]["passes"]
    assert all(r["lr"] == 1e-3 and "tune_balanced_accuracy" in r for r in rows)


# ---------------------------------------------------------------- feature-based helpers

@pytest.mark.slow
def test_quick_transfer_trains_the_last_stages_without_touching_the_model(lite0_pretrained_2class, tmp_path):
    import torch
    before = {k: v.clone() for k, v in lite0_pretrained_2class.state_dict().items()}
    first = quick_transfer(lite0_pretrained_2class, CFG, 0.04, depth=7, folder=tmp_path, seed=0)
    again = quick_transfer(lite0_pretrained_2class, CFG, 0.04, depth=7, folder=tmp_path, seed=0)
    assert not first["cache_hit"] and again["cache_hit"]
    assert first["balanced_accuracy"] == again["balanced_accuracy"]
    assert all(torch.equal(v, lite0_pretrained_2class.state_dict()[k]) for k, v in before.items())
    assert (first["depth"], first["trainable_groups"]) == (7, 1)
    with pytest.raises(ValueError, match="depth"):
        quick_transfer(lite0_pretrained_2class, CFG, 0.04, depth=99, folder=tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        quick_transfer(lite0_pretrained_2class, CFG, 0.04, depth="none", folder=tmp_path)
    with pytest.warns(DeprecationWarning, match="trainable_stages"):
        old = quick_transfer(lite0_pretrained_2class, CFG, 0.04, trainable_stages=1, folder=tmp_path, seed=0)
    assert old["cache_hit"] and old["balanced_accuracy"] == first["balanced_accuracy"]
    with pytest.warns(DeprecationWarning, match="folder"):
        older = quick_transfer(lite0_pretrained_2class, CFG, 0.04, depth=7, cache_dir=tmp_path, seed=0)
    assert older["cache_hit"] and older["balanced_accuracy"] == first["balanced_accuracy"]


def test_cv_linear_curve_judges_every_cell_once_on_nested_fractions_of_each_fold():
    from convtips_lib.core.data import cell_labels, elpv_folds, elpv_frame
    from convtips_lib.studies.lesson02 import cv_linear_curve
    from convtips_lib.topics.handcrafted import svm_baseline
    paths = [str(p) for p in elpv_frame()["path"]]
    y, _ = cell_labels(paths, "binary")
    noise = torch.randn(len(paths), 4, generator=torch.Generator().manual_seed(0)).numpy()
    strong, weak = noise.copy(), noise.copy()
    strong[:, 0] += 4.0 * y.numpy()
    weak[:, 0] += 0.3 * y.numpy()
    folds = elpv_folds(2)
    seen = []
    def fit(xt, yt, xv, yv, **kw):   # svm_baseline, recording which rows it was given
        seen.append(len(xt))
        return svm_baseline(xt, yt, xv, yv, **kw)
    rows = cv_linear_curve({"strong": strong, "weak": weak}, y.numpy(), paths, folds, (0.1, 1.0), (0, 1), fit, C=1.0)
    assert len(rows) == 2 * 2 * 2                                                  # features x frac x seed
    assert len(seen) == 2 * 2 * (2 + 1)       # per fold: both seeds at frac 0.1, one fit at frac 1 (the same cells)
    test_paths = np.concatenate([f.loc[f.role == "test", "path"].to_numpy() for f in folds])
    order = {p: i for i, p in enumerate(paths)}
    for _, r in rows.iterrows():                                                   # every cell once, in fold order
        assert np.array_equal(r["y_true"], y.numpy()[[order[p] for p in test_paths]])
    n = rows.groupby("frac")["n_train"].mean()
    n_train = np.mean([(f.role == "train").sum() for f in folds])
    assert n[1.0] == n_train and abs(n[0.1] - 0.1 * n_train) < 10                 # fractions of each fold's train cells
    ba = rows.groupby(["features", "frac"])["balanced_accuracy"].mean()
    assert ba[("strong", 1.0)] > ba[("weak", 1.0)] + 0.2
    small = rows[rows.frac == 0.1]
    assert not np.array_equal(small.y_pred.iloc[0], small.y_pred.iloc[2])          # the seeds draw other cells
