"""`convtips train`'s job as one library function: the course's recipe trained on a folder of images (one sub-folder per
class), evaluated, exported, recorded and reported, through the calls lesson 08 makes on your own images
(`train_recipe`, `recipe_eval`, `export_model`). Its one choice, the epoch whose weights are kept, is made on tune
images held out of the training images (`split_tune`), never on the validation images it reports accuracy on.
For a folder the recipe adapts to the data (`FOLDER_RECIPE`): a budget of optimizer steps rather than epochs, the
learning rate fastai's `lr_find` suggests checked on the tune images against the recipe's, no flips unless the user
says they keep the class, and the images not upscaled past their own size. A plain baseline (an SVM on the raw
pixels of the same training images) is scored on the same validation images beside the network.

`train_folder` checks every input (the data folder, its classes and images; the recipe is checked when it is made)
before it touches the run folder --out, holds a lock file there while it trains, and writes model/ (weights.pth,
model.json, recipe.json), results/ (the record `train` and its figures) and report.html, which replaces the previous
one only once it is complete.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.measure import Estimate, Evaluation, bootstrap, paired_bootstrap, proportion, top_mistakes
from ..core.profiles import Profile
from ..core.results import Results
from ..core.store import StorageError, writable_dir
from ..core.train import history, tune_loader
from ..topics.deploy import export_model
from ..topics.recipe import (TUNE_PCT, Recipe, fit_recipe, native_img_size, pixel_baseline, recipe_eval,
                             recipe_folder_dls)
from ..ui.plots import plot_confusion, plot_history, show_images
from .report import write_report
from .runner import UsageError

__all__ = ["TrainedModel", "FOLDER_RECIPE", "STEPS", "load_recipe", "fit_img_size", "train_folder"]

LOCK_FILE = ".convtips-train.lock"   # in --out while a `convtips train` writes there
_WRITTEN = ("model", "results")      # the folders a run writes into --out


@dataclass
class TrainedModel:
    """What `train_folder` made: the Learner, its validation Evaluation, the model folder, the report and the
    unreadable images left out (on_bad='skip'), the baseline's figures and the record's held-out comparison."""
    learn: object
    evaluation: Evaluation
    model_dir: Path
    report: Path
    skipped: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)


STEPS = 500   # whole-network optimizer steps: what lesson 08's 8 epochs of ELPV's ~62 batches take
FOLDER_RECIPE = Recipe(policy="rotation", steps=STEPS, find_lr=True)   # rotation: bench/train_folders_tune.py   # the course's recipe, adapted to any folder


def load_recipe(path: str | Path | None = None, **overrides) -> Recipe:
    """The recipe in the JSON file `path` (`FOLDER_RECIPE` when None) with the settings in `overrides` that are not
    None; `epochs` given without `steps` trains that many epochs (no step budget)."""
    recipe = Recipe.load(path) if path else FOLDER_RECIPE
    d = {**recipe.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("epochs") is not None and overrides.get("steps") is None:
        d["steps"] = None
    return Recipe.from_dict(d)


def fit_img_size(data_folder, recipe: Recipe, valid_pct: float = 0.25) -> tuple:
    """(recipe, why): `recipe` at the folder's own image size (`native_img_size`, at most the recipe's) and why;
    the folder is read and checked as training will read it (`folder_table`)."""
    from ..core.data import folder_table
    with warnings.catch_warnings():   # training reads the folder again and warns then
        warnings.simplefilter("ignore")
        table = folder_table(data_folder, valid_pct, recipe.seed, on_bad="skip")
    side = native_img_size(table["path"], most=recipe.img_size)
    why = (f"{side} px: the images' median shorter side, rounded up to a multiple of 32 (at least 64, at most the "
           f"recipe's {recipe.img_size}): upscaling adds no detail and costs time; --img-size overrides")
    return recipe.with_(img_size=side), why


def _rank() -> int:
    from fastai.torch_core import rank_distrib
    return rank_distrib()


def _ci(est: Estimate) -> dict:
    return dict(value=est.effect, low=est.low, high=est.high)


def _scores(y_true, y_pred) -> dict:
    """Accuracy (exact binomial interval) and balanced accuracy (bootstrap interval) of predictions (N,)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    acc = proportion(int((y_true == y_pred).sum()), len(y_true), "accuracy")
    bal = bootstrap(y_true, {"m": y_pred}, lambda m: m["m"], "balanced_accuracy")
    return dict(accuracy=_ci(acc), balanced_accuracy=_ci(bal))


def held_out(ev: Evaluation, baseline: dict) -> dict:
    """The network and the baseline on the same validation images, each metric with its 95 % interval, and the
    paired difference network - baseline (bootstrap over the images)."""
    if not np.array_equal(np.asarray(baseline["y_true"]), np.asarray(ev.y_true)):
        raise ValueError("the baseline was scored on other validation images than the network: score both on "
                         "learn.dls.valid_ds, in its order")
    diff = {m: _ci(paired_bootstrap(ev.y_true, baseline["y_pred"], ev.y_pred, m)) for m in ("accuracy", "balanced_accuracy")}
    return dict(images=len(ev.y_true), network=_scores(ev.y_true, ev.y_pred),
                baseline=_scores(ev.y_true, baseline["y_pred"]), network_minus_baseline=diff)


def _augmentation(recipe: Recipe) -> dict:
    no_flips = "no flips, as a flip can change what an image means (a 6 and a 9, a left and a right arrow)"
    why = {"none": "no augmentation (the recipe's policy)",
           "rotation": f"rotations of up to 10 degrees, which keep a digit, a face or a cell what it is; {no_flips}: "
                       "pass --flips when flipped images keep their class",
           "flips+rotation": "rotations of up to 10 degrees and flips (horizontal and vertical): you said flipped "
                             "images keep their class (--flips)",
           "flips": "flips (horizontal and vertical): the recipe file says flipped images keep their class"}
    return dict(policy=recipe.policy, why=why.get(recipe.policy, f"the recipe's policy {recipe.policy!r}"))


def _chosen(learn, recipe: Recipe, notes: dict) -> dict:
    """What the run chose and why: the epochs of its step budget, the epoch kept on tune, the rate, the
    augmentation, the image size."""
    tune = tune_loader(learn.dls)
    lr = learn.lr_choice or dict(used=recipe.lr, why="the recipe's rate, as given (find_lr off)")
    budget = (f"a budget of {recipe.steps} optimizer steps over {len(learn.dls.train)} batches an epoch"
              if recipe.steps is not None else "the recipe's epochs (no step budget)")
    return dict(kept_epoch=getattr(learn, "kept_epoch", None), tune_images=0 if tune is None else len(tune.dataset),
                steps=recipe.steps, batches_per_epoch=len(learn.dls.train), epochs=getattr(learn, "n_epochs", None),
                epochs_why=budget, lr=lr, augmentation=_augmentation(recipe), img_size=recipe.img_size,
                img_size_why=notes.get("img_size", "the recipe's image size"))


def _mistakes_figure(rows) -> object:
    from ..core.data import rgb_image
    images = [rgb_image(r["path"]) for r in rows]
    titles = [f"{r['true']} -> {r['predicted']} {r['probability']:.2f}" for r in rows]
    return show_images(images, titles, ncols=min(6, len(rows)), inches=1.6,
                       suptitle="most confident mistakes (true -> predicted, probability)")


def _record(learn, ev: Evaluation, recipe: Recipe, cfg: Profile, results: Path, baseline: dict, figures: dict,
            notes: dict) -> Path:
    """Save the record `train` into `results`: the recipe, the validation metrics, the network and the baseline
    with intervals, what was chosen on the tune images and why, the most confident mistakes, the unreadable images
    left out and the figures."""
    res = Results("train", cfg, seed=recipe.seed, out=results)
    res.metric("recipe", recipe.to_dict())
    res.metric("validation", dict(ev.metrics, images=len(ev.y_true), per_class_recall=ev.per_class_recall))
    res.metric("held_out", figures)
    res.metric("baseline", {k: baseline[k] for k in ("model", "C", "tune_scores", "metrics", "seconds")})
    res.metric("chosen_on_tune", _chosen(learn, recipe, notes))
    worst = top_mistakes(ev, [str(p) for p in learn.dls.valid_ds.items], MISTAKES).to_dict("records")
    res.metric("confident_mistakes", worst)
    res.metric("skipped_images", [str(p) for p in getattr(learn.dls, "skipped", [])])
    hist = history(learn)
    tune = tune_loader(learn.dls)
    cols = ("train_loss", "valid_loss", "balanced_accuracy", *(["tune_balanced_accuracy"] if tune is not None else []))
    res.figure(plot_history(hist, cols, by="phase"), "history")
    res.figure(plot_confusion(ev), "confusion")
    if worst:
        res.figure(_mistakes_figure(worst), "mistakes")
    return res.save()


MISTAKES = 12   # the most confident mistakes the report shows


def check_out(out, data_folder) -> Path:
    """`out` resolved, refused when it lies inside the data folder (the next run would read its results/ as a
    class) or holds the data folder in a folder it writes (model/, results/)."""
    out, data = Path(out).expanduser().resolve(), Path(data_folder).expanduser().resolve()
    if out == data or data in out.parents:
        raise UsageError(f"--out {out} lies inside the data folder {data}: the next run would read its model/ and "
                         "results/ as images of a class; choose an --out outside it, e.g. --out runs/train")
    for name in _WRITTEN:
        if data == out / name or out / name in data.parents:
            raise UsageError(f"the data folder {data} lies inside {out / name}, which convtips train overwrites: "
                             "move the data, or choose another --out")
    return out


def make_out(out: Path) -> Path:
    try:
        return writable_dir(out)
    except StorageError as e:
        raise UsageError(f"--out: {e}") from None


@contextmanager
def out_lock(out: Path):
    """Hold <out>/`LOCK_FILE` while a run writes into `out` (released if the process dies); a second run is
    refused, naming it; removed at the end, also on error."""
    from filelock import FileLock, Timeout
    path = out / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"another convtips train is writing into {out} (it holds the lock file {path}): wait for it "
                         "to finish, or choose another --out") from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        lock.release()


def _write_run(learn, recipe: Recipe, cfg: Profile, out: Path, notes: dict) -> TrainedModel:
    """Evaluate on the validation images (and the baseline beside), export <out>/model, record <out>/results,
    write <out>/report.html."""
    ev = recipe_eval(learn, recipe)
    baseline = pixel_baseline(learn.dls)
    figures = held_out(ev, baseline)
    trained = recipe if learn.lr_choice is None else recipe.with_(lr=learn.lr_choice["used"], find_lr=False)
    model_dir = export_model(learn, out / "model", recipe.arch, recipe.img_size, resize="crop", metrics=ev.metrics)
    trained.save(model_dir / "recipe.json")   # the rate it trained at: training it again makes this model
    _record(learn, ev, recipe, cfg, out / "results", baseline, figures, notes)
    report = write_report(out / "results", out / "report.html")   # atomic: the old report until this one is whole
    return TrainedModel(learn, ev, model_dir, report, list(getattr(learn.dls, "skipped", [])), baseline, figures)


def train_folder(data_folder: str | Path, recipe: Recipe, cfg: Profile, out: str | Path, valid_pct: float = 0.25,
                 distributed: bool = False, tune_pct: float = TUNE_PCT, on_bad: str = "raise",
                 notes: dict | None = None) -> TrainedModel | None:
    """Train `recipe` on `data_folder` (with `keep_best`, the epoch chosen on `tune_pct` of the training images;
    with `find_lr`, the rate too), evaluate on the validation images beside a plain baseline, export <out>/model,
    record and report; None on ranks other than 0. `on_bad='skip'`: unreadable images are left out
    (`TrainedModel.skipped`) instead of stopping the run. `notes` {setting: why}: reasons the caller chose a setting
    for (e.g. img_size), for the report. Every input is checked before `out` is touched; a second run into the same
    `out` is refused while this one holds it."""
    out = check_out(out, data_folder)
    dls = recipe_folder_dls(data_folder, recipe, cfg, valid_pct, tune_pct, on_bad)
    writes = not (distributed and _rank())   # of several processes `accelerate launch` started, rank 0 writes
    with out_lock(make_out(out)) if writes else nullcontext():
        learn = fit_recipe(dls, recipe, distributed)
        return _write_run(learn, recipe, cfg, out, notes or {}) if writes else None
