"""Lesson 08's studies: the recipe on ELPV, fastai's out-of-the-box recipe, the two-way ablation (each tip
switched in the full recipe, or added to a plain one), the recipe's settings chosen on the tune cells, the paper's
table, error analysis and inference costs. Every choice reads the 394 tune cells (`elpv_roles`); the 656 test
cells only judge."""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pandas as pd

from ..core.compat import renamed_kwargs
from ..core.data import TASKS, elpv_dls, elpv_roles, subsample
from ..core.measure import Evaluation, bootstrap, top_mistakes, classification_metrics, paired_bootstrap, proportion, stack_preds
from ..core.train import METRICS, Run, learner
from ..topics.augment import policy_tfms
from ..topics.ensemble import average_probs
from ..topics.imbalance import oversample_weights, threshold_preds
from ..topics.recipe import Recipe, fit_recipe, recipe_eval

__all__ = ["capstone_recipes", "TIPS", "ABLATION_TIPS", "train_on_elpv", "uses_tip", "ablation_plan",
           "ablation_runs", "fastai_default", "ensemble_preds", "ablation_table", "compare_configs",
           "TUNE_TIPS", "tune_runs", "choose_recipe", "choose_tta", "binary_from_4class", "valid_items", "accuracy_by",
           "confident_mistakes", "inference_costs", "PAPER", "paper_table"]


def capstone_recipes(cfg) -> tuple:
    """(full, small): lesson 08's recipe at full size (`cfg.cap`: image size, at most that many epochs) and at the
    ablation's budget (`cfg.cap.abl_img_size`, `abl_epochs`), both with the profile's architecture and seed; each
    keeps the epoch its tune cells score best."""
    full = Recipe(arch=cfg.arch, img_size=cfg.cap.img_size, epochs=cfg.cap.epochs, seed=cfg.seed)
    return full, full.with_(img_size=cfg.cap.abl_img_size, epochs=cfg.cap.abl_epochs)


def recipe_dls(recipe: Recipe, cfg, frac: float = 1.0, task: str = "binary", tfms: list | None = None):
    """ELPV DataLoaders for `recipe` in the three roles: `frac` of the 1,574 train cells to train on, the test cells
    (`cfg.cap.valid_n` of them, or all 656) as the validation set that judges, the tune cells (`cfg.cap.tune_n` of
    them, or all 394) as `dls.tune` to choose on; the recipe's augmentation (or `tfms`), image size, batch size and
    (with balance 'oversample') every class drawn equally often."""
    df = elpv_roles(cfg.cap.valid_n, cfg.cap.tune_n)
    fit = subsample(df[df["role"] != "tune"], frac, recipe.seed)   # what elpv_dls draws: the same cells
    weights = None
    if recipe.balance == "oversample":
        weights = oversample_weights(fit.loc[~fit["is_valid"], TASKS[task]].astype(str))
    tfms = policy_tfms(recipe.policy, recipe.img_size) if tfms is None else tfms
    return elpv_dls(cfg, task, 1.0, seed=recipe.seed, tfms=tfms, img_size=recipe.img_size, bs=recipe.bs,
                    sampling_weights=weights, df=pd.concat([fit, df[df["role"] == "tune"]]), tune=True)


def train_on_elpv(recipe: Recipe, cfg, frac: float = 1.0, task: str = "binary") -> Run:
    """`recipe` trained on ELPV (`recipe_dls`): its `Run` (settings: the recipe's, `frac` and `task`; seconds: the
    wall-clock of building the data and training; extra `kept_epoch`: the epoch the tune cells chose, whose weights
    the Learner holds, or None without `keep_best`)."""
    t0 = time.perf_counter()
    learn = fit_recipe(recipe_dls(recipe, cfg, frac, task), recipe)
    return Run.of(learn, dict(recipe.to_dict(), frac=frac, task=task), time.perf_counter() - t0,
                  kept_epoch=learn.kept_epoch)


# ------------------------------------------------------------------ the ablation
TIPS = {   # tip: (lesson, the Recipe setting it is, its value in a plain recipe, its value when switched on)
    "pretrained weights": ("01", "weights", None, "imagenet"),
    "head first": ("02", "freeze_epochs", 0, 1),
    "augmentation": ("03", "policy", "none", "flips"),
    "balanced sampling": ("04", "balance", "none", "oversample"),
    "one-cycle schedule": ("05", "schedule", "constant", "one-cycle"),
    "test-time augmentation": ("06", "tta", False, True),
}

ABLATION_TIPS = (*TIPS, "ensemble")   # lesson 06's ensemble: the recipe's runs over seeds, their probabilities averaged


def _check_tip(tip: str) -> None:
    if tip not in TIPS:
        raise ValueError(f"unknown tip {tip!r}: choose one of {', '.join(TIPS)}")


def uses_tip(recipe: Recipe, tip: str) -> bool:
    """Whether `recipe` has `tip` switched on (its setting differs from the plain recipe's)."""
    _check_tip(tip)
    _, name, off, _ = TIPS[tip]
    return getattr(recipe, name) != off


def without_tip(recipe: Recipe, tip: str) -> Recipe:
    """`recipe` with `tip` switched off; without the head-first phase its epochs train the whole network instead
    (the same number of epochs: the same budget)."""
    _check_tip(tip)
    _, name, off, _ = TIPS[tip]
    if name == "freeze_epochs":
        return recipe.with_(freeze_epochs=0, epochs=recipe.epochs + recipe.freeze_epochs)
    return recipe.with_(**{name: off})


def with_tip(recipe: Recipe, tip: str, full: Recipe) -> Recipe:
    """`recipe` with `tip` switched on as `full` has it, or at its `TIPS` value where `full` leaves it out (the
    head-first epochs taken from the whole-network ones: the same budget)."""
    _check_tip(tip)
    _, name, _, on = TIPS[tip]
    value = getattr(full, name) if uses_tip(full, tip) else on
    if name == "freeze_epochs":
        total = recipe.epochs + recipe.freeze_epochs
        k = min(value, total - 1)
        return recipe.with_(freeze_epochs=k, epochs=total - k)
    return recipe.with_(**{name: value})


def toggle_tip(full: Recipe, tip: str) -> tuple[str, Recipe]:
    """The ablation's partner of `full` for `tip`: ('full - tip', full without it) when `full` uses the tip, else
    ('full + tip', full with it) — a tip the recipe left out is measured by adding it."""
    if uses_tip(full, tip):
        return f"full - {tip}", without_tip(full, tip)
    return f"full + {tip}", with_tip(full, tip, full)


def plain_recipe(full: Recipe) -> Recipe:
    """`full` with every tip switched off: a random initialisation trained whole at a constant rate, without
    augmentation, balancing or tta (the same architecture, data, image size and epochs)."""
    out = full
    for tip in TIPS:
        out = without_tip(out, tip)
    return out


def ablation_plan(full: Recipe) -> pd.DataFrame:
    """The configurations of the ablation, one row each (config, kind, tip, recipe): the full recipe, the plain
    one, the full recipe with each tip switched the other way (kind 'toggle': 'full - tip', or 'full + tip' for a
    tip it leaves out) and the plain one with each tip (kind 'add': 'plain + tip')."""
    plain = plain_recipe(full)
    rows = [dict(config="full", kind="full", tip="", recipe=full), dict(config="plain", kind="plain", tip="",
                                                                           recipe=plain)]
    rows += [dict(config=config, kind="toggle", tip=t, recipe=recipe) for t in TIPS
             for config, recipe in [toggle_tip(full, t)]]
    rows += [dict(config=f"plain + {t}", kind="add", tip=t, recipe=with_tip(plain, t, full)) for t in TIPS]
    return pd.DataFrame(rows)


def _tune_columns(learn) -> dict:
    """The network's plain predictions on the tune cells after the epoch it kept (or its last): tune_y, tune_pred
    and tune_<metric>, read from `History` (no extra pass)."""
    hist = learn.history
    if not hist.tune_probs:
        return {}
    pred = hist.tune_probs[(getattr(learn, "kept_epoch", None) or len(hist.tune_probs)) - 1].argmax(1)
    metrics = classification_metrics(hist.tune_y, pred)
    return dict(tune_y=np.asarray(hist.tune_y), tune_pred=pred, **{f"tune_{k}": v for k, v in metrics.items()})


def _run_row(config: str, learn, recipe: Recipe, seconds: float, **extra) -> dict:
    t0 = time.perf_counter()
    ev = recipe_eval(learn, recipe)
    kept = getattr(learn, "kept_epoch", None)   # NaN: nothing chosen, the last epoch kept (fastai's defaults)
    return dict(config=config, **extra, seed=recipe.seed, train_s=seconds, eval_s=time.perf_counter() - t0,
                kept_epoch=np.nan if kept is None else float(kept), y_true=ev.y_true, y_pred=ev.y_pred,
                probs=ev.probs, **ev.metrics, **_tune_columns(learn))


def ablation_runs(plan: pd.DataFrame, cfg, frac: float, seeds) -> pd.DataFrame:
    """Train every configuration of `plan` (`ablation_plan`) on ELPV once per seed: one row per (config, seed) with
    train_s, eval_s, kept_epoch, y_true, y_pred, probs (N, C) and `METRICS` on the test cells, and tune_y,
    tune_pred and tune_<metric> on the tune cells (the network's plain predictions, what a choice reads).
    Configurations that differ only in tta share one trained network (tta changes evaluation only)."""
    rows = []
    for seed in seeds:
        groups = {}
        for p in plan.itertuples():
            groups.setdefault(p.recipe.with_(tta=False, seed=int(seed)), []).append(p)
        for trained, members in groups.items():
            run = train_on_elpv(trained, cfg, frac)
            rows += [_run_row(p.config, run.learn, p.recipe.with_(seed=int(seed)), run.seconds, kind=p.kind,
                              tip=p.tip) for p in members]
    return pd.DataFrame(rows)


def offline_arch(arch: str):
    """`arch` (an offline EfficientNet-Lite, or any name `pretrained` knows) as the callable fastai's
    `vision_learner`/`create_vision_model` expect: `f(pretrained=True)` -> the ImageNet network, whole (fastai cuts
    it before its pooling layer and adds its own head)."""
    from ..core.models import pretrained as make

    def build(pretrained: bool = True):
        net = make(arch, None, weights="imagenet" if pretrained else None)   # body + the ImageNet classifier
        return net.body
    build.__name__ = arch
    return build


def fastai_default(recipe: Recipe, cfg, frac: float = 1.0, config: str = "fastai defaults") -> dict:
    """What a fastai user does out of the box, at `recipe`'s data (the same train cells), architecture, image size,
    batch size, epochs and seed: fastai's `aug_transforms()`, the model and head `vision_learner` builds
    (`create_vision_model`, normalised with the weights' statistics as `vision_learner` does for timm models) and
    `learn.fine_tune(epochs)` with every default (base_lr 2e-3, one head epoch, the last epoch kept). One row like
    `ablation_runs`'."""
    from fastai.vision.all import aug_transforms, create_vision_model, default_split

    from ..core.models import model_stats
    from ..core.models import pretrained as make
    from ..core.train import set_norm
    t0 = time.perf_counter()
    dls = recipe_dls(recipe.with_(balance="none"), cfg, frac, tfms=aug_transforms())
    set_norm(dls, model_stats(make(recipe.arch, None, weights=None)))
    model = create_vision_model(offline_arch(recipe.arch), dls.c, pretrained=True)
    learn = learner(dls, model, splitter=default_split, seed=recipe.seed)
    learn.freeze()
    learn.fine_tune(recipe.epochs, freeze_epochs=max(1, recipe.freeze_epochs))
    t = time.perf_counter() - t0
    return _run_row(config, learn, recipe.with_(tta=False), t, kind="fastai", tip="")


def ensemble_preds(runs: pd.DataFrame, config: str) -> np.ndarray:
    """(N,) classes of the ensemble of `config`'s runs over seeds: their probabilities averaged (lesson 06)."""
    probs = list(runs.loc[runs["config"] == config, "probs"])
    return average_probs(probs).argmax(1)


def compare_configs(runs: pd.DataFrame, a, b, metric: str = "balanced_accuracy", n: int = 2000):
    """metric(b) - metric(a) with a 95 % CI; each side a config name (its runs over seeds, the seeds resampled too)
    or an (N,) array of predictions (e.g. `ensemble_preds`)."""
    stacks = stack_preds(runs, "config")
    y_true = runs["y_true"].iloc[0]
    side = lambda v: stacks[v] if isinstance(v, str) else np.asarray(v)   # noqa: E731
    return bootstrap(y_true, dict(a=side(a), b=side(b)), lambda m: m["b"] - m["a"], metric, n)


def ablation_table(runs: pd.DataFrame, metrics=METRICS, n: int = 2000) -> pd.DataFrame:
    """What each tip of `ABLATION_TIPS` was worth: per tip, direction and metric, the effect of switching the tip on,
    with its 95 % CI. 'in the full recipe': full minus 'full - tip' (or 'full + tip' minus full, for a tip the
    recipe left out); 'added to plain': 'plain + tip' minus plain. `in_recipe` says which. The ensemble's rows: the
    ensemble over seeds minus the single runs, of the full and of the plain recipe."""
    configs = set(runs["config"])
    rows = []
    for tip in ABLATION_TIPS:
        lesson = TIPS[tip][0] if tip in TIPS else "06"
        in_recipe = tip == "ensemble" or f"full + {tip}" not in configs
        for direction, base in (("in the full recipe", "full"), ("added to plain", "plain")):
            if tip == "ensemble":
                a, b = base, ensemble_preds(runs, base)
            elif base == "plain":
                a, b = "plain", f"plain + {tip}"
            else:
                a, b = (f"full - {tip}", "full") if in_recipe else ("full", f"full + {tip}")
            for m in metrics:
                est = compare_configs(runs, a, b, m, n)
                rows.append(dict(tip=tip, lesson=lesson, direction=direction, in_recipe=in_recipe, metric=m,
                                 value=est.effect, low=est.low, high=est.high))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the recipe's settings, chosen on the tune cells
TUNE_TIPS = tuple(t for t in TIPS if t != "test-time augmentation")   # chosen on the ablation's tune cells; tta on
                                                                        # the final network's (`choose_tta`)


def tune_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` as the tune cells see them: config, seed, y_true (= tune_y) and y_pred (= tune_pred); the test cells'
    columns are left behind, so whatever reads this table cannot choose on them."""
    return pd.DataFrame(dict(config=runs["config"].values, seed=runs["seed"].values, y_true=list(runs["tune_y"]),
                             y_pred=list(runs["tune_pred"])))


def _switches(est) -> bool:
    """The tune cells overrule the course's setting only when they clearly prefer the other one: the interval of
    (other - course) lies above 0."""
    return bool(est.low > 0)


def _choice_row(tip: str, course: Recipe, other: Recipe, est) -> dict:
    name = TIPS[tip][1]
    return dict(tip=tip, setting=name, course=getattr(course, name), other=getattr(other, name), value=est.effect,
                low=est.low, high=est.high, switched=_switches(est))


def choose_recipe(runs: pd.DataFrame, full: Recipe, metric: str = "balanced_accuracy", n: int = 2000) -> tuple:
    """(recipe, table): `full` (the course's recipe, at any size) with each tip of `TUNE_TIPS` set as the tune cells
    of the ablation's `runs` choose: per tip, the full configuration against its partner ('full - tip' or
    'full + tip'), `metric` on the tune cells with seeds pooled; the course's setting stays unless the tune cells
    clearly prefer the other (`_switches`). table: per tip, the setting, its two values, the effect of switching on
    the tune cells with its 95 % interval, and whether it was switched. Reads only tune_y and tune_pred."""
    tr, rows, chosen = tune_runs(runs), [], full
    for tip in TUNE_TIPS:
        config, other = toggle_tip(full, tip)
        rows.append(_choice_row(tip, full, other, compare_configs(tr, "full", config, metric, n)))
        if rows[-1]["switched"]:
            chosen = toggle_tip(chosen, tip)[1]
    return chosen, pd.DataFrame(rows)


def choose_tta(learn, recipe: Recipe, metric: str = "balanced_accuracy", n: int = 2000) -> tuple:
    """(recipe, row, tune evaluation): whether the trained network `learn` evaluates with fastai's tta, chosen on
    its tune cells (`learn.dls.tune`) with and without it, as `choose_recipe` chooses (the recipe's setting stays
    unless the tune cells clearly prefer the other); row as `choose_recipe`'s table; the tune cells' `Evaluation`
    under the chosen setting (e.g. to draw a threshold on). Never reads the test cells."""
    course = recipe_eval(learn, recipe, learn.dls.tune)
    flipped = recipe.with_(tta=not recipe.tta)
    other = recipe_eval(learn, flipped, learn.dls.tune)
    row = _choice_row("test-time augmentation", recipe, flipped,
                      paired_bootstrap(course.y_true, course.y_pred, other.y_pred, metric, n))
    return (flipped, row, other) if row["switched"] else (recipe, row, course)


def binary_from_4class(probs4: np.ndarray, vocab4, vocab2) -> np.ndarray:
    """(N, 2) binary probabilities, ordered as `vocab2` ('defective', 'functional'), from (N, 4) probabilities over
    the defect levels `vocab4` ('0', '1/3', '2/3', '1'): defective = defect probability > 0.5, as the paper."""
    levels = np.array([float(Fraction(str(v))) for v in vocab4])   # '1/3' -> 0.333
    p_def = np.asarray(probs4)[:, levels > 0.5].sum(1)
    return np.stack([p_def if str(c) == "defective" else 1 - p_def for c in vocab2], 1)


# ------------------------------------------------------------------ errors
def valid_items(learn) -> pd.DataFrame:
    """The validation cells in the order of the Learner's predictions: path, prob (defect level), type, labels."""
    return learn.dls.valid.items.reset_index(drop=True)


def accuracy_by(ev: Evaluation, items: pd.DataFrame, by: str) -> pd.DataFrame:
    """Accuracy per value of the column `by` of `items` (e.g. 'type', 'label_4'): cells, accuracy and its exact
    95 % interval."""
    right = pd.Series(np.asarray(ev.y_true) == np.asarray(ev.y_pred), index=items.index)
    rows = []
    for key, g in right.groupby(items[by].astype(str), sort=True):
        est = proportion(int(g.sum()), len(g), "accuracy")
        rows.append({by: key, "cells": len(g), "accuracy": est.effect, "low": est.low, "high": est.high})
    return pd.DataFrame(rows)


def confident_mistakes(ev: Evaluation, items: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The `n` wrong predictions made with the highest probability (`top_mistakes`): path, true and predicted
    class, that probability, module type and defect level."""
    worst = top_mistakes(ev, list(items["path"]), n)
    rows = items.set_index(items["path"].astype(str)).loc[worst["path"]]
    return worst.assign(type=rows["type"].values, defect_level=rows["label_4"].astype(str).values)


# ------------------------------------------------------------------ what each final model costs, and its threshold
def inference_costs(models: dict, passes: dict, img_size: int, timings: dict, bs: int = 32) -> pd.DataFrame:
    """One row per final model of `passes` {name: (model name in `models`, forward passes per image)}: params,
    MFLOPs and CPU ms per image (the median of the model's `timings` in ms per batch of `bs`, as `latencies`
    measures them, x its passes)."""
    from ..core.measure import count_flops, count_params
    lat = {k: float(np.median(v)) / bs for k, v in timings.items()}
    rows = []
    for name, (model, k) in passes.items():
        m = models[model]
        rows.append(dict(model=name, passes=k, params=count_params(m),
                         mflops=k * count_flops(m.cpu(), img_size) / 1e6, cpu_ms_per_image=k * lat[model]))
    return pd.DataFrame(rows)


@renamed_kwargs(positive="minority")
def threshold_metrics(ev: Evaluation, threshold: float, minority: str = "defective") -> dict:
    """Metrics of `ev` when a cell is called `minority` once its probability reaches `threshold` (>=, as
    `threshold_preds`; the paper: 0.5): accuracy, balanced accuracy, recall of `minority` (`minority_recall`: the
    defects found) and the share of the other class flagged (`false_alarms`)."""
    from ..core.measure import classification_metrics
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    k = ev.vocab.index(minority)
    pred = threshold_preds(ev.probs, threshold, k)
    y = np.asarray(ev.y_true)
    m = classification_metrics(y, pred)
    return dict(threshold=threshold, accuracy=m["accuracy"], balanced_accuracy=m["balanced_accuracy"],
                minority_recall=float((pred[y == k] == k).mean()), false_alarms=float((pred[y != k] == k).mean()))


# ------------------------------------------------------------------ against the paper
PAPER = {   # Deitsch et al., Solar Energy 185 (2019): binary accuracy on 656 test cells of the same 2,624, trained on
           # the other 1,968 (the course's split has the paper's sizes and stratification, not its cells)
    "paper: CNN (fine-tuned VGG-19)": 0.8842,
    "paper: SVM on hand-crafted features": 0.8244,
}


def paper_table(runs: pd.DataFrame, metrics=("accuracy", "balanced_accuracy")) -> pd.DataFrame:
    """The paper's accuracies (`PAPER`, no interval published) above each config of `runs` (rows with config, y_true,
    y_pred; seeds pooled) with `metrics` and each one's 95 % CI (`low`/`high` for the first metric)."""
    from ..core.measure import metric_with_ci
    first, *rest = metrics
    ours = metric_with_ci(runs, "config", first)
    for m in rest:
        ours[m] = metric_with_ci(runs, "config", m)[m].values
    paper = pd.DataFrame([{"config": k, first: v, "low": np.nan, "high": np.nan} for k, v in PAPER.items()])
    return pd.concat([paper, ours], ignore_index=True).rename(columns={"config": "model"})
