"""Which optimizer (lesson 05): torch's SGD with momentum, Adam, AdamW, RMSprop and Adadelta through fastai's
OptimWrapper, a learning-rate sweep per optimizer, schedules for SGD, and a Callback that switches from Adam to SGD
during training."""
from __future__ import annotations

import time
from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.callback.schedule import ParamScheduler, SchedCos, SchedNo, combine_scheds, combined_cos
from fastai.optimizer import OptimWrapper
from fastai.vision.all import Callback, ResBlock, XResNet

from ..core.env import seed_everything
from ..core.measure import classification_metrics
from ..core.train import fit, history, learner, valid_preds

__all__ = ["OPTIMIZERS", "ADAPTIVE", "DEFAULT_LRS", "lr_grid", "opt_func", "small_net", "SCHEDULES", "fit_schedule",
           "SwitchOptimizer", "sgd_lr_from_adam", "train_optimizer", "lr_sweep", "best_lrs", "lr_sensitivity",
           "sensitivity_gap", "loss_curves", "epoch_preds", "BEST_WITHIN"]

BEST_WITHIN = 0.01   # "within one point of its best": the band that measures an optimizer's sensitivity to lr

OPTIMIZERS = {   # name -> (torch optimizer, its settings); momentum 0.9 for SGD as in most published recipes
    "sgd": (torch.optim.SGD, dict(momentum=0.9)),
    "adam": (torch.optim.Adam, dict()),
    "adamw": (torch.optim.AdamW, dict(weight_decay=1e-2)),
    "rmsprop": (torch.optim.RMSprop, dict(alpha=0.99)),
    "adadelta": (torch.optim.Adadelta, dict(rho=0.9)),
}
ADAPTIVE = ("adam", "adamw", "rmsprop", "adadelta")   # each parameter gets its own step size from gradient statistics
DEFAULT_LRS = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adadelta": 1.0}   # the usual defaults


def lr_grid(optimizer: str, decades=(-1, -0.5, 0, 0.5, 1)) -> list:
    """Learning rates `DEFAULT_LRS[optimizer]` x 10^d for each of `decades`: a sweep centred on the usual value."""
    if optimizer not in DEFAULT_LRS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(DEFAULT_LRS)}")
    return [float(f"{DEFAULT_LRS[optimizer] * 10 ** d:.3g}") for d in decades]


def opt_func(name: str, **kw):
    """A fastai `opt_func` for torch optimizer `name` of `OPTIMIZERS` (its settings, overridden by `kw`)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    opt, settings = OPTIMIZERS[name]
    return partial(OptimWrapper, opt=opt, **{**settings, **kw})


def small_net(n_out: int, widen: float = 0.25) -> torch.nn.Module:
    """A small ResNet from a random init (fastai's XResNet: stem 8-16-64, one block per stage, 16-128 channels at
    widen 0.25)."""
    return XResNet(ResBlock, 1, [1, 1, 1, 1], n_out=n_out, widen=widen, stem_szs=(8, 16, 64))


SCHEDULES = ("constant", "step", "cosine", "one-cycle")


def _schedule(name: str, lr: float):
    """fastai schedule functions pct -> lr for `name`; None for one-cycle (fit_one_cycle has its own)."""
    if name == "constant":
        return SchedNo(lr, lr)
    if name == "step":   # lr, then lr/10 after half the run, then lr/100 for the last quarter
        return combine_scheds([0.5, 0.25, 0.25], [SchedNo(lr, lr), SchedNo(lr / 10, lr / 10),
                                                  SchedNo(lr / 100, lr / 100)])
    if name == "cosine":
        return SchedCos(lr, lr / 100)
    raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def fit_schedule(learn, epochs: int, lr: float, schedule: str = "one-cycle") -> pd.DataFrame:
    """Train `epochs` with learning-rate `schedule` (`SCHEDULES`) peaking at `lr`; the history as a DataFrame."""
    if learn.opt is None:
        learn.create_opt()
    if schedule == "one-cycle" and "mom" in learn.opt.hypers[0]:
        return fit(learn, epochs, lr)
    # Adadelta has no momentum for one-cycle to cycle: its learning-rate part alone (fastai's shape and defaults)
    sched = combined_cos(0.25, lr / 25, lr, lr / 25e4) if schedule == "one-cycle" else _schedule(schedule, lr)
    learn.history.phase = schedule
    learn.fit(epochs, lr, cbs=[ParamScheduler({"lr": sched})])
    return history(learn)


def sgd_lr_from_adam(opt, momentum: float = 0.9) -> float:
    """An SGD learning rate that takes about Adam's present steps: the median over parameters of
    lr / (sqrt(v_hat) + eps), times (1 - momentum) as momentum multiplies SGD's steps by 1 / (1 - momentum)."""
    inner = getattr(opt, "opt", opt)
    scales = []
    for group in inner.param_groups:
        beta2, eps = group.get("betas", (0.9, 0.999))[1], group.get("eps", 1e-8)
        for p in group["params"]:
            st = inner.state.get(p, {})
            if "exp_avg_sq" not in st:
                continue
            step = float(st["step"])
            v_hat = st["exp_avg_sq"] / (1 - beta2 ** step)
            scales.append(float((group["lr"] / (v_hat.sqrt() + eps)).median()))
    if not scales:
        raise ValueError("the optimizer has no Adam state yet (exp_avg_sq): switch after at least one step")
    return float(np.median(scales)) * (1 - momentum)


class SwitchOptimizer(Callback):
    """Start with the Learner's (adaptive) optimizer, then from epoch `at_epoch` (0-based) train with SGD +
    `momentum` (Keskar & Socher, 2017, 'Improving generalization performance by switching from Adam to SGD').
    The SGD learning rate follows the same schedule, scaled by `lr_scale` (default: `sgd_lr_from_adam` / Adam's
    learning rate at the switch, so SGD's first steps are about as large as Adam's last). Parameter groups and
    the schedule are kept; `switched_at`, `lr_scale` record what happened."""
    order = ParamScheduler.order + 1   # after the scheduler has set this batch's learning rate

    def __init__(self, at_epoch: int, momentum: float = 0.9, lr_scale: float | None = None):
        if at_epoch < 1:
            raise ValueError(f"at_epoch must be >= 1 (train with Adam first), got {at_epoch}")
        self.at_epoch, self.momentum, self.fixed_scale = at_epoch, momentum, lr_scale

    def before_fit(self):
        self.switched_at, self.lr_scale = None, self.fixed_scale

    def before_epoch(self):
        if self.epoch != self.at_epoch or self.switched_at is not None:
            return
        adam_lr = self.opt.hypers[-1]["lr"]
        if self.lr_scale is None:
            self.lr_scale = sgd_lr_from_adam(self.opt, self.momentum) / adam_lr
        self.learn.opt_func = opt_func("sgd", momentum=self.momentum)
        self.learn.create_opt()   # the same splitter: the same parameter groups, frozen ones stay frozen
        self.switched_at = self.epoch

    def before_batch(self):
        if self.switched_at is not None and self.training:
            self.opt.set_hyper("lr", [h["lr"] * self.lr_scale for h in self.opt.hypers])


def train_optimizer(dls, optimizer: str, lr: float, epochs: int, seed: int = 0, schedule: str = "one-cycle",
                    switch_at: int | None = None, net=small_net, opt_kw: dict | None = None) -> dict:
    """Train `net(dls.c)` from a random init with `optimizer` at peak `lr`: dict(optimizer, lr, schedule, seed,
    history (per epoch), losses (per training batch), epoch_preds, metrics..., y_true, y_pred, seconds, finite). `switch_at`:
    switch to SGD at that epoch (`SwitchOptimizer`); `opt_kw` overrides the optimizer's settings (e.g. momentum)."""
    t = time.perf_counter()
    seed_everything(seed)
    cbs = [SwitchOptimizer(switch_at)] if switch_at else []
    learn = learner(dls, net(dls.c), opt_func=opt_func(optimizer, **(opt_kw or {})), cbs=cbs, seed=seed)
    hist = fit_schedule(learn, epochs, lr, schedule)
    losses = [float(x) for x in learn.recorder.losses]
    y_true, y_pred = valid_preds(learn)
    finite = bool(np.isfinite(losses).all()) and bool(np.isfinite(hist["valid_loss"]).all())
    name = f"{optimizer} -> sgd at epoch {switch_at + 1}" if switch_at else optimizer
    return dict(optimizer=name, lr=lr, schedule=schedule, seed=seed, history=hist, losses=losses,
                epoch_preds=list(learn.history.preds),   # validation predictions after each epoch
                **classification_metrics(y_true, y_pred), final_train_loss=float(np.mean(losses[-len(dls.train):])),
                y_true=y_true, y_pred=y_pred, seconds=time.perf_counter() - t, finite=finite,
                switch_scale=cbs[0].lr_scale if cbs else None)


def lr_sweep(dls, optimizers, lrs: dict, epochs: int, seed: int = 0) -> pd.DataFrame:
    """`train_optimizer` for every optimizer at each of its learning rates `lrs[optimizer]` (one seed)."""
    return pd.DataFrame([train_optimizer(dls, o, lr, epochs, seed) for o in optimizers for lr in lrs[o]])


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
