"""Hand-crafted features (HOG, uniform LBP histograms) and a linear SVM: the pre-deep-learning baseline."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core.compat import renamed_kwargs
from ..core.data import OpenResized
from ..core.measure import classification_metrics
from ..core.store import cache_dir, cached, hash_key

__all__ = ["handcrafted_features", "svm_baseline"]

KINDS = ("hog", "lbp", "hog+lbp")


def gray_images(paths, img_size: int) -> np.ndarray:
    """Images as (N, img_size, img_size) float32 grayscale in [0, 1] (bilinear resize); a bad file raises BadImageError."""
    out = np.empty((len(paths), img_size, img_size), dtype=np.float32)
    opener = OpenResized(img_size)   # the decoded, resized images elpv_dls already holds this session
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


def _compute(paths, img_size: int, kind: str, hog_kw: dict, lbp_kw: dict) -> np.ndarray:
    images = gray_images(paths, img_size)
    parts = ([hog_features(images, **hog_kw)] if "hog" in kind else []) + \
            ([lbp_features(images, **lbp_kw)] if "lbp" in kind else [])
    return np.concatenate(parts, axis=1)


@renamed_kwargs(size="img_size")
def handcrafted_features(paths, img_size: int = 64, kind: str = "hog+lbp", hog_kw: dict | None = None,
                         lbp_kw: dict | None = None, cache: bool | str | Path = False) -> np.ndarray:
    """(N, D) float32 features of image files: 'hog', 'lbp' or 'hog+lbp' on `img_size` px grayscale.

    `cache`: False (compute), True (the default feature cache folder) or a folder; keyed on paths, size, kind, params.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    paths, hog_kw, lbp_kw = [str(p) for p in paths], dict(hog_kw or {}), dict(lbp_kw or {})
    if cache is False:
        return _compute(paths, img_size, kind, hog_kw, lbp_kw)
    key = hash_key("handcrafted", paths, img_size, kind, sorted(hog_kw.items()), sorted(lbp_kw.items()))
    folder = cache_dir("features") if cache is True else Path(cache)
    build = lambda: dict(x=torch.from_numpy(_compute(paths, img_size, kind, hog_kw, lbp_kw)))  # noqa: E731
    payload, _, _ = cached(folder / f"hc_{key[:16]}.pt", key, ("x",), build)
    return payload["x"].numpy()


def svm_baseline(X_train, y_train, X_valid, y_valid, C: float = 1e-3, class_weight=None,
                 kernel: str = "linear") -> dict:
    """StandardScaler + a linear SVM (LinearSVC; `kernel` 'rbf': scikit-learn's SVC with an RBF kernel) fitted on
    train, scored on valid: dict(metrics, y_true, y_pred, model, seconds).

    C defaults to 1e-3: on ELPV HOG+LBP (~1900 dims, ~2000 cells) C=1 overfits and takes ~40x longer to converge.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"unknown kernel {kernel!r}: choose linear or rbf")
    t = time.perf_counter()
    svm = (LinearSVC(C=C, class_weight=class_weight, max_iter=5000, random_state=0) if kernel == "linear"
           else SVC(C=C, kernel="rbf", class_weight=class_weight))
    clf = make_pipeline(StandardScaler(), svm)
    clf.fit(np.asarray(X_train), np.asarray(y_train))
    y_true, y_pred = np.asarray(y_valid), clf.predict(np.asarray(X_valid))
    return dict(metrics=classification_metrics(y_true, y_pred), y_true=y_true, y_pred=y_pred, model=clf,
                seconds=time.perf_counter() - t)
