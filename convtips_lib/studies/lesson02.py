"""Lesson 02's studies: the freeze depth x data size grid (every run the same optimizer steps, each regime at its
own learning rate chosen on the tune cells) and the statistics that decide its claims on the test cells, learning
curves of linear heads, and the widget's quick experiment on cached activations."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from ..core.compat import renamed_kwargs, warn_deprecated
from ..core.data import elpv_dls, elpv_frame, elpv_roles, subsample
from ..core.env import device
from ..core.measure import Estimate, bootstrap, classification_metrics, paired_bootstrap, stack_preds
from ..core.models import pretrained
from ..core.surgery import n_frozen, n_groups, split_at
from ..core.train import best_on_tune
from ..topics.features import cached_features, fit_head
from ..topics.transfer import FROZEN_SHARE, REGIMES, train_on_features, train_regime

__all__ = ["lr_search", "chosen_lrs", "freeze_grid", "best_regime", "best_regimes", "freeze_rule", "more_data_gain",
           "recipe_vs_best", "fraction_masks", "linear_curve", "cv_linear_curve", "gap_change", "quick_transfer"]

DEEPER = ("freeze to middle", "whole network")   # the regimes that train more than the head


def _shared(cfg, regimes, fractions, seed: int, arch: str | None = None, task: str = "binary") -> dict:
    """What the cached regimes of a grid share, built once: {depth: Features} of the frozen layers on the largest
    fraction's train cells, the tune and the test cells (`cached_features`, on disk), and the fraction masks."""
    depths = sorted({REGIMES[r]["depth"] for r in regimes if REGIMES[r].get("cached")})
    if not depths:
        return dict(feats={}, masks={})
    dls = elpv_dls(cfg, task=task, frac=max(fractions), seed=seed, tune=True)
    model = pretrained(arch or cfg.arch, dls.c).to(device())
    return dict(feats={d: cached_features(model, dls, depth=d) for d in depths},
                masks=fraction_masks(dls, fractions, seed))


def run_regime(cfg, regime: str, frac: float, seed: int = 0, lr: float | None = None, shared: dict | None = None,
               **kw) -> dict:
    """One grid cell's row: `regime` on `frac` of the train cells for `cfg.transfer.steps` optimizer steps at peak
    `lr`, the tune cells predicted. A cached regime trains on `shared` activations (`_shared`) when given."""
    steps = cfg.transfer.steps
    if REGIMES.get(regime, {}).get("cached") and shared and shared["feats"]:
        feats = shared["feats"][REGIMES[regime]["depth"]]
        return train_on_features(cfg, regime, feats, shared["masks"][frac], seed, steps, lr, frac=frac,
                                 arch=kw.get("arch")).row()
    return train_regime(cfg, regime, frac, seed, steps=steps, lr=lr, tune=True, **kw).row()


def lr_search(cfg, regimes, frac: float | None = None, seed: int | None = None, lrs=None, **kw) -> pd.DataFrame:
    """Every regime at `frac` (default: the profile's largest fraction) with every peak learning rate of `lrs`
    (default `cfg.transfer.lrs`), one seed: the runs a rate is chosen from, on their tune cells (`chosen_lrs`)."""
    frac = max(cfg.transfer.fractions) if frac is None else frac
    seed = cfg.seed if seed is None else seed
    shared = _shared(cfg, regimes, (frac,), seed, **kw)
    return pd.DataFrame([run_regime(cfg, r, frac, seed, lr=lr, shared=shared, **kw)
                         for r in regimes for lr in (cfg.transfer.lrs if lrs is None else lrs)])


def chosen_lrs(search: pd.DataFrame, metric: str = "balanced_accuracy") -> dict:
    """{regime: lr} the rate of each regime whose runs scored best on the tune cells (mean over seeds): the test
    cells never enter the choice (`best_on_tune`)."""
    best = best_on_tune(search, by="regime", metric=metric, candidates=["regime", "lr"])
    return dict(zip(best["regime"], best["lr"].astype(float)))


def freeze_grid(cfg, fractions=None, regimes=None, seeds=None, lrs=None, reuse: pd.DataFrame | None = None,
                **kw) -> pd.DataFrame:
    """One `run_regime` row per (fraction, regime, seed), every run `cfg.transfer.steps` optimizer steps, each regime
    at its rate of `lrs` ({regime: lr}, or one rate for all; default: chosen on the tune cells by an `lr_search` at
    the largest fraction with the first seed). A cell already in `reuse` (an `lr_search` table: same regime, fraction,
    seed and rate) is taken from it, not trained again. Defaults from the profile and all of REGIMES."""
    fractions = tuple(fractions or cfg.transfer.fractions)
    regimes, seeds = list(regimes or REGIMES), list(cfg.seeds(cfg.n_seeds) if seeds is None else seeds)
    if lrs is None:
        reuse = lr_search(cfg, regimes, max(fractions), seeds[0], **kw)
        lrs = chosen_lrs(reuse)
    lrs = {r: float(lrs) for r in regimes} if isinstance(lrs, (int, float)) else {r: float(lrs[r]) for r in regimes}
    done = {} if reuse is None else {(d["regime"], d["frac"], d["seed"], d["lr"]): d for d in reuse.to_dict("records")}
    shared, rows = {}, []
    for f in fractions:
        for r in regimes:
            for s in seeds:
                row = done.get((r, f, s, lrs[r]))
                if row is None:
                    if s not in shared and REGIMES.get(r, {}).get("cached"):
                        shared[s] = _shared(cfg, regimes, fractions, s, **kw)
                    row = run_regime(cfg, r, f, s, lr=lrs[r], shared=shared.get(s), **kw)
                rows.append(row)
    return pd.DataFrame(rows)


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


def freeze_rule(grid: pd.DataFrame, metric: str = "balanced_accuracy", n: int = 2000, seed: int = 0) -> dict:
    """Does "freeze fewer layers the more data" hold? estimate = gain(largest fraction) - gain(smallest), where
    gain(f) = the deeper regime chosen on the tune cells at f (of freeze to middle, whole network) minus head only
    at f, on the test cells; the four models resampled on the same images.

    Also: the gain per fraction, the deeper regime chosen per fraction, and the frozen share of the manual regime
    chosen on the tune cells per fraction (descriptive).
    """
    manual = grid[grid["regime"].isin(FROZEN_SHARE)]
    fracs = sorted(manual["frac"].unique())
    lo, hi = fracs[0], fracs[-1]
    deeper = {f: best_regime(manual[manual["frac"] == f], DEEPER, metric) for f in fracs}
    preds = stack_preds(manual[manual["frac"].isin([lo, hi])], ["regime", "frac"])
    gain_of = lambda m, f: m[(deeper[f], f)] - m[("head only", f)]  # noqa: E731
    est = bootstrap(manual["y_true"].iloc[0], preds, lambda m: gain_of(m, hi) - gain_of(m, lo), metric, n, seed)
    mean = manual.groupby(["frac", "regime"])[metric].mean()
    gain = {f: float(mean[(f, deeper[f])] - mean[(f, "head only")]) for f in fracs}
    best = {f: FROZEN_SHARE[best_regime(manual[manual["frac"] == f], metric=metric)] for f in fracs}
    return dict(estimate=est, gain=gain, deeper=deeper, frozen_share_of_best=best)


def more_data_gain(grid: pd.DataFrame, regime: str, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> Estimate:
    """metric(`regime` at the largest fraction) - metric(at the smallest), paired on the validation images."""
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


def _train_pool(dls) -> pd.DataFrame:
    """The table `elpv_dls` drew the training fraction from: the 1,968 training cells, or with tune cells the 1,574
    train cells (tune rows left out, the test cells marked `is_valid`)."""
    if getattr(dls, "tune", None) is None:
        return elpv_frame()
    roles = elpv_roles()
    return roles[roles["role"] != "tune"].assign(is_valid=lambda d: d["role"] == "test")


def fraction_masks(dls, fractions, seed: int) -> dict:
    """{frac: bool mask (N_train,)} of the rows of `dls.train_ds` that `subsample(frac, seed)` keeps (nested; the
    train cells only when `dls` has tune cells)."""
    paths, df, masks = dls.train_ds.items["path"], _train_pool(dls), {}
    for f in fractions:
        keep = subsample(df, f, seed).query("not is_valid")["path"]
        masks[f] = paths.isin(keep).to_numpy()
        if masks[f].sum() != len(keep):
            raise ValueError(f"these DataLoaders hold only {masks[f].sum()} of the {len(keep)} training images of "
                             f"fraction {f}: build them with frac >= max(fractions) and the same seed ({seed})")
    return masks


def linear_curve(x_train, y_train, x_valid, y_valid, masks: dict, fit_fn, **kw) -> pd.DataFrame:
    """`fit_fn(x_train[m], y_train[m], x_valid, y_valid, **kw)` for each mask: metrics, predictions and seconds."""
    rows = []
    for frac, m in masks.items():
        out = fit_fn(np.asarray(x_train)[m], np.asarray(y_train)[m], x_valid, y_valid, **kw)
        rows.append(dict(frac=frac, n_train=int(m.sum()), **out["metrics"], seconds=out["seconds"],
                         y_true=out["y_true"], y_pred=out["y_pred"]))
    return pd.DataFrame(rows)


def cv_linear_curve(features: dict, y, paths, folds: list, fractions, seeds=(0,), fit_fn=None, **kw) -> pd.DataFrame:
    """`linear_curve` cross-validated over `folds` (role tables of `elpv_folds`): for every feature set of `features`
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
