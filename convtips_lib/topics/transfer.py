"""Transfer-learning regimes: how much of a pretrained network to freeze, and training under one (lesson 02). The
freeze x data-size grid and the statistics that decide the lesson's claims are in `studies.lesson02`."""
from __future__ import annotations

import time

import pandas as pd

from ..core.data import elpv_dls
from ..core.surgery import DEPTHS
from ..core.train import Run, fit, fit_gradual, make_learner, valid_preds

__all__ = ["REGIMES", "train_regime"]

# regime -> (weights, freeze depth, how to train)
REGIMES = {
    "head only": dict(weights="imagenet", depth="head"),
    "freeze to middle": dict(weights="imagenet", depth="middle"),
    "whole network": dict(weights="imagenet", depth="none"),
    "from scratch": dict(weights=None, depth="none"),
    "fine_tune (fastai)": dict(weights="imagenet", depth="head", fine_tune=True),
    "gradual unfreezing": dict(weights="imagenet", depth="head", gradual=True),
}
# the manual regimes (pretrained, one freeze depth for the whole run) and the share of the body each freezes
FROZEN_SHARE = {r: DEPTHS[s["depth"]] for r, s in REGIMES.items()
                if s["weights"] and not (s.get("fine_tune") or s.get("gradual"))}


def _train(learn, cfg, spec: dict) -> pd.DataFrame:
    """Train one regime for about `cfg.epochs` epochs in all (at least one epoch per phase or stage)."""
    if spec.get("gradual"):
        return fit_gradual(learn, cfg.lr, epochs=max(1, round(cfg.epochs / 3)))
    if spec.get("fine_tune"):
        return fit(learn, max(1, cfg.epochs - 1), cfg.lr, fine_tune=True, freeze_epochs=1)
    return fit(learn, cfg.epochs, cfg.lr)


def train_regime(cfg, regime: str, frac: float, seed: int = 0, arch: str | None = None,
                 task: str = "binary") -> Run:
    """Train `arch` under one regime on `frac` of the training split: its `Run` (settings regime, frac, seed; extra
    n_train, epochs and y_pred_first, the validation predictions after the first epoch)."""
    arch = arch or cfg.arch
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    spec = REGIMES[regime]
    t = time.perf_counter()
    dls = elpv_dls(cfg, task=task, frac=frac, seed=seed)
    learn = make_learner(dls, arch, weights=spec["weights"], depth=spec["depth"], seed=seed)
    hist = _train(learn, cfg, spec)
    return Run.of(learn, dict(regime=regime, frac=frac, seed=seed), time.perf_counter() - t, n_train=len(dls.train_ds),
                  epochs=len(hist), y_pred_first=valid_preds(learn, 0)[1])


