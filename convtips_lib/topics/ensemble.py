"""Ensembles and multi-crop (lesson 06): combining members by averaging probabilities or by voting, why they help
(disagreement, error correlation), and the 10-crop and fastai's tta at test time. Training the lesson's members is in
`studies.lesson06`."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..core.compat import renamed_kwargs

__all__ = ["ten_crop", "CROP_NAMES", "average_probs", "vote", "disagreement", "error_correlation",
           "crop_probs", "tta_probs"]

CROP_NAMES = ("centre", "top left", "top right", "bottom left", "bottom right",
              "centre, mirrored", "top left, mirrored", "top right, mirrored", "bottom left, mirrored",
              "bottom right, mirrored")


@renamed_kwargs(size="img_size")
def ten_crop(img: torch.Tensor, img_size: int) -> torch.Tensor:
    """The 10-crop of an image (C, H, W) or a batch (B, C, H, W): (10, C, img_size, img_size) or (B, 10, C, ...) —
    the centre and the four corners (torchvision's five_crop), then the horizontal mirror of each, in that order."""
    h, w = img.shape[-2:]
    if img_size > min(h, w) or img_size < 1:
        raise ValueError(f"crop size {img_size} must be between 1 and the image's shorter side ({min(h, w)} px): "
                         "resize the image first or choose a smaller crop")
    tl, tr, bl, br, centre = TF.five_crop(img, [img_size, img_size])
    five = torch.stack([centre, tl, tr, bl, br], dim=-4)
    return torch.cat([five, five.flip(-1)], dim=-4)


def average_probs(probs) -> np.ndarray:
    """(N, C) mean of member probabilities (M, N, C)."""
    return np.asarray(probs, dtype=float).mean(0)


def vote(probs) -> np.ndarray:
    """(N,) majority vote of the members' predicted classes (M, N, C); a tie goes to the tied class with the highest
    averaged probability."""
    probs = np.asarray(probs, dtype=float)
    k = probs.shape[-1]
    votes = np.stack([(probs.argmax(-1) == c).sum(0) for c in range(k)], -1)          # (N, C)
    tied = votes == votes.max(-1, keepdims=True)
    return np.where(tied, average_probs(probs), -np.inf).argmax(-1)


def disagreement(preds) -> float:
    """Share of images (N,) on which the members' predicted classes (M, N) are not all the same."""
    preds = np.asarray(preds)
    return float((preds != preds[:1]).any(0).mean())


def error_correlation(preds, y_true) -> float:
    """Mean pairwise correlation of the members' error indicators (M, N): 1 when they err on the same images."""
    errors = (np.asarray(preds) != np.asarray(y_true)).astype(float)
    if len(errors) < 2:
        raise ValueError("error_correlation needs at least two members")
    c = np.corrcoef(errors)
    return float(np.nanmean(c[np.triu_indices(len(errors), 1)]))


@renamed_kwargs(size="img_size")
def crop_probs(model, x: torch.Tensor, img_size: int, bs: int = 8) -> np.ndarray:
    """(N, 10, C) softmax probabilities of `model` on the 10-crop of every image of the normalised batch x (N, C, H, W),
    the crops fed at their own size: the same pixel scale the model trained at, as AlexNet's 224 crops of 256."""
    model.eval()
    out = []
    with torch.no_grad():
        for xb in x.split(bs):
            crops = ten_crop(xb, img_size).flatten(0, 1)                  # (b * 10, C, img_size, img_size)
            out.append(torch.softmax(model(crops), -1).view(len(xb), 10, -1).cpu().numpy())
    return np.concatenate(out)




def tta_probs(learn, n: int | None = None, **kw) -> np.ndarray:
    """(n, C) probabilities of fastai's `learn.tta` (`kw`: its n, beta, ...) on the first `n` cells of the validation
    loader, in its order (all of them: None or 0). Only those cells are predicted — tta runs several augmented
    passes, so a profile that compares on a few cells does not pay for all of them."""
    dl = learn.dls.valid
    if n and n < len(dl.dataset):
        dl = learn.dls.test_dl(dl.items.iloc[:n] if hasattr(dl.items, "iloc") else dl.items[:n], with_labels=True)
    with learn.no_bar(), learn.no_logging():
        probs, _ = learn.tta(dl=dl, **kw)
    return probs.numpy()
