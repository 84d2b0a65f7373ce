"""Data augmentation (lesson 03): a registry of transforms (fastai's where fastai has them, torchvision's v2 for the
rest, PCA colour augmentation by hand) and augmentation policies, each a list of fastai transforms for the one Learner
path. The lesson's own measurements are in `studies.lesson03`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Brightness, Contrast, Flip, Pipeline, Rotate, TensorImage, Transform
from torchvision.transforms import v2

from ..core.data import DATA_INTERPOLATION, resize_image
from ..core.env import seed_everything

__all__ = ["Augment", "AUGMENTS", "augment", "augment_table", "TorchAug", "PCAColor", "rgb_pca", "IMAGENET_PCA",
           "image_batch", "apply_tfms", "augment_samples", "POLICIES", "policy_tfms"]

# AlexNet's ImageNet RGB PCA (Krizhevsky et al. 2012) as fb.resnet.torch publishes it for pixels in [0, 1]:
# eigenvalues of the 3x3 covariance of RGB values, eigenvectors as columns.
IMAGENET_PCA = (torch.tensor([0.2175, 0.0188, 0.0045]),
                torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]))


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


def image_batch(images, img_size: int, interpolation: str = DATA_INTERPOLATION) -> torch.Tensor:
    """Images (paths, PIL, or arrays H x W or H x W x 3; see `rgb_image`) -> float tensor (N, 3, img_size, img_size)
    in [0, 1], squashed to size as the loaders do (`resize_image`)."""
    def one(img):
        arr = np.asarray(resize_image(img, img_size, interpolation), dtype=np.float32) / 255
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
    "rotation": ("rotation",),   # +-10 degrees: keeps the class of digits, letters and faces, where flips may not
    "flips+rotation": ("flip horizontal", "flip vertical", "rotation"),
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


