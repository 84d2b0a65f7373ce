"""Data augmentation (lesson 03): a registry of transforms (fastai's where fastai has them, torchvision's v2 for the
rest, PCA colour augmentation by hand), augmentation policies trained through the one Learner path, and the
measurements of the lesson: policy x data size, strength sweep, robustness to a different camera, crops that cut
the defect away, and the speed of the augmentation pipeline."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import (Brightness, Callback, Contrast, Flip, Pipeline, Rotate, TensorImage, Transform)
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..core.data import elpv_dls, rgb_image
from ..core.env import seed_everything
from ..core.measure import Estimate, bootstrap, evaluate, proportion, stack_preds
from ..core.train import fit, make_learner, valid_preds

__all__ = ["Augment", "AUGMENTS", "augment", "augment_table", "TorchAug", "PCAColor", "rgb_pca", "IMAGENET_PCA",
           "image_batch", "apply_tfms", "augment_samples", "POLICIES", "policy_tfms", "policy_epochs", "StepTimer",
           "train_policy", "COMPARED", "policy_grid", "strength_sweep", "aug_gain", "gain_change",
           "CAMERAS", "camera_shift", "camera_eval", "robustness_gain", "CROP_SCALES", "MISLABEL_SHARE", "crop_probe",
           "item_policy", "PIPELINES", "pipeline_speed"]

# AlexNet's ImageNet RGB PCA (Krizhevsky et al. 2012) as fb.resnet.torch publishes it for pixels in [0, 1]:
# eigenvalues of the 3x3 covariance of RGB values, eigenvectors as columns.
IMAGENET_PCA = (torch.tensor([0.2175, 0.0188, 0.0045]),
                torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]))
MISLABEL_SHARE = 0.05        # "a crop can mislabel": more than 1 in 20 crops of a defective cell lose the defect
CROP_SCALES = (0.08, 0.2, 0.35, 0.6, 1.0)   # share of the cell's area a crop keeps: Inception's min, fastbook's 0.35


# ------------------------------------------------------------------ transforms
class TorchAug(Transform):
    """A torchvision transform as a fastai transform: per image on a batch (B, C, H, W) or an item (C, H, W);
    training only (split_idx 0) unless `train_only=False`. Runs after fastai's affine transforms (order 35)."""
    order = 35

    def __init__(self, tfm: Callable, train_only: bool = True):
        super().__init__()
        self.tfm, self.split_idx = tfm, 0 if train_only else None

    def encodes(self, x: TensorImage):
        plain = x.as_subclass(torch.Tensor)
        out = self.tfm(plain) if plain.ndim == 3 else torch.stack([self.tfm(xi) for xi in plain])
        return TensorImage(out)


class PCAColor(Transform):
    """PCA colour augmentation (AlexNet, Krizhevsky et al. 2012): adds sum_i a_i * eigvals[i] * eigvecs[:, i],
    a_i ~ N(0, sigma), the same shift for every pixel of an image, a new draw per image. Float images only.

    Written by hand: neither fastai nor torchvision has it. With eigvals = 1 and eigvecs = I it is a plain
    per-channel colour shift (kornia's RandomRGBShift does that too; one class here spares a dependency)."""
    order, split_idx = 36, 0

    def __init__(self, eigvals, eigvecs, sigma: float = 0.1):
        super().__init__()
        self.eigvals = torch.as_tensor(eigvals, dtype=torch.float32).flatten()
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32)
        if self.eigvecs.shape != (3, len(self.eigvals)):
            raise ValueError(f"eigvecs must be (3, k) with one column per eigenvalue (k = {len(self.eigvals)}), got "
                             f"{tuple(self.eigvecs.shape)}: pass what rgb_pca returns")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma} (AlexNet used 0.1)")
        self.sigma = float(sigma)

    def shifts(self, n: int) -> torch.Tensor:
        """(n, 3) colour shifts, one per image."""
        a = torch.randn(n, len(self.eigvals)) * self.sigma
        return (a * self.eigvals) @ self.eigvecs.T

    def encodes(self, x: TensorImage):
        _need_colour(x.shape[-3], "PCAColor")
        if not x.is_floating_point():
            raise TypeError(f"PCAColor works on float images in [0, 1], got {x.dtype}: use it as a batch transform "
                            "(tfms=, after IntToFloatTensor), not an item transform")
        batch = x if x.ndim == 4 else x[None]
        out = batch + self.shifts(len(batch)).to(x.device, x.dtype)[:, :, None, None]
        return out if x.ndim == 4 else out[0]


def _need_colour(channels: int, what: str) -> None:
    if channels != 3:
        raise ValueError(f"{what} needs 3 colour channels, got {channels}: a one-channel (grayscale, e.g. EL) image "
                         "has no colour to shift; use 'brightness' or 'contrast' instead")


def rgb_pca(images) -> tuple:
    """(eigvals (3,), eigvecs (3, 3) as columns): principal components of the RGB values of every pixel of `images`
    (N, 3, H, W) in [0, 1], largest first."""
    x = torch.as_tensor(images, dtype=torch.float64)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4:
        raise ValueError(f"rgb_pca needs images shaped (N, 3, H, W), got {tuple(x.shape)}: see image_batch")
    _need_colour(x.shape[1], "rgb_pca")
    vals, vecs = torch.linalg.eigh(torch.cov(x.transpose(0, 1).reshape(3, -1)))
    vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
    if vals[1] <= 1e-6 * vals[0]:
        raise ValueError("the three channels are identical (a grayscale image replicated to RGB): there is no colour "
                         "to shift, PCA colour augmentation would only change brightness; use 'brightness' instead")
    vecs = vecs * torch.where(vecs.sum(0) < 0, -1.0, 1.0)   # a fixed sign: components point towards white
    return vals.float(), vecs.float()


@dataclass(frozen=True)
class Augment:
    """One transform of the registry: how to build it for a magnitude, the magnitude's range, the published
    default, a clearly visible value for galleries, and what it does to a one-channel EL cell."""
    make: Callable           # (magnitude, img_size, pca) -> a fastai batch transform
    lo: float
    hi: float
    default: float           # published value (see `reference`)
    demo: float              # clearly visible, for galleries
    unit: str                # what the magnitude means
    source: str              # library and class
    reference: str           # where the default comes from
    one_channel: bool        # meaningful on a one-channel (EL) image
    el_label: str            # 'keeps', 'can change' or 'n/a' (colour) for an EL cell's defect label
    why: str
    discrete: bool = False   # a flip has two outcomes, not a continuum


def _crop(m, img_size, pca):
    if img_size is None:
        raise ValueError("random resized crop needs img_size (the output side in px)")
    return TorchAug(v2.RandomResizedCrop(img_size, scale=(1 - m, 1.0), antialias=True))


def _blur(m, img_size, pca):
    k = 2 * math.ceil(3 * max(m, 0.1)) + 1
    if img_size:
        k = min(k, img_size - 1 + img_size % 2)
    return TorchAug(v2.GaussianBlur(k, sigma=(0.1, max(m, 0.1))))


def _pca(m, img_size, pca):
    return PCAColor(*(pca or IMAGENET_PCA), sigma=m)


AUGMENTS = {
    "flip horizontal": Augment(lambda m, s, p: Flip(p=m), 0, 1, 0.5, 0.5, "probability", "fastai Flip",
                               "fastai aug_transforms (do_flip)", True, "keeps",
                               "a mirrored crack is still a crack", discrete=True),
    "flip vertical": Augment(lambda m, s, p: TorchAug(v2.RandomVerticalFlip(m)), 0, 1, 0.5, 0.5, "probability",
                             "torchvision v2.RandomVerticalFlip", "fastai aug_transforms (flip_vert)", True, "keeps",
                             "a cell has no up or down", discrete=True),
    "random resized crop": Augment(_crop, 0, 0.95, 0.65, 0.85, "share of the area a crop may cut away (1 - min_scale)",
                                   "torchvision v2.RandomResizedCrop (per image; fastai's GPU version crops a "
                                   "whole batch alike)", "fastbook ch. 2 min_scale=0.35; Inception 0.08", True,
                                   "can change", "the crop can cut the crack away"),
    "rotation": Augment(lambda m, s, p: Rotate(max_deg=m, p=1.0), 0, 180, 10, 30, "max degrees", "fastai Rotate",
                        "fastai aug_transforms (max_rotate=10)", True, "keeps", "a rotated crack is still a crack"),
    "shear": Augment(lambda m, s, p: TorchAug(v2.RandomAffine(degrees=0, shear=m)), 0, 60, 11, 30, "max degrees",
                     "torchvision v2.RandomAffine(shear=)", "Keras tutorial shear_range=0.2 rad (Chollet 2016)", True,
                     "keeps", "a sheared crack is still a crack"),
    "elastic warp": Augment(lambda m, s, p: TorchAug(v2.ElasticTransform(alpha=float(m), sigma=5.0)), 0, 500, 50, 250,
                            "alpha (displacement strength)", "torchvision v2.ElasticTransform",
                            "torchvision default; Simard et al. 2003", True, "keeps",
                            "local warping bends a crack but keeps it"),
    "channel shift": Augment(lambda m, s, p: PCAColor(torch.ones(3), torch.eye(3), m), 0, 1, 0.05, 0.2,
                             "std of the shift per channel", "hand-written (PCAColor along R, G, B)",
                             "Wu et al. 2015 (Deep Image): colour casts up to 20/255", False, "n/a",
                             "one channel: shifting R, G, B apart invents colours no EL camera records"),
    "PCA colour": Augment(_pca, 0, 2, 0.1, 1.0, "sigma of a_i", "hand-written PCAColor",
                          "AlexNet (Krizhevsky et al. 2012): sigma=0.1", False, "n/a",
                          "one channel: the only component is gray, so it reduces to a brightness change"),
    "brightness": Augment(lambda m, s, p: Brightness(max_lighting=m, p=1.0), 0, 0.95, 0.2, 0.5, "max lighting",
                          "fastai Brightness", "fastai aug_transforms (max_lighting=0.2)", True, "keeps",
                          "a camera's gain does not change a defect"),
    "contrast": Augment(lambda m, s, p: Contrast(max_lighting=m, p=1.0), 0, 0.95, 0.2, 0.5, "max lighting",
                        "fastai Contrast", "fastai aug_transforms (max_lighting=0.2)", True, "keeps",
                        "a camera's contrast does not change a defect"),
    "blur": Augment(_blur, 0, 5, 2.0, 2.0, "max sigma (px)", "torchvision v2.GaussianBlur",
                    "torchvision / SimCLR sigma in [0.1, 2]", True, "can change",
                    "strong blur erases thin cracks"),
}


def _spec(name: str) -> Augment:
    if name not in AUGMENTS:
        raise ValueError(f"unknown transform {name!r}: choose one of {', '.join(AUGMENTS)}")
    return AUGMENTS[name]


def augment(name: str, magnitude: float | None = None, img_size: int | None = None, pca=None) -> Transform:
    """The fastai batch transform `name` of `AUGMENTS` at `magnitude` (default: its published value);
    `pca` = (eigvals, eigvecs) for 'PCA colour' (default: ImageNet's)."""
    spec = _spec(name)
    m = spec.default if magnitude is None else float(magnitude)
    if not spec.lo <= m <= spec.hi:
        raise ValueError(f"{name} magnitude {m} is out of range [{spec.lo}, {spec.hi}] ({spec.unit}); "
                         f"the published default is {spec.default}")
    return spec.make(m, img_size, pca)


def augment_table() -> pd.DataFrame:
    """The registry as a table: library, magnitude, range, published default, and what it does to an EL cell."""
    return pd.DataFrame([dict(transform=n, library=a.source, magnitude=a.unit, range=f"[{a.lo}, {a.hi}]",
                              default=a.default, gallery=a.demo, reference=a.reference, one_channel=a.one_channel,
                              el_label=a.el_label, why=a.why) for n, a in AUGMENTS.items()]).set_index("transform")


def image_batch(images, img_size: int) -> torch.Tensor:
    """Images (paths, PIL, or arrays H x W or H x W x 3; see `rgb_image`) -> float tensor (N, 3, img_size, img_size)
    in [0, 1]."""
    def one(img):
        arr = np.asarray(rgb_image(img).resize((img_size, img_size), Image.BILINEAR), dtype=np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1)
    return torch.stack([one(i) for i in images])


def apply_tfms(tfms, x: torch.Tensor, seed: int = 0, split_idx: int = 0) -> torch.Tensor:
    """Batch transforms (sorted by order) on images (N, 3, H, W), as a training (split_idx 0) loader would, seeded."""
    seed_everything(seed)
    return Pipeline(list(tfms), split_idx=split_idx)(TensorImage(x)).as_subclass(torch.Tensor)


def augment_samples(img, name: str, magnitude: float | None = None, n: int = 8, seed: int = 0, img_size: int = 128,
                    pca=None) -> torch.Tensor:
    """`n` augmented copies (n, 3, img_size, img_size) of one image, clipped to [0, 1] for display."""
    x = image_batch([img], img_size).expand(n, -1, -1, -1).contiguous()
    return apply_tfms([augment(name, magnitude, img_size, pca)], x, seed).clamp(0, 1)


# ------------------------------------------------------------------ policies and training
POLICIES = {
    "none": (),
    "flips": ("flip horizontal", "flip vertical"),
    "flips+crop+rotation": ("flip horizontal", "flip vertical", "random resized crop", "rotation"),
    "flips+crop+rotation+lighting": ("flip horizontal", "flip vertical", "random resized crop", "rotation",
                                     "brightness", "contrast"),
    "everything": ("flip horizontal", "flip vertical", "random resized crop", "rotation", "shear", "elastic warp",
                   "brightness", "contrast", "blur"),
}


def policy_tfms(policy: str, img_size: int, strength: float = 1.0) -> list:
    """Batch transforms of `policy`, each at strength x its published magnitude (capped at its range; flips keep
    p = 0.5); strength 0 is no augmentation."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return []
    specs = {n: _spec(n) for n in POLICIES[policy]}
    return [augment(n, a.default if a.discrete else min(a.default * strength, a.hi), img_size)
            for n, a in specs.items()]


def policy_epochs(cfg, frac: float) -> int:
    """Epochs of every policy run at training fraction `frac`: its entry in `cfg.aug_epochs` (one per `cfg.aug_fracs`),
    so every policy at a fraction gets the same optimizer steps."""
    if frac not in cfg.aug_fracs:
        raise ValueError(f"no epochs for fraction {frac} in profile {cfg.name!r}: use one of cfg.aug_fracs "
                         f"{cfg.aug_fracs}, or pass epochs=")
    return cfg.aug_epochs[list(cfg.aug_fracs).index(frac)]


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
                 epochs: int | None = None, arch: str = "efficientnet_lite0") -> tuple:
    """Fine-tune the whole pretrained `arch` under one augmentation policy for `epochs` (default `policy_epochs`):
    (history, summary row with validation predictions and step timings, learner)."""
    seed = cfg.seed if seed is None else seed
    epochs = policy_epochs(cfg, frac) if epochs is None else epochs
    t = time.perf_counter()
    dls = elpv_dls(cfg, frac=frac, seed=seed, tfms=policy_tfms(policy, cfg.img_size, strength))
    timer = StepTimer()
    learn = make_learner(dls, arch, weights="imagenet", depth="none", cbs=[timer], seed=seed)
    hist = fit(learn, epochs, cfg.lr)
    y_true, y_pred = valid_preds(learn)
    last = hist.iloc[-1]
    wait = float(np.median(timer.wait_s)) if timer.wait_s else float("nan")
    row = dict(policy=policy, strength=strength, frac=frac, n_train=len(dls.train_ds), seed=seed, epochs=epochs,
               steps=epochs * len(dls.train), train_loss=last["train_loss"], valid_loss=last["valid_loss"],
               **{m: last[m] for m in ("accuracy", "balanced_accuracy", "f1_macro")},
               seconds=time.perf_counter() - t, y_true=y_true, y_pred=y_pred,
               data_share=wait / (wait + float(np.median(timer.step_s))),   # of a training step's time, medians
               step_s=np.array(timer.step_s), wait_s=np.array(timer.wait_s))
    return hist.assign(policy=policy, frac=frac, strength=strength), row, learn


COMPARED = ("none", "flips", "flips+crop+rotation", "everything")   # the policies of the main comparison


def policy_grid(cfg, policies=COMPARED, fracs=None, seeds=None) -> tuple:
    """`train_policy` for every (fraction, policy, seed) (default: `cfg.aug_fracs`, `cfg.n_seeds` seeds):
    (runs table, histories, {(policy, frac): learner of the first seed})."""
    seeds = range(cfg.seed, cfg.seed + cfg.n_seeds) if seeds is None else seeds
    hists, rows, learners = [], [], {}
    for f in fracs or cfg.aug_fracs:
        for p in policies:
            for s in seeds:
                h, r, learn = train_policy(cfg, p, f, seed=s)
                learners.setdefault((p, f), learn)
                hists.append(h)
                rows.append(r)
    return pd.DataFrame(rows), pd.concat(hists, ignore_index=True), learners


def strength_sweep(cfg, runs: pd.DataFrame, policy: str = "everything", strengths=None,
                   frac: float | None = None) -> pd.DataFrame:
    """`policy` at each of `cfg.aug_strengths` (x its published magnitudes) at the small fraction, reusing the runs
    already in `runs` (strength 0 = its 'none' run, strength 1 = its `policy` run)."""
    frac = min(cfg.aug_fracs) if frac is None else frac
    at = runs[runs["frac"] == frac]
    rows = []
    for s in strengths or cfg.aug_strengths:
        done = at[(at["policy"] == ("none" if s == 0 else policy)) & (at["seed"] == cfg.seed)]
        done = done[done["strength"] == 1.0] if s in (0, 1) else done.iloc[:0]
        rows.append(done.iloc[0].to_dict() if len(done) else train_policy(cfg, policy, frac, s)[1])
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
def crop_probe(learn, scales=CROP_SCALES, seed: int = 0, positive: str = "defective") -> pd.DataFrame:
    """Per crop scale (share of the area kept): of the validation cells of class `positive` that `learn` gets
    right whole, the share whose random square crop it no longer calls `positive` (one crop per cell)."""
    y_true, y_pred = valid_preds(learn)
    k = list(learn.dls.vocab).index(positive)
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
    kw = dict(frac=max(cfg.aug_fracs), seed=seed)   # the images the policy runs trained on, already decoded
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
    """Images/s of the training data pipeline (no model; the largest of `cfg.aug_fracs`, decoded images memoised) in
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
