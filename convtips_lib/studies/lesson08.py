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
from ..core.measure import Evaluation, paired_bootstrap, proportion, top_mistakes
from ..core.train import Run, learner
from ..topics.augment import policy_tfms
from ..topics.imbalance import oversample_weights, threshold_preds
from ..topics.ablation import choice_row, run_plan, run_row
from ..topics.recipe import Recipe, fit_recipe, recipe_eval

__all__ = ["capstone_recipes", "train_on_elpv", "ablation_runs", "fastai_default", "choose_tta", "binary_from_4class",
           "valid_items", "accuracy_by", "confident_mistakes", "inference_costs", "PAPER", "paper_table"]


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


def ablation_runs(plan: pd.DataFrame, cfg, frac: float, seeds) -> pd.DataFrame:
    """Train every configuration of `plan` (`ablation_plan`) on ELPV (`train_on_elpv` on `frac` of the train cells)
    once per seed: `run_plan`'s rows (test cells: ELPV's 656; tune cells: its 394)."""
    return run_plan(plan, lambda recipe: train_on_elpv(recipe, cfg, frac), seeds)


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
    return run_row(config, learn, recipe.with_(tta=False), t, kind="fastai", tip="")


def choose_tta(learn, recipe: Recipe, metric: str = "balanced_accuracy", n: int = 2000) -> tuple:
    """(recipe, row, tune evaluation): whether the trained network `learn` evaluates with fastai's tta, chosen on
    its tune cells (`learn.dls.tune`) with and without it, as `choose_recipe` chooses (the recipe's setting stays
    unless the tune cells clearly prefer the other); row as `choose_recipe`'s table; the tune cells' `Evaluation`
    under the chosen setting (e.g. to draw a threshold on). Never reads the test cells."""
    course = recipe_eval(learn, recipe, learn.dls.tune)
    flipped = recipe.with_(tta=not recipe.tta)
    other = recipe_eval(learn, flipped, learn.dls.tune)
    row = choice_row("test-time augmentation", recipe, flipped,
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
