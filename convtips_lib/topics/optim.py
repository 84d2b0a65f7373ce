"""Which optimizer (lesson 05): torch's SGD with momentum, Adam, AdamW, RMSprop and Adadelta through fastai's
OptimWrapper, learning-rate grids, schedules for SGD, and a Callback that switches from Adam to SGD during training.
The lesson's sweeps are in `studies.lesson05`."""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.callback.schedule import LRFinder, ParamScheduler, SchedCos, SchedNo, combine_scheds, combined_cos
from fastai.optimizer import Lookahead, OptimWrapper, Optimizer
from fastai.vision.all import Callback

from ..core.train import fit, history

__all__ = ["OPTIMIZERS", "ADAPTIVE", "DEFAULT_LRS", "lr_grid", "opt_func", "SCHEDULES", "fit_schedule",
           "SwitchOptimizer", "sgd_lr_from_adam"]


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


def _fastai_adam(opt) -> bool:
    """Whether `opt` is fastai's own Adam (`fastai.optimizer.Adam`: dampened averages, step count, `adam_step`)."""
    steps = {getattr(cb, "func", cb).__name__ for cb in getattr(opt, "cbs", ())}
    return isinstance(opt, Optimizer) and not isinstance(opt, Lookahead) and {
        "average_grad", "average_sqr_grad", "step_stat", "adam_step"} <= steps


def _torch_adam(opt) -> bool:
    """Whether `opt` is torch's Adam or AdamW, bare or in fastai's OptimWrapper (`opt_func('adam')`)."""
    return isinstance(getattr(opt, "opt", opt), (torch.optim.Adam, torch.optim.AdamW))


def _adam_moments(opt):
    """(lr, debiased second moment v_hat, eps) of every parameter Adam has stepped: torch's Adam (state exp_avg_sq,
    step; betas, eps) or fastai's (state sqr_avg, step; hypers sqr_mom, eps), debiased alike by 1 - beta2^step."""
    if _fastai_adam(opt):
        for _, _, st, hyper in opt.all_params():
            if st.get("step"):
                yield hyper["lr"], st["sqr_avg"] / (1 - hyper["sqr_mom"] ** st["step"]), hyper["eps"]
        return
    inner = getattr(opt, "opt", opt)
    for group in inner.param_groups:
        beta2, eps = group.get("betas", (0.9, 0.999))[1], group.get("eps", 1e-8)
        for p in group["params"]:
            st = inner.state.get(p, {})
            if "exp_avg_sq" in st:
                yield group["lr"], st["exp_avg_sq"] / (1 - beta2 ** float(st["step"])), eps


def sgd_lr_from_adam(opt, momentum: float = 0.9) -> float:
    """An SGD learning rate that takes about Adam's present steps: the median over parameters of
    lr / (sqrt(v_hat) + eps), times (1 - momentum) as momentum multiplies SGD's steps by 1 / (1 - momentum).
    `opt`: torch's Adam or AdamW (bare or in fastai's OptimWrapper) or fastai's own Adam."""
    scales = [float((lr / (v_hat.sqrt() + eps)).median()) for lr, v_hat, eps in _adam_moments(opt)]
    if not scales:
        raise ValueError("the optimizer has no Adam state yet (exp_avg_sq or sqr_avg): switch after at least one step")
    return float(np.median(scales)) * (1 - momentum)


def _optimizer_name(opt) -> str:
    """'torch's RMSprop', or 'fastai's Optimizer with radam_step' (its last step function)."""
    if isinstance(opt, OptimWrapper):
        return f"torch's {type(opt.opt).__name__}"
    if isinstance(opt, Optimizer) and len(opt.cbs):
        return f"fastai's {type(opt).__name__} with {getattr(opt.cbs[-1], 'func', opt.cbs[-1]).__name__}"
    return type(opt).__name__


class SwitchOptimizer(Callback):
    """Start with the Learner's Adam, then from epoch `at_epoch` (0-based) train with SGD + `momentum` (Keskar &
    Socher, 2017, 'Improving generalization performance by switching from Adam to SGD'). The SGD learning rate
    follows the same schedule, scaled by `lr_scale` (default: `sgd_lr_from_adam` / Adam's learning rate at the
    switch, so SGD's first steps are about as large as Adam's last). Adam: fastai's own (`Learner`'s default
    `opt_func=Adam`) or torch's (`opt_func('adam')`, 'adamw'); any other optimizer only with `lr_scale`. Parameter
    groups and the schedule are kept; `switched_at`, `lr_scale` record what happened."""
    order = ParamScheduler.order + 1   # after the scheduler has set this batch's learning rate

    def __init__(self, at_epoch: int, momentum: float = 0.9, lr_scale: float | None = None):
        if at_epoch < 1:
            raise ValueError(f"at_epoch must be >= 1 (train with Adam first), got {at_epoch}")
        self.at_epoch, self.momentum, self.fixed_scale = at_epoch, momentum, lr_scale
        self.switched_at, self.lr_scale, self.adam_func, self.fitting = None, lr_scale, None, False

    def before_train(self):
        # the first training phase of a fit: get_preds and validate run before_fit and before_epoch but never train;
        # lr_find trains, but restores Adam's state afterwards, so it must keep Adam
        if self.train_iter == 0 and not any(isinstance(cb, LRFinder) for cb in self.learn.cbs):
            self.switched_at, self.lr_scale, self.adam_func, self.fitting = None, self.fixed_scale, None, True
            if self.lr_scale is None:
                self._check_adam()

    def before_epoch(self):
        if self.fitting and self.epoch == self.at_epoch and self.switched_at is None:
            self._switch()

    def _check_adam(self) -> None:
        """Refuse, before the first step, an optimizer whose state `sgd_lr_from_adam` cannot read."""
        if not (_fastai_adam(self.opt) or _torch_adam(self.opt)):
            raise ValueError(f"SwitchOptimizer reads Adam's state to carry its step size over to SGD, and the Learner "
                             f"trains with {_optimizer_name(self.opt)}: use Adam (fastai's opt_func=Adam, the "
                             "default, or ctl.opt_func('adam') / 'adamw'; after an earlier switch, fit with "
                             "reset_opt=True), or pass lr_scale=, SGD's learning rate as a multiple of the scheduled one")

    def _switch(self) -> None:
        """From now on SGD + momentum over the same parameter groups, at `lr_scale` x the scheduled rate."""
        if self.lr_scale is None:
            self.lr_scale = sgd_lr_from_adam(self.opt, self.momentum) / self.opt.hypers[-1]["lr"]
        self.adam_func, self.learn.opt_func = self.learn.opt_func, opt_func("sgd", momentum=self.momentum)
        self.learn.create_opt()   # the same splitter: the same parameter groups, frozen ones stay frozen
        self.switched_at = self.epoch

    def after_fit(self):
        if self.adam_func is not None:   # the Learner keeps its own opt_func; its optimizer stays SGD until reset
            self.learn.opt_func, self.adam_func = self.adam_func, None
        self.fitting = False

    def before_batch(self):
        if self.switched_at is not None and self.training:
            self.opt.set_hyper("lr", [h["lr"] * self.lr_scale for h in self.opt.hypers])


