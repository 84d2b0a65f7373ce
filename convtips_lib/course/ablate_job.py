"""`convtips ablate`'s job: which of the course's tips hold on your own images. Lesson 08's two-way ablation
(`topics.ablation`: each tip switched the other way in the full recipe, and added to a plain one) trained on a
folder of images with the folder recipe of `convtips train`, judged on the folder's held-out images, every choice
made on tune images held out of its training images: the same code as lesson 08 (`run_plan`, `ablation_table`,
`choose_recipe`), with the folder in place of ELPV.

Before it trains, `ablate_folder` times a few optimizer steps and fits the run to the budget (`fit_budget`: the
seeds, then the steps, then the image size give way); it prints what it will run and how long that should take, and
asks nothing. Each trained network prints one line. Ctrl-C keeps the networks that finished: the report then says
the run was interrupted and holds the tips whose runs all finished.

Writes into --out: results/ (the record `ablate` as JSON and its figures), report.html (claims ledger, forest plot,
the per-configuration table) and recipe.json (the recipe asked for, at its own steps rather than the budget's, with
the switches the tune images clearly preferred; `convtips train --recipe` trains it).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..core.measure import Estimate, metric_with_ci
from ..core.profiles import Profile
from ..core.results import Results
from ..core.train import Run, make_learner
from ..topics.ablation import (ABLATION_TIPS, TIPS, ablation_plan, ablation_table, choose_recipe, run_plan,
                               toggle_tip, trained_configs)
from ..topics.recipe import TUNE_PCT, Recipe, fit_recipe, n_epochs, recipe_folder_dls
from ..ui.plots import plot_estimates
from .report import write_report
from .runner import UsageError
from .train_job import FOLDER_RECIPE, check_out, make_out, out_lock

__all__ = ["ABLATE_RECIPE", "BUDGET_MIN", "STEP_CHOICES", "Budget", "folder_tips", "fit_budget", "seconds_per_step",
           "ablate_folder", "AblationRun"]

ABLATE_RECIPE = FOLDER_RECIPE.with_(find_lr=False)   # every configuration at the recipe's rate: an lr_find and
                                                     # two probes per network would take most of the budget
BUDGET_MIN = 15.0                       # default minutes of training and evaluation
STEP_CHOICES = (500, 300, 200, 150, 100, 60)   # whole-network steps per network, tried from the most
MIN_SIDE = 64                           # px: the image size never drops below this to fit the budget
BALANCED = 1.5                          # largest / smallest class below this: the classes count as balanced
EVAL_SHARE = 0.35                       # a forward pass of a batch, as a share of a training step's time


@dataclass
class Budget:
    """What `fit_budget` settled on: seeds, whole-network steps per network and image side (px), the estimate of
    the whole run in seconds, whether it fits `budget_s`, and why."""
    seeds: int
    steps: int
    img_size: int
    estimate_s: float
    budget_s: float
    fits: bool
    why: str


@dataclass
class AblationRun:
    """What `ablate_folder` made: the runs (one row per configuration and seed), the ablation table, the recipe the
    tune images chose (the one asked for, at its own steps, with the switches they clearly preferred), the budget,
    the report, and whether Ctrl-C cut it short."""
    runs: pd.DataFrame
    table: pd.DataFrame
    chosen: Recipe
    budget: Budget
    report: Path
    recipe_file: Path
    interrupted: bool = False
    skipped_tips: dict = field(default_factory=dict)


def folder_tips(labels, tips, n_seeds: int) -> tuple:
    """(tips to measure, {tip: why not}) of `tips` (names of `ABLATION_TIPS`) for a folder whose training images
    have `labels`: balanced sampling changes nothing when the classes are about equal in size, an ensemble needs
    two seeds. An unknown tip is refused, naming the known ones."""
    unknown = [t for t in tips if t not in ABLATION_TIPS]
    if unknown or not tips:
        raise UsageError(f"unknown tip(s) {', '.join(map(repr, unknown)) or '(none given)'}: choose from "
                         f"{', '.join(repr(t) for t in ABLATION_TIPS)}")
    counts = pd.Series(list(labels)).value_counts()
    ratio = float(counts.max() / counts.min())
    why = {}
    if "balanced sampling" in tips and ratio < BALANCED:
        why["balanced sampling"] = (f"the classes are about equal in size (largest / smallest {ratio:.2f}): drawing "
                                    "every class equally often would change almost nothing")
    if "ensemble" in tips and n_seeds < 2:
        why["ensemble"] = "one seed: an ensemble averages the runs of two or more seeds (--seeds 2)"
    return [t for t in tips if t not in why], why


def _network_seconds(recipe: Recipe, s_step: float, n_batches: int, n_eval_batches: int) -> float:
    """Estimated seconds to train and evaluate one network of `recipe`: its head epochs and whole-network epochs
    at `s_step` seconds a step, a pass over the validation and tune batches after each epoch, tta's passes."""
    epochs = recipe.freeze_epochs + n_epochs(recipe, n_batches)
    evals = epochs * n_eval_batches + (4 * n_eval_batches if recipe.tta else 0)
    return s_step * (epochs * n_batches + EVAL_SHARE * evals)


def fit_budget(recipe: Recipe, plan_networks: int, s_step: float, n_batches: int, n_eval_batches: int,
               budget_s: float, n_seeds: int) -> Budget:
    """The largest run that fits `budget_s` seconds: `plan_networks` networks per seed, each timed at `s_step`
    seconds a step at `recipe.img_size` (a step's time taken to scale with the pixels). Seeds give way first (to
    two, which the ensemble and pooled intervals need), then the steps (`STEP_CHOICES`, at most the recipe's), then
    one seed, then the image side (to `MIN_SIDE`); when nothing fits, the smallest run, said so."""
    if budget_s <= 0 or n_seeds < 1:
        raise UsageError(f"--budget must be a positive number of minutes and --seeds at least 1, got "
                         f"{budget_s / 60:g} minutes and {n_seeds} seed(s)")
    most = recipe.steps or STEP_CHOICES[0]
    steps = [s for s in STEP_CHOICES if s <= most] or [most]
    two = min(n_seeds, 2)
    order = ([(k, steps[0], recipe.img_size) for k in range(n_seeds, two, -1)] +
             [(two, st, recipe.img_size) for st in steps] + [(1, st, recipe.img_size) for st in steps] +
             [(1, st, side) for side in range(recipe.img_size - 32, MIN_SIDE - 1, -32) for st in steps])
    for k, st, side in order:
        t = s_step * (side / recipe.img_size) ** 2
        est = plan_networks * k * _network_seconds(recipe.with_(steps=st), t, n_batches, n_eval_batches)
        tried = Budget(k, st, side, est, budget_s, est <= budget_s, "")
        if tried.fits:
            gave = [w for w, on in (("seeds", k < n_seeds), ("steps", st < most), ("image size", side < recipe.img_size))
                    if on]
            tried.why = (f"{k} seed(s) x {plan_networks} networks of {st} steps at {side} px: about {est / 60:.1f} "
                         f"of {budget_s / 60:g} minutes" + (f" ({', '.join(gave)} reduced to fit)" if gave else ""))
            return tried
    tried.why = (f"even {tried.seeds} seed x {plan_networks} networks of {tried.steps} steps at {tried.img_size} px "
                 f"take about {tried.estimate_s / 60:.1f} minutes, over the {budget_s / 60:g}-minute budget: "
                 "running that (--budget more, or fewer --tips)")
    return tried


def seconds_per_step(dls, recipe: Recipe, steps: int = 6) -> float:
    """Seconds per whole-network optimizer step of `recipe` on `dls`, timed over `steps` steps after one warm-up
    step (fastai's `ShortEpochCallback` stops the epoch there; `History` is left out, as nothing is validated)."""
    from fastai.callback.training import ShortEpochCallback
    learn = make_learner(dls, recipe.arch, weights=recipe.weights, depth="head", seed=recipe.seed)
    learn.unfreeze()
    n = len(dls.train)
    steps = max(1, min(steps, n - 1))   # an epoch holds n steps: the warm-up one and at most n - 1 timed
    times = []
    with learn.removed_cbs(learn.history), learn.no_bar(), learn.no_logging():
        for k in (1, 1 + steps):
            t0 = time.perf_counter()
            learn.fit(1, recipe.lr, cbs=ShortEpochCallback(pct=min(1.0, (k - 0.5) / n), short_valid=True))
            times.append(time.perf_counter() - t0)
    if n < 2:   # one batch an epoch: nothing to time after the warm-up, so the warm-up step itself (an over-estimate)
        return times[1]
    return max(1e-4, (times[1] - times[0]) / steps)


def _ablate_plan(recipe: Recipe, tips) -> pd.DataFrame:
    """`ablation_plan` of `recipe` with only the full, the plain and the configurations of `tips`."""
    plan = ablation_plan(recipe)
    return plan[(plan["tip"] == "") | plan["tip"].isin(list(tips))].reset_index(drop=True)


def _finished(runs: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    """The rows of `runs` an interrupted run can judge: the seeds every configuration finished, or (none) the first
    seed's rows."""
    if runs.empty:
        return runs
    n = runs.groupby("seed")["config"].nunique()
    whole = list(n[n == len(plan)].index)
    return runs[runs["seed"].isin(whole or [runs["seed"].iloc[0]])].reset_index(drop=True)


def _judged_tips(runs: pd.DataFrame, tips) -> list:
    """The tips of `tips` whose configurations are all in `runs` (the ensemble: two or more seeds)."""
    have = set(runs["config"]) if len(runs) else set()
    out = []
    for t in tips:
        if t == "ensemble":
            if {"full", "plain"} <= have and runs["seed"].nunique() >= 2:
                out.append(t)
        elif {"full", "plain", f"plain + {t}"} <= have and ({f"full - {t}", f"full + {t}"} & have):
            out.append(t)
    return out


def _configs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: balanced accuracy and accuracy on the held-out images (seeds pooled) with 95 % intervals,
    mean training seconds and the epoch kept."""
    out = metric_with_ci(runs, "config", "balanced_accuracy")
    acc = metric_with_ci(runs, "config", "accuracy")
    out["accuracy"], out["acc_low"], out["acc_high"] = acc["accuracy"].values, acc["low"].values, acc["high"].values
    more = runs.groupby("config", sort=False).agg(train_s=("train_s", "mean"), kept_epoch=("kept_epoch", "mean"),
                                                  seeds=("seed", "nunique"))
    return out.merge(more, left_on="config", right_index=True)


def _record(res: Results, runs, table, tips, chosen, choice, budget, skipped, interrupted, done, total, seconds):
    res.metric("ablate", dict(budget=asdict(budget), tips=list(tips), skipped_tips=skipped, interrupted=interrupted,
                              networks_finished=done, networks_planned=total, seconds=seconds,
                              configs=_configs_table(runs).to_dict("records") if len(runs) else [],
                              chosen_recipe=chosen.to_dict(), choices=choice.to_dict("records")))
    for tip in [t for t in tips if t in set(table.get("tip", []))]:
        row = table[(table["tip"] == tip) & (table["direction"] == "in the full recipe") &
                    (table["metric"] == "balanced_accuracy")].iloc[0]
        res.claim(f"{tip} (lesson {row['lesson']}) adds to the full recipe on these images",
                  Estimate(row["value"], row["low"], row["high"], "balanced_accuracy", "ablation, bootstrap"),
                  unit="balanced accuracy")
    if len(table):
        fig = plot_estimates(table, "tip", ["balanced_accuracy", "accuracy"], hue="direction",
                             title="what each tip was worth on these images (effect, 95 % interval)")
        for ax in fig.axes:
            ax.axvline(0, color="k", lw=0.8)
        res.figure(fig, "ablation")
    return res.save()


def ablate_folder(data_folder, recipe: Recipe, cfg: Profile, out, tips=ABLATION_TIPS, n_seeds: int = 2,
                  budget_min: float = BUDGET_MIN, valid_pct: float = 0.25, on_bad: str = "raise", steps=None,
                  log=print) -> AblationRun:
    """Run the ablation of `recipe` for `tips` on `data_folder` within `budget_min` minutes (`fit_budget`; `steps`
    given: that many whole-network steps per network and `n_seeds` seeds, no fitting) and write results/,
    report.html and recipe.json into `out`. Every input is checked before `out` is touched; Ctrl-C keeps what
    finished (`AblationRun.interrupted`)."""
    out = check_out(out, data_folder)
    asked = recipe if steps is None else recipe.with_(steps=int(steps))   # what recipe.json starts from
    split = recipe.seed
    dls = recipe_folder_dls(data_folder, recipe, cfg, valid_pct, TUNE_PCT, on_bad, split_seed=split)
    labels = [str(dls.train_ds.vocab[int(y)]) for _, y in dls.train_ds]
    tips, skipped = folder_tips(labels, list(tips), n_seeds)
    networks = trained_configs(_ablate_plan(recipe, tips))
    n_eval = len(dls.valid) + (len(dls.tune) if getattr(dls, "tune", None) is not None else 0)
    if steps is None:
        budget = fit_budget(recipe, networks, seconds_per_step(dls, recipe), len(dls.train), n_eval,
                            60.0 * budget_min, n_seeds)
    else:
        budget = Budget(n_seeds, int(steps), recipe.img_size, float("nan"), 60.0 * budget_min, True,
                        f"{n_seeds} seed(s) x {networks} networks of {steps} steps at {recipe.img_size} px, as given")
    recipe = recipe.with_(steps=budget.steps, img_size=budget.img_size)
    if "ensemble" in tips and budget.seeds < 2:
        tips.remove("ensemble")
        skipped["ensemble"] = "the budget left one seed: an ensemble averages two or more"
    plan = _ablate_plan(recipe, tips)
    seeds = [recipe.seed + i for i in range(budget.seeds)]
    log(f"convtips ablate: {len(tips)} tip(s) ({', '.join(tips)}), {len(plan)} configurations ({networks} networks "
        f"to train per seed) x {len(seeds)} seed(s), {budget.steps} steps each at {budget.img_size} px; "
        f"{budget.why}" + "".join(f"\n  not measured: {t}: {w}" for t, w in skipped.items()))

    def train(r: Recipe) -> Run:
        t0 = time.perf_counter()
        learn = fit_recipe(recipe_folder_dls(data_folder, r, cfg, valid_pct, TUNE_PCT, on_bad, split_seed=split), r)
        return Run.of(learn, r.to_dict(), time.perf_counter() - t0, kept_epoch=learn.kept_epoch)

    state = dict(rows=[], done=0, total=networks * len(seeds), t0=time.perf_counter())

    def progress(rows, done, total):
        state.update(rows=list(rows), done=done)
        last = rows[-1]
        log(f"  [{done}/{total}] {last['config']}, seed {last['seed']}: balanced accuracy on tune "
            f"{last.get('tune_balanced_accuracy', float('nan')):.3f}, {last['train_s']:.0f} s "
            f"({(time.perf_counter() - state['t0']) / 60:.1f} min so far)")

    with out_lock(make_out(out)):
        interrupted = False
        try:
            runs = run_plan(plan, train, seeds, on_run=progress)
        except KeyboardInterrupt:
            interrupted = True
            runs = _finished(pd.DataFrame(state["rows"]), plan)
            log(f"convtips ablate: interrupted after {state['done']} of {state['total']} networks: writing what "
                "finished")
        judged = _judged_tips(runs, tips)
        table = ablation_table(runs, tips=judged) if judged else pd.DataFrame()
        choice = (choose_recipe(runs, recipe, tips=[t for t in judged if t in TIPS])[1] if judged else pd.DataFrame())
        for row in choice.itertuples() if len(choice) else []:   # the switches, on the recipe as asked (its
            if row.switched:                                      # steps, not the budget's)
                asked = toggle_tip(asked, row.tip)[1]
        res = Results("ablate", cfg, seed=recipe.seed, out=out / "results")
        _record(res, runs, table, judged, asked, choice, budget, skipped, interrupted, state["done"],
                state["total"], time.perf_counter() - state["t0"])
        recipe_file = asked.save(out / "recipe.json")
        report = write_report(out / "results", out / "report.html")
    return AblationRun(runs, table, asked, budget, report, recipe_file, interrupted, skipped)
