"""Transfer-learning regimes: how much of a pretrained network to freeze for how much data (lesson 02)."""
from __future__ import annotations

import copy
import time

import ipywidgets as w
import numpy as np
import pandas as pd

from .data import elpv_dls, elpv_frame, subsample
from .features import body_stages, cached_features, fit_head, split_at
from .models import DEPTHS
from .train import fit, fit_gradual, last_metrics, make_learner

__all__ = ["REGIMES", "train_regime", "run_regime", "freeze_grid", "best_regimes", "freeze_rule", "fraction_masks",
           "linear_curve", "quick_transfer", "transfer_widget"]

# regime -> (pretrained weights?, freeze depth, how to train); depth order: 'head' freezes most.
REGIMES = {
    "head only": dict(pretrained_=True, depth="head"),
    "freeze to middle": dict(pretrained_=True, depth="middle"),
    "whole network": dict(pretrained_=True, depth="none"),
    "from scratch": dict(pretrained_=False, depth="none"),
    "fine_tune (fastai)": dict(pretrained_=True, depth="head", fine_tune=True),
    "gradual unfreezing": dict(pretrained_=True, depth="head", gradual=True),
}
# the manual regimes (pretrained, one freeze depth for the whole run) and the share of the body each freezes
FROZEN_SHARE = {r: DEPTHS[s["depth"]] for r, s in REGIMES.items()
                if s["pretrained_"] and not (s.get("fine_tune") or s.get("gradual"))}


def _train(learn, cfg, spec: dict) -> pd.DataFrame:
    """Train one regime for about `cfg.epochs` epochs in all (at least one epoch per phase or stage)."""
    if spec.get("gradual"):
        return fit_gradual(learn, cfg.lr, epochs=max(1, round(cfg.epochs / 3)))
    if spec.get("fine_tune"):
        return fit(learn, max(1, cfg.epochs - 1), cfg.lr, fine_tune=True, freeze_epochs=1)
    return fit(learn, cfg.epochs, cfg.lr)


def train_regime(cfg, regime: str, frac: float, seed: int = 0, arch: str = "efficientnet_lite0",
                 task: str = "binary") -> tuple:
    """Train `arch` under one regime on `frac` of the training split: (per-epoch history, one summary row)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    spec = REGIMES[regime]
    t = time.perf_counter()
    dls = elpv_dls(cfg, task=task, frac=frac, seed=seed)
    learn = make_learner(dls, arch, pretrained_=spec["pretrained_"], depth=spec["depth"], seed=seed)
    hist = _train(learn, cfg, spec)
    row = dict(regime=regime, frac=frac, n_train=len(dls.train_ds), seed=seed, epochs=len(hist), **last_metrics(learn),
               seconds=time.perf_counter() - t)
    return hist.assign(regime=regime), row


def run_regime(cfg, regime: str, frac: float, seed: int = 0, **kw) -> dict:
    """`train_regime`'s summary row: validation metrics, sizes and seconds."""
    return train_regime(cfg, regime, frac, seed, **kw)[1]


def freeze_grid(cfg, fractions=None, regimes=None, seeds=None, **kw) -> pd.DataFrame:
    """One `run_regime` row per (fraction, regime, seed); defaults from the profile and all of REGIMES."""
    seeds = range(cfg.n_seeds) if seeds is None else seeds
    rows = [run_regime(cfg, r, f, s, **kw) for f in (fractions or cfg.fractions) for r in (regimes or REGIMES)
            for s in seeds]
    return pd.DataFrame(rows)


def best_regimes(grid: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per data fraction: the regime with the best mean `metric` over seeds, and its score."""
    mean = grid.groupby(["frac", "regime"], as_index=False)[metric].mean()
    best = mean.loc[mean.groupby("frac")[metric].idxmax()].set_index("frac")
    return best.rename(columns={metric: f"best_{metric}"})


def freeze_rule(grid: pd.DataFrame, metric: str = "balanced_accuracy") -> dict:
    """Does "freeze fewer layers the more data" hold? The gain of training more layers at the most vs the least data.

    gain(f) = best of {middle, whole} minus head-only at fraction f; effect = gain(max f) - gain(min f).
    The rule holds when the effect is positive and the frozen share of the best of the three manual regimes
    never rises with more data.
    """
    mean = grid[grid["regime"].isin(FROZEN_SHARE)].groupby(["frac", "regime"])[metric].mean().unstack()
    gain = mean[["freeze to middle", "whole network"]].max(axis=1) - mean["head only"]
    share = mean.idxmax(axis=1).map(FROZEN_SHARE)
    monotone = bool((share.diff().dropna() <= 0).all())
    effect = float(gain.iloc[-1] - gain.iloc[0])
    return dict(effect=effect, monotone=monotone, holds=effect > 0 and monotone, gain=gain.to_dict(),
                frozen_share_of_best=share.to_dict())


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
    """`fit_fn(x_train[m], y_train[m], x_valid, y_valid, **kw)` for each mask: metrics and seconds per fraction."""
    rows = []
    for frac, m in masks.items():
        out = fit_fn(np.asarray(x_train)[m], np.asarray(y_train)[m], x_valid, y_valid, **kw)
        rows.append(dict(frac=frac, n_train=int(m.sum()), **out["metrics"], seconds=out["seconds"]))
    return pd.DataFrame(rows)


def quick_transfer(model, cfg, frac: float, trainable_stages: int = 0, cache_dir=None, seed: int = 0) -> dict:
    """Train only the last `trainable_stages` body stages + head on cached activations of `frac` of the data.

    The widget's callback: with the cache warm an experiment takes seconds. `model` is not modified.
    """
    n_stages = len(body_stages(model))
    if not 0 <= trainable_stages < n_stages:
        raise ValueError(f"trainable_stages must be in 0..{n_stages - 1}, got {trainable_stages}")
    model = copy.deepcopy(model)
    n = None if trainable_stages == 0 else n_stages - trainable_stages
    dls = elpv_dls(cfg, frac=frac, seed=seed)
    feats = cached_features(model, dls, n=n, cache_dir=cache_dir)
    out = fit_head(feats, rest=None if n is None else split_at(model, n)[1], epochs=cfg.head_epochs, lr=cfg.lr,
                   bs=cfg.bs, seed=seed)
    return dict(frac=frac, n_train=len(feats.y_train), trainable_stages=trainable_stages, cache_hit=feats.hit,
                **out["metrics"], seconds=feats.seconds + out["seconds"])


def transfer_widget(model, cfg, cache_dir=None) -> w.Widget:
    """Sliders for data fraction and trainable stages; each run adds a point to a plot of balanced accuracy."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .plots import plot_lines
    frac = w.SelectionSlider(options=list(cfg.fractions), value=cfg.fractions[0], description="data fraction")
    stages = w.IntSlider(0, 0, 3, description="train last")
    button, out, rows = w.Button(description="run"), w.Output(), []

    def _run(_=None):
        rows.append(quick_transfer(model, cfg, frac.value, stages.value, cache_dir, seed=cfg.seed))
        with out:
            out.clear_output(wait=True)
            df = pd.DataFrame(rows)
            display(df.round(3))
            plot_lines(df, "trainable_stages", "balanced_accuracy", hue="frac", title="quick experiments")
            plt.show()

    button.on_click(_run)
    return w.VBox([w.HBox([frac, stages, button]), out])
