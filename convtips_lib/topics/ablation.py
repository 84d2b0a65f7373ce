"""The two-way ablation of the course's recipe (lesson 08, `convtips ablate`): each tip (`TIPS`) switched the other
way in the full recipe, and added to a plain one (every tip off), trained once per seed by any `train(recipe)`
function (`run_plan`), what each tip was worth with a 95 % interval (`ablation_table`), and the recipe's settings
chosen on the tune images of those runs (`choose_recipe`), never on the images that judge."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..core.measure import bootstrap, classification_metrics, stack_preds
from ..core.train import METRICS
from .ensemble import average_probs
from .recipe import Recipe, recipe_eval

__all__ = ["TIPS", "ABLATION_TIPS", "TUNE_TIPS", "uses_tip", "without_tip", "with_tip", "toggle_tip", "plain_recipe",
           "ablation_plan", "run_plan", "trained_configs", "ensemble_preds", "compare_configs", "ablation_table",
           "tune_runs", "choose_recipe"]

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


def run_row(config: str, learn, recipe: Recipe, seconds: float, **extra) -> dict:
    t0 = time.perf_counter()
    ev = recipe_eval(learn, recipe)
    kept = getattr(learn, "kept_epoch", None)   # NaN: nothing chosen, the last epoch kept (fastai's defaults)
    return dict(config=config, **extra, seed=recipe.seed, train_s=seconds, eval_s=time.perf_counter() - t0,
                kept_epoch=np.nan if kept is None else float(kept), y_true=ev.y_true, y_pred=ev.y_pred,
                probs=ev.probs, **ev.metrics, **_tune_columns(learn))


def run_plan(plan: pd.DataFrame, train, seeds, on_run=None) -> pd.DataFrame:
    """Train every configuration of `plan` (`ablation_plan`) once per seed with `train(recipe) -> Run` (e.g. lesson
    08's `train_on_elpv`, or `convtips ablate`'s folder): one row per (config, seed) with train_s, eval_s,
    kept_epoch, y_true, y_pred, probs (N, C) and `METRICS` on the validation (test) images, and tune_y, tune_pred and
    tune_<metric> on the tune images (the network's plain predictions, what a choice reads). Configurations that
    differ only in tta share one trained network (tta changes evaluation only). `on_run(rows, done, total)` is called
    after each trained network (progress; a Ctrl-C then leaves `rows` as far as they got)."""
    rows, todo = [], []
    for seed in seeds:
        groups = {}
        for p in plan.itertuples():
            groups.setdefault(p.recipe.with_(tta=False, seed=int(seed)), []).append(p)
        todo += [(int(seed), trained, members) for trained, members in groups.items()]
    for k, (seed, trained, members) in enumerate(todo, 1):
        run = train(trained)
        rows += [run_row(p.config, run.learn, p.recipe.with_(seed=seed), run.seconds, kind=p.kind, tip=p.tip)
                 for p in members]
        if on_run is not None:
            on_run(rows, k, len(todo))
    return pd.DataFrame(rows)


def trained_configs(plan: pd.DataFrame) -> int:
    """How many networks `run_plan` trains per seed for `plan`: its configurations, those differing only in tta
    counted once."""
    return len({r.with_(tta=False) for r in plan["recipe"]})


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


def ablation_table(runs: pd.DataFrame, metrics=METRICS, n: int = 2000, tips=ABLATION_TIPS) -> pd.DataFrame:
    """What each tip of `tips` (default `ABLATION_TIPS`) was worth: per tip, direction and metric, the effect of
    switching the tip on, with its 95 % CI. 'in the full recipe': full minus 'full - tip' (or 'full + tip' minus full, for a tip the
    recipe left out); 'added to plain': 'plain + tip' minus plain. `in_recipe` says which. The ensemble's rows: the
    ensemble over seeds minus the single runs, of the full and of the plain recipe."""
    configs = set(runs["config"])
    rows = []
    for tip in tips:
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


def choice_row(tip: str, course: Recipe, other: Recipe, est) -> dict:
    name = TIPS[tip][1]
    return dict(tip=tip, setting=name, course=getattr(course, name), other=getattr(other, name), value=est.effect,
                low=est.low, high=est.high, switched=_switches(est))


def choose_recipe(runs: pd.DataFrame, full: Recipe, metric: str = "balanced_accuracy", n: int = 2000,
                  tips=TUNE_TIPS) -> tuple:
    """(recipe, table): `full` (the course's recipe, at any size) with each tip of `tips` in `TUNE_TIPS` set as the
    tune cells of the ablation's `runs` choose: per tip, the full configuration against its partner ('full - tip' or
    'full + tip'), `metric` on the tune cells with seeds pooled; the course's setting stays unless the tune cells
    clearly prefer the other (`_switches`). table: per tip, the setting, its two values, the effect of switching on
    the tune cells with its 95 % interval, and whether it was switched. Reads only tune_y and tune_pred."""
    tr, rows, chosen = tune_runs(runs), [], full
    for tip in [t for t in tips if t in TUNE_TIPS]:
        config, other = toggle_tip(full, tip)
        rows.append(choice_row(tip, full, other, compare_configs(tr, "full", config, metric, n)))
        if rows[-1]["switched"]:
            chosen = toggle_tip(chosen, tip)[1]
    return chosen, pd.DataFrame(rows)
