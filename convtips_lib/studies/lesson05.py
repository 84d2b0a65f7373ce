"""Lesson 05's studies: a small network from scratch trained with each optimizer, learning-rate sweeps, each
optimizer's sensitivity to its rate, and loss curves."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import ResBlock, XResNet

from ..core.env import seed_everything
from ..core.measure import classification_metrics
from ..core.train import Run, learner, valid_preds
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
    final_train_loss, finite, switch_scale). `switch_at`: switch to SGD at that epoch (`SwitchOptimizer`);
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
    """{optimizer: the learning rate of its best run in `sweep`}; a diverged run (not finite) never wins."""
    ok = sweep[sweep["finite"]]
    return {o: float(g.loc[g[metric].idxmax(), "lr"]) for o, g in ok.groupby("optimizer", sort=False)}


def lr_sensitivity(sweep: pd.DataFrame, metric: str = "balanced_accuracy", within: float = BEST_WITHIN) -> pd.DataFrame:
    """Per optimizer: its best metric and the learning rates whose metric lies within `within` of it — how many
    of the swept rates, and the span between the smallest and largest of them in decades (log10)."""
    rows = []
    for o, g in sweep.groupby("optimizer", sort=False):
        vals = g[metric].where(g["finite"], -np.inf)
        good = g[vals >= vals.max() - within]["lr"]
        rows.append(dict(optimizer=o, best=float(vals.max()), n_lrs=len(g), n_good=len(good),
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
    """Share of swept learning rates within `within` of the best, `robust` minus `sensitive`, with a 95 % CI from
    resampling the validation images (every run of the sweep resampled together)."""
    from ..core.measure import bootstrap
    runs = sweep[sweep["optimizer"].isin([robust, sensitive])]
    preds = {(o, lr): p for o, lr, p in zip(runs["optimizer"], runs["lr"], runs["y_pred"])}
    lrs = {o: [lr for (oo, lr) in preds if oo == o] for o in (robust, sensitive)}

    def share(m, o):
        vals = np.stack([m[(o, lr)] for lr in lrs[o]])          # (n_lrs, ...)
        return (vals >= vals.max(0) - within).mean(0)

    return bootstrap(runs["y_true"].iloc[0], preds, lambda m: share(m, robust) - share(m, sensitive), metric, n, seed)
