"""ImageNet predictions: preprocessing as a model expects it, and top-k labels with probabilities."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["imagenet_labels", "preprocess", "topk"]


def imagenet_labels() -> list:
    """The 1000 ImageNet class descriptions, in model output order (shipped with timm)."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def preprocess(img, size: int, stats, bgr: bool = False, normalize: bool = True) -> torch.Tensor:
    """An RGB image (H, W, 3 array or PIL) -> a (1, 3, size, size) float tensor, resized and normalised with `stats`."""
    img = Image.fromarray(np.asarray(img)).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    if bgr:
        x = x.flip(0)
    if normalize:
        mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
        x = (x - mean) / std
    return x[None]


def topk(model, img, k: int = 5, size: int | None = None, **kw) -> list:
    """Top-`k` (label, probability) of an ImageNet classifier on one image, preprocessed per `model.meta`."""
    meta = model.meta
    x = preprocess(img, size or meta["input_size"], meta["stats"], **kw)
    model.eval()
    with torch.no_grad():
        p = model(x.to(next(model.parameters()).device)).softmax(1)[0].cpu()
    vals, idx = p.topk(k)
    labels = imagenet_labels()
    return [(labels[i], float(v)) for v, i in zip(vals, idx)]
