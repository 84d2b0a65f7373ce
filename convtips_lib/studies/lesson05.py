"""Lesson 05's studies: a small network from scratch trained with each optimizer, learning-rate sweeps (each
optimizer's rate chosen on the tune cells), each optimizer's sensitivity to its rate (measured on the test cells),
and loss curves."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import ResBlock, XResNet

from ..core.env import seed_everything
from ..core.measure import classification_metrics
from ..core.train import Run, best_on_tune, learner, valid_preds
from ..topics.optim import SwitchOptimizer, fit_schedule, opt_func

__all__ = ["small_net", "train_optimizer", "lr_sweep", "best_lrs", "lr_sensitivity", "sensitivity_gap",
           "loss_curves", "epoch_preds", "BEST_WITHIN"]


BEST_WITHIN = 0.01   # "within one point of its best": the band that measures an optimizer's sensitivity to lr


def small_net(n_out: int, widen: float = 0.25) -> torch.nn.Module:
    """A small ResNet from a random init (fastai's XResNet: stem 8-16-64, one block per stage, 16-128 channels at
    widen 0.25)."""
    return XResNet(ResBlock, 1, [1, 1, 1, 1], n_out=n_out, widen=widen, stem_szs=(8, 16, 64))


def train_optimizer(dls, optimizer: str, lr: float, epochs: int, seed: int = 0, schedule: str = "one-cycle",
                    switch_at: int | None = None, net=small_net, opt_kw: dict | None = None) -> Run:
    """Train `net(dls.c)` from a random init with `optimizer` at peak `lr`: its `Run` (settings optimizer, lr,
    schedule, seed; extra losses (per training batch), epoch_preds (validation classes after each epoch),
    final_train_loss, finite, switch_scale; the tune cells' predictions when `dls.tune` exists). `switch_at`:
    switch to SGD at that epoch (`SwitchOptimizer`);
    `opt_kw` overrides the optimizer's settings (e.g. momentum). A table of runs: `run.row(history=True)`."""
    t = time.perf_counter()
    seed_everything(seed)
    cbs = [SwitchOptimizer(switch_at)] if switch_at else []
    learn = learner(dls, net(dls.c), opt_func=opt_func(optimizer, **(opt_kw or {})), cbs=cbs, seed=seed)
    hist = fit_schedule(learn, epochs, lr, schedule)
    losses = [float(x) for x in learn.recorder.losses]
    y_true, y_pred = valid_preds(learn)
    finite = bool(np.isfinite(losses).all()) and bool(np.isfinite(hist["valid_loss"]).all())
    name = f"{optimizer} -> sgd at epoch {switch_at + 1}" if switch_at else optimizer
    return Run.of(learn, dict(optimizer=name, lr=lr, schedule=schedule, seed=seed), time.perf_counter() - t,
                  classification_metrics(y_true, y_pred), losses=losses, epoch_preds=list(learn.history.preds),
                  final_train_loss=float(np.mean(losses[-len(dls.train):])), finite=finite,
                  switch_scale=cbs[0].lr_scale if cbs else None)


def lr_sweep(dls, optimizers, lrs: dict, epochs: int, seed: int = 0) -> pd.DataFrame:
    """`train_optimizer` for every optimizer at each of its learning rates `lrs[optimizer]` (one seed)."""
    return pd.DataFrame([train_optimizer(dls, o, lr, epochs, seed).row(history=True) for o in optimizers
                         for lr in lrs[o]])


def best_lrs(sweep: pd.DataFrame, metric: str = "balanced_accuracy") -> dict:
    """{optimizer: the learning rate of its run with the best `tune_<metric>` in `sweep`}: `best_on_tune`, so the
    choice reads the tune cells only (never the test columns) and a diverged run (not finite) never wins."""
    best = best_on_tune(sweep, by="optimizer", metric=metric)
    return {o: float(lr) for o, lr in zip(best["optimizer"], best["lr"])}


def _in_band(vals: np.ndarray, finite: np.ndarray, within: float) -> np.ndarray:
    """Which runs (axis 0 of `vals`, one per swept rate) score within `within` of the best finite run; a diverged
    run is never in the band but still counts among the swept rates."""
    vals = np.where(np.reshape(finite, (-1,) + (1,) * (np.ndim(vals) - 1)), vals, -np.inf)
    return np.isfinite(vals) & (vals >= vals.max(0) - within)


def lr_sensitivity(sweep: pd.DataFrame, metric: str = "balanced_accuracy", within: float = BEST_WITHIN) -> pd.DataFrame:
    """Per optimizer, measured on the test cells (a measurement, not a choice): `test_best`, its best finite
    `metric` over the swept rates, and the rates within `within` of it — how many of the swept rates (`n_good` of
    `n_lrs`, `good_share`) and the span between the smallest and largest of them in decades (log10). The same
    band `sensitivity_gap` resamples."""
    rows = []
    for o, g in sweep.groupby("optimizer", sort=False):
        good = g["lr"][_in_band(g[metric].to_numpy(float), g["finite"].to_numpy(bool), within)]
        rows.append(dict(optimizer=o, test_best=float(g[metric][g["finite"]].max()), n_lrs=len(g), n_good=len(good),
                         good_share=len(good) / len(g), decades=float(np.log10(good.max() / good.min()))))
    return pd.DataFrame(rows)


def loss_curves(runs: pd.DataFrame, smooth: int = 10) -> pd.DataFrame:
    """Training loss per step of each run (optimizer, seed, step, loss), a running mean over `smooth` steps."""
    frames = [pd.DataFrame(dict(optimizer=r.optimizer, seed=r.seed, step=np.arange(1, len(r.losses) + 1),
                                loss=pd.Series(r.losses).rolling(smooth, min_periods=1).mean()))
              for r in runs.itertuples()]
    return pd.concat(frames, ignore_index=True)


def epoch_preds(runs: pd.DataFrame, epoch: int) -> dict:
    """{optimizer: (S, N) validation predictions after `epoch` (1-based) of each seed's run}, for paired
    comparisons early in training."""
    return {o: np.stack([p[epoch - 1] for p in g["epoch_preds"]]) for o, g in runs.groupby("optimizer", sort=False)}


def sensitivity_gap(sweep: pd.DataFrame, robust: str, sensitive: str, metric: str = "balanced_accuracy",
                    within: float = BEST_WITHIN, n: int = 2000, seed: int = 0):
    """`lr_sensitivity`'s `good_share`, `robust` minus `sensitive`, with a 95 % CI from resampling the test cells
    (every run of the sweep resampled together); diverged runs are never in the band, as in `lr_sensitivity`."""
    from ..core.measure import bootstrap
    runs = sweep[sweep["optimizer"].isin([robust, sensitive])]
    preds = {(o, lr): p for o, lr, p in zip(runs["optimizer"], runs["lr"], runs["y_pred"])}
    finite = {(o, lr): bool(f) for o, lr, f in zip(runs["optimizer"], runs["lr"], runs["finite"])}
    lrs = {o: [lr for (oo, lr) in preds if oo == o] for o in (robust, sensitive)}

    def share(m, o):
        vals = np.stack([m[(o, lr)] for lr in lrs[o]])          # (n_lrs, ...)
        return _in_band(vals, np.array([finite[(o, lr)] for lr in lrs[o]]), within).mean(0)

    return bootstrap(runs["y_true"].iloc[0], preds, lambda m: share(m, robust) - share(m, sensitive), metric, n, seed)
