"""Lesson 02's studies: the freeze depth x data size grid, cross-validated over every ELPV cell preloaded small
(`transfer_cells`: every cell predicted once by a network that never saw it; every run the same optimizer steps;
each regime's rate chosen per fold on that fold's tune cells) and the statistics that decide the tip's three rules
and its trend on the pooled test cells; cross-validated learning curves of linear classifiers (hand-crafted vs CNN
features); the widget's quick experiment on cached activations."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.compat import renamed_kwargs, warn_deprecated
from ..core.data import elpv_dls, elpv_folds, fold_tensor_dls, preload_cells, subsample, thin_roles
from ..core.env import device, seed_everything
from ..core.measure import Estimate, bootstrap, classification_metrics, paired_bootstrap, stack_preds
from ..core.models import Classifier, model_stats, pretrained
from ..core.surgery import freeze, n_frozen, n_groups, param_groups, split_at
from ..core.train import Run, at_chosen_per_fold, best_on_tune, fit, fit_gradual, learner, pool_per_fold
from ..topics.features import cached_features, cell_features, fit_head
from ..topics.transfer import FROZEN_SHARE, REGIMES, phases, regime_spec

__all__ = ["TransferCells", "transfer_cells", "regime_module", "train_fold", "cv_regime", "regime_grid", "regime_lrs",
           "RULES", "rule_gain", "depth_trend", "best_regime", "best_regimes", "more_data_gain", "recipe_vs_best",
           "cv_linear_curve", "gap_change", "quick_transfer"]

RULES = {   # the tip's rule for each amount of data: (which of the grid's fractions, the regime it names)
    "little": (0, "head only"), "moderate": (1, "freeze to middle"), "plenty": (-1, "whole network")}


@dataclass
class TransferCells:
    """Every ELPV cell preloaded for the grid at `cfg.transfer.img_size`: x (2624, 3, s, s) standardised with the
    pretrained network's stats, y (2624,), paths, vocab; `acts` {depth: (2624, ...) activations of the frozen
    layers at that depth (`cell_features`, BatchNorm in eval mode: what a cached regime trains on)}; the role
    tables of the grid's k-fold cross-validation (`elpv_folds`)."""
    x: torch.Tensor
    y: torch.Tensor
    paths: list
    vocab: list
    acts: dict
    folds: list
    arch: str


def transfer_cells(cfg, arch: str | None = None) -> TransferCells:
    """`TransferCells` for the profile: the images decoded once, the activations of every cached regime's frozen
    layers computed once (on disk, keyed like every feature cache), `cfg.transfer.grid_folds` folds (with only
    about `cfg.valid_n` test and `cfg.tune_n` tune cells each where the profile sets them: smoke)."""
    arch, size = arch or cfg.arch, cfg.transfer.img_size
    x, y, paths, vocab = preload_cells(cfg, img_size=size)
    model = pretrained(arch, len(vocab)).to(device())
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in model_stats(model))
    acts = {}
    for depth in sorted({REGIMES[r]["depth"] for r in REGIMES if REGIMES[r].get("cached")}):
        a, _, a_paths, _ = cell_features(model, cfg, depth=depth, img_size=size)
        if [str(p) for p in a_paths] != [str(p) for p in paths]:
            raise RuntimeError("the cached activations and the preloaded images list the cells in different orders")
        acts[depth] = a
    folds = [thin_roles(f, cfg.valid_n, cfg.tune_n) for f in elpv_folds(cfg.transfer.grid_folds)]   # all (0) but smoke
    return TransferCells((x - mean) / std, y, paths, vocab, acts, folds, arch)


def regime_module(cells: TransferCells, regime: str, seed: int = 0) -> nn.Module:
    """What `regime` trains, freshly built (seeded: a new head's initialisation repeats): for a cached regime the
    layers after its freeze depth (they read `cells.acts[depth]`), else the whole `Classifier` (pretrained or not)."""
    spec = regime_spec(regime)
    seed_everything(seed)
    model = pretrained(cells.arch, len(cells.vocab), weights=spec["weights"])
    return split_at(model, spec["depth"])[1] if spec.get("cached") else model


def _epochs_per_fit(regime: str, epochs: int) -> list:
    """The epochs of each of a regime's fits (`phases`), `epochs` in all: as even as whole epochs allow."""
    k = phases(regime)
    if epochs < k:
        raise ValueError(f"{regime!r} trains in {k} fits: give it at least {k} epochs (cfg.transfer.steps / "
                         f"epoch_steps), got {epochs}")
    return [epochs // k + (i >= k - epochs % k) for i in range(k)]


def train_fold(cfg, cells: TransferCells, regime: str, roles, frac: float, lr: float, seed: int = 0) -> Run:
    """`regime` trained on `frac` of one fold's train cells (`roles`: a table of `cells.folds`) for
    `cfg.transfer.steps` optimizer steps at peak `lr`, whatever the fraction (every epoch `epoch_steps` full
    batches, the cells cycled: `fold_tensor_dls`); its test and tune cells predicted. Its `Run`: settings regime,
    frac, seed, lr; extra n_train (distinct cells), steps, passes (over each train cell). Gradual unfreezing
    predicts them after each of its fits, the others after the last epoch only (`validate="last"`)."""
    t = time.perf_counter()
    tc = cfg.transfer
    spec = regime_spec(regime)
    inputs = cells.acts[spec["depth"]] if spec.get("cached") else cells.x
    dls = fold_tensor_dls(inputs, cells.y, cells.paths, roles, cells.vocab, bs=cfg.bs, standardise=False,
                          frac=frac, seed=seed, epoch_steps=tc.epoch_steps)
    model = regime_module(cells, regime, seed)
    whole = isinstance(model, Classifier)
    learn = learner(dls, model, splitter=param_groups if whole else None, seed=seed)
    if whole:
        freeze(learn, spec["depth"] if spec["weights"] else "none")
    per_fit = _epochs_per_fit(regime, tc.steps // tc.epoch_steps)
    if spec.get("gradual"):
        hist = fit_gradual(learn, lr, per_fit)
    elif spec.get("fine_tune"):
        hist = fit(learn, per_fit[1], lr, fine_tune=True, freeze_epochs=per_fit[0], validate="last")
    else:
        hist = fit(learn, per_fit[0], lr, validate="last")   # the cells predicted once, after the last epoch
    steps = len(hist) * len(dls.train)
    return Run.of(learn, dict(regime=regime, frac=frac, seed=seed, lr=float(lr)), time.perf_counter() - t,
                  n_train=dls.n_cells, steps=steps, passes=steps * cfg.bs / dls.n_cells)


def cv_regime(cfg, cells: TransferCells, regime: str, frac: float, lrs, seed: int = 0) -> Run:
    """`train_fold` on every fold at that fold's rate (`lrs`: one, or one per fold), pooled (`pool_per_fold`):
    every cell predicted once by a network that never saw it."""
    lrs = [float(lrs)] * len(cells.folds) if np.ndim(lrs) == 0 else list(lrs)
    return pool_per_fold([train_fold(cfg, cells, regime, roles, frac, lr, seed) for roles, lr in zip(cells.folds, lrs)])


def regime_grid(cfg, cells: TransferCells, regimes, fractions=None, seeds=None) -> tuple:
    """Every (fraction, regime): `cv_regime` at each of its rates (`regime_lrs`) with the first seed, each fold's
    rate chosen on that fold's tune cells (`choose_per_fold`; that seed's run pooled from the search's own fold
    runs), then the other seeds (default `cfg.transfer.n_seeds`) at the chosen rates. Returns (one row per
    (fraction, regime, seed), the rows of the rate search)."""
    seeds = list(cfg.seeds(cfg.transfer.n_seeds) if seeds is None else seeds)
    rows, search = [], []
    for frac in fractions or cfg.transfer.fractions:
        for regime in regimes:
            tried = [cv_regime(cfg, cells, regime, frac, lr, seeds[0]) for lr in regime_lrs(cfg, regime)]
            search += [r.row() for r in tried]
            lrs, first = at_chosen_per_fold(tried)
            rows += [first.row(), *(cv_regime(cfg, cells, regime, frac, lrs, s).row() for s in seeds[1:])]
    return pd.DataFrame(rows), pd.DataFrame(search)


def regime_lrs(cfg, regime: str) -> tuple:
    """The peak rates a regime tries: `cfg.transfer.head_lrs` for the head alone (a linear layer on cached
    features takes larger steps, and costs nothing to try), else `cfg.transfer.lrs`."""
    return cfg.transfer.head_lrs if regime == "head only" else cfg.transfer.lrs


def rule_gain(grid: pd.DataFrame, rule: str, metric: str = "balanced_accuracy", n: int = 2000,
              seed: int = 0) -> Estimate:
    """The tip's rule for an amount of data (`RULES`: little, moderate, plenty) at its fraction of the grid: the
    regime it names minus the best of the other manual regimes there (each pooled over its seeds), on the same
    test cells: > 0 when the named regime beats every other."""
    pos, named = RULES[rule]
    frac = sorted(grid["frac"].unique())[pos]
    at = grid[(grid["frac"] == frac) & grid["regime"].isin(FROZEN_SHARE)]
    others = [r for r in at["regime"].unique() if r != named]
    stat = lambda m: m[named] - np.max([m[o] for o in others], 0)  # noqa: E731
    return bootstrap(at["y_true"].iloc[0], stack_preds(at, "regime"), stat, metric, n, seed)


def depth_trend(grid: pd.DataFrame, metric: str = "balanced_accuracy", n: int = 2000, seed: int = 0) -> Estimate:
    """"Freeze fewer layers the more data": gain(largest fraction) - gain(smallest), gain(f) = whole network minus
    head only at f, the four models (pooled over seeds) resampled on the same test cells."""
    lo, hi = grid["frac"].min(), grid["frac"].max()
    rows = grid[grid["frac"].isin([lo, hi]) & grid["regime"].isin(["head only", "whole network"])]
    gain = lambda m, f: m[("whole network", f)] - m[("head only", f)]  # noqa: E731
    return bootstrap(rows["y_true"].iloc[0], stack_preds(rows, ["regime", "frac"]), lambda m: gain(m, hi) - gain(m, lo),
                     metric, n, seed)


def best_regime(rows: pd.DataFrame, candidates=None, metric: str = "balanced_accuracy") -> str:
    """The regime of `candidates` (default: every regime in `rows`) with the best mean `tune_<metric>` over its
    runs (seeds): a choice read from the tune cells only (`best_on_tune`)."""
    rows = rows if candidates is None else rows[rows["regime"].isin(list(candidates))]
    if rows.empty:
        raise ValueError(f"no runs of the candidate regimes {list(candidates)} to choose from")
    return str(best_on_tune(rows, metric=metric, candidates="regime")["regime"].iloc[0])


def best_regimes(grid: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per data fraction: the regime chosen on the tune cells (`best_regime`), its mean tune score and its mean
    test score (`metric`, over seeds)."""
    out = []
    for f, g in grid.groupby("frac", sort=True):
        r = best_regime(g, metric=metric)
        chosen = g[g["regime"] == r]
        out.append(dict(frac=f, regime=r, **{f"tune_{metric}": chosen[f"tune_{metric}"].mean(),
                                             metric: chosen[metric].mean()}))
    return pd.DataFrame(out).set_index("frac")


def more_data_gain(grid: pd.DataFrame, regime: str, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> Estimate:
    """metric(`regime` at the largest fraction) - metric(at the smallest), paired on the same test cells."""
    rows = grid[grid["regime"] == regime]
    preds = stack_preds(rows, ["frac"])
    lo, hi = min(preds), max(preds)
    return paired_bootstrap(rows["y_true"].iloc[0], preds[lo], preds[hi], metric, n, seed)


def recipe_vs_best(rows: pd.DataFrame, recipe: str, candidates, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> Estimate:
    """metric(`recipe`) minus metric(the best of `candidates`), the best chosen once on the tune cells
    (`best_regime`) and then compared on the test cells, paired on the same images."""
    best = best_regime(rows, candidates, metric)
    preds = stack_preds(rows[rows["regime"].isin([recipe, best])], ["regime"])
    est = paired_bootstrap(rows["y_true"].iloc[0], preds[best], preds[recipe], metric, n, seed)
    return Estimate(est.effect, est.low, est.high, est.metric,
                    f"{est.method}; the best manual regime ({best}) chosen on the tune cells")


def cv_linear_curve(features: dict, y, paths, folds: list, fractions, seeds=(0,), fit_fn=None, **kw) -> pd.DataFrame:
    """Learning curves of a linear classifier cross-validated over `folds` (role tables of `elpv_folds`): for every feature set of `features`
    {name: x (N, D), a row per cell of `paths`}, fraction and seed, `fit_fn(x_train, y_train, x_test, y_test, **kw)`
    fits on a stratified `frac` of each fold's train cells (`subsample`: nested, the same cells for every feature
    set) and predicts that fold's test cells. One row per (features, frac, seed): the predictions pooled over the
    folds in fold order (every cell once, the same order in every row), n_train per fold (mean), seconds summed
    (a draw of the same cells as an earlier seed's, e.g. every draw at frac 1, is fitted once and its row repeated).
    Nothing is chosen, so the tune cells are not read."""
    from ..topics.handcrafted import svm_baseline
    fit_fn = fit_fn or svm_baseline
    where, y = {str(p): i for i, p in enumerate(paths)}, np.asarray(y)
    rows, done = [], {}   # fits by (features, cells): every seed draws the same cells at frac 1, fitted once
    for seed in seeds:
        for frac in fractions:
            parts = []
            for roles in folds:
                kept = subsample(roles[roles["role"] != "tune"], frac, seed)
                parts.append(([where[str(p)] for p in kept.loc[~kept["is_valid"], "path"]],
                              [where[str(p)] for p in roles.loc[roles["role"] == "test", "path"]]))
            for name, x in features.items():
                x = np.asarray(x)
                key = (name, tuple(tuple(tr) for tr, _ in parts))
                if key not in done:
                    done[key] = [fit_fn(x[tr], y[tr], x[te], y[te], **kw) for tr, te in parts]
                outs = done[key]
                y_true, y_pred = (np.concatenate([o[k] for o in outs]) for k in ("y_true", "y_pred"))
                n_train = float(np.mean([len(tr) for tr, _ in parts]))
                rows.append(dict(features=name, frac=frac, seed=seed, n_train=n_train,
                                 **classification_metrics(y_true, y_pred), seconds=sum(o["seconds"] for o in outs),
                                 y_true=y_true, y_pred=y_pred))
    return pd.DataFrame(rows)


def gap_change(curves: pd.DataFrame, a: str, b: str, by: str = "features", metric: str = "balanced_accuracy",
               n: int = 2000, seed: int = 0) -> Estimate:
    """How much the gap metric(a) - metric(b) shrinks from the smallest to the largest fraction:
    gap(smallest) - gap(largest), the four models resampled on the same images."""
    preds = stack_preds(curves, [by, "frac"])
    lo, hi = curves["frac"].min(), curves["frac"].max()
    gap = lambda m, f: m[(a, f)] - m[(b, f)]  # noqa: E731
    return bootstrap(curves["y_true"].iloc[0], preds, lambda m: gap(m, lo) - gap(m, hi), metric, n, seed)


@renamed_kwargs(cache_dir="folder")
def quick_transfer(model, cfg, frac: float, depth=None, folder=None, seed: int = 0, **kw) -> dict:
    """Train the body's groups after `depth` (default 'head': the head only) on cached activations of the layers
    before, for `frac` of the data. The widget's callback: with the cache warm an experiment takes seconds.
    `model` is not modified."""
    n_body = n_groups(model)
    if "trainable_stages" in kw:   # deprecated: counted from the output
        warn_deprecated("quick_transfer(trainable_stages=k) is deprecated: use depth=n_groups(model) - k (groups "
                        "frozen, counted from the input)", 4)
        depth = n_body - kw.pop("trainable_stages")
    if kw:
        raise TypeError(f"quick_transfer() got unexpected keyword argument(s) {', '.join(kw)}")
    depth = "head" if depth is None else depth
    frozen = n_frozen(n_body, depth)
    if frozen == 0:
        raise ValueError(f"depth must freeze at least one body group (1..{n_body} or 'head'): "
                         "with nothing frozen there is nothing to cache")
    model = copy.deepcopy(model)
    dls = elpv_dls(cfg, frac=frac, seed=seed)
    feats = cached_features(model, dls, depth=frozen, folder=folder)
    out = fit_head(feats, rest=None if frozen == n_body else split_at(model, frozen)[1], epochs=cfg.head_epochs,
                   lr=cfg.lr, bs=cfg.bs, seed=seed)
    return dict(frac=frac, n_train=len(feats.y_train), depth=frozen, trainable_groups=n_body - frozen,
                cache_hit=feats.hit, **out["metrics"], seconds=feats.seconds + out["seconds"])
