"""`convtips train`'s job as one library function: the course's recipe trained on a folder of images (one sub-folder per
class), evaluated, exported, recorded and reported, through the calls lesson 08 makes on your own images
(`train_recipe`, `recipe_eval`, `export_model`). Its one choice, the epoch whose weights are kept, is made on tune
images held out of the training images (`split_tune`), never on the validation images it reports accuracy on.

`train_folder` writes into a run folder (`runner.prepare_out`): model/ (weights.pth, model.json, recipe.json),
results/ (the record `train` and its figures) and report.html.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.measure import Evaluation
from ..core.profiles import Profile
from ..core.results import Results
from ..core.train import history
from ..topics.deploy import export_model
from ..core.train import tune_loader
from ..topics.recipe import TUNE_PCT, Recipe, recipe_eval, train_recipe
from ..ui.plots import plot_confusion, plot_history
from .report import write_report

__all__ = ["TrainedModel", "load_recipe", "train_folder"]


@dataclass
class TrainedModel:
    """What `train_folder` made: the Learner, its validation Evaluation, the model folder and the report."""
    learn: object
    evaluation: Evaluation
    model_dir: Path
    report: Path


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
    images (and how many there were) and the two figures."""
    res = Results("train", cfg, seed=recipe.seed, out=results)
    res.metric("recipe", recipe.to_dict())
    res.metric("validation", dict(ev.metrics, images=len(ev.y_true), per_class_recall=ev.per_class_recall))
    tune = tune_loader(learn.dls)
    res.metric("chosen_on_tune", dict(kept_epoch=getattr(learn, "kept_epoch", None),
                                      tune_images=0 if tune is None else len(tune.dataset)))
    hist = history(learn)
    cols = ("train_loss", "valid_loss", "balanced_accuracy", *(["tune_balanced_accuracy"] if tune is not None else []))
    res.figure(plot_history(hist, cols, by="phase"), "history")
    res.figure(plot_confusion(ev), "confusion")
    return res.save()


def train_folder(data_folder: str | Path, recipe: Recipe, cfg: Profile, out: str | Path, valid_pct: float = 0.25,
                 distributed: bool = False, tune_pct: float = TUNE_PCT) -> TrainedModel | None:
    """Train `recipe` on `data_folder` (with `keep_best`, the epoch chosen on `tune_pct` of the training images),
    evaluate on the validation images, export <out>/model, record and report; None on ranks other than 0."""
    out = Path(out)
    learn = train_recipe(data_folder, recipe, cfg, valid_pct, distributed=distributed, tune_pct=tune_pct)
    if distributed and _rank():   # one of several processes `accelerate launch` started: rank 0 writes
        return None
    ev = recipe_eval(learn, recipe)
    model_dir = export_model(learn, out / "model", recipe.arch, recipe.img_size, resize="crop", metrics=ev.metrics)
    recipe.save(model_dir / "recipe.json")
    _record(learn, ev, recipe, cfg, out / "results")
    return TrainedModel(learn, ev, model_dir, write_report(out / "results", out / "report.html"))
