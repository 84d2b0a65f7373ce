"""Lesson 06's studies: members trained per seed and along one cyclic schedule, the ensemble's gain over its
members with intervals, and the cost of a prediction."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds

from ..core.data import elpv_dls
from ..core.measure import bootstrap, classification_metrics, timed_in_turns
from ..core.train import Run, best_on_tune, fit, history, make_learner
from ..topics.augment import policy_tfms
from ..topics.ensemble import average_probs

__all__ = ["best_member", "ensemble_curve", "ensemble_gain", "predict_seconds", "train_member", "snapshot_members"]


def best_member(members, metric: str = "balanced_accuracy") -> int:
    """The position (0-based) of the member chosen on the tune cells: `best_on_tune` over the members' rows
    (`members`: their `Run`s, or a table of `Run.row()`s in member order), ties to the first. Never reads the test
    cells, so the ensemble-vs-best-member comparison on them is not flattered by the choice."""
    rows = members if isinstance(members, pd.DataFrame) else pd.DataFrame([m.row() for m in members])
    rows = rows.reset_index(drop=True)                                   # the index is the member's position
    return int(best_on_tune(rows, metric=metric).index[0])


def ensemble_curve(y_true, member_probs, members=None, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """For N = 1..M (the first N members): the averaged ensemble, the mean member and, given the `members`' Runs
    (or rows, in the order of `member_probs`), the best of the first N chosen on the tune cells (`best_member`), each
    with a 95 % CI (bootstrap over the test cells, all resampled together). The chosen member is fixed before the
    bootstrap: it is not re-picked on each resample of the test cells."""
    member_probs = np.asarray(member_probs)
    if members is not None and len(members) != len(member_probs):
        raise ValueError(f"{len(members)} members for {len(member_probs)} members' probabilities")
    preds = {("member", i): p.argmax(-1) for i, p in enumerate(member_probs)}
    rows = []
    for m in range(1, len(member_probs) + 1):
        preds[("ensemble", m)] = average_probs(member_probs[:m]).argmax(-1)
        firsts = [("member", i) for i in range(m)]
        stats = {"ensemble": lambda v, m=m: v[("ensemble", m)],
                 "mean member": lambda v, ms=firsts: np.mean([v[k] for k in ms], 0)}
        if members is not None:
            chosen = best_member(members.iloc[:m] if isinstance(members, pd.DataFrame) else members[:m], metric)
            stats["best member on tune"] = lambda v, k=("member", chosen): v[k]
        for what, stat in stats.items():
            est = bootstrap(y_true, preds, stat, metric, n, seed)
            rows.append(dict(members=m, what=what, value=est.effect, low=est.low, high=est.high))
    return pd.DataFrame(rows)


def ensemble_gain(y_true, member_probs, against="mean", metric: str = "balanced_accuracy", n: int = 2000,
                  seed: int = 0):
    """The averaged ensemble of all members minus its mean member (`against='mean'`) or minus one fixed member
    (`against`: its index, the member chosen on the tune cells by `best_member`), with a 95 % CI (bootstrap over
    the test cells, every model resampled together)."""
    member_probs = np.asarray(member_probs)
    if isinstance(against, str) and against == "best":
        raise ValueError("against='best' would pick the best member on the test cells that judge the claim: choose "
                         "it on the tune cells, against=best_member(member_runs)")
    fixed = isinstance(against, (int, np.integer)) and not isinstance(against, bool)
    if not (fixed or against == "mean"):
        raise ValueError(f"against must be 'mean' or a member's index (best_member(member_runs)), got {against!r}")
    if fixed and not 0 <= against < len(member_probs):
        raise ValueError(f"member {against} of {len(member_probs)}")
    preds = {i: p.argmax(-1) for i, p in enumerate(member_probs)}
    preds["ensemble"] = average_probs(member_probs).argmax(-1)
    if fixed:
        return bootstrap(y_true, preds, lambda v: v["ensemble"] - v[int(against)], metric, n, seed)
    return bootstrap(y_true, preds, lambda v: v["ensemble"] - np.mean([v[i] for i in range(len(member_probs))], 0),
                     metric, n, seed)


def predict_seconds(fn, reps: int = 3) -> float:
    """Median seconds of `fn()` over `reps` calls, after one warm-up call."""
    return float(np.median(timed_in_turns({"fn": fn}, reps, warmup=1)["fn"])) / 1000


def _member(learn, epoch: int, arch: str, seed: int, kind: str, t: float) -> Run:
    """The `Run` of one member: `learn`'s test-cell probabilities after `epoch` (a snapshot, or the last), and its
    record up to that epoch (history, every epoch's probabilities, the tune cells' ones that a choice reads)."""
    hist = learn.history
    upto = slice(None) if epoch in (-1, len(hist.probs) - 1) else slice(epoch + 1)
    y_true, probs = np.asarray(hist.y_true), hist.probs[epoch]
    return Run(dict(arch=arch, seed=seed, kind=kind), history(learn).iloc[upto], y_true, probs.argmax(-1), probs,
               classification_metrics(y_true, probs.argmax(-1)), time.perf_counter() - t, learn,
               list(hist.probs)[upto], tune_y=hist.tune_y, tune_epoch_probs=list(hist.tune_probs)[upto])


def train_member(cfg, seed: int, arch: str | None = None, policy: str = "flips",
                 epochs: int | None = None, tune: bool = True) -> Run:
    """One ensemble member: the whole pretrained `arch` fine-tuned with its own `seed` (initial head, batch order,
    augmentation draws) and lesson 03's augmentation `policy`, one-cycle at cfg.lr: its `Run` (settings arch, seed,
    kind). `tune`: train on the train cells only and predict the tune cells after every epoch, the cells the best
    member is chosen on (`best_member`); the test cells only judge."""
    arch = arch or cfg.arch
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size), tune=tune)   # the same images for all
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed)
    fit(learn, epochs or cfg.epochs, cfg.lr)
    return _member(learn, -1, arch, seed, "independent", t)


def snapshot_members(cfg, seed: int, n_cycles: int, cycle_len: int = 1, arch: str | None = None,
                     policy: str = "flips", tune: bool = True) -> list:
    """Snapshot ensemble (Huang et al., ICLR 2017): one run of `n_cycles` equal cosine cycles with warm restarts
    (`cycle_len` epochs each), a member taken at the end of each cycle — members for the cost of one training run.
    `tune` as in `train_member`: each snapshot carries the tune cells' probabilities up to its cycle."""
    arch = arch or cfg.arch
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size), tune=tune)
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed)
    # fastai's fit_sgdr needs cycle_mult > 1; equal cycles are n cosine pieces of fastai's own schedule
    cycles = combine_scheds([1 / n_cycles] * n_cycles, [SchedCos(cfg.lr, cfg.lr / 100)] * n_cycles)
    learn.fit(n_cycles * cycle_len, cfg.lr, cbs=[ParamScheduler({"lr": cycles})])
    return [_member(learn, (k + 1) * cycle_len - 1, arch, seed, f"snapshot {k + 1}", t)
            for k in range(n_cycles)]
