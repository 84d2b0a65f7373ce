"""Lesson 05's studies: a small ConvNet from scratch trained with each optimizer, cross-validated over every ELPV
cell (`core.data.elpv_folds`, images preloaded small), learning-rate sweeps whose rate is chosen per fold on that
fold's tune cells, the width of each optimizer's good learning rates, steps to a training-loss target, the weight
scale at initialisation, and loss curves."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.env import seed_everything
from ..core.models import small_net
from ..core.measure import bootstrap, classification_metrics, median_ratio
from ..core.train import Run, best_on_tune, learner, pool_folds, valid_preds
from ..topics.optim import SwitchOptimizer, fit_schedule, opt_func

__all__ = ["scale_init", "train_optimizer", "cv_train", "cv_sweep", "at_chosen", "lrs_per_fold", "lr_sensitivity",
           "lr_width_gap", "steps_to_target", "steps_ratio", "init_drop", "init_drop_gap", "loss_curves",
           "OPT_WITHIN"]


OPT_WITHIN = 0.02   # "within two points of its best": the band whose width (in decades of lr) measures sensitivity


def scale_init(net: nn.Module, scale: float) -> nn.Module:
    """`net` with every conv and linear weight multiplied by `scale` (in place): the same directions, another
    size. Behind BatchNorm the forward pass is unchanged, but every gradient shrinks by 1/scale, so SGD's relative
    step shrinks by 1/scale^2 while Adam's (about lr per weight) shrinks by 1/scale only."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(scale)
    return net


def train_optimizer(dls, optimizer: str, lr: float, epochs: int, seed: int = 0, schedule: str = "one-cycle",
                    switch_at: int | None = None, net=small_net, opt_kw: dict | None = None,
                    init_scale: float = 1.0) -> Run:
    """Train `net(dls.c)` from a random init (weights x `init_scale`) with `optimizer` at peak `lr`: its `Run`
    (settings optimizer, lr, schedule, seed, init_scale; extra losses (fastai's smoothed loss per training step),
    final_train_loss, finite, switch_scale; the tune cells' predictions when `dls.tune` exists). `switch_at`:
    switch to SGD at that epoch (`SwitchOptimizer`); `opt_kw` overrides the optimizer's settings (e.g. momentum)."""
    t = time.perf_counter()
    seed_everything(seed)
    cbs = [SwitchOptimizer(switch_at)] if switch_at else []
    learn = learner(dls, scale_init(net(dls.c), init_scale), opt_func=opt_func(optimizer, **(opt_kw or {})), cbs=cbs, seed=seed)
    hist = fit_schedule(learn, epochs, lr, schedule)
    losses = [float(x) for x in learn.recorder.losses]
    y_true, y_pred = valid_preds(learn)
    finite = bool(np.isfinite(losses).all()) and bool(np.isfinite(hist["valid_loss"]).all())
    name = f"{optimizer} -> sgd at epoch {switch_at + 1}" if switch_at else optimizer
    return Run.of(learn, dict(optimizer=name, lr=lr, schedule=schedule, seed=seed, init_scale=init_scale),
                  time.perf_counter() - t, classification_metrics(y_true, y_pred), losses=losses,
                  final_train_loss=float(np.mean(losses[-len(dls.train):])), finite=finite,
                  switch_scale=cbs[0].lr_scale if cbs else None)


def _per_fold(lrs, n_folds: int) -> list:
    """One learning rate per fold: `lrs` as given (a list of n_folds) or one rate for every fold."""
    lrs = [float(lrs)] * n_folds if np.ndim(lrs) == 0 else [float(lr) for lr in lrs]
    if len(lrs) != n_folds:
        raise ValueError(f"{len(lrs)} learning rates for {n_folds} folds: give one rate, or one per fold")
    return lrs


def _pooled(runs: list, lrs: list) -> Run:
    """The fold `Run`s of one optimizer (one per fold, at `lrs`) as one pooled `Run` with `cv_train`'s extras."""
    pooled = pool_folds(runs, {**runs[0].settings, "lr": lrs[0] if len(set(lrs)) == 1 else "per fold"})
    pooled.extra.update(fold_lrs=lrs, fold_tune=[r.tune_metrics()["balanced_accuracy"] if r.has_tune else np.nan
                                                 for r in runs],
                        fold_finite=[r.extra["finite"] for r in runs], fold_losses=[r.extra["losses"] for r in runs],
                        losses=runs[0].extra["losses"], finite=all(r.extra["finite"] for r in runs),
                        final_train_loss=float(np.mean([r.extra["final_train_loss"] for r in runs])),
                        switch_scale=runs[0].extra["switch_scale"],
                        fold_runs=[replace(r, learn=None) for r in runs])
    return pooled


def cv_train(fold_dls: list, optimizer: str, lrs, epochs: int, seed: int = 0, **kw) -> Run:
    """`train_optimizer` on every fold's DataLoaders (`fold_dls`, one per role table of `elpv_folds`) at that
    fold's rate (`lrs`: one, or one per fold), pooled by `pool_folds`: every cell predicted once by a network that
    never saw it. Extra: `fold_lrs`, `fold_tune` (each fold's tune balanced accuracy: what a choice reads),
    `fold_finite`, `fold_losses` (each fold's loss per step), `losses` (the first fold's), `finite` (all folds),
    `final_train_loss` (mean over folds), `switch_scale` (the first fold's), `fold_runs` (each fold's `Run`)."""
    lrs = _per_fold(lrs, len(fold_dls))
    return _pooled([train_optimizer(d, optimizer, lr, epochs, seed, **kw) for d, lr in zip(fold_dls, lrs)], lrs)


def at_chosen(sweep: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """The sweep's runs at each fold's chosen rate (`lrs_per_fold`), pooled over the folds: one row per optimizer,
    the same run `cv_train(fold_dls, optimizer, chosen[optimizer], epochs, seed)` would train again."""
    rows = []
    for o, lrs in chosen.items():
        g = sweep[sweep["optimizer"] == o]
        runs = [g[g["lr"] == lr]["fold_runs"].iloc[0][i] for i, lr in enumerate(lrs)]
        rows.append(_pooled(runs, lrs).row(history=True))
    return pd.DataFrame(rows)


def cv_sweep(fold_dls: list, optimizers, lrs: dict, epochs: int, seed: int = 0) -> pd.DataFrame:
    """`cv_train` for every optimizer at each of its learning rates `lrs[optimizer]` (one seed, one-cycle): a row
    per (optimizer, lr) with the pooled test cells' metrics and predictions and each fold's tune score."""
    return pd.DataFrame([cv_train(fold_dls, o, lr, epochs, seed).row(history=True) for o in optimizers
                         for lr in lrs[o]])


def _fold_rows(sweep: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (optimizer, lr, fold) of a `cv_sweep`: that fold's tune score and whether it stayed finite."""
    return pd.DataFrame([dict(optimizer=r.optimizer, lr=r.lr, fold=i, finite=bool(f), **{f"tune_{metric}": t})
                         for r in sweep.itertuples() for i, (t, f) in enumerate(zip(r.fold_tune, r.fold_finite))])


def lrs_per_fold(sweep: pd.DataFrame, metric: str = "balanced_accuracy") -> dict:
    """{optimizer: [the rate chosen for each fold]}: per fold the swept rate with the best tune score on that
    fold's own tune cells (`best_on_tune`), never the test cells, never a run that diverged there."""
    if "fold_tune" not in sweep:
        raise ValueError("the sweep has no fold_tune column: build it with cv_sweep over fold DataLoaders that have "
                         "tune cells (fold_tensor_dls)")
    rows = _fold_rows(sweep, metric)
    if rows[f"tune_{metric}"].isna().all():
        best_on_tune(rows.drop(columns=f"tune_{metric}"))   # raises NoTuneCells with the fix
    best = best_on_tune(rows, by=["optimizer", "fold"], metric=metric).sort_values("fold")
    return {o: [float(lr) for lr in g["lr"]] for o, g in best.groupby("optimizer", sort=False)}


def _band(vals: np.ndarray, finite: np.ndarray, within: float) -> np.ndarray:
    """Which runs (axis 0 of `vals`, one per swept rate) score within `within` of the best finite run; a diverged
    run is never in the band but still counts among the swept rates."""
    vals = np.where(np.reshape(finite, (-1,) + (1,) * (np.ndim(vals) - 1)), vals, -np.inf)
    return np.isfinite(vals) & (vals >= vals.max(0) - within)


def _width(lrs: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Decades (log10) between the smallest and the largest rate of `lrs` (n_lrs,) marked `good` (n_lrs, ...)."""
    logs = np.reshape(np.log10(lrs), (-1,) + (1,) * (good.ndim - 1))
    return np.where(good, logs, -np.inf).max(0) - np.where(good, logs, np.inf).min(0)


def lr_sensitivity(sweep: pd.DataFrame, metric: str = "balanced_accuracy", within: float = OPT_WITHIN) -> pd.DataFrame:
    """Per optimizer, measured on the pooled test cells (a measurement, not a choice): `test_best`, its best finite
    `metric` over the swept rates, the rates within `within` of it (`n_good` of `n_lrs`) and their `decades`,
    the span between the smallest and the largest of them (log10): the wider, the less the rate matters. The
    same band `lr_width_gap` resamples."""
    rows = []
    for o, g in sweep.groupby("optimizer", sort=False):
        good = _band(g[metric].to_numpy(float), g["finite"].to_numpy(bool), within)
        rows.append(dict(optimizer=o, test_best=float(g[metric][g["finite"]].max()), n_lrs=len(g),
                         n_good=int(good.sum()), decades=float(_width(g["lr"].to_numpy(float), good))))
    return pd.DataFrame(rows)


def lr_width_gap(sweep: pd.DataFrame, robust: str, sensitive: str, metric: str = "balanced_accuracy",
                 within: float = OPT_WITHIN, n: int = 2000, seed: int = 0):
    """`lr_sensitivity`'s `decades`, `robust` minus `sensitive`, with a 95 % CI from resampling the test cells
    (every run of the sweep resampled together); diverged runs are never in the band."""
    runs = sweep[sweep["optimizer"].isin([robust, sensitive])]
    preds = {(o, lr): p for o, lr, p in zip(runs["optimizer"], runs["lr"], runs["y_pred"])}
    finite = {(o, lr): bool(f) for o, lr, f in zip(runs["optimizer"], runs["lr"], runs["finite"])}
    lrs = {o: [lr for (oo, lr) in preds if oo == o] for o in (robust, sensitive)}

    def width(m, o):
        vals = np.stack([m[(o, lr)] for lr in lrs[o]])          # (n_lrs, ...)
        return _width(np.array(lrs[o]), _band(vals, np.array([finite[(o, lr)] for lr in lrs[o]]), within))

    return bootstrap(runs["y_true"].iloc[0], preds, lambda m: width(m, robust) - width(m, sensitive), metric, n, seed)


def steps_to_target(losses, target: float) -> int:
    """The first optimizer step (1-based) whose training loss (fastai's smoothed loss) is at most `target`;
    len(losses) + 1 when the run never got there (a censored count: it needed more steps than it had)."""
    hit = np.flatnonzero(np.asarray(losses, dtype=float) <= target)
    return int(hit[0]) + 1 if len(hit) else len(losses) + 1


def steps_ratio(runs: pd.DataFrame, slow: str, fast: str, target: float, n: int = 2000, seed: int = 0):
    """How many times fewer steps `fast` needs than `slow` to reach the training loss `target`: the ratio of the
    medians over every (fold, seed) run of each optimizer (`runs`: `cv_train` rows), with a bootstrap 95 % CI."""
    steps = {o: [steps_to_target(ls, target) for fl in g["fold_losses"] for ls in fl]
             for o, g in runs.groupby("optimizer", sort=False)}
    return median_ratio(steps[slow], steps[fast], n, seed, metric="x fewer steps", of="runs' steps")


def init_drop(y_true, preds: dict, scales, metric: str = "balanced_accuracy"):
    """{optimizer: mean over `scales` of (metric at init scale 1 - metric at that scale)} from `preds`
    {(optimizer, scale): (N,) or (S, N) pooled predictions}: how much a badly scaled start costs."""
    from ..core.measure import metric_value
    opts = dict.fromkeys(o for o, _ in preds)
    score = lambda p: np.mean([metric_value(y_true, row, metric) for row in np.atleast_2d(p)])  # noqa: E731
    return {o: float(np.mean([score(preds[(o, 1.0)]) - score(preds[(o, s)]) for s in scales])) for o in opts}


def init_drop_gap(y_true, preds: dict, scales, sensitive: str = "sgd", robust: str = "adam",
                  metric: str = "balanced_accuracy", n: int = 2000, seed: int = 0):
    """`init_drop` of `sensitive` minus that of `robust`, with a 95 % CI from resampling the test cells (every
    run resampled together): > 0 when a badly scaled initialisation hurts `sensitive` more."""
    def drop(m, o):
        return np.mean([m[(o, 1.0)] - m[(o, s)] for s in scales], axis=0)
    keep = {k: v for k, v in preds.items() if k[0] in (sensitive, robust)}
    return bootstrap(y_true, keep, lambda m: drop(m, sensitive) - drop(m, robust), metric, n, seed)


def loss_curves(runs: pd.DataFrame, smooth: int = 10) -> pd.DataFrame:
    """Training loss per step of each run (optimizer, seed, step, loss), a running mean over `smooth` steps."""
    frames = [pd.DataFrame(dict(optimizer=r.optimizer, seed=r.seed, step=np.arange(1, len(r.losses) + 1),
                                loss=pd.Series(r.losses).rolling(smooth, min_periods=1).mean()))
              for r in runs.itertuples()]
    return pd.concat(frames, ignore_index=True)
