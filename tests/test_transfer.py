"""Tests for convtips_lib.topics.transfer: one regime run, the grid, and the freeze rule's verdict on known grids."""
import pandas as pd
import pytest

from convtips_lib.core.profiles import profile
import numpy as np

from convtips_lib.topics.transfer import REGIMES, train_regime
from convtips_lib.studies.lesson02 import best_regimes, fraction_masks, freeze_grid, freeze_rule, gap_change, linear_curve, more_data_gain, quick_transfer, recipe_vs_best, run_regime

CFG = profile("smoke").with_(img_size=32)


Y = np.arange(400) % 2


def _preds(right: float, seed: int) -> np.ndarray:
    """Predictions of Y that are right on a `right` share of the images."""
    rng = np.random.default_rng(seed)
    return np.where(rng.permutation(len(Y)) < right * len(Y), Y, 1 - Y)


def _grid(scores: dict) -> pd.DataFrame:
    """Runs from {frac: {regime: share right}}: each row with metrics, y_true and y_pred (one seed)."""
    rows = []
    for i, (f, row) in enumerate(scores.items()):
        for j, (r, v) in enumerate(row.items()):
            p = _preds(v, 10 * i + j)
            rows.append(dict(frac=f, regime=r, seed=0, balanced_accuracy=float((p == Y).mean()), y_true=Y, y_pred=p))
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


def test_best_regimes_per_fraction():
    g = _grid({0.1: {"head only": .7, "from scratch": .5}, 0.5: {"head only": .7, "from scratch": .8}})
    best = best_regimes(g)
    assert list(best["regime"]) == ["head only", "from scratch"]
    assert list(best["best_balanced_accuracy"]) == pytest.approx([.7, .8])


def test_unknown_regime_lists_the_known():
    with pytest.raises(ValueError, match="head only.*from scratch"):
        run_regime(CFG, "freeze everything", 0.05)


def test_grid_runs_every_cell_once(monkeypatch):
    import convtips_lib.studies.lesson02 as transfer
    calls = []
    monkeypatch.setattr(transfer, "run_regime", lambda cfg, r, f, s, **kw: calls.append((f, r, s, kw)) or
                        dict(frac=f, regime=r, seed=s))
    g = freeze_grid(CFG, fractions=(0.04, 0.08), regimes=["head only", "from scratch"], seeds=[0, 1], arch="x")
    assert len(g) == len(calls) == 8 and len(set(calls[i][:3] for i in range(8))) == 8
    assert all(kw == dict(arch="x") for *_, kw in calls)
    default = freeze_grid(CFG)   # the profile's fractions and seeds, every regime
    assert len(default) == len(CFG.transfer.fractions) * len(REGIMES) * CFG.n_seeds


def test_more_data_gain_and_recipe_vs_best():
    g = _grid({0.1: {"whole network": .70, "head only": .72}, 1.0: {"whole network": .90, "head only": .70,
                                                                   "fine_tune (fastai)": .90}})
    gain = more_data_gain(g, "whole network")
    assert gain.low > 0 and gain.effect == pytest.approx(0.2, abs=0.01)
    big = g[g["frac"] == 1.0]
    vs = recipe_vs_best(big, "fine_tune (fastai)", ["whole network", "head only"])
    assert vs.effect == pytest.approx(0, abs=1e-9) and vs.low < 0 < vs.high        # as good as the best: straddles
    worse = _grid({1.0: {"whole network": .90, "head only": .70, "fine_tune (fastai)": .80}})
    behind = recipe_vs_best(worse, "fine_tune (fastai)", ["whole network", "head only"])
    assert behind.high < 0 and behind.effect == pytest.approx(-0.10, abs=0.01)


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


# ---------------------------------------------------------------- feature-based helpers

def test_fraction_masks_are_nested_subsets_of_the_loaders():
    from convtips_lib.core.data import elpv_dls
    dls = elpv_dls(CFG, frac=0.08, seed=3)
    masks = fraction_masks(dls, (0.02, 0.08), seed=3)
    assert masks[0.08].all() and 0 < masks[0.02].sum() < masks[0.08].sum()
    assert not (masks[0.02] & ~masks[0.08]).any()
    with pytest.raises(ValueError, match="max\\(fractions\\)"):
        fraction_masks(elpv_dls(CFG, frac=0.02, seed=3), (0.02, 0.5), seed=4)


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
