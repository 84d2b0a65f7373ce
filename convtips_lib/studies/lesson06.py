"""Lesson 06's studies: members trained per seed and along one cyclic schedule, the ensemble's gain over its
members with intervals, and the cost of a prediction."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds

from ..core.data import elpv_dls
from ..core.measure import bootstrap, classification_metrics, timed_in_turns
from ..core.train import Run, fit, history, make_learner
from ..topics.augment import policy_tfms
from ..topics.ensemble import average_probs

__all__ = ["ensemble_curve", "ensemble_gain", "predict_seconds", "train_member", "snapshot_members"]


def ensemble_curve(y_true, member_probs, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """For N = 1..M (the first N members): the averaged ensemble, its best member and the mean member, each with a
    95 % CI (bootstrap over the validation images, all resampled together)."""
    member_probs = np.asarray(member_probs)
    preds = {("member", i): p.argmax(-1) for i, p in enumerate(member_probs)}
    rows = []
    for m in range(1, len(member_probs) + 1):
        preds[("ensemble", m)] = average_probs(member_probs[:m]).argmax(-1)
        members = [("member", i) for i in range(m)]
        stats = {"ensemble": lambda v, m=m: v[("ensemble", m)],
                 "best member": lambda v, ms=members: np.max([v[k] for k in ms], 0),
                 "mean member": lambda v, ms=members: np.mean([v[k] for k in ms], 0)}
        for what, stat in stats.items():
            est = bootstrap(y_true, preds, stat, metric, n, seed)
            rows.append(dict(members=m, what=what, value=est.effect, low=est.low, high=est.high))
    return pd.DataFrame(rows)


def ensemble_gain(y_true, member_probs, against: str = "mean", metric: str = "balanced_accuracy", n: int = 2000,
                  seed: int = 0):
    """The averaged ensemble of all members minus its `against` ('mean' or 'best') member, with a 95 % CI
    (bootstrap over the validation images, every model resampled together)."""
    if against not in ("mean", "best"):
        raise ValueError(f"against must be 'mean' or 'best', got {against!r}")
    member_probs = np.asarray(member_probs)
    preds = {i: p.argmax(-1) for i, p in enumerate(member_probs)}
    preds["ensemble"] = average_probs(member_probs).argmax(-1)
    pick = np.mean if against == "mean" else np.max
    return bootstrap(y_true, preds, lambda v: v["ensemble"] - pick([v[i] for i in range(len(member_probs))], 0),
                     metric, n, seed)


def predict_seconds(fn, reps: int = 3) -> float:
    """Median seconds of `fn()` over `reps` calls, after one warm-up call."""
    return float(np.median(timed_in_turns({"fn": fn}, reps, warmup=1)["fn"])) / 1000


def _member(learn, epoch: int, arch: str, seed: int, kind: str, t: float) -> Run:
    """The `Run` of one member: `learn`'s validation probabilities after `epoch` (a snapshot, or the last)."""
    y_true, probs = np.asarray(learn.history.y_true), learn.history.probs[epoch]
    return Run(dict(arch=arch, seed=seed, kind=kind), history(learn), y_true, probs.argmax(-1), probs,
               classification_metrics(y_true, probs.argmax(-1)), time.perf_counter() - t, learn, list(learn.history.probs))


def train_member(cfg, seed: int, arch: str | None = None, policy: str = "flips",
                 epochs: int | None = None) -> dict:
    """One ensemble member: the whole pretrained `arch` fine-tuned with its own `seed` (initial head, batch order,
    augmentation draws) and lesson 03's augmentation `policy`, one-cycle at cfg.lr: its `Run` (settings arch, seed,
    kind)."""
    arch = arch or cfg.arch
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size))   # the same images for every member
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed)
    fit(learn, epochs or cfg.epochs, cfg.lr)
    return _member(learn, -1, arch, seed, "independent", t)


def snapshot_members(cfg, seed: int, n_cycles: int, cycle_len: int = 1, arch: str | None = None,
                     policy: str = "flips") -> list:
    """Snapshot ensemble (Huang et al., ICLR 2017): one run of `n_cycles` equal cosine cycles with warm restarts
    (`cycle_len` epochs each), a member taken at the end of each cycle — members for the cost of one training run."""
    arch = arch or cfg.arch
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size))
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed)
    # fastai's fit_sgdr needs cycle_mult > 1; equal cycles are n cosine pieces of fastai's own schedule
    cycles = combine_scheds([1 / n_cycles] * n_cycles, [SchedCos(cfg.lr, cfg.lr / 100)] * n_cycles)
    learn.fit(n_cycles * cycle_len, cfg.lr, cbs=[ParamScheduler({"lr": cycles})])
    return [_member(learn, (k + 1) * cycle_len - 1, arch, seed, f"snapshot {k + 1}", t)
            for k in range(n_cycles)]
