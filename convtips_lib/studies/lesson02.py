"""Lesson 02's studies: the freeze depth x data size grid and the statistics that decide its claims, learning
curves of linear heads, and the widget's quick experiment on cached activations."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from ..core.compat import renamed_kwargs, warn_deprecated
from ..core.data import elpv_dls, elpv_frame, subsample
from ..core.measure import Estimate, bootstrap, paired_bootstrap, stack_preds
from ..core.surgery import n_frozen, n_groups, split_at
from ..core.train import run_grid
from ..topics.features import cached_features, fit_head
from ..topics.transfer import FROZEN_SHARE, REGIMES, train_regime

__all__ = ["freeze_grid", "best_regimes", "freeze_rule", "more_data_gain", "recipe_vs_best", "fraction_masks",
           "linear_curve", "gap_change", "quick_transfer"]


def run_regime(cfg, regime: str, frac: float, seed: int = 0, **kw) -> dict:
    """`train_regime`'s summary row: validation metrics, predictions, sizes and seconds."""
    return train_regime(cfg, regime, frac, seed, **kw).row()


def freeze_grid(cfg, fractions=None, regimes=None, seeds=None, **kw) -> pd.DataFrame:
    """One `run_regime` row per (fraction, regime, seed); defaults from the profile and all of REGIMES."""
    seeds = cfg.seeds(cfg.n_seeds) if seeds is None else seeds
    cells = [dict(regime=r, frac=f) for f in (fractions or cfg.transfer.fractions) for r in (regimes or REGIMES)]
    return pd.DataFrame(run_grid(lambda regime, frac, seed: run_regime(cfg, regime, frac, seed, **kw), cells, seeds))


def best_regimes(grid: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per data fraction: the regime with the best mean `metric` over seeds, and its score."""
    mean = grid.groupby(["frac", "regime"], as_index=False)[metric].mean()
    best = mean.loc[mean.groupby("frac")[metric].idxmax()].set_index("frac")
    return best.rename(columns={metric: f"best_{metric}"})


def _gain(m: dict, f) -> np.ndarray:
    """What training more layers gains over head-only at fraction f: best of {middle, whole} minus head only."""
    return np.maximum(m[("freeze to middle", f)], m[("whole network", f)]) - m[("head only", f)]


def freeze_rule(grid: pd.DataFrame, metric: str = "balanced_accuracy", n: int = 2000, seed: int = 0) -> dict:
    """Does "freeze fewer layers the more data" hold? estimate = gain(largest fraction) - gain(smallest), where
    gain(f) = best of {middle, whole} minus head-only at f; all six models resampled on the same images.

    Also: the gain per fraction and the frozen share of the best manual regime per fraction (descriptive).
    """
    manual = grid[grid["regime"].isin(FROZEN_SHARE)]
    lo, hi = manual["frac"].min(), manual["frac"].max()
    preds = stack_preds(manual[manual["frac"].isin([lo, hi])], ["regime", "frac"])
    est = bootstrap(manual["y_true"].iloc[0], preds, lambda m: _gain(m, hi) - _gain(m, lo), metric, n, seed)
    mean = manual.groupby(["frac", "regime"])[metric].mean().unstack()
    gain = mean[["freeze to middle", "whole network"]].max(axis=1) - mean["head only"]
    return dict(estimate=est, gain=gain.to_dict(), frozen_share_of_best=mean.idxmax(axis=1).map(FROZEN_SHARE).to_dict())


def more_data_gain(grid: pd.DataFrame, regime: str, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> Estimate:
    """metric(`regime` at the largest fraction) - metric(at the smallest), paired on the validation images."""
    rows = grid[grid["regime"] == regime]
    preds = stack_preds(rows, ["frac"])
    lo, hi = min(preds), max(preds)
    return paired_bootstrap(rows["y_true"].iloc[0], preds[lo], preds[hi], metric, n, seed)


def recipe_vs_best(rows: pd.DataFrame, recipe: str, candidates, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> Estimate:
    """metric(`recipe`) minus the best of `candidates` (regimes), the best chosen again on every resample."""
    preds = stack_preds(rows[rows["regime"].isin([recipe, *candidates])], ["regime"])
    return bootstrap(rows["y_true"].iloc[0], preds, lambda m: m[recipe] - np.max([m[c] for c in candidates], 0),
                     metric, n, seed)


def fraction_masks(dls, fractions, seed: int) -> dict:
    """{frac: bool mask (N_train,)} of the rows of `dls.train_ds` that `subsample(frac, seed)` keeps (nested)."""
    paths, df, masks = dls.train_ds.items["path"], elpv_frame(), {}
    for f in fractions:
        keep = subsample(df, f, seed).query("not is_valid")["path"]
        masks[f] = paths.isin(keep).to_numpy()
        if masks[f].sum() != len(keep):
            raise ValueError(f"these DataLoaders hold only {masks[f].sum()} of the {len(keep)} training images of "
                             f"fraction {f}: build them with frac >= max(fractions) and the same seed ({seed})")
    return masks


def linear_curve(x_train, y_train, x_valid, y_valid, masks: dict, fit_fn, **kw) -> pd.DataFrame:
    """`fit_fn(x_train[m], y_train[m], x_valid, y_valid, **kw)` for each mask: metrics, predictions and seconds."""
    rows = []
    for frac, m in masks.items():
        out = fit_fn(np.asarray(x_train)[m], np.asarray(y_train)[m], x_valid, y_valid, **kw)
        rows.append(dict(frac=frac, n_train=int(m.sum()), **out["metrics"], seconds=out["seconds"],
                         y_true=out["y_true"], y_pred=out["y_pred"]))
    return pd.DataFrame(rows)


def gap_change(curves: pd.DataFrame, a: str, b: str, by: str = "features", metric: str = "balanced_accuracy",
               n: int = 2000, seed: int = 0) -> Estimate:
    """How much the gap metric(a) - metric(b) shrinks from the smallest to the largest fraction:
    gap(smallest) - gap(largest), the four models resampled on the same images."""
    preds = stack_preds(curves, [by, "frac"])
    lo, hi = curves["frac"].min(), curves["frac"].max()
    gap = lambda m, f: m[(a, f)] - m[(b, f)]  # noqa: E731
    return bootstrap(curves["y_true"].iloc[0], preds, lambda m: gap(m, lo) - gap(m, hi), metric, n, seed)


@renamed_kwargs(cache_dir="folder")
def quick_transfer(model, cfg, frac: float, depth=None, folder=None, seed: int = 0, **kw) -> dict:
    """Train the body's groups after `depth` (default 'head': the head only) on cached activations of the layers
    before, for `frac` of the data. The widget's callback: with the cache warm an experiment takes seconds.
    `model` is not modified."""
    n_body = n_groups(model)
    if "trainable_stages" in kw:   # deprecated: counted from the output
        warn_deprecated("quick_transfer(trainable_stages=k) is deprecated: use depth=n_groups(model) - k (groups "
                        "frozen, counted from the input)", 4)
        depth = n_body - kw.pop("trainable_stages")
    if kw:
        raise TypeError(f"quick_transfer() got unexpected keyword argument(s) {', '.join(kw)}")
    depth = "head" if depth is None else depth
    frozen = n_frozen(n_body, depth)
    if frozen == 0:
        raise ValueError(f"depth must freeze at least one body group (1..{n_body} or 'head'): "
                         "with nothing frozen there is nothing to cache")
    model = copy.deepcopy(model)
    dls = elpv_dls(cfg, frac=frac, seed=seed)
    feats = cached_features(model, dls, depth=frozen, folder=folder)
    out = fit_head(feats, rest=None if frozen == n_body else split_at(model, frozen)[1], epochs=cfg.head_epochs,
                   lr=cfg.lr, bs=cfg.bs, seed=seed)
    return dict(frac=frac, n_train=len(feats.y_train), depth=frozen, trainable_groups=n_body - frozen,
                cache_hit=feats.hit, **out["metrics"], seconds=feats.seconds + out["seconds"])
