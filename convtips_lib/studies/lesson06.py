"""Lesson 06's studies: members that differ (heads on the cached features of three pretrained bodies, several seeds),
each cross-validated over every cell; a snapshot ensemble along one cyclic schedule of a whole network; the
ensemble's gain over its members with intervals, and the cost of a prediction."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds

from ..core.data import elpv_dls
from ..core.env import device
from ..core.measure import bootstrap, classification_metrics, timed_in_turns
from ..core.models import pretrained
from ..core.train import Run, best_on_tune, history, make_learner, pool_folds, select_lr
from ..topics.augment import policy_tfms
from ..topics.ensemble import average_probs
from ..topics.features import Features, cell_features, fit_head, fold_features

__all__ = ["member_plan", "body_features", "head_member", "cv_members", "best_member",
           "ensemble_curve", "ensemble_gain", "predict_seconds", "snapshot_members"]

def member_plan(n_members: int, archs, seed: int = 0) -> list:
    """[(arch, seed)] of an ensemble of `n_members`: one member per body of `archs` first (with `seed`: the mixed
    ensemble), then the first body again under the next seeds (with the first member: the same-body ensemble)."""
    if n_members < len(archs):
        raise ValueError(f"{n_members} members cannot cover the {len(archs)} bodies {', '.join(archs)}: use at least "
                         f"{len(archs)} (cfg.ens.n_members)")
    return [(a, seed) for a in archs] + [(archs[0], seed + k) for k in range(1, n_members - len(archs) + 1)]


def body_features(cfg, archs) -> dict:
    """{arch: (x (2624, D), y, paths, vocab)}: `cell_features` of every cell under each pretrained body of `archs`
    (e.g. cfg.ens.archs) at cfg.img_size, cached on disk; the same cells in the same order for every body (a
    session decodes each image once, whatever the number of bodies)."""
    out = {}
    for arch in archs:
        out[arch] = cell_features(pretrained(arch, 2).to(device()), cfg)
    first = next(iter(out.values()))
    if any(v[2] != first[2] for v in out.values()):
        raise RuntimeError("the bodies' features list the cells in different orders")
    return out


def head_member(feats: Features, epochs: int, lrs, seed: int = 0, bs: int = 64) -> Run:
    """One member on one fold: a fresh linear head on cached features, one-cycle, the test and tune cells predicted
    after the last epoch; its learning rate the one of `lrs` whose head scores best on the fold's tune cells
    (`select_lr`; settings lr, seed)."""
    runs = {}

    def train(lr):
        t = time.perf_counter()
        out = fit_head(feats, epochs=epochs, lr=lr, bs=bs, seed=seed, validate="last")
        return Run.of(out["learn"], dict(lr=lr, seed=seed), time.perf_counter() - t)

    def score(lr):
        runs[lr] = train(lr)
        return runs[lr].tune_metrics()["balanced_accuracy"]
    lr, _ = select_lr(score, lrs)
    run = runs.get(lr) or train(lr)
    run.learn = None   # dozens of Learners would stay alive otherwise
    return run


def cv_members(feats_by_arch: dict, plan, folds: list, epochs: int, lrs, bs: int = 64) -> pd.DataFrame:
    """Every member of `plan` [(arch, seed)] cross-validated over `folds` (role tables of `elpv_folds`) on its body's
    features (`body_features`): in each fold a `head_member` trained on the fold's train cells, its rate chosen on
    the fold's tune cells. One row per member (column `member`: its position in `plan`), its predictions and
    probabilities over every fold's test cells in fold order (all cells, each predicted once, by a head that never
    saw it: `pool_folds`; the same order for every member), `tune_<metric>` the folds' mean (what `best_member`
    reads) and `lrs_by_fold`."""
    rows = []
    for i, (arch, seed) in enumerate(plan):
        x, y, paths, vocab = feats_by_arch[arch]
        runs = [head_member(fold_features(x, y, paths, roles, vocab), epochs, lrs, seed, bs) for roles in folds]
        pooled = pool_folds(runs, dict(member=i, arch=arch, seed=seed))
        tune = pd.DataFrame(pooled.extra.pop("folds")).filter(like="tune_").mean().to_dict()
        rows.append(dict(pooled.row(probs=True), **tune, lrs_by_fold=tuple(r.settings["lr"] for r in runs)))
    return pd.DataFrame(rows)


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


def snapshot_members(cfg, seed: int, n_cycles: int, cycle_len: int = 1, arch: str | None = None,
                     policy: str = "flips", tune: bool = True) -> list:
    """Snapshot ensemble (Huang et al., ICLR 2017): one run of `n_cycles` equal cosine cycles with warm restarts
    (`cycle_len` epochs each), a member taken at the end of each cycle — members for the cost of one training run.
    The whole pretrained `arch` fine-tuned on the train cells with lesson 03's augmentation `policy`; `tune`: each
    snapshot carries the tune cells' probabilities up to its cycle; the test cells only judge."""
    arch = arch or cfg.arch
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size), tune=tune)
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed)
    # fastai's fit_sgdr needs cycle_mult > 1; equal cycles are n cosine pieces of fastai's own schedule
    cycles = combine_scheds([1 / n_cycles] * n_cycles, [SchedCos(cfg.lr, cfg.lr / 100)] * n_cycles)
    learn.fit(n_cycles * cycle_len, cfg.lr, cbs=[ParamScheduler({"lr": cycles})])
    return [_member(learn, (k + 1) * cycle_len - 1, arch, seed, f"snapshot {k + 1}", t)
            for k in range(n_cycles)]
