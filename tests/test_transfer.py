"""Tests for convtips_lib.transfer: one regime run, the grid, and the freeze rule's verdict on known grids."""
import pandas as pd
import pytest

from convtips_lib.profiles import profile
from convtips_lib.transfer import (REGIMES, best_regimes, fraction_masks, freeze_grid, freeze_rule, linear_curve,
                                   quick_transfer, run_regime, train_regime, transfer_widget)

CFG = profile("smoke").with_(img_size=32)


def _grid(scores: dict) -> pd.DataFrame:
    """A grid from {frac: {regime: balanced_accuracy}} (one seed)."""
    return pd.DataFrame([dict(frac=f, regime=r, seed=0, balanced_accuracy=v)
                         for f, row in scores.items() for r, v in row.items()])


def test_rule_holds_when_more_data_favours_training_more_layers():
    g = _grid({0.1: {"head only": .70, "freeze to middle": .65, "whole network": .60},
               1.0: {"head only": .75, "freeze to middle": .80, "whole network": .85}})
    rule = freeze_rule(g)
    assert rule["holds"] and rule["monotone"]
    assert rule["effect"] == pytest.approx((.85 - .75) - (.65 - .70))
    assert rule["frozen_share_of_best"] == {0.1: 1.0, 1.0: 0.0}


def test_rule_fails_when_head_only_wins_with_more_data():
    g = _grid({0.1: {"head only": .60, "freeze to middle": .70, "whole network": .65},
               1.0: {"head only": .90, "freeze to middle": .80, "whole network": .70}})
    rule = freeze_rule(g)
    assert not rule["holds"] and not rule["monotone"] and rule["effect"] < 0


def test_rule_averages_seeds_and_ignores_other_regimes():
    g = pd.concat([_grid({0.1: {"head only": .7, "freeze to middle": .6, "whole network": .6, "from scratch": .99},
                          1.0: {"head only": .7, "freeze to middle": .6, "whole network": .9}}).assign(seed=s)
                   for s in (0, 1)])
    g.loc[(g.seed == 1) & (g.frac == 1.0) & (g.regime == "whole network"), "balanced_accuracy"] = .7
    rule = freeze_rule(g)
    assert rule["gain"][1.0] == pytest.approx(0.8 - 0.7) and rule["holds"]


def test_best_regimes_per_fraction():
    g = _grid({0.1: {"head only": .7, "from scratch": .5}, 0.5: {"head only": .7, "from scratch": .8}})
    best = best_regimes(g)
    assert list(best["regime"]) == ["head only", "from scratch"]
    assert list(best["best_balanced_accuracy"]) == [.7, .8]


def test_unknown_regime_lists_the_known():
    with pytest.raises(ValueError, match="head only.*from scratch"):
        run_regime(CFG, "freeze everything", 0.05)


def test_grid_runs_every_cell_on_real_data():
    g = freeze_grid(CFG, fractions=(0.04, 0.08), regimes=["head only", "from scratch"], seeds=[0])
    assert len(g) == 4 and set(g["regime"]) == {"head only", "from scratch"}
    assert g.groupby("frac")["n_train"].first().is_monotonic_increasing
    assert g[["accuracy", "balanced_accuracy", "f1_macro"]].stack().between(0, 1).all()
    assert set(REGIMES) >= set(g["regime"])


def test_train_regime_history_matches_its_row():
    hist, row = train_regime(CFG, "from scratch", 0.04, seed=1)
    assert list(hist["regime"].unique()) == ["from scratch"] and len(hist) == row["epochs"] == CFG.epochs
    assert hist["accuracy"].iloc[-1] == pytest.approx(row["accuracy"], abs=1e-6)


# ---------------------------------------------------------------- feature-based helpers

def test_fraction_masks_are_nested_subsets_of_the_loaders():
    from convtips_lib.data import elpv_dls
    dls = elpv_dls(CFG, frac=0.08, seed=3)
    masks = fraction_masks(dls, (0.02, 0.08), seed=3)
    assert masks[0.08].all() and 0 < masks[0.02].sum() < masks[0.08].sum()
    assert not (masks[0.02] & ~masks[0.08]).any()
    with pytest.raises(ValueError, match="max\\(fractions\\)"):
        fraction_masks(elpv_dls(CFG, frac=0.02, seed=3), (0.02, 0.5), seed=4)


def test_linear_curve_fits_each_fraction():
    import numpy as np
    from convtips_lib.handcrafted import svm_baseline
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = rng.normal(size=(200, 5)) + y[:, None]
    masks = {0.25: np.arange(200) < 50, 1.0: np.ones(200, bool)}
    curve = linear_curve(x, y, x, y, masks, svm_baseline, C=1.0)
    assert list(curve["n_train"]) == [50, 200] and (curve["accuracy"] > 0.7).all()


@pytest.fixture(scope="module")
def lite0():
    from convtips_lib.models import pretrained
    return pretrained("efficientnet_lite0", 2)


def test_quick_transfer_trains_the_last_stages_without_touching_the_model(lite0, tmp_path):
    import torch
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    first = quick_transfer(lite0, CFG, 0.04, trainable_stages=1, cache_dir=tmp_path, seed=0)
    again = quick_transfer(lite0, CFG, 0.04, trainable_stages=1, cache_dir=tmp_path, seed=0)
    assert not first["cache_hit"] and again["cache_hit"]
    assert first["balanced_accuracy"] == again["balanced_accuracy"]
    assert all(torch.equal(v, lite0.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="trainable_stages"):
        quick_transfer(lite0, CFG, 0.04, trainable_stages=99, cache_dir=tmp_path)


def test_transfer_widget_builds(lite0, tmp_path):
    import ipywidgets as w
    box = transfer_widget(lite0, CFG, cache_dir=tmp_path)
    frac, stages, button = box.children[0].children
    assert isinstance(box, w.VBox) and list(frac.options) == list(CFG.fractions) and stages.max == 3
