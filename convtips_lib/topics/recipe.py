"""The recipe (lesson 08): the course's tips as one configuration — a pretrained backbone, fine-tuning head first,
augmentation, balanced sampling where the data asks for it, a one-cycle schedule, test-time augmentation, and how
long to train chosen on held-out tune images (never on the images that report the accuracy) — trained on any folder
of images through the library's one training path. `convtips train DATA_FOLDER` runs it on a user's folder, adapted
to the data: a budget of optimizer steps instead of epochs (`steps`), fastai's `lr_find` suggestion checked on the
tune images (`find_lr`), and a plain baseline beside it (`pixel_baseline`); the lesson's ablation, baseline and
error analysis are in `studies.lesson08`."""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from fastai.vision.all import Callback

from ..core.compat import renamed_kwargs, warn_deprecated
from ..core.data import attach_tune, folder_dls, stratified_pick
from ..core.measure import Evaluation, classification_metrics, evaluate
from ..core.store import atomic_write
from ..core.train import FIT_SCHEDULES, History, check_trains, fit, make_learner, select_lr, tune_loader
from .augment import POLICIES, policy_tfms
from .imbalance import oversample_weights

__all__ = ["Recipe", "BALANCES", "WEIGHTS", "TTA_PASSES", "TUNE_PCT", "BestOnTune", "split_tune", "train_recipe",
           "fit_recipe", "recipe_eval", "n_epochs", "found_lr", "choose_lr", "LR_PROBE", "pixel_baseline",
           "BASELINE_SIZE", "BASELINE_CS", "native_img_size"]

BALANCES = ("none", "oversample")   # lesson 04: plain sampling, or every class drawn equally often
WEIGHTS = ("imagenet", None)        # lesson 01: the published ImageNet weights, or a random initialisation


_WHOLE = {   # the recipe's whole-number settings: (lowest, highest, what they count)
    "img_size": (32, 2048, "px, the side of the square input; the networks halve it five times"),
    "freeze_epochs": (0, 1000, "epochs of the new head alone"),
    "epochs": (1, 1000, "epochs of the whole network"),
    "bs": (2, 4096, "images per batch; batch norm needs two"),
    "seed": (0, 2 ** 32 - 1, "numpy's range"),
}
_STEPS = (1, 10 ** 6, "optimizer steps of the whole network, or null: train `epochs` epochs")


def _check_whole(name: str, value, lo: int, hi: int, what: str) -> None:
    """A ValueError naming the recipe setting, its value and its range unless `value` is a whole number in it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"recipe {name} must be a whole number from {lo:,} to {hi:,} ({what}), got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """Every choice of a training recipe. The defaults are lesson 08's cpu recipe (EfficientNet-Lite0 at 160 px,
    at most 1 + 8 epochs; bench/results/ holds what it measured); the gpu profile trains it at 224 px for longer.
    With `keep_best` the epochs are a budget: the weights kept are those after the epoch whose tune images (held out
    of the training images) scored best, so how long to train is chosen without the images that report accuracy.
    With `steps` the budget is in optimizer steps, the same on a folder of 300 images as on one of 3,000."""
    arch: str = "efficientnet_lite0"   # lesson 01: a published architecture ...
    weights: str | None = "imagenet"   # ... with its ImageNet weights (None: a random initialisation)
    img_size: int = 160                # px, square
    freeze_epochs: int = 1             # lesson 02: the new head alone first (fastai's fine_tune) ...
    epochs: int = 8                    # ... then the whole network (0 head epochs: the whole network throughout)
    lr: float = 2e-3                   # peak learning rate (Adam)
    bs: int = 32
    policy: str = "flips"              # lesson 03: augmentation policy (`POLICIES`)
    balance: str = "none"              # lesson 04: `BALANCES`; plain, as ELPV's 1:2.2 is mild and the benchmark's
                                       # metric is accuracy (lesson 08's tune cells may switch it on)
    schedule: str = "one-cycle"        # lesson 05: warm-up and annealing (fastai's one-cycle), or "constant"
    tta: bool = True                   # lesson 06: fastai's test-time augmentation at evaluation
    keep_best: bool = True             # lessons 00/08: keep the epoch the tune images scored best (balanced accuracy)
    seed: int = 42
    steps: int | None = None           # a budget of whole-network optimizer steps instead of `epochs`: the epochs
                                       # are as many as it takes on the data (`n_epochs`); None: `epochs` epochs
    find_lr: bool = False              # fastai's lr_find suggestion tried beside `lr`, the better on tune used

    def __post_init__(self):
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ValueError(f"recipe arch must be an architecture name such as 'efficientnet_lite0', got {self.arch!r}")
        for name, (lo, hi, what) in _WHOLE.items():
            _check_whole(name, getattr(self, name), lo, hi, what)
            object.__setattr__(self, name, int(getattr(self, name)))   # numpy's integers as JSON's
        if self.steps is not None:
            _check_whole("steps", self.steps, *_STEPS)
            object.__setattr__(self, "steps", int(self.steps))
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:   # NaN fails 0 < lr too
            raise ValueError(f"recipe lr must be a number between 0 and 1 (e.g. 2e-3), got {lr!r}")
        for name, choices in (("policy", POLICIES), ("balance", BALANCES), ("schedule", FIT_SCHEDULES)):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in choices:
                raise ValueError(f"recipe {name} {v!r} is unknown: choose one of {', '.join(choices)}")
        for name in ("tta", "keep_best", "find_lr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"recipe {name} must be true or false, got {getattr(self, name)!r}")
        self._check_weights()

    def _check_weights(self) -> None:
        if isinstance(self.weights, bool):   # the deprecated pretrained flag's values, as Recipe(pretrained=) passes
            object.__setattr__(self, "weights", "imagenet" if self.weights else None)
        if self.weights not in WEIGHTS:
            raise ValueError(f"recipe weights must be 'imagenet' (the published ImageNet weights) or None (JSON null: "
                             f"a random initialisation), got {self.weights!r}")

    @property
    def pretrained(self) -> bool:
        """Deprecated: whether the recipe starts from ImageNet weights; read `weights` instead."""
        warn_deprecated("Recipe.pretrained is deprecated: read recipe.weights ('imagenet' or None)")
        return self.weights is not None

    def with_(self, **kw) -> "Recipe":
        """A copy with some settings changed (checked like the original), e.g. `recipe.with_(epochs=2)`."""
        keep = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in kw}
        if "pretrained" in kw:    # the deprecated flag stands for weights (with a warning)
            keep.pop("weights", None)
        return type(self)(**keep, **kw)

    def to_dict(self) -> dict:
        """The recipe as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """A recipe from a dict such as `to_dict` gives (an older one's `pretrained` is read as `weights`, with a
        warning); an unknown key is refused, naming the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known) - {"pretrained"})
        if unknown:
            raise ValueError(f"unknown recipe setting(s) {', '.join(unknown)}: the settings are {', '.join(known)}")
        return cls(**d)

    def save(self, path) -> Path:
        """Write the recipe as JSON, atomically."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a recipe JSON file written by `save` (or by hand)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read recipe file {path} ({e}): give a JSON file such as Recipe().save() "
                             "writes") from e
        if not isinstance(d, dict):
            raise ValueError(f"recipe file {path} must hold a JSON object of settings, got {type(d).__name__}")
        return cls.from_dict(d)


Recipe.__init__ = renamed_kwargs(pretrained="weights")(Recipe.__init__)   # older code and recipe files


TUNE_PCT = 0.2   # share of a folder's training images held out as tune images (stratified by class)


class BestOnTune(Callback):
    """Choosing how long to train on the tune images: after every epoch whose tune images (`dls.tune`, predicted by
    `History`) score best so far on `metric` (a tie broken by the lower tune loss, so a few tune images that are all
    right already do not keep an under-trained epoch; then the earliest), a copy of the weights;
    `restore(model)` loads them back and gives that epoch (1-based). Never reads the validation (test) images."""
    order = History.order + 1   # after History has predicted the tune images

    def __init__(self, metric: str = "balanced_accuracy"):
        self.metric, self.score, self.kept, self.weights, self.n_scored = metric, (-np.inf, -np.inf), None, None, 0

    def after_epoch(self):
        hist = self.learn.history
        if len(hist.tune_probs) == self.n_scored:   # not a training epoch (get_preds, tta), or no tune images
            return
        self.n_scored = len(hist.tune_probs)
        probs = np.asarray(hist.tune_probs[-1])
        nll = -float(np.mean(np.log(np.clip(probs[np.arange(len(probs)), np.asarray(hist.tune_y)], 1e-12, None))))
        score = (classification_metrics(hist.tune_y, probs.argmax(1))[self.metric], -nll)
        if score > self.score:
            self.score, self.kept = score, self.n_scored
            self.weights = {k: v.detach().clone() for k, v in _unwrapped(self.learn.model).state_dict().items()}

    def restore(self, model) -> int | None:
        """Load the kept epoch's weights into `model`; that epoch, 1-based (None if no epoch was scored)."""
        if self.weights is not None:
            _unwrapped(model).load_state_dict(self.weights)
        return self.kept


def _unwrapped(model):
    """The network inside a (Distributed)DataParallel wrapper, as `accelerate launch` trains it, or `model` itself."""
    from torch import nn
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def _labels(ds) -> list:
    """The class name of every item of a fastai Datasets (its last TfmdLists: the labels), in order."""
    return [str(ds.vocab[int(ds.tls[-1][i])]) for i in range(len(ds))]


def split_tune(dls, tune_pct: float = TUNE_PCT, seed: int = 0, balance: str = "none"):
    """Hold a stratified `tune_pct` of `dls`' training images out as `dls.tune` (validation transforms, in order):
    the images a choice reads. The others train (over-sampled per class with `balance` 'oversample'); the
    validation images, which report the accuracy, are untouched. A class with one training image keeps it."""
    from fastai.callback.data import WeightedDL
    from fastai.data.core import Datasets
    ds = dls.train_ds
    labels = _labels(ds)
    pick = stratified_pick(labels, tune_pct, seed) if tune_pct else np.zeros(len(labels), dtype=bool)
    keep = [i for i in range(len(labels)) if not pick[i]]
    if pick.any():
        fit_ds = Datasets(tls=[tl._new([tl.items[i] for i in keep], split_idx=0) for tl in ds.tls], n_inp=ds.n_inp)
        # fastai's own `test_set` builds a subset the same way; a batch at most as large as what is left to train on
        dls.train = dls.train.new(fit_ds, bs=min(dls.train.bs, len(keep)))
        attach_tune(dls, [ds.items[i] for i in np.flatnonzero(pick)])
    if balance == "oversample":
        fit_labels = [labels[i] for i in keep]
        per_class = oversample_weights(fit_labels)
        dls.train = dls.train.new(dls.train_ds, cls=WeightedDL, wgts=[per_class[c] for c in fit_labels])
    return dls


def n_epochs(recipe: Recipe, n_batches: int) -> int:
    """Whole-network epochs of `recipe` on a loader of `n_batches` batches an epoch: `recipe.epochs`, or with a
    `steps` budget the whole number of epochs nearest to it (at least 1, at most 1,000)."""
    if recipe.steps is None:
        return recipe.epochs
    return int(min(1000, max(1, round(recipe.steps / max(1, n_batches)))))


def _fit(dls, recipe: Recipe, distributed: bool = False):
    """A Learner for `recipe` trained once at `recipe.lr` (`fit_recipe` without the learning-rate choice)."""
    learn = make_learner(dls, recipe.arch, weights=recipe.weights, depth="head", seed=recipe.seed)
    check_trains(learn)
    best = BestOnTune() if recipe.keep_best and tune_loader(dls) is not None else None
    if best is not None:
        learn.add_cb(best)
    if distributed:
        import fastai.distributed  # noqa: F401  (adds Learner.distrib_ctx; needs accelerate)
        import torch
        ctx = learn.distrib_ctx(sync_bn=torch.cuda.is_available())   # one process unless accelerate launched more
    else:
        ctx = nullcontext()
    learn.n_epochs = epochs = n_epochs(recipe, len(dls.train))
    with ctx:
        if recipe.freeze_epochs:
            fit(learn, epochs, recipe.lr, fine_tune=True, freeze_epochs=recipe.freeze_epochs,
                schedule=recipe.schedule)
        else:                               # no head-only phase: the whole network from the first step
            learn.unfreeze()
            fit(learn, epochs, recipe.lr, schedule=recipe.schedule)
    learn.kept_epoch = None
    if best is not None:
        learn.remove_cb(best)
        learn.kept_epoch = best.restore(learn.model)
    return learn


def fit_recipe(dls, recipe: Recipe, distributed: bool = False):
    """A Learner for `recipe.arch` on `dls`, trained as the recipe says: fastai's fine_tune (the head alone for
    `freeze_epochs`, then the whole network for `n_epochs`) or, with 0 head epochs, the whole network throughout;
    one-cycle or a constant rate. With `keep_best` and tune images (`dls.tune`) the weights after the epoch they
    scored best are kept (`learn.kept_epoch`, 1-based; None when nothing was chosen: every epoch trained, the last
    kept). With `find_lr` the rate is chosen first (`choose_lr`, `learn.lr_choice`; else None).
    `distributed`: inside fastai's `distrib_ctx`, so `accelerate launch` spreads it over GPUs."""
    choice = choose_lr(dls, recipe) if recipe.find_lr else None
    learn = _fit(dls, recipe.with_(lr=choice["used"], find_lr=False) if choice else recipe, distributed)
    learn.lr_choice = choice
    return learn


LR_PROBE = 4          # a learning-rate probe trains 1/LR_PROBE of the recipe's budget (steps, or epochs)
LR_FIND_ITERS = 100   # fastai's lr_find default: mini-batches at rising rates


def found_lr(dls, recipe: Recipe) -> float:
    """fastai's `lr_find` suggestion (its valley) for `recipe` on `dls`' training images, as the recipe's first
    phase trains (the head alone when `freeze_epochs`); the weights are put back afterwards."""
    import tempfile
    learn = make_learner(dls, recipe.arch, weights=recipe.weights, depth="head", seed=recipe.seed)
    if not recipe.freeze_epochs:
        learn.unfreeze()
    with tempfile.TemporaryDirectory() as tmp, learn.no_bar(), learn.no_logging():
        learn.path = Path(tmp)   # lr_find saves the weights there and loads them back
        return float(learn.lr_find(num_it=LR_FIND_ITERS, show_plot=False).valley)


def _probe(recipe: Recipe) -> Recipe:
    """`recipe` at 1/`LR_PROBE` of its budget, at its own rate."""
    if recipe.steps is not None:
        return recipe.with_(steps=max(1, recipe.steps // LR_PROBE), find_lr=False)
    return recipe.with_(epochs=max(1, recipe.epochs // LR_PROBE), find_lr=False)


def _tune_score(learn) -> float:
    """The best tune balanced accuracy of `learn`'s epochs (what `keep_best` would keep)."""
    return max(float(r.get("tune_balanced_accuracy", -1.0)) for r in learn.history.rows)


def choose_lr(dls, recipe: Recipe) -> dict:
    """The rate to train `recipe` at: fastai's `lr_find` suggestion (`found_lr`) against the recipe's `lr`, each
    trained for a probe (`_probe`) and scored on the tune images (`dls.tune`; ties to the recipe's rate, never the
    validation images); without tune images the suggestion, unchecked. dict(found, default, used, probe_steps,
    probe_epochs, tune_scores {rate: score}, why)."""
    found = float(np.clip(found_lr(dls, recipe), 1e-6, 0.5))
    probe = _probe(recipe)
    out = dict(found=found, default=recipe.lr, used=found, probe_steps=probe.steps, probe_epochs=None,
               tune_scores={}, why="")
    if tune_loader(dls) is None:
        return dict(out, why=f"lr_find suggested {found:.2g}; no tune images to check it on: used as found")
    out["probe_epochs"] = n_epochs(probe, len(dls.train))
    used, scores = select_lr(lambda lr: _tune_score(_fit(dls, probe.with_(lr=lr))), [recipe.lr, found])
    said = "; ".join(f"{lr:.2g} scored {sc:.3f}" for lr, sc in scores.items())
    return dict(out, used=used, tune_scores={f"{lr:.3g}": sc for lr, sc in scores.items()},
                why=f"lr_find suggested {found:.2g}, the recipe's rate is {recipe.lr:.2g}; trained "
                    f"{out['probe_epochs']} epoch(s) at each, on the {len(dls.tune.dataset)} tune images {said} "
                    f"(balanced accuracy, ties to the recipe's rate): {used:.2g} used")


def recipe_folder_dls(path, recipe: Recipe, cfg, valid_pct: float = 0.25, tune_pct: float = TUNE_PCT,
                      on_bad: str = "raise", split_seed: int | None = None):
    """The DataLoaders `train_recipe` trains on: the image folder `path` read and checked by `folder_dls` (at the
    recipe's size, batch, seed and augmentation; on_bad='skip' leaves unreadable images out, as `dls.skipped`), with
    `tune_pct` of the training images held out (`split_tune`) when the recipe keeps its best epoch. `split_seed`
    (default: the recipe's seed) draws the validation and tune images: fixed, runs over seeds share them."""
    split = recipe.seed if split_seed is None else split_seed
    dls = folder_dls(path, cfg, valid_pct, tfms=policy_tfms(recipe.policy, recipe.img_size), seed=recipe.seed,
                     bs=recipe.bs, img_size=recipe.img_size, on_bad=on_bad, split_seed=split)
    return split_tune(dls, tune_pct if recipe.keep_best else 0.0, split, recipe.balance)


def train_recipe(path, recipe: Recipe, cfg, valid_pct: float = 0.25, distributed: bool = False,
                 tune_pct: float = TUNE_PCT, on_bad: str = "raise"):
    """Train `recipe` on the image folder `path` (class sub-folders, or train/ and valid/): the fine-tuned
    Learner. `valid_pct` of the images (or valid/) report its accuracy; with `keep_best`, `tune_pct` of the
    training images are held out (`split_tune`) to choose the epoch on. One Learner: every tip is a transform, a
    sampler or a setting of fit."""
    return fit_recipe(recipe_folder_dls(path, recipe, cfg, valid_pct, tune_pct, on_bad), recipe, distributed)


TTA_PASSES = 5   # fastai's tta: 4 augmented passes and the plain image (forward passes per image)


def recipe_eval(learn, recipe: Recipe, dl=None) -> Evaluation:
    """The `Evaluation` of `dl` (default the validation set; e.g. `learn.dls.tune` to choose on), through fastai's
    `tta` when the recipe asks for it."""
    if not recipe.tta:
        return evaluate(learn, dl)
    with learn.no_bar(), learn.no_logging():
        probs, y = learn.tta(dl=dl, n=TTA_PASSES - 1)
    return Evaluation.of(list(learn.dls.vocab), y.numpy(), probs.argmax(1).numpy(), np.asarray(probs))




BASELINE_SIZE = 16                 # px: the plain baseline reads the images as 16 x 16 gray pixels
BASELINE_CS = (0.1, 1.0, 10.0)     # the RBF SVM's C, chosen on the tune images


def _xy(ds, vocab: list, img_size: int) -> tuple:
    """((N, img_size**2) gray pixels in [0, 1], (N,) class indices in `vocab`) of a fastai Datasets, in order."""
    from .handcrafted import gray_images
    x = gray_images([str(p) for p in ds.items], img_size).reshape(len(ds.items), -1)
    return x, np.array([vocab.index(c) for c in _labels(ds)])


def pixel_baseline(dls, img_size: int = BASELINE_SIZE, Cs=BASELINE_CS) -> dict:
    """A plain baseline beside the network: an RBF SVM (`svm_baseline`) on the raw `img_size` px gray pixels of
    `dls`' training images (the tune images held out, as for the network), its C the one of `Cs` the tune images
    score best (balanced accuracy, ties to the first; the first without tune images), scored on the validation
    images in their order: dict(model, C, tune_scores, metrics, y_true, y_pred, seconds)."""
    import time
    from .handcrafted import svm_baseline
    t0, vocab = time.perf_counter(), [str(v) for v in dls.vocab]
    x, y = _xy(dls.train_ds, vocab, img_size)
    scores = {}
    if tune_loader(dls) is not None and len(Cs) > 1:
        xt, yt = _xy(dls.tune.dataset, vocab, img_size)
        scores = {C: svm_baseline(x, y, xt, yt, C=C, kernel="rbf")["metrics"]["balanced_accuracy"] for C in Cs}
    C = max(scores, key=scores.get) if scores else Cs[0]
    res = svm_baseline(x, y, *_xy(dls.valid_ds, vocab, img_size), C=C, kernel="rbf")
    return dict(model=f"RBF SVM on {img_size} x {img_size} gray pixels (scikit-learn)", C=C,
                tune_scores={f"{c:g}": s for c, s in scores.items()}, metrics=res["metrics"], y_true=res["y_true"],
                y_pred=res["y_pred"], seconds=time.perf_counter() - t0)


def native_img_size(paths, most: int = 160, least: int = 64) -> int:
    """px: the median shorter side of the images at `paths`, rounded up to a multiple of 32, within [`least`,
    `most`]: small images are not upscaled past the detail they hold (a step at 160 px costs ~6x one at 64 px)."""
    from PIL import Image
    sides = []
    for p in paths:
        with Image.open(p) as im:   # reads the header only
            sides.append(min(im.size))
    side = int(np.ceil(np.median(sides) / 32) * 32) if sides else most
    return int(min(most, max(least, side)))
