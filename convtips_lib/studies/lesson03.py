"""Lesson 03's studies: augmentation policies x data size, a strength sweep and robustness to a simulated camera on
a small ConvNet from scratch, cross-validated over every ELPV cell (`aug_cells`: cells preloaded small, every cell
predicted once by a network that never saw it); crops that cut the defect away; the speed of the augmentation
pipeline. Every choice (each run's learning rate, the strength to use) is made per fold on that fold's tune cells;
the pooled test cells only judge."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Callback, CancelFitException, Pipeline
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..core.data import TensorPairs, elpv_dls, elpv_folds, fold_tensor_dls, preload_cells
from ..core.env import seed_everything
from ..core.measure import Estimate, bootstrap, evaluate, proportion, stack_preds
from ..core.models import small_net
from ..core.train import Run, at_chosen_per_fold, fit, learner, make_learner, pool_per_fold, valid_preds
from ..topics.augment import TorchAug, policy_tfms

__all__ = ["AugCells", "aug_cells", "train_policy", "cv_policy", "policy_grid", "policy_curves", "strength_sweep", "at_best_strength",
           "aug_gain", "gain_change", "CAMERAS", "camera_shift", "camera_eval", "robustness_gain", "CROP_SCALES",
           "MISLABEL_SHARE", "crop_probe", "PIPELINES", "pipeline_speed", "model_step_times"]


MISLABEL_SHARE = 0.05        # "a crop can mislabel": more than 1 in 20 crops of a defective cell lose the defect

CROP_SCALES = (0.08, 0.2, 0.35, 0.6, 1.0)   # share of the cell's area a crop keeps: Inception's min, fastbook's 0.35


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


@dataclass
class AugCells:
    """Every ELPV cell preloaded at `cfg.aug.img_size` (x (2624, 3, s, s) in [0, 1], y (2624,), paths, vocab) and
    the role tables of its k-fold cross-validation (`elpv_folds`)."""
    x: torch.Tensor
    y: torch.Tensor
    paths: list
    vocab: list
    folds: list


def aug_cells(cfg) -> AugCells:
    """`AugCells` for the profile: every cell decoded once at `cfg.aug.img_size`, `cfg.aug.folds` folds."""
    return AugCells(*preload_cells(cfg, img_size=cfg.aug.img_size), elpv_folds(cfg.aug.folds))


def _fold_dls(cfg, cells: AugCells, roles, policy: str, frac: float, seed: int, strength: float):
    return fold_tensor_dls(cells.x, cells.y, cells.paths, roles, cells.vocab, bs=cfg.bs, frac=frac, seed=seed,
                           tfms=policy_tfms(policy, cfg.aug.img_size, strength), epoch_steps=cfg.aug.epoch_steps)


def train_policy(dls, policy: str, lr: float, epochs: int, seed: int = 0, strength: float = 1.0, **settings) -> Run:
    """Train `small_net` from a random init on `dls` (its batch transforms are the policy's) for `epochs` at peak `lr`
    (Adam, one-cycle): its `Run` (settings policy, strength, lr, seed and `settings`; extra n_train (distinct
    cells), steps, the last losses and the step timings step_s, wait_s per batch and data_share, the share of a
    step spent waiting for data)."""
    t = time.perf_counter()
    timer = StepTimer()
    learn = learner(dls, small_net(dls.c), cbs=[timer], seed=seed)
    last = fit(learn, epochs, lr).iloc[-1]
    wait = float(np.median(timer.wait_s)) if timer.wait_s else 0.0
    n_train = getattr(dls, "n_cells", len(dls.train_ds))   # distinct train cells, before cycling
    return Run.of(learn, dict(policy=policy, strength=strength, lr=lr, seed=seed, **settings),
                  time.perf_counter() - t, n_train=n_train, steps=epochs * len(dls.train),
                  train_loss=last["train_loss"], valid_loss=last["valid_loss"],
                  data_share=wait / (wait + float(np.median(timer.step_s))),   # of a training step's time, medians
                  step_s=np.array(timer.step_s), wait_s=np.array(timer.wait_s))


def cv_policy(cfg, cells: AugCells, policy: str, frac: float, lrs, seed: int, strength: float = 1.0,
              keep: bool = False) -> Run:
    """`train_policy` on every fold at that fold's rate (`lrs`: one, or one per fold), `frac` of each fold's train
    cells, `cfg.aug.steps` optimizer steps: the folds pooled (`pool_folds`), every cell predicted once. Extra:
    fold_lrs, fold_tune (each fold's tune balanced accuracy: what a choice reads), n_train (mean per fold), steps,
    the mean last losses, the step timings of every fold, and `learners` (one per fold) when `keep`."""
    lrs = [float(lrs)] * len(cells.folds) if np.ndim(lrs) == 0 else [float(lr) for lr in lrs]
    epochs = cfg.aug.steps // cfg.aug.epoch_steps
    runs = [train_policy(_fold_dls(cfg, cells, roles, policy, frac, seed, strength), policy, lr, epochs, seed,
                         strength, frac=frac) for roles, lr in zip(cells.folds, lrs)]
    return pool_per_fold(runs, keep)


def policy_grid(cfg, cells: AugCells, policies=None, fracs=None, seeds=None, keep=()) -> tuple:
    """Every (fraction, policy): `cv_policy` at each rate of `cfg.aug.lrs` with the first seed, each fold's rate
    chosen on its tune cells, then the other seeds at those rates (default `cfg.aug.n_seeds`). Returns (one row per
    (fraction, policy, seed), the rows of the rate search, {(policy, frac): the first seed's fold learners} for the
    pairs in `keep`)."""
    seeds = list(cfg.seeds(cfg.aug.n_seeds) if seeds is None else seeds)
    rows, search, learners = [], [], {}
    for frac in fracs or cfg.aug.fracs:
        for policy in policies or cfg.aug.policies:
            hold = (policy, frac) in keep
            tried = [cv_policy(cfg, cells, policy, frac, lr, seeds[0], keep=hold) for lr in cfg.aug.lrs]
            search += [r.row() for r in tried]
            lrs, first = at_chosen_per_fold(tried, keep=hold)         # each fold's own run at its chosen rate
            if hold:
                learners[(policy, frac)] = first.extra["learners"]
            for run in [first, *(cv_policy(cfg, cells, policy, frac, lrs, s) for s in seeds[1:])]:
                run.extra["learners"] = None
                rows.append(run.row(history=True))
    return pd.DataFrame(rows), pd.DataFrame(search).drop(columns=["learners"]), learners


def policy_curves(runs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Per (frac, policy, epoch): the `seed` runs' losses and test balanced accuracy, mean over the folds (the
    `history` column of `policy_grid`'s rows)."""
    first = runs[runs["seed"] == seed]
    hist = pd.concat([r["history"].assign(policy=r["policy"], frac=r["frac"]) for _, r in first.iterrows()])
    cols = ["train_loss", "valid_loss", "balanced_accuracy"]
    return hist.groupby(["frac", "policy", "epoch"], as_index=False, sort=False)[cols].mean()


def strength_sweep(cfg, cells: AugCells, runs: pd.DataFrame, policy: str = "flips+crop+rotation",
                   strengths=None, frac: float | None = None) -> pd.DataFrame:
    """`policy` at each of `cfg.aug.strengths` (x its published magnitudes) at the smallest fraction, the first
    seed, at the per-fold rates `policy_grid` chose for it (strength 0 = that fraction's 'none' run, strength 1 =
    its `policy` run, reused from `runs`): one row per strength with each fold's tune score (`at_best_strength`)."""
    frac = min(cfg.aug.fracs) if frac is None else frac
    at = runs[(runs["frac"] == frac) & (runs["seed"] == cfg.seed)]
    lrs = at[at["policy"] == policy]["fold_lrs"].iloc[0]
    out = []
    for s in strengths or cfg.aug.strengths:
        done = at[at["policy"] == ("none" if s == 0 else policy)] if s in (0, 1) else at.iloc[:0]
        out.append(done.iloc[0].to_dict() if len(done) else cv_policy(cfg, cells, policy, frac, lrs, cfg.seed, s).row())
        out[-1]["strength"] = s
    return pd.DataFrame(out).drop(columns=["learners", "history"], errors="ignore")


def at_best_strength(sweep: pd.DataFrame, folds: list) -> dict:
    """The strength each fold's tune cells choose (`fold_tune`) and the pooled test predictions of that choice
    (each fold's test cells predicted by its own chosen strength's network): an honest score of "choose the
    strength on the tune cells"."""
    rows = sweep.to_dict("records")
    pick = [int(np.argmax([r["fold_tune"][i] for r in rows])) for i in range(len(folds))]
    sizes = [int((f["role"] == "test").sum()) for f in folds]
    starts = np.cumsum([0, *sizes])
    y_pred = np.concatenate([np.asarray(rows[j]["y_pred"])[starts[i]:starts[i + 1]] for i, j in enumerate(pick)])
    return dict(strengths=[rows[j]["strength"] for j in pick], y_true=np.asarray(rows[0]["y_true"]), y_pred=y_pred)


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


def camera_eval(learners, cameras: dict | None = None) -> dict:
    """{camera: (N,) predictions} of a cross-validation's fold `learners` (fold order: the pooled test cells) on
    their test cells as each camera would record them, and 'original' (the untouched images)."""
    cameras = CAMERAS if cameras is None else cameras
    out = {"original": np.concatenate([valid_preds(learn)[1] for learn in learners])}
    for name, kw in cameras.items():
        shifted = [evaluate(learn, _with_tfm(learn.dls.valid, camera_shift(**kw))).y_pred for learn in learners]
        out[name] = np.concatenate(shifted)
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
def _cells_dl(learn, keep: np.ndarray):
    """A loader over the validation cells `keep` (indices) of a Learner over image tensors, in its batch pipeline."""
    ds = learn.dls.valid_ds
    return learn.dls.valid.new(TensorPairs(ds.x[keep], ds.y[keep], ds.vocab))


def crop_probe(learners, scales=CROP_SCALES, seed: int = 0, minority: str = "defective") -> pd.DataFrame:
    """Per crop scale (share of the area kept): of the test cells of class `minority` that the fold `learners`
    (one Learner over image tensors, or a cross-validation's) get right whole, the share whose random square crop
    is no longer called `minority` (probability below 0.5; one crop per cell)."""
    learners = learners if isinstance(learners, (list, tuple)) else [learners]
    sets = []
    for learn in learners:
        y_true, y_pred = valid_preds(learn)
        k = list(learn.dls.vocab).index(minority)
        sets.append((learn, k, np.flatnonzero((y_true == k) & (y_pred == k))))
    size = int(learners[0].dls.valid_ds.x.shape[-1])
    rows = []
    for s in scales:
        crop = TorchAug(v2.RandomResizedCrop(size, scale=(s, s), ratio=(1.0, 1.0), antialias=True), train_only=False)
        seed_everything(seed)
        with warnings.catch_warnings():   # one class only: scikit-learn's metrics warn, the probabilities are fine
            warnings.simplefilter("ignore", UserWarning)
            lost = sum(int((evaluate(learn, _with_tfm(_cells_dl(learn, keep), crop)).probs[:, k] < 0.5).sum())
                       for learn, k, keep in sets)
        cells = sum(len(keep) for _, _, keep in sets)
        est = proportion(lost, cells)
        rows.append(dict(scale=s, cells=cells, lost=lost, share=est.effect, low=est.low, high=est.high))
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


def model_step_times(cfg, n: int | None = None, seed: int | None = None) -> np.ndarray:
    """(n,) seconds of `n` training steps (forward, backward, optimizer; default 4 x cfg.latency_reps) of the
    course's network (`cfg.arch`, the whole pretrained network) at the profile's image size, on the images the
    pipeline of `pipeline_speed` prepares: what a batch of that pipeline feeds."""
    seed = cfg.seed if seed is None else seed
    n = n or 4 * cfg.latency_reps
    dls = _pipeline_dls(cfg, "no augmentation", seed)
    timer = StepTimer()
    learn = make_learner(dls, cfg.arch, depth="none", cbs=[timer], seed=seed)
    learn.fit(1, cfg.lr, cbs=[_StopAfter(timer, n + 1)])
    return np.array(timer.step_s[1:n + 1])   # the first step warms up


class _StopAfter(Callback):
    """Ends the fit once `timer` (a `StepTimer`) has timed `n` training steps (no validation)."""
    order = 99

    def __init__(self, timer: StepTimer, n: int):
        self.timer, self.n = timer, n

    def after_batch(self):
        if self.training and len(self.timer.step_s) >= self.n:
            raise CancelFitException
