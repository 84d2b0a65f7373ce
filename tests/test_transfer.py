"""Tests for convtips_lib.transfer: one regime run, the grid, and the freeze rule's verdict on known grids."""
import pandas as pd
import pytest

from convtips_lib.profiles import profile
from convtips_lib.transfer import REGIMES, best_regimes, freeze_grid, freeze_rule, run_regime, train_regime

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
