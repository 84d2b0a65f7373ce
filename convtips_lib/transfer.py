"""Transfer-learning regimes: how much of a pretrained network to freeze for how much data (lesson 02)."""
from __future__ import annotations

import time

import pandas as pd

from .data import elpv_dls
from .measure import evaluate
from .train import fit, fit_gradual, make_learner

__all__ = ["REGIMES", "run_regime", "freeze_grid", "best_regimes", "freeze_rule"]

# regime -> (pretrained weights?, freeze depth, how to train); depth order: 'head' freezes most.
REGIMES = {
    "head only": dict(pretrained_=True, depth="head"),
    "freeze to middle": dict(pretrained_=True, depth="middle"),
    "whole network": dict(pretrained_=True, depth="none"),
    "from scratch": dict(pretrained_=False, depth="none"),
    "fine_tune (fastai)": dict(pretrained_=True, depth="head", fine_tune=True),
    "gradual unfreezing": dict(pretrained_=True, depth="head", gradual=True),
}
FROZEN_SHARE = {"head only": 1.0, "freeze to middle": 0.5, "whole network": 0.0}


def _train(learn, cfg, spec: dict) -> pd.DataFrame:
    if spec.get("gradual"):
        return fit_gradual(learn, cfg.lr, epochs=cfg.epochs)
    return fit(learn, cfg.epochs, cfg.lr, fine_tune=spec.get("fine_tune", False))


def run_regime(cfg, regime: str, frac: float, seed: int = 0, arch: str = "efficientnet_lite0",
               task: str = "binary") -> dict:
    """Train `arch` under one regime on `frac` of the training split; validation metrics, sizes and seconds."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    spec = REGIMES[regime]
    t = time.perf_counter()
    dls = elpv_dls(cfg, task=task, frac=frac, seed=seed)
    learn = make_learner(dls, arch, pretrained_=spec["pretrained_"], depth=spec["depth"], seed=seed)
    hist = _train(learn, cfg, spec)
    ev = evaluate(learn)
    return dict(regime=regime, frac=frac, n_train=len(dls.train_ds), seed=seed, epochs=len(hist),
                **ev.metrics, seconds=time.perf_counter() - t)


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
