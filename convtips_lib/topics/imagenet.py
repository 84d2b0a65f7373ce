"""ImageNet predictions: preprocessing as a model expects it, top-k labels, what wrong preprocessing does, photos."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.compat import renamed_kwargs
from ..core.data import BadImageError, resize_image, rgb_image
from ..core.models import IMAGENET_STATS

__all__ = ["preprocess", "topk", "SAMPLE_PHOTOS", "preprocessing_variants", "preprocessing_effects",
           "load_user_image", "sample_photo", "photo_top5"]

SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")   # skimage.data, offline


@lru_cache(maxsize=1)
def _labels() -> tuple:
    return tuple(imagenet_labels())


def imagenet_labels() -> list:
    """The 1000 ImageNet class descriptions, in model output order (shipped with timm)."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


@renamed_kwargs(size="img_size")
def preprocess(img, img_size: int, stats, bgr: bool = False, normalize: bool = True,
               interpolation: str = "bicubic", resize: str = "squash") -> torch.Tensor:
    """An image (path, file bytes, PIL, or array (H, W[, 3]) of 8-bit, 16-bit or [0, 1] floats; see `rgb_image`) ->
    a (1, 3, img_size, img_size) float tensor, resized (`resize_image`) and normalised with stats (mean, std)."""
    img = resize_image(img, img_size, interpolation, resize)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    if bgr:
        x = x.flip(0)
    if normalize:
        mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
        x = (x - mean) / std
    return x[None]


@renamed_kwargs(size="img_size")
def topk(model, img, k: int = 5, img_size: int | None = None, **kw) -> list:
    """Top-`k` (label, probability) of an ImageNet classifier on one image, preprocessed per `model.meta`."""
    x = preprocess(img, img_size or model.meta.img_size, model.meta.stats, **{**_resizing(model.meta), **kw})
    model.eval()
    with torch.no_grad():
        p = model(x.to(next(model.parameters()).device)).softmax(1)[0].cpu()
    vals, idx = p.topk(k)
    labels = _labels()
    return [(labels[i], float(v)) for v, i in zip(vals, idx)]


def _resizing(cfg) -> dict:
    """The interpolation and resize of a model's record (`ModelCfg`), as `preprocess` keywords."""
    return dict(interpolation=cfg.interpolation, resize=cfg.resize)


def _target_ids(target: str) -> list:
    """Indices of the classes whose description contains the word `target` ('cat' -> tabby, tiger cat, ...)."""
    ids = [i for i, d in enumerate(_labels()) if re.search(rf"\b{re.escape(target)}\b", d, re.IGNORECASE)]
    if not ids:
        raise ValueError(f"no ImageNet class description contains the word {target!r}: "
                         "try a broader word ('cat', 'dog', 'cup'), or see imagenet_labels()")
    return ids


def prediction_summary(model, x: torch.Tensor, target: str | None = None, k: int = 5) -> dict:
    """Top-1 label and probability on a (1, 3, H, W) batch, model left as it is (no eval()); `target` in the top k?"""
    with torch.no_grad():
        p = model(x.to(next(model.parameters()).device)).softmax(1)[0].cpu()
    top = p.topk(k).indices.tolist()
    out = dict(label=_labels()[top[0]], prob=float(p[top[0]]))
    if target is not None:
        ids = _target_ids(target)
        out.update(target_in_topk=bool(set(ids) & set(top)), target_prob=float(p[ids].sum()))
    return out


def _center_crop(img, size: int) -> Image.Image:
    im = rgb_image(img)
    w, h = im.size
    left, top = max(0, (w - size) // 2), max(0, (h - size) // 2)
    return im.crop((left, top, left + size, top + size))


def _variants(size: int, stats) -> list:
    """(name, what changes, image transform, preprocess kwargs) for the right and the usual wrong preprocessing."""
    same, unscaled = (lambda im: im), ((0,) * 3, (1 / 255,) * 3)   # (x - 0) / (1/255): pixels back in 0-255
    crop = lambda im: _center_crop(im, size)  # noqa: E731
    return [("correct", f"resize to {size} px, stats {stats[0][0]:g}/{stats[1][0]:g}", same, dict(size=size)),
            ("no normalisation", "pixels in [0, 1]", same, dict(size=size, normalize=False)),
            ("pixels 0-255", "forgot / 255 (and normalisation)", same, dict(size=size, stats=unscaled)),
            ("ImageNet mean/std", "the usual stats, not the model's", same, dict(size=size, stats=IMAGENET_STATS)),
            ("BGR", "channels in OpenCV order", same, dict(size=size, bgr=True)),
            ("half size", f"{size // 2} px instead of {size}", same, dict(size=size // 2)),
            ("64 px", "the smoke profile's size", same, dict(size=64)),
            ("center crop, no resize", f"a {size} px crop of the full-resolution photo", crop, dict(size=size))]


def preprocessing_variants(model, img, target: str | None = None, k: int = 5) -> pd.DataFrame:
    """Top-1 label and probability (and whether `target` is in the top `k`) under right and wrong preprocessing."""
    meta = model.meta
    model.eval()
    rows = []
    for name, change, tfm, kw in _variants(meta.img_size, meta.stats):
        kw = {"stats": meta.stats, **_resizing(meta), **kw}
        x = preprocess(tfm(img), kw.pop("size"), kw.pop("stats"), **kw)   # `size`: the variant's input side
        rows.append(dict(variant=name, change=change, **prediction_summary(model, x, target, k)))
    return pd.DataFrame(rows)


def preprocessing_effects(variants: pd.DataFrame) -> pd.DataFrame:
    """Per wrong variant of `preprocessing_variants` rows over several photos (column `photo`): on how many photos
    the top-1 label changes against 'correct', and the mean change of the top-1 probability."""
    right = variants[variants["variant"] == "correct"].set_index("photo")
    wrong = variants[variants["variant"] != "correct"].assign(
        top1_changed=lambda d: [lab != right.loc[p, "label"] for lab, p in zip(d["label"], d["photo"])],
        prob_change=lambda d: d["prob"] - d["photo"].map(right["prob"]))
    return (wrong.groupby("variant", sort=False)
            .agg(photos_changed=("top1_changed", "sum"), mean_prob_change=("prob_change", "mean")).reset_index())


def load_user_image(path_or_bytes, name: str | None = None) -> np.ndarray:
    """An uploaded or local image file (path or raw bytes) as an (H, W, 3) uint8 RGB array (16-bit scaled);
    names a bad file."""
    is_bytes = isinstance(path_or_bytes, (bytes, bytearray, memoryview))
    name = name or ("the uploaded image" if is_bytes else str(path_or_bytes))
    try:
        return np.asarray(rgb_image(path_or_bytes, name))
    except BadImageError as e:
        raise BadImageError(f"{e} Upload a JPEG or PNG photo, or pick one of the sample photos "
                            f"({', '.join(SAMPLE_PHOTOS)}).") from e


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos (`SAMPLE_PHOTOS`) as an (H, W, 3) uint8 RGB array."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}: choose one of {', '.join(SAMPLE_PHOTOS)}, "
                         "or pass an image array or the bytes of an uploaded file")
    import skimage.data
    img = getattr(skimage.data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def photo_top5(model, name_or_image) -> pd.DataFrame:
    """Top-5 (rank, label, probability) of an ImageNet classifier on a sample photo's name, an image, or file bytes."""
    if isinstance(name_or_image, str):
        img = sample_photo(name_or_image)
    elif isinstance(name_or_image, (bytes, bytearray, memoryview)):
        img = load_user_image(name_or_image)
    else:
        img = name_or_image
    return pd.DataFrame([dict(rank=i + 1, label=lab, prob=p) for i, (lab, p) in enumerate(topk(model, img, k=5))])
