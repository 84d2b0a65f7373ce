"""Lesson 03's studies: augmentation policies x data size, a strength sweep, robustness to a simulated camera,
crops that cut the defect away, and the speed of the augmentation pipeline. Every run trains on the train cells and
predicts the tune cells after each epoch (`elpv_dls(..., tune=True)`): the lesson's choices (the best policy, the
best strength, when to stop) read those, and the test cells only judge."""
from __future__ import annotations

import time
import warnings
from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Callback, Pipeline
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..core.compat import renamed_kwargs
from ..core.data import elpv_dls
from ..core.env import seed_everything
from ..core.measure import Estimate, bootstrap, evaluate, proportion, stack_preds
from ..core.train import Run, best_epoch, fit, make_learner, run_grid, valid_preds
from ..topics.augment import TorchAug, policy_tfms

__all__ = ["train_policy", "COMPARED", "policy_grid", "strength_sweep", "aug_gain", "gain_change", "CAMERAS",
           "camera_shift", "camera_eval", "robustness_gain", "CROP_SCALES", "MISLABEL_SHARE", "crop_probe",
           "PIPELINES", "pipeline_speed"]


MISLABEL_SHARE = 0.05        # "a crop can mislabel": more than 1 in 20 crops of a defective cell lose the defect

CROP_SCALES = (0.08, 0.2, 0.35, 0.6, 1.0)   # share of the cell's area a crop keeps: Inception's min, fastbook's 0.35


def policy_epochs(cfg, frac: float) -> int:
    """Epochs of every policy run at training fraction `frac`: its entry in `cfg.aug.epochs` (one per `cfg.aug.fracs`),
    so every policy at a fraction gets the same optimizer steps."""
    if frac not in cfg.aug.fracs:
        raise ValueError(f"no epochs for fraction {frac} in profile {cfg.name!r}: use one of cfg.aug.fracs "
                         f"{cfg.aug.fracs}, or pass epochs=")
    return cfg.aug.epochs[list(cfg.aug.fracs).index(frac)]


class StepTimer(Callback):
    """Seconds of each training step (forward, backward, optimizer) and of waiting for its batch (loading and
    batch transforms), the first batch of each epoch left out (worker start-up)."""
    order = 0

    def before_fit(self):
        self.step_s, self.wait_s, self._end = [], [], None

    def before_epoch(self):
        self._end = None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def before_batch(self):
        if self.training:
            self._sync()
            self._t = time.perf_counter()
            if self._end is not None:
                self.wait_s.append(self._t - self._end)

    def after_batch(self):
        if self.training:
            self._sync()
            self._end = time.perf_counter()
            self.step_s.append(self._end - self._t)


def train_policy(cfg, policy: str, frac: float, strength: float = 1.0, seed: int | None = None,
                 epochs: int | None = None, arch: str | None = None) -> Run:
    """Fine-tune the whole pretrained `arch` under one augmentation policy for `epochs` (default `policy_epochs`) on
    `frac` of the train cells, the tune cells predicted after every epoch: its `Run` (settings policy, strength,
    frac, seed, epochs; extra n_train, steps, the last losses, `best_tune_epoch` (the epoch the tune cells would
    stop at, `best_epoch`), and the step timings: step_s, wait_s per batch and data_share, the share of a step
    spent waiting for data)."""
    arch = arch or cfg.arch
    seed = cfg.seed if seed is None else seed
    epochs = policy_epochs(cfg, frac) if epochs is None else epochs
    t = time.perf_counter()
    dls = elpv_dls(cfg, frac=frac, seed=seed, tfms=policy_tfms(policy, cfg.img_size, strength), tune=True)
    timer = StepTimer()
    learn = make_learner(dls, arch, weights="imagenet", depth="none", cbs=[timer], seed=seed)
    last = fit(learn, epochs, cfg.lr).iloc[-1]
    wait = float(np.median(timer.wait_s)) if timer.wait_s else float("nan")
    run = Run.of(learn, dict(policy=policy, strength=strength, frac=frac, seed=seed, epochs=epochs),
                 time.perf_counter() - t, n_train=len(dls.train_ds), steps=epochs * len(dls.train),
                 train_loss=last["train_loss"], valid_loss=last["valid_loss"],
                 data_share=wait / (wait + float(np.median(timer.step_s))),   # of a training step's time, medians
                 step_s=np.array(timer.step_s), wait_s=np.array(timer.wait_s))
    run.extra["best_tune_epoch"] = best_epoch(run)
    return run


COMPARED = ("none", "flips", "flips+crop+rotation", "everything")   # the policies of the main comparison


def policy_grid(cfg, policies=COMPARED, fracs=None, seeds=None) -> tuple:
    """`train_policy` for every (fraction, policy, seed) (default: `cfg.aug.fracs`, `cfg.n_seeds` seeds):
    (runs table, histories, {(policy, frac): learner of the first seed})."""
    seeds = cfg.seeds(cfg.n_seeds) if seeds is None else seeds
    cells = [dict(policy=p, frac=f) for f in fracs or cfg.aug.fracs for p in policies]
    runs = run_grid(lambda policy, frac, seed: train_policy(cfg, policy, frac, seed=seed), cells, seeds)
    learners = {}
    for run in runs:
        learners.setdefault((run.settings["policy"], run.settings["frac"]), run.learn)
    hists = [r.history.assign(policy=r.settings["policy"], frac=r.settings["frac"], strength=1.0) for r in runs]
    return pd.DataFrame([r.row() for r in runs]), pd.concat(hists, ignore_index=True), learners


def strength_sweep(cfg, runs: pd.DataFrame, policy: str = "everything", strengths=None,
                   frac: float | None = None) -> pd.DataFrame:
    """`policy` at each of `cfg.aug.strengths` (x its published magnitudes) at the small fraction, reusing the runs
    already in `runs` (strength 0 = its 'none' run, strength 1 = its `policy` run); each row has the tune cells'
    `tune_<metric>`, so `best_on_tune(sweep)` chooses a strength without the test cells."""
    frac = min(cfg.aug.fracs) if frac is None else frac
    at = runs[runs["frac"] == frac]
    rows = []
    for s in strengths or cfg.aug.strengths:
        done = at[(at["policy"] == ("none" if s == 0 else policy)) & (at["seed"] == cfg.seed)]
        done = done[done["strength"] == 1.0] if s in (0, 1) else done.iloc[:0]
        rows.append(done.iloc[0].to_dict() if len(done) else train_policy(cfg, policy, frac, s).row())
        rows[-1]["strength"] = s
    return pd.DataFrame(rows)


def _gain(m: dict, frac, policies) -> np.ndarray:
    return np.mean([m[(p, frac)] for p in policies], 0) - m[("none", frac)]


def aug_gain(runs: pd.DataFrame, frac=None, metric: str = "balanced_accuracy", n: int = 2000,
             seed: int = 0) -> Estimate:
    """Mean metric of the augmentation policies minus no augmentation, at `frac` (default: averaged over the
    fractions), every model resampled on the same validation images."""
    policies = [p for p in runs["policy"].unique() if p != "none"]
    fracs = sorted(runs["frac"].unique()) if frac is None else [frac]
    stat = lambda m: np.mean([_gain(m, f, policies) for f in fracs], 0)  # noqa: E731
    return bootstrap(runs["y_true"].iloc[0], stack_preds(runs, ["policy", "frac"]), stat, metric, n, seed)


def gain_change(runs: pd.DataFrame, metric: str = "balanced_accuracy", n: int = 2000, seed: int = 0) -> Estimate:
    """How much more augmentation gains with the least data: gain(smallest fraction) - gain(largest)."""
    policies = [p for p in runs["policy"].unique() if p != "none"]
    lo, hi = runs["frac"].min(), runs["frac"].max()
    stat = lambda m: _gain(m, lo, policies) - _gain(m, hi, policies)  # noqa: E731
    return bootstrap(runs["y_true"].iloc[0], stack_preds(runs, ["policy", "frac"]), stat, metric, n, seed)


# ------------------------------------------------------------------ robustness to a different camera
CAMERAS = {   # a simulated camera: gamma (response curve), then contrast and brightness (gain)
    "dimmer, flatter": dict(gamma=1.5, contrast=0.6, brightness=0.7),
    "brighter, harsher": dict(gamma=0.7, contrast=1.4, brightness=1.3),
}


def camera_shift(gamma: float = 1.0, contrast: float = 1.0, brightness: float = 1.0) -> TorchAug:
    """A fixed (not random) change of camera for evaluation: torchvision's adjust_gamma, _contrast, _brightness."""
    if min(gamma, contrast, brightness) <= 0:
        raise ValueError(f"gamma, contrast and brightness must be > 0 (1 = unchanged), got {gamma}, {contrast}, "
                         f"{brightness}")
    return TorchAug(v2.Compose([v2.Lambda(partial(TF.adjust_gamma, gamma=gamma)),
                                v2.Lambda(partial(TF.adjust_contrast, contrast_factor=contrast)),
                                v2.Lambda(partial(TF.adjust_brightness, brightness_factor=brightness))]),
                    train_only=False)


def _with_tfm(dl, tfm):
    """A copy of a loader with one more batch transform (the original loader is left unchanged)."""
    return dl.new(after_batch=Pipeline([*dl.after_batch.fs, tfm]))


def camera_eval(learn, cameras: dict | None = None) -> dict:
    """{camera: (N_valid,) predictions} of `learn` on the validation set as each camera would record it, and
    'original' (the untouched images)."""
    cameras = CAMERAS if cameras is None else cameras
    out = {"original": valid_preds(learn)[1]}   # after the last epoch, as the run recorded them
    for name, kw in cameras.items():
        out[name] = evaluate(learn, _with_tfm(learn.dls.valid, camera_shift(**kw))).y_pred
    return out


def robustness_gain(y_true, without: dict, with_: dict, metric: str = "balanced_accuracy", n: int = 2000,
                    seed: int = 0) -> Estimate:
    """How much less a model trained with the augmentation loses under the camera shifts: mean over cameras of
    drop(without) - drop(with_), drop = metric(original) - metric(camera); all predictions resampled together."""
    cams = [c for c in without if c != "original"]
    preds = {**{("without", c): p for c, p in without.items()}, **{("with", c): p for c, p in with_.items()}}
    drop = lambda m, k, c: m[(k, "original")] - m[(k, c)]  # noqa: E731
    stat = lambda m: np.mean([drop(m, "without", c) - drop(m, "with", c) for c in cams], 0)  # noqa: E731
    return bootstrap(y_true, preds, stat, metric, n, seed)


# ------------------------------------------------------------------ a crop can cut the defect away
@renamed_kwargs(positive="minority")
def crop_probe(learn, scales=CROP_SCALES, seed: int = 0, minority: str = "defective") -> pd.DataFrame:
    """Per crop scale (share of the area kept): of the validation cells of class `minority` that `learn` gets
    right whole, the share whose random square crop it no longer calls `minority` (probability below 0.5; one crop
    per cell)."""
    y_true, y_pred = valid_preds(learn)
    k = list(learn.dls.vocab).index(minority)
    keep = np.flatnonzero((y_true == k) & (y_pred == k))
    items = learn.dls.valid_ds.items.iloc[keep]
    dl = learn.dls.test_dl(items, with_labels=True)
    size = int(dl.one_batch()[0].shape[-1])
    rows = []
    for s in scales:
        crop = TorchAug(v2.RandomResizedCrop(size, scale=(s, s), ratio=(1.0, 1.0), antialias=True), train_only=False)
        seed_everything(seed)
        with warnings.catch_warnings():   # one class only: scikit-learn's metrics warn, the probabilities are fine
            warnings.simplefilter("ignore", UserWarning)
            probs = evaluate(learn, _with_tfm(dl, crop)).probs[:, k]
        lost = int((probs < 0.5).sum())
        est = proportion(lost, len(keep))
        rows.append(dict(scale=s, cells=len(keep), lost=lost, share=est.effect, low=est.low, high=est.high))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ augmenting in parallel
PIPELINES = {   # setting -> (where the augmentation runs, worker processes)
    "no augmentation": (None, 0),
    "per image, main process": ("item", 0),
    "per image, 1 worker": ("item", 1),
    "per image, 2 workers": ("item", 2),
    "per batch, on the device": ("batch", 0),
}


def item_policy(img_size: int) -> TorchAug:
    """'flips+crop+rotation+lighting' as one torchvision pipeline on each image (an item transform: it runs
    wherever the loader prepares items, in worker processes when there are any)."""
    return TorchAug(v2.Compose([v2.RandomResizedCrop(img_size, scale=(0.35, 1.0), antialias=True),
                                v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(10),
                                v2.ColorJitter(brightness=0.2, contrast=0.2)]))


def _pipeline_dls(cfg, setting: str, seed: int):
    where, workers = PIPELINES[setting]
    cfg = cfg.with_(num_workers=workers)
    kw = dict(frac=max(cfg.aug.fracs), seed=seed, tune=True)   # the images the policy runs trained on, decoded
    if where == "item":
        return elpv_dls(cfg, item_tfms=[item_policy(cfg.img_size)], **kw)
    tfms = policy_tfms("flips+crop+rotation+lighting", cfg.img_size) if where == "batch" else None
    return elpv_dls(cfg, tfms=tfms, **kw)


def _batch_times(dl, n: int) -> list:
    """Seconds between successive batches of `dl` (on the device), after one warm-up batch."""
    times, it = [], iter(dl)
    next(it)
    for _ in range(min(n, len(dl) - 1)):
        t = time.perf_counter()
        next(it)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def pipeline_speed(cfg, settings=None, n_batches: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """Images/s of the training data pipeline (no model; the largest of `cfg.aug.fracs`, decoded images memoised) in
    each `PIPELINES` setting: median over `n_batches` (default 4 x cfg.latency_reps) timed batches; `times` keeps
    each batch's seconds."""
    seed = cfg.seed if seed is None else seed
    n = n_batches or 4 * cfg.latency_reps
    unknown = set(settings or PIPELINES) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}: choose from {', '.join(PIPELINES)}")
    ds = _pipeline_dls(cfg, "no augmentation", seed).train_ds
    for i in range(len(ds)):   # decode every image once, so each setting is timed on memoised images
        ds[i]
    rows = []
    for setting in settings or PIPELINES:
        dl = _pipeline_dls(cfg, setting, seed).train
        times = _batch_times(dl, n)
        rows.append(dict(setting=setting, workers=PIPELINES[setting][1], batches=len(times),
                         images_per_s=dl.bs / float(np.median(times)), times=np.array(times)))
    return pd.DataFrame(rows)
