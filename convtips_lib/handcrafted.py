"""Hand-crafted features (HOG, uniform LBP histograms) and a linear SVM: the pre-deep-learning baseline."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from .data import OpenResized
from .features import _cached, default_cache_dir
from .measure import classification_metrics

__all__ = ["KINDS", "gray_images", "hog_features", "lbp_features", "handcrafted_features", "svm_baseline"]

KINDS = ("hog", "lbp", "hog+lbp")


def gray_images(paths, size: int) -> np.ndarray:
    """Images as (N, size, size) float32 grayscale in [0, 1] (bilinear resize); a bad file raises BadImageError."""
    out = np.empty((len(paths), size, size), dtype=np.float32)
    opener = OpenResized(size)   # the decoded, resized images elpv_dls already holds this session
    for i, p in enumerate(paths):
        out[i] = np.asarray(opener(p).convert("L"), dtype=np.float32) / 255
    return out


def _as_stack(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected grayscale images as an (N, H, W) array, got shape {images.shape}: "
                         "use gray_images(paths, size)")
    return images


def hog_features(images, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2) -> np.ndarray:
    """HOG descriptors (N, D) of (N, H, W) grayscale images (L2-Hys block normalisation)."""
    from skimage.feature import hog
    images = _as_stack(images)
    kw = dict(orientations=orientations, pixels_per_cell=(pixels_per_cell,) * 2,
              cells_per_block=(cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)
    return np.stack([hog(im, **kw) for im in images]).astype(np.float32)


def lbp_features(images, P: int = 8, R: float = 1, grid: int = 4) -> np.ndarray:
    """Uniform LBP histograms (N, grid * grid * (P + 2)) of (N, H, W) grayscale images: one per cell, each sums to 1."""
    from skimage.feature import local_binary_pattern
    images = _as_stack(images)
    n_bins, cell = P + 2, _cell_index(images.shape[1:], grid)
    counts = np.bincount(cell.ravel(), minlength=grid * grid)[:, None]
    out = np.empty((len(images), grid * grid * n_bins), dtype=np.float32)
    for i, im in enumerate(images):
        codes = local_binary_pattern(_to_uint8(im), P, R, method="uniform").astype(np.int64)
        hist = np.bincount((cell * n_bins + codes).ravel(), minlength=grid * grid * n_bins)
        out[i] = (hist.reshape(grid * grid, n_bins) / counts).ravel()
    return out


def _cell_index(shape: tuple, grid: int) -> np.ndarray:
    """(H, W) map of each pixel's cell number in a `grid` x `grid` split (row-major, as np.array_split)."""
    rows = np.concatenate([np.full(len(c), i) for i, c in enumerate(np.array_split(np.arange(shape[0]), grid))])
    cols = np.concatenate([np.full(len(c), i) for i, c in enumerate(np.array_split(np.arange(shape[1]), grid))])
    return rows[:, None] * grid + cols[None, :]


def _to_uint8(im: np.ndarray) -> np.ndarray:
    """[0, 1] floats (or uint8) as uint8: LBP compares exact grey levels."""
    return im if im.dtype == np.uint8 else np.clip(np.rint(im * 255), 0, 255).astype(np.uint8)


def _compute(paths, size: int, kind: str, hog_kw: dict, lbp_kw: dict) -> np.ndarray:
    images = gray_images(paths, size)
    parts = ([hog_features(images, **hog_kw)] if "hog" in kind else []) + \
            ([lbp_features(images, **lbp_kw)] if "lbp" in kind else [])
    return np.concatenate(parts, axis=1)


def _handcrafted_key(paths, size: int, kind: str, hog_kw: dict, lbp_kw: dict) -> str:
    parts = ["handcrafted", [str(p) for p in paths], size, kind, sorted(hog_kw.items()), sorted(lbp_kw.items())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def handcrafted_features(paths, size: int = 64, kind: str = "hog+lbp", hog_kw: dict | None = None,
                         lbp_kw: dict | None = None, cache: bool | str | Path = False) -> np.ndarray:
    """(N, D) float32 features of image files: 'hog', 'lbp' or 'hog+lbp' on `size` px grayscale.

    `cache`: False (compute), True (the default feature cache folder) or a folder; keyed on paths, size, kind, params.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    paths, hog_kw, lbp_kw = [str(p) for p in paths], dict(hog_kw or {}), dict(lbp_kw or {})
    if cache is False:
        return _compute(paths, size, kind, hog_kw, lbp_kw)
    key = _handcrafted_key(paths, size, kind, hog_kw, lbp_kw)
    folder = default_cache_dir() if cache is True else Path(cache)
    build = lambda: dict(x=torch.from_numpy(_compute(paths, size, kind, hog_kw, lbp_kw)))  # noqa: E731
    payload, _, _ = _cached(folder / f"hc_{key[:16]}.pt", key, ("x",), build)
    return payload["x"].numpy()


def svm_baseline(X_train, y_train, X_valid, y_valid, C: float = 1e-3, class_weight=None) -> dict:
    """StandardScaler + LinearSVC fitted on train, scored on valid: dict(metrics, model, seconds).

    C defaults to 1e-3: on ELPV HOG+LBP (~1900 dims, ~2000 cells) C=1 overfits and takes ~40x longer to converge.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    t = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LinearSVC(C=C, class_weight=class_weight, max_iter=5000, random_state=0))
    clf.fit(np.asarray(X_train), np.asarray(y_train))
    metrics = classification_metrics(np.asarray(y_valid), clf.predict(np.asarray(X_valid)))
    return dict(metrics=metrics, model=clf, seconds=time.perf_counter() - t)
