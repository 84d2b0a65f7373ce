"""`convtips train`'s job as one library function: the course's recipe trained on a folder of images (one sub-folder per
class), evaluated, exported, recorded and reported, through the calls lesson 08 makes on your own images
(`train_recipe`, `recipe_eval`, `export_model`). Its one choice, the epoch whose weights are kept, is made on tune
images held out of the training images (`split_tune`), never on the validation images it reports accuracy on.

`train_folder` checks every input (the data folder, its classes and images; the recipe is checked when it is made)
before it touches the run folder --out, holds a lock file there while it trains, and writes model/ (weights.pth,
model.json, recipe.json), results/ (the record `train` and its figures) and report.html, which replaces the previous
one only once it is complete.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..core.measure import Evaluation
from ..core.profiles import Profile
from ..core.results import Results
from ..core.store import StorageError, writable_dir
from ..core.train import history, tune_loader
from ..topics.deploy import export_model
from ..topics.recipe import TUNE_PCT, Recipe, fit_recipe, recipe_eval, recipe_folder_dls
from ..ui.plots import plot_confusion, plot_history
from .report import write_report
from .runner import UsageError

__all__ = ["TrainedModel", "load_recipe", "train_folder"]

LOCK_FILE = ".convtips-train.lock"   # in --out while a `convtips train` writes there
_WRITTEN = ("model", "results")      # the folders a run writes into --out


@dataclass
class TrainedModel:
    """What `train_folder` made: the Learner, its validation Evaluation, the model folder, the report and the
    unreadable images left out (on_bad='skip')."""
    learn: object
    evaluation: Evaluation
    model_dir: Path
    report: Path
    skipped: list = field(default_factory=list)


def load_recipe(path: str | Path | None = None, **overrides) -> Recipe:
    """The recipe in the JSON file `path` (the course's recipe when None) with the settings in `overrides` that are
    not None."""
    recipe = Recipe.load(path) if path else Recipe()
    return Recipe.from_dict({**recipe.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})


def _rank() -> int:
    from fastai.torch_core import rank_distrib
    return rank_distrib()


def _record(learn, ev: Evaluation, recipe: Recipe, cfg: Profile, results: Path) -> Path:
    """Save the record `train` into `results`: the recipe, the validation metrics, the epoch chosen on the tune
    images (and how many there were), the unreadable images left out and the two figures."""
    res = Results("train", cfg, seed=recipe.seed, out=results)
    res.metric("recipe", recipe.to_dict())
    res.metric("validation", dict(ev.metrics, images=len(ev.y_true), per_class_recall=ev.per_class_recall))
    tune = tune_loader(learn.dls)
    res.metric("chosen_on_tune", dict(kept_epoch=getattr(learn, "kept_epoch", None),
                                      tune_images=0 if tune is None else len(tune.dataset)))
    res.metric("skipped_images", [str(p) for p in getattr(learn.dls, "skipped", [])])
    hist = history(learn)
    cols = ("train_loss", "valid_loss", "balanced_accuracy", *(["tune_balanced_accuracy"] if tune is not None else []))
    res.figure(plot_history(hist, cols, by="phase"), "history")
    res.figure(plot_confusion(ev), "confusion")
    return res.save()


def _check_out(out, data_folder) -> Path:
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


def _make_out(out: Path) -> Path:
    try:
        return writable_dir(out)
    except StorageError as e:
        raise UsageError(f"--out: {e}") from None


@contextmanager
def _out_lock(out: Path):
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


def _write_run(learn, recipe: Recipe, cfg: Profile, out: Path) -> TrainedModel:
    """Evaluate on the validation images, export <out>/model, record <out>/results, write <out>/report.html."""
    ev = recipe_eval(learn, recipe)
    model_dir = export_model(learn, out / "model", recipe.arch, recipe.img_size, resize="crop", metrics=ev.metrics)
    recipe.save(model_dir / "recipe.json")
    _record(learn, ev, recipe, cfg, out / "results")
    report = write_report(out / "results", out / "report.html")   # atomic: the old report until this one is whole
    return TrainedModel(learn, ev, model_dir, report, list(getattr(learn.dls, "skipped", [])))


def train_folder(data_folder: str | Path, recipe: Recipe, cfg: Profile, out: str | Path, valid_pct: float = 0.25,
                 distributed: bool = False, tune_pct: float = TUNE_PCT, on_bad: str = "raise") -> TrainedModel | None:
    """Train `recipe` on `data_folder` (with `keep_best`, the epoch chosen on `tune_pct` of the training images),
    evaluate on the validation images, export <out>/model, record and report; None on ranks other than 0.
    `on_bad='skip'`: unreadable images are left out (`TrainedModel.skipped`) instead of stopping the run. Every
    input is checked before `out` is touched; a second run into the same `out` is refused while this one holds it."""
    out = _check_out(out, data_folder)
    dls = recipe_folder_dls(data_folder, recipe, cfg, valid_pct, tune_pct, on_bad)
    writes = not (distributed and _rank())   # of several processes `accelerate launch` started, rank 0 writes
    with _out_lock(_make_out(out)) if writes else nullcontext():
        learn = fit_recipe(dls, recipe, distributed)
        return _write_run(learn, recipe, cfg, out) if writes else None
