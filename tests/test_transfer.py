"""Tests for convtips_lib.topics.transfer and studies.lesson02: the step budget, one regime run, the grid with its
learning rates chosen on the tune cells, and the claims' statistics on known grids (choices on tune, verdicts on
test)."""
import numpy as np
import pandas as pd
import pytest
import torch

from convtips_lib.core.data import elpv_dls, elpv_roles, tensor_dls
from convtips_lib.core.profiles import PROFILES, profile
from convtips_lib.studies.lesson02 import (best_regime, best_regimes, chosen_lrs, fraction_masks, freeze_grid,
                                           freeze_rule, gap_change, linear_curve, lr_search, more_data_gain,
                                           quick_transfer, recipe_vs_best, run_regime)
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


def test_rule_holds_when_more_data_favours_training_more_layers():
    g = _grid({0.1: {"head only": .80, "freeze to middle": .70, "whole network": .65},
               1.0: {"head only": .80, "freeze to middle": .85, "whole network": .95}})
    rule = freeze_rule(g)
    assert rule["estimate"].low > 0 and rule["estimate"].effect == pytest.approx(0.25, abs=0.02)
    assert rule["frozen_share_of_best"] == {0.1: 1.0, 1.0: 0.0}


def test_rule_fails_when_the_gain_shrinks_with_more_data():
    g = _grid({0.1: {"head only": .70, "freeze to middle": .85, "whole network": .80},
               1.0: {"head only": .85, "freeze to middle": .80, "whole network": .80}})
    assert freeze_rule(g)["estimate"].high < 0


def test_rule_averages_seeds_and_ignores_other_regimes():
    scores = {0.1: {"head only": .80, "freeze to middle": .70, "whole network": .65},
              1.0: {"head only": .80, "freeze to middle": .85, "whole network": .95}}
    one = _grid(scores)
    other_seed = _grid({f: {r: v - .1 for r, v in row.items()} for f, row in scores.items()}).assign(seed=1)
    scratch = _grid({0.1: {"from scratch": .99}, 1.0: {"from scratch": .50}})
    rule = freeze_rule(pd.concat([one, other_seed, scratch], ignore_index=True))
    assert rule["estimate"].effect == pytest.approx(freeze_rule(one)["estimate"].effect)   # same gains, 10 pts lower
    assert "two-level" in rule["estimate"].method                      # the seeds are resampled too
    assert rule["gain"][1.0] == pytest.approx(.90 - .75) and rule["gain"][0.1] == pytest.approx(.65 - .75)
    assert rule["frozen_share_of_best"] == {0.1: 1.0, 1.0: 0.0}        # 'from scratch' (.99 at 0.1) is not a candidate


def test_the_deeper_regime_of_the_rule_is_chosen_on_tune():
    # on the test cells 'whole network' is the better deeper regime at 1.0; on the tune cells 'freeze to middle' is
    test = {0.1: {"head only": .80, "freeze to middle": .70, "whole network": .70},
            1.0: {"head only": .80, "freeze to middle": .82, "whole network": .95}}
    tune = {1.0: {"freeze to middle": .90, "whole network": .85}}
    rule = freeze_rule(_grid(test, tune))
    assert rule["deeper"][1.0] == "freeze to middle"
    assert rule["gain"][1.0] == pytest.approx(.82 - .80, abs=0.01)                  # not .95 - .80
    assert rule["estimate"].effect == pytest.approx((.82 - .80) - (.70 - .80), abs=0.02)
    assert rule["frozen_share_of_best"][1.0] == 0.5                                # middle: best on tune


def test_best_regimes_per_fraction_follow_the_tune_cells():
    g = _grid({0.1: {"head only": .7, "from scratch": .5}, 0.5: {"head only": .7, "from scratch": .8}},
              tune={0.1: {"head only": .6, "from scratch": .65}})        # at 0.1 tune prefers the test's worse one
    best = best_regimes(g)
    assert list(best["regime"]) == ["from scratch", "from scratch"]
    assert list(best["balanced_accuracy"]) == pytest.approx([.5, .8])   # the chosen regime's test score
    assert list(best["tune_balanced_accuracy"]) == pytest.approx([.65, .8])


def test_unknown_regime_lists_the_known():
    with pytest.raises(ValueError, match="head only.*from scratch"):
        run_regime(CFG, "freeze everything", 0.05)


def _fake_run(calls, tune_of=None, test_of=None):
    """A stand-in for run_regime: records each call; tune and test scores from {(regime, lr): score}."""
    def run(cfg, regime, frac, seed, lr=None, shared=None, **kw):
        calls.append((regime, frac, seed, lr, kw))
        return dict(regime=regime, frac=frac, seed=seed, lr=lr, steps=cfg.transfer.steps,
                    tune_balanced_accuracy=(tune_of or {}).get((regime, lr), 0.5),
                    balanced_accuracy=(test_of or {}).get((regime, lr), 0.5))
    return run


def test_grid_runs_every_cell_once(monkeypatch):
    import convtips_lib.studies.lesson02 as lesson02
    calls = []
    monkeypatch.setattr(lesson02, "run_regime", _fake_run(calls))
    g = freeze_grid(CFG, fractions=(0.04, 0.08), regimes=["whole network", "from scratch"], seeds=[0, 1], lrs=1e-3,
                    arch="x")
    assert len(g) == len(calls) == 8 and len(set(c[:3] for c in calls)) == 8
    assert all(lr == 1e-3 and kw == dict(arch="x") for *_, lr, kw in calls)
    calls.clear()
    default = freeze_grid(CFG.with_(transfer=dict(lrs=(1e-3, 1e-2))), regimes=["whole network", "from scratch"])
    assert len(default) == len(CFG.transfer.fractions) * 2 * CFG.n_seeds
    search = [c for c in calls if c[1] == max(CFG.transfer.fractions)]
    assert len(calls) == 2 * 2 + 2 * (len(CFG.transfer.fractions) - 1) and len(search) == 4  # the chosen runs reused


def test_the_learning_rate_follows_the_tune_cells_not_the_test_cells(monkeypatch):
    import convtips_lib.studies.lesson02 as lesson02
    calls = []
    tune = {("whole network", 1e-3): .60, ("whole network", 1e-2): .80,
            ("from scratch", 1e-3): .75, ("from scratch", 1e-2): .70}
    test = {("whole network", 1e-3): .95, ("whole network", 1e-2): .50,      # the test cells disagree everywhere
            ("from scratch", 1e-3): .40, ("from scratch", 1e-2): .90}
    monkeypatch.setattr(lesson02, "run_regime", _fake_run(calls, tune, test))
    cfg = CFG.with_(transfer=dict(lrs=(1e-3, 1e-2)))
    search = lr_search(cfg, ["whole network", "from scratch"])
    assert len(search) == 4 and set(search["frac"]) == {max(cfg.transfer.fractions)}
    lrs = chosen_lrs(search)
    assert lrs == {"whole network": 1e-2, "from scratch": 1e-3}
    poisoned = search.assign(balanced_accuracy=search["balanced_accuracy"][::-1].to_numpy())
    assert chosen_lrs(poisoned) == lrs                                        # the test column is never read
    calls.clear()
    grid = freeze_grid(cfg, regimes=["whole network", "from scratch"], seeds=[cfg.seed], lrs=lrs, reuse=search)
    assert dict(zip(grid["regime"], grid["lr"])) == lrs and len(calls) == 2 * (len(cfg.transfer.fractions) - 1)
    assert all(lr == lrs[r] for r, _, _, lr, _ in calls)                       # every other fraction at the choice
    with pytest.raises(ValueError, match="tune"):
        chosen_lrs(search.drop(columns="tune_balanced_accuracy"))


def test_more_data_gain_and_recipe_vs_best():
    g = _grid({0.1: {"whole network": .70, "head only": .72}, 1.0: {"whole network": .90, "head only": .70,
                                                                   "fine_tune (fastai)": .90}})
    gain = more_data_gain(g, "whole network")
    assert gain.low > 0 and gain.effect == pytest.approx(0.2, abs=0.01)
    big = g[g["frac"] == 1.0]
    vs = recipe_vs_best(big, "fine_tune (fastai)", ["whole network", "head only"])
    assert vs.effect == pytest.approx(0, abs=1e-9) and vs.low < 0 < vs.high        # as good as the best: straddles
    assert "(whole network) chosen on the tune cells" in vs.method
    worse = _grid({1.0: {"whole network": .90, "head only": .70, "fine_tune (fastai)": .80}})
    behind = recipe_vs_best(worse, "fine_tune (fastai)", ["whole network", "head only"])
    assert behind.high < 0 and behind.effect == pytest.approx(-0.10, abs=0.01)


def test_the_best_manual_regime_is_chosen_on_tune_then_compared_on_test():
    # on the test cells 'whole network' (.90) is best; on the tune cells 'head only' is: the recipe is compared with it
    g = _grid({1.0: {"whole network": .90, "head only": .70, "fine_tune (fastai)": .80}},
              tune={1.0: {"whole network": .60, "head only": .75, "fine_tune (fastai)": .99}})
    assert best_regime(g, ["whole network", "head only"]) == "head only"      # the recipe is no candidate
    vs = recipe_vs_best(g, "fine_tune (fastai)", ["whole network", "head only"])
    assert vs.effect == pytest.approx(0.80 - 0.70, abs=0.01) and vs.low > 0   # not the test's best (-0.10)
    assert "(head only) chosen on the tune cells" in vs.method
    two_seeds = pd.concat([g, g.assign(seed=1, tune_balanced_accuracy=[.95, .70, .5])])
    assert best_regime(two_seeds, ["whole network", "head only"]) == "whole network"   # mean over seeds: .775 > .725
    with pytest.raises(ValueError, match="tune"):
        best_regime(g.drop(columns="tune_balanced_accuracy"))


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


def test_every_profile_gives_each_fit_of_every_regime_the_same_steps():
    for cfg in PROFILES.values():
        t = cfg.transfer
        assert t.steps % 6 == 0 and all(lr > 0 for lr in t.lrs) and len(t.lrs) == len(set(t.lrs)) >= 1
        assert {t.steps // phases(r) * phases(r) for r in REGIMES} == {t.steps}


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

def test_fraction_masks_are_nested_subsets_of_the_loaders():
    dls = elpv_dls(CFG, frac=0.08, seed=3)
    masks = fraction_masks(dls, (0.02, 0.08), seed=3)
    assert masks[0.08].all() and 0 < masks[0.02].sum() < masks[0.08].sum()
    assert not (masks[0.02] & ~masks[0.08]).any()
    with pytest.raises(ValueError, match="max\\(fractions\\)"):
        fraction_masks(elpv_dls(CFG, frac=0.02, seed=3), (0.02, 0.5), seed=4)


def test_fraction_masks_of_tune_loaders_are_the_grids_train_cells():
    big = elpv_dls(CFG, frac=0.08, seed=3, tune=True)
    masks = fraction_masks(big, (0.02, 0.08), seed=3)
    small = elpv_dls(CFG, frac=0.02, seed=3, tune=True)
    assert masks[0.08].all() and len(big.tune.dataset) == (elpv_roles(CFG.valid_n, CFG.tune_n).role == "tune").sum()
    assert set(big.train_ds.items["path"][masks[0.02]]) == set(small.train_ds.items["path"])


def test_linear_curve_fits_each_fraction():
    import numpy as np
    from convtips_lib.topics.handcrafted import svm_baseline
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = rng.normal(size=(200, 5)) + y[:, None]
    masks = {0.25: np.arange(200) < 50, 1.0: np.ones(200, bool)}
    curve = linear_curve(x, y, x, y, masks, svm_baseline, C=1.0)
    assert list(curve["n_train"]) == [50, 200] and (curve["accuracy"] > 0.7).all()


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
