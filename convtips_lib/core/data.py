"""Data: the embedded ELPV solar-cell dataset, image folders and fastai's online datasets, as fastai DataLoaders."""
from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from fastai.vision.all import (CategoryBlock, ColReader, ColSplitter, DataBlock, DataLoaders, IndexSplitter,
                               IntToFloatTensor, PILImage, RegexLabeller, Resize, Transform, TransformBlock, URLs,
                               image_extensions, untar_data)

from .compat import renamed_kwargs
from .env import seed_everything

__all__ = ["TASKS", "SPLIT_SEED", "VALID_N", "DEFECT_LEVELS", "BadImageError", "DataUnreachableError", "elpv_frame",
           "subsample", "elpv_dls", "folder_dls", "untar_dls", "tensor_dls", "open_image", "rgb_image",
           "OpenResized", "preload_dls", "ROLES", "TUNE_N", "elpv_roles", "thin_roles", "tune_frame", "attach_tune", "CV_FOLDS", "elpv_folds",
           "split_cells", "cell_labels", "fold_tensor_dls", "preload_cells", "INTERPOLATIONS",
           "RESIZE_METHODS", "DATA_INTERPOLATION", "resize_image", "drop_normalize", "cycle_rows", "image_batches",
           "AsImage"]

TASKS = {"binary": "label_bin", "4class": "label_4"}
SPLIT_SEED = 2018          # the one train/valid split, the same in every lesson, profile and seed
VALID_N = 656              # the ELPV benchmark paper's test set: 656 of 2,624 cells (1,968 for training)
_PROB_NAMES = {0.0: "0", 1 / 3: "1/3", 2 / 3: "2/3", 1.0: "1"}
DEFECT_LEVELS = tuple(_PROB_NAMES.values())   # natural order: 0, 1/3, 2/3, 1
ROLES = ("train", "tune", "test")   # train on these, choose (lr, epochs, threshold ...) on these, judge on these
TUNE_N = 394               # tune cells held out of the 1,968 training cells (a fifth), the same everywhere
TUNE_SEED = SPLIT_SEED + 1
CV_FOLDS = 5               # k-fold cross-validation over all 2,624 cells: each cell judged once, by a model that never saw it
CV_SEED = SPLIT_SEED + 2
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,   # timm's names
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
RESIZE_METHODS = ("squash", "crop")   # the whole image to size x size (ELPV's square cells); crop: fastai's Resize
DATA_INTERPOLATION = "bilinear"       # how the course's loaders resize (OpenResized, fastai's Resize)


class BadImageError(OSError):
    """An image file that is missing or cannot be decoded."""


class DataUnreachableError(ConnectionError):
    """An online dataset that could not be downloaded."""


_FIX = ("Replace or delete the file, or build the data with on_bad='skip' (convtips train --skip-bad-images) to "
        "leave it out.")
_EIGHT_BIT = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
MAX_PIXELS = 50_000_000    # a larger image file (a 50-megapixel photo: 8,660 x 5,774) is read downscaled to this


def _describe(src) -> str:
    return "the image bytes" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _pil_open(src) -> Image.Image:
    """PIL's lazy open without its 'could be decompression bomb DOS attack' warning: `MAX_PIXELS` handles large
    images, and PIL's own error (over 2 x Image.MAX_IMAGE_PIXELS) still stops absurd ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src)


def _fit_size(width: int, height: int) -> tuple:
    """(w, h) of an image of width x height px shrunk, aspect kept, to at most `MAX_PIXELS`."""
    f = min(1.0, (MAX_PIXELS / (width * height)) ** 0.5)
    return max(1, int(width * f)), max(1, int(height * f))


def _loaded(im: Image.Image) -> Image.Image:
    """The decoded pixels of a lazily opened image; one over `MAX_PIXELS` downscaled to fit (JPEG: decoded at a
    reduced scale), so a 12,000 x 12,000 scan costs what a 50-megapixel photo does."""
    size = _fit_size(im.width, im.height)
    if size == im.size:
        im.load()
        return im
    im.draft(im.mode, size)
    return im.resize(size, Image.Resampling.BOX)


def _bomb_message(name: str) -> str:
    return (f"cannot read image {name}: it has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (twice PIL's "
            "Image.MAX_IMAGE_PIXELS), far more than any camera takes (a 'decompression bomb'?). Downscale it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if you trust the file. {_FIX}")


def _open_file(src, name: str) -> Image.Image:
    """A path or file bytes, decoded (over `MAX_PIXELS`: downscaled); a missing, unreadable or absurdly large file
    raises BadImageError."""
    try:
        return _loaded(_pil_open(src))
    except Image.DecompressionBombError as e:
        raise BadImageError(_bomb_message(name)) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot read image {name}: {e}. {_FIX}") from e


def _bit_depth(hi: float) -> int:
    """Bits of a camera's data whose brightest pixel is `hi`, in a 16-bit container: the smallest even depth from 10
    to 16 that holds it (4095 -> 12, 4096 -> 14)."""
    bits = int(hi).bit_length()
    return min(16, max(10, bits + bits % 2))


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """Pixel values of any dtype -> uint8 0-255: 16-bit containers scaled by their bit depth (`_bit_depth`: 12-bit
    data by 255/4095, not squeezed into 17 grey levels by 255/65535; never clipped), floats from [0, 1] or [0, 255].
    Written by hand: PIL's convert() clips 16-bit values (almost all pixels white) and refuses floats."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.size and not np.isfinite(a).all():
        raise BadImageError(f"image {name} has NaN or infinite pixel values: fix or drop the image")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if np.issubdtype(a.dtype, np.integer):
        if lo >= 0 and (a.dtype.itemsize == 2 or hi > 255) and hi <= 65535:   # 16-bit (e.g. EL cameras)
            return np.round(a.astype(np.float32) * (255 / (2 ** _bit_depth(hi) - 1))).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
    elif lo >= 0 and hi <= 1:
        return np.round(a.astype(np.float32) * 255).astype(np.uint8)
    elif lo >= 0 and hi <= 255:
        return np.round(a.astype(np.float32)).astype(np.uint8)
    raise BadImageError(f"image {name} has {a.dtype} pixel values in [{lo:g}, {hi:g}]: expected 8-bit (0-255), "
                        "16-bit (0-65535) or floats in [0, 1] or [0, 255]; rescale it first")


def _to_hwc3(a: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3): gray replicated, alpha dropped."""
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        raise BadImageError(f"image {name} looks channel-first {a.shape}: pass (H, W, 3), e.g. x.permute(1, 2, 0)")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise BadImageError(f"image {name} has shape {a.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise BadImageError(f"image {name} is empty ({a.shape[1]} x {a.shape[0]} pixels): it holds nothing to "
                            "classify; check how it was cropped or saved")
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3]


def rgb_image(src, name: str | None = None) -> Image.Image:
    """Any image as an 8-bit RGB PIL image: a file path or file bytes, a PIL image, or an array/tensor (H, W[, C]).

    16-bit files and arrays (electroluminescence cameras write 12 to 16 bits) are scaled to 0-255 by their bit depth,
    not by their own range, so a dark image stays dark: 10, 12, 14 or 16 bits, the smallest that holds the image's
    brightest pixel (12-bit data: x 255/4095; a 12-bit image with no pixel above 1023 reads as 10-bit). Float arrays
    must hold [0, 1] or [0, 255]. A file over `MAX_PIXELS` is read downscaled to fit; an empty image, a
    decompression bomb or an unreadable file raises `BadImageError` naming it."""
    if name is None:
        name = _describe(src) if isinstance(src, (str, Path, bytes, bytearray, memoryview)) else "the image"
    if isinstance(src, (str, Path, bytes, bytearray, memoryview)):
        src = _open_file(src, name)
    if isinstance(src, Image.Image):
        if src.width == 0 or src.height == 0:
            raise BadImageError(f"image {name} is empty ({src.width} x {src.height} pixels)")
        if src.mode in _EIGHT_BIT:
            return src if src.mode == "RGB" else src.convert("RGB")
        src = np.asarray(src)   # 16-bit ('I;16'), 32-bit int ('I') or float ('F') pixels
    a = np.asarray(src.detach().cpu() if hasattr(src, "detach") else src)
    return Image.fromarray(np.ascontiguousarray(_to_hwc3(_to_uint8(a, name), name)))


def open_image(path) -> PILImage:
    """Open an image file as an RGB PILImage (grayscale replicated, 16-bit scaled); names the file on failure."""
    return PILImage.create(rgb_image(path, str(path)))


def _resample(interpolation: str) -> int:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[interpolation]


def resize_image(img, img_size: int, interpolation: str = DATA_INTERPOLATION, method: str = "squash") -> PILImage:
    """Any image (see `rgb_image`) as an RGB PILImage of img_size x img_size px: 'squash' resizes the whole image
    (aspect ratio not kept), 'crop' its centre square (fastai's validation-time `Resize`); the one resize of the
    library (loaders, ImageNet preprocessing, augmentation previews, deployed models)."""
    resample = _resample(interpolation)
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}: choose one of {', '.join(RESIZE_METHODS)}")
    img = rgb_image(img)
    if method == "squash":
        return PILImage.create(img.resize((img_size, img_size), resample))
    return Resize(img_size, resamples=(resample, Image.Resampling.NEAREST))(PILImage.create(img), split_idx=1)


@lru_cache(maxsize=16384)
def _open_resized(path: str, size: int, mtime_ns: int) -> PILImage:
    """`open_image` resized to size x size, memoised per (file, size, modification time)."""
    return resize_image(open_image(path), size, DATA_INTERPOLATION)


class OpenResized:
    """Item opener for square images (ELPV): decodes and resizes each file once per session, then serves the copy.

    Repeated fits in one session (a grid of experiments) stop paying the PNG decode; a changed file is re-read.
    """

    def __init__(self, size: int):
        self.size = size

    @staticmethod
    def forget() -> None:
        """Drop every memoised image (the next pass decodes the files again, e.g. to time a cold start)."""
        _open_resized.cache_clear()

    def __call__(self, path) -> PILImage:
        try:
            mtime = Path(path).stat().st_mtime_ns
        except OSError:
            return open_image(path)   # raises BadImageError naming the file
        return _open_resized(str(path), self.size, mtime)


def _checked_size(path) -> tuple:
    """(width, height) of the image file `path`, after PIL's verify(); `BadImageError` naming it if it is unusable."""
    try:
        with _pil_open(path) as im:
            if 0 in im.size:
                raise ValueError(f"it is empty ({im.width} x {im.height} pixels)")
            im.verify()
            return im.size
    except Image.DecompressionBombError as e:
        raise BadImageError(_bomb_message(path)) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot read image {path}: {e}. {_FIX}") from e


def check_images(paths, on_bad: str = "raise") -> list:
    """The paths that open as images; a bad one raises `BadImageError` (on_bad='raise') or is skipped with a warning.
    Images over `MAX_PIXELS` are named in a warning: they are read downscaled."""
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', not {on_bad!r}")
    good, bad, large = [], [], []
    for p in paths:
        try:
            size = _checked_size(p)
        except BadImageError:
            if on_bad == "raise":
                raise
            bad.append(p)
            continue
        good.append(p)
        if _fit_size(*size) != size:
            large.append(f"{p} ({size[0]} x {size[1]} -> {' x '.join(map(str, _fit_size(*size)))})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s): " + ", ".join(map(str, bad[:10])), stacklevel=2)
    if large:
        warnings.warn(f"{len(large)} image(s) have more than MAX_PIXELS ({MAX_PIXELS:,}) pixels and are read "
                      "downscaled to fit: " + ", ".join(large[:10]), stacklevel=2)
    return good


def _elpv_root() -> Path:
    try:
        return Path(resources.files("elpv_dataset")) / "data"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the ELPV dataset is not installed: pip install elpv-dataset") from e


def _valid_quota(sizes: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder allocation: per-stratum counts proportional to `sizes` that sum exactly to `total`."""
    exact = sizes * total / sizes.sum()
    quota = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quota), kind="stable")       # largest remainders first, ties in stratum order
    quota[order[: total - quota.sum()]] += 1
    return quota


def _split_column(df: pd.DataFrame, n_valid: int = VALID_N) -> np.ndarray:
    """Seeded split stratified by defect probability x module type, exactly `n_valid` validation cells
    (largest-remainder allocation over the strata): True = validation."""
    rng = np.random.default_rng(SPLIT_SEED)
    is_valid = np.zeros(len(df), dtype=bool)
    strata = list(df.groupby(["label_4", "type"], observed=True).indices.values())
    for idx, q in zip(strata, _valid_quota(np.array([len(i) for i in strata]), n_valid)):
        is_valid[rng.permutation(idx)[:q]] = True
    return is_valid


@lru_cache(maxsize=None)
def _elpv_frame_cached(root: str) -> pd.DataFrame:
    root = Path(root)
    df = pd.read_csv(root / "labels.csv", sep=r"\s+", header=None, names=["file", "prob", "type"])
    df["path"] = [str(root / f) for f in df["file"]]
    missing = [p for p in df["path"] if not Path(p).exists()]
    if missing:
        raise BadImageError(f"{len(missing)} ELPV image(s) missing, e.g. {missing[0]}: reinstall with "
                            "pip install --force-reinstall elpv-dataset")
    df["defective"] = df["prob"] >= 0.5
    df["label_bin"] = np.where(df["defective"], "defective", "functional")
    df["label_4"] = pd.Categorical([_PROB_NAMES[min(_PROB_NAMES, key=lambda k: abs(k - p))] for p in df["prob"]],
                                   categories=DEFECT_LEVELS, ordered=True)
    df["is_valid"] = _split_column(df)
    return df[["path", "prob", "type", "defective", "label_bin", "label_4", "is_valid"]]


def elpv_frame() -> pd.DataFrame:
    """ELPV as a table, one row per 300x300 grayscale cell image: path, prob, type (mono/poly), labels, is_valid."""
    return _elpv_frame_cached(str(_elpv_root())).copy()


def elpv_roles(valid_n: int = 0, tune_n: int = 0) -> pd.DataFrame:
    """`elpv_frame` with a `role` column (`ROLES`): 'test' for the fixed 656 validation cells that judge claims,
    'tune' for `TUNE_N` training cells held out to make choices on (seeded, stratified by defect probability x
    module type like the split itself, the same in every lesson, profile and seed), 'train' for the other 1,574.
    `valid_n` / `tune_n` (0: all): only about that many of the test / tune cells (stratified, seeded, in their
    order), where a profile that decides nothing saves time (`cfg.valid_n`, `cfg.tune_n`: smoke)."""
    return thin_roles(_all_roles(), valid_n, tune_n)


def thin_roles(roles: pd.DataFrame, test_n: int = 0, tune_n: int = 0) -> pd.DataFrame:
    """A role table (`elpv_roles`, a fold of `elpv_folds`) with only about `test_n` of its test and `tune_n` of its
    tune cells (0: all; stratified by defect probability x module type, seeded, in their order): for a profile
    that decides nothing and saves time predicting fewer cells (smoke). The train cells are kept."""
    df = roles
    for role, n in (("test", test_n), ("tune", tune_n)):
        rows = df[df["role"] == role]
        if n and n < len(rows):
            keep = rows.groupby(["label_4", "type"], observed=True, group_keys=False).sample(
                frac=n / len(rows), random_state=SPLIT_SEED).index
            df = df[(df["role"] != role) | df.index.isin(keep)]
    return df


def _all_roles() -> pd.DataFrame:
    df = elpv_frame()
    train = df[~df["is_valid"]]
    tune = np.zeros(len(train), dtype=bool)
    rng = np.random.default_rng(TUNE_SEED)
    strata = list(train.groupby(["label_4", "type"], observed=True).indices.values())
    for idx, q in zip(strata, _valid_quota(np.array([len(i) for i in strata]), TUNE_N)):
        tune[rng.permutation(idx)[:q]] = True
    df["role"] = "test"
    df.loc[train.index, "role"] = np.where(tune, "tune", "train")
    return df


def _stratified_parts(df: pd.DataFrame, k: int, rng) -> np.ndarray:
    """(N,) part 0..k-1 of each row: every stratum (defect probability x module type) dealt round-robin over the
    parts after a seeded shuffle, so each part has about 1/k of every stratum."""
    part = np.zeros(len(df), dtype=int)
    offset = 0
    for idx in df.groupby(["label_4", "type"], observed=True).indices.values():
        part[rng.permutation(idx)] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)      # the next stratum starts where this one stopped: parts stay equal in size
    return part


def elpv_folds(k: int = CV_FOLDS, seed: int = CV_SEED) -> list:
    """k role tables (`elpv_roles`' columns) over all 2,624 cells for k-fold cross-validation: in fold i the i-th
    stratified part is 'test', a stratified fifth of the other cells is 'tune' (as `TUNE_N` is of the fixed
    split's training cells) and the rest 'train'. Every cell is a test cell in exactly one fold, so pooled over the
    folds there are 2,624 judged predictions instead of 656; choices stay nested inside each fold (its tune cells).
    Seeded: the same folds in every lesson, profile and seed."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be a whole number >= 2 (folds), got {k!r}")
    df = elpv_frame()
    rng = np.random.default_rng(seed)
    part = _stratified_parts(df, k, rng)
    folds = []
    for i in range(k):
        rest = df[part != i]
        tune = _stratified_parts(rest, 5, rng) == 0
        role = pd.Series("test", index=df.index)
        role[rest.index] = np.where(tune, "tune", "train")
        folds.append(df.assign(role=role, is_valid=role == "test", fold=i))
    return folds


def split_cells(x, y, paths, roles: pd.DataFrame) -> dict:
    """{role: (x, y)} of tensors over cells (x (N, ...), y (N,), `paths` (N,) naming each row) for one role table
    (`elpv_roles` or a fold of `elpv_folds`), each role's rows in the order of the table, so pooled test
    predictions line up across experiments."""
    import torch
    where = {str(p): i for i, p in enumerate(paths)}
    missing = [p for p in roles["path"].astype(str) if p not in where]
    if missing:
        raise ValueError(f"{len(missing)} cells of the role table have no row here, e.g. {missing[0]}: build the "
                         "tensors over every cell the table names")
    out = {}
    for r in ROLES:
        idx = torch.as_tensor([where[str(p)] for p in roles.loc[roles["role"] == r, "path"]], dtype=torch.long)
        out[r] = (x[idx], y[idx])
    return out


def cell_labels(paths, task: str = "binary") -> tuple:
    """(y (N,) int64 tensor, vocab) of the ELPV cells named by `paths` for `task` ('binary': fastai's sorted vocab,
    '4class': `DEFECT_LEVELS`): another task's labels for cells already preloaded or cached in `paths`' order."""
    import torch
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    df = elpv_frame().set_index("path")
    names = df[TASKS[task]].astype(str)
    vocab = list(DEFECT_LEVELS) if task == "4class" else sorted(names.unique())
    missing = [p for p in map(str, paths) if p not in names.index]
    if missing:
        raise ValueError(f"{len(missing)} paths are not ELPV cells, e.g. {missing[0]}")
    code = {v: i for i, v in enumerate(vocab)}
    return torch.tensor([code[names[str(p)]] for p in paths], dtype=torch.long), vocab


def fold_tensor_dls(x, y, paths, roles: pd.DataFrame, vocab, bs: int = 64, standardise: bool = True,
                    tfms: list | None = None, frac: float = 1.0, seed: int = 0,
                    epoch_steps: int | None = None) -> DataLoaders:
    """`tensor_dls` for one role table over preloaded cells (see `split_cells`): train on its train cells (a
    stratified, nested `frac` of them, `subsample`), validate on its test cells, `dls.tune` its tune cells; images
    standardised per channel with the train cells' own mean and std (`standardise`), as `preload_dls` does.
    `tfms`: fastai batch transforms (augmentation) run on the training batches before that standardisation, so
    they see images in [0, 1]. `epoch_steps`: an epoch is that many full batches whatever the number of train
    cells (`cycle_rows`), so runs on different fractions count optimizer steps alike."""
    if frac != 1.0:
        kept = subsample(roles[roles["role"] != "tune"].assign(is_valid=roles["role"] == "test"), frac, seed)
        roles = roles[(roles["role"] != "train") | roles["path"].isin(kept["path"])]
    parts = split_cells(x, y, paths, roles)
    (xt, yt), (xv, yv), (xu, yu) = parts["train"], parts["test"], parts["tune"]
    stats = None
    if standardise:
        dims = (0, 2, 3) if xt.ndim == 4 else (0,)
        stats = xt.mean(dims, keepdim=True), xt.std(dims, keepdim=True).clamp(min=1e-6)
        if tfms is None:
            (mean, std), stats = stats, None
            xt, xv, xu = (xt - mean) / std, (xv - mean) / std, (xu - mean) / std
    n_cells = len(yt)
    if epoch_steps is not None:
        xt, yt = cycle_rows(xt, yt, epoch_steps * bs, seed)
    dls = tensor_dls(xt, yt, xv, yv, vocab, bs=bs, tune=(xu, yu), tfms=tfms, stats=stats)
    dls.n_cells = n_cells   # distinct train cells (the train set may cycle them)
    return dls


def cycle_rows(x, y, n: int, seed: int = 0) -> tuple:
    """(x, y) read as exactly `n` >= N rows: row i is a seeded permutation's row i mod N, so each of the N rows
    appears floor(n/N) or ceil(n/N) times (the loader still shuffles every epoch)."""
    import torch
    if n < len(y):
        raise ValueError(f"{n} rows per epoch would leave some of the {len(y)} rows out of every epoch: give at least "
                         f"{len(y)} (e.g. raise the profile's epoch_steps)")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    idx = perm[torch.arange(n) % len(y)]
    return x[idx], y[idx]


def tune_frame() -> pd.DataFrame:
    """The table a choice is made on: the 'train' cells to train on and the 'tune' cells as the validation set
    (`is_valid`), the 'test' cells left out, so no choice ever sees them. Pass it as `elpv_dls(..., df=)`."""
    df = elpv_roles()
    return df[df["role"] != "test"].assign(is_valid=lambda d: d["role"] == "tune")


def subsample(df: pd.DataFrame, frac: float, seed: int = 0) -> pd.DataFrame:
    """Keep every validation row and a stratified `frac` of the training rows; smaller fractions nest in larger ones."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    rng = np.random.default_rng(seed)
    train = df[~df["is_valid"]]
    keep = []
    for _, idx in train.groupby(["label_4", "type"], observed=True).indices.items():
        idx = rng.permutation(idx)
        keep.extend(train.index[idx[: max(1, int(round(len(idx) * frac)))]])
    return pd.concat([df.loc[sorted(keep)], df[df["is_valid"]]])


def _task_column(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return TASKS[task]


def _image_block(opener=open_image) -> TransformBlock:
    return TransformBlock(type_tfms=opener, batch_tfms=IntToFloatTensor)


def _split_roles(df: pd.DataFrame) -> tuple:
    """(train + test rows with is_valid marking test, tune rows) of a table with a `role` column (`elpv_roles`)."""
    if "role" not in df:
        raise ValueError("tune=True needs a table with a 'role' column: pass elpv_roles() (or a subset of it) as df")
    bad = sorted(set(df["role"]) - set(ROLES))
    if bad:
        raise ValueError(f"unknown role(s) {bad}: every row's role is one of {', '.join(ROLES)}")
    tune = df[df["role"] == "tune"]
    if tune.empty:
        raise ValueError("tune=True but the table has no 'tune' rows to choose on: use elpv_roles()")
    return df[df["role"] != "tune"].assign(is_valid=lambda d: d["role"] == "test"), tune


def attach_tune(dls: DataLoaders, items) -> DataLoaders:
    """Give image `dls` a third loader, `dls.tune`: `items` (rows like the training ones) through the validation
    transforms, in order. `History` predicts it after every epoch, so choices read it and never the test cells."""
    dls.tune = dls.test_dl(items, with_labels=True)
    return dls


@renamed_kwargs(size="img_size")
def elpv_dls(cfg, task: str = "binary", frac: float | None = None, seed: int | None = None,
             tfms: list | None = None, img_size: int | None = None, bs: int | None = None,
             df: pd.DataFrame | None = None, item_tfms: list | None = None,
             sampling_weights: dict | None = None, tune: bool = False) -> DataLoaders:
    """fastai DataLoaders on ELPV: `task` 'binary' or '4class', `frac` of the training split (of `df`, default the
    whole dataset), the fixed valid set; `tfms` batch transforms, `item_tfms` per-image transforms (run in the
    loader's worker processes); `sampling_weights` {class: weight}: training items drawn with replacement,
    each with probability proportional to its class's weight (fastai's WeightedDL: over-sampling).

    `tune=True`: the three roles (`elpv_roles`): train on the 'train' cells only (`frac` of them), validate on the
    656 'test' cells that judge claims, and predict the 394 'tune' cells as `dls.tune`, the only cells a choice
    (learning rate, epochs, threshold, member) may read; without `df`, `cfg.valid_n` / `cfg.tune_n` of them where
    the profile says so (smoke)."""
    col = _task_column(task)
    _check_size("bs", bs, "images per batch")
    _check_size("img_size", img_size, "side of the square input in px")
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)
    tune_rows = None
    if tune:
        df, tune_rows = _split_roles(elpv_roles(cfg.valid_n, cfg.tune_n) if df is None else df)
    df = subsample(elpv_frame() if df is None else df, cfg.train_frac if frac is None else frac, seed)
    img_size = img_size or cfg.img_size
    labels = df[col]   # an ordered column (label_4: 0, 1/3, 2/3, 1) keeps its order as the vocab
    vocab = list(labels.cat.categories) if isinstance(labels.dtype, pd.CategoricalDtype) else None
    dblock = DataBlock(blocks=(_image_block(OpenResized(img_size)), CategoryBlock(vocab=vocab, sort=vocab is None)),
                       get_x=ColReader("path"), get_y=ColReader(col), splitter=ColSplitter("is_valid"),
                       item_tfms=list(item_tfms or []), batch_tfms=list(tfms or []))
    df, kw = df.reset_index(drop=True), dict(bs=bs or cfg.bs, num_workers=cfg.num_workers, seed=seed, shuffle=True)
    if sampling_weights is None:
        dls = dblock.dataloaders(df, **kw)
    else:
        dls = dblock.weighted_dataloaders(df, _item_weights(df[col].astype(str), sampling_weights), **kw)
    return dls if tune_rows is None else attach_tune(dls, tune_rows.reset_index(drop=True))


def _item_weights(labels, sampling_weights: dict) -> np.ndarray:
    """(N,) weight of each item from {class: weight}; a class without a weight or a weight <= 0 is refused."""
    labels = [str(v) for v in labels]
    weights = {str(k): float(v) for k, v in sampling_weights.items()}
    missing = sorted(set(labels) - set(weights))
    if missing or min(weights.values()) <= 0:
        raise ValueError(f"sampling_weights needs a weight > 0 for every class: got {weights}, missing {missing}")
    return np.array([weights[v] for v in labels])


def _check_size(name: str, value, hint: str) -> None:
    """None (the profile's value) or a positive integer; anything else raises a ValueError naming it."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be a positive integer ({hint}) or None for the profile's value, got {value!r}")


class DataFolderError(ValueError):
    """A folder of images whose layout cannot train a classifier as it is: the message says what to change."""


_HELD_OUT = ("valid", "val", "test")   # the folder next to train/ that holds the validation images, by preference


def stratified_pick(labels: list, pct: float, seed: int) -> np.ndarray:
    """(N,) bool: `pct` of each class's items (rounded; at least one, never all of a class), seeded."""
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    pick = np.zeros(len(labels), dtype=bool)
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        pick[idx[:min(len(idx) - 1, max(1, round(pct * len(idx))))]] = True
    return pick


def _split_folders(path: Path) -> tuple:
    """(training folder, held-out folder or None): train/ and valid/ (or val/, or test/) when there is a train/,
    else (path, None); a folder left out beside them is named in a warning."""
    if not (path / "train").is_dir():
        return path, None
    held = next((path / n for n in _HELD_OUT if (path / n).is_dir()), None)
    used = {"train", getattr(held, "name", None)}
    left = sorted(d.name + "/" for d in path.iterdir() if d.is_dir() and d.name not in used and d.name[0] != ".")
    if left:
        warnings.warn(f"{path} has train/{' and ' + held.name + '/' if held else ''}: {', '.join(left)} left out "
                      "(neither trained nor validated on)", stacklevel=4)
    return path / "train", held


def _follow(folder: Path, real_base: Path, seen: set) -> bool:
    """Whether to walk into `folder`: a real sub-folder, or a link to a folder neither inside nor above the data
    folder (`real_base`, resolved), each real folder once."""
    real = Path(os.path.realpath(folder))
    overlaps = real == real_base or real_base in real.parents or real in real_base.parents
    if real in seen or (folder.is_symlink() and overlaps):
        warnings.warn(f"not following the folder link {folder} -> {real}: it leads back into the data folder or to "
                      "a folder already read, so its images would be listed twice (or forever)", stacklevel=5)
        return False
    seen.add(real)
    return True


def _walk_images(folder: Path, base: Path) -> list:
    """Image files under `folder`, sorted, hidden files and folders skipped; folder links as `_follow` says (fastai's
    get_image_files follows every link: `ln -s .. loop` lists the images dozens of times)."""
    real_base, seen, files = Path(os.path.realpath(base)), set(), []
    for top, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if d[0] != "." and _follow(Path(top, d), real_base, seen)]
        files += [Path(top, n) for n in sorted(names) if n[0] != "." and Path(n).suffix.lower() in image_extensions]
    return files


def _once_each(files: list) -> list:
    """`files` with every image file once (by resolved path): a later link to a listed file is left out, with a
    warning, so no image is both trained and validated on."""
    seen, keep, dropped = set(), [], []
    for f in files:
        real = os.path.realpath(f)
        (dropped if real in seen else keep).append(f)
        seen.add(real)
    if dropped:
        warnings.warn(f"{len(dropped)} path(s) lead to images already listed and are left out (each image is used "
                      f"once), e.g. {dropped[0]} -> {os.path.realpath(dropped[0])}", stacklevel=4)
    return keep


class _ClassFolder:
    """The label of an image path: its folder `depth` levels below `root` (0: the first level); deeper folders are
    part of the class (functional/2019/a.png is 'functional')."""

    def __init__(self, root: Path, depth: int):
        self.root, self.depth = Path(root), depth

    def __call__(self, path) -> str:
        return Path(path).relative_to(self.root).parts[self.depth]


def _check_in_class_folders(files: list, top: Path) -> None:
    loose = [f for f in files if f.parent == top]
    if loose:
        raise DataFolderError(f"{len(loose)} image(s) lie directly in {top}, not in a class sub-folder (e.g. "
                              f"{loose[0].name}): move each into {top}/<class>/ (the first folder level below {top} "
                              "names the class; deeper folders belong to it), or remove it")


def _check_valid_pct(valid_pct: float) -> None:
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must lie strictly between 0 and 1 (the share of images held out for validation, "
                         f"e.g. 0.25), got {valid_pct!r}; or split the folder yourself into train/ and valid/")


def _names(classes) -> str:
    return ", ".join(map(repr, sorted(classes)))


def _check_two_each(labels: pd.Series, path: Path) -> None:
    """Every class of a folder to split at random has two images or more: one to train on, one to validate on."""
    small = [c for c, n in labels.value_counts().items() if n < 2]
    if small:
        raise DataFolderError(f"class(es) {_names(small)} have a single image under {path}: training and validation "
                              "both need at least one image of every class; add images to its folder (or remove it)")


def _check_classes(df: pd.DataFrame, train: Path, held: Path | None) -> None:
    """Two classes or more, each with training and validation images; else `DataFolderError` naming them."""
    fit, valid = set(df["label"][~df["is_valid"]]), set(df["label"][df["is_valid"]])
    if len(fit | valid) < 2:
        raise DataFolderError(f"found one class only ({_names(fit | valid)}) under {train.parent if held else train}: "
                              "put each class in its own sub-folder")
    if valid - fit:
        raise DataFolderError(f"class(es) {_names(valid - fit)} have images in {held} but none in {train}: a model "
                              f"cannot learn a class it never trains on; add images to {train}/<class>, or remove "
                              f"the class from {held}")
    if fit - valid:
        raise DataFolderError(f"class(es) {_names(fit - valid)} have no images in {held}: their accuracy could not be "
                              f"measured (a recall of 0 would be recorded); add some to {held}/<class>")


def _is_valid(df: pd.DataFrame, path: Path, held: Path | None, valid_pct: float, seed: int) -> np.ndarray:
    """(N,) True for the validation images: those in the held-out folder, else a stratified, seeded `valid_pct` of
    every class (`stratified_pick`)."""
    if held is not None:
        return np.array([held in Path(p).parents for p in df["path"]])
    _check_two_each(df["label"], path)
    return stratified_pick(list(df["label"]), valid_pct, seed)


def _read_folder(path, valid_pct: float, seed: int, label_re: str | None, on_bad: str) -> tuple:
    """(table of path, label, is_valid; the labeller) of a folder of images, every check made (`folder_table`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no folder {path}: give a folder of images in class sub-folders "
                                "(e.g. data/cats/1.jpg, data/dogs/2.jpg)")
    train, held = _split_folders(path)
    if held is None:
        _check_valid_pct(valid_pct)
    tops = [train] + ([held] if held else [])
    files = _once_each([f for top in tops for f in _walk_images(top, path)])
    good = check_images(files, on_bad=on_bad)
    if not good:
        raise BadImageError(f"no readable images under {path} (looked for .jpg, .png, ... in every sub-folder)")
    for top in tops if label_re is None else []:
        _check_in_class_folders(good, top)
    label = RegexLabeller(label_re) if label_re else _ClassFolder(path, int(train != path))
    df = pd.DataFrame({"path": good, "label": [label(f) for f in good]})
    df["is_valid"] = _is_valid(df, path, held, valid_pct, seed)
    _check_classes(df, train, held)
    df.attrs["skipped"] = sorted(set(files) - set(good))
    return df, label


def folder_table(path, valid_pct: float = 0.25, seed: int = 0, label_re: str | None = None,
                 on_bad: str = "raise") -> pd.DataFrame:
    """One row per image of a folder: path, label (its first folder level below `path`, or below train/ and
    valid/; `label_re` on file names instead), is_valid; every check `folder_dls` makes, without a model. Layouts:
    class folders, split at random (a seeded, stratified `valid_pct` of every class); train/ + valid/ (or val/, or
    test/ as the held-out set); train/ alone (split at random). Folder links back into the data folder are not
    followed, an image reached twice (by resolved path) counts once, and every class needs training and validation
    images. The images skipped (on_bad='skip') are in `.attrs['skipped']`."""
    return _read_folder(path, valid_pct, seed, label_re, on_bad)[0]


@renamed_kwargs(size="img_size")
def folder_dls(path, cfg, valid_pct: float = 0.25, label_re: str | None = None, tfms: list | None = None,
               on_bad: str = "raise", seed: int | None = None, bs: int | None = None,
               img_size: int | None = None, sampling_weights: dict | None = None,
               split_seed: int | None = None) -> DataLoaders:
    """DataLoaders from a folder of images, read and checked as `folder_table` says. `bs`, `img_size` default to
    the profile's; a training set smaller than one batch gets a smaller batch (with a warning). `sampling_weights`
    {class: weight}: over-sampling, as in `elpv_dls`. `dls.skipped`: the unreadable files left out (on_bad='skip').
    `seed` shuffles the batches; `split_seed` (default: `seed`) draws the validation images, so that runs over
    several seeds can share one split."""
    _check_size("bs", bs, "images per batch")
    _check_size("img_size", img_size, "side of the square input in px")
    seed = cfg.seed if seed is None else seed
    df, label = _read_folder(path, valid_pct, seed if split_seed is None else split_seed, label_re, on_bad)
    seed_everything(seed)
    dblock = DataBlock(blocks=(_image_block(), CategoryBlock), get_y=label,
                       splitter=IndexSplitter(np.flatnonzero(df["is_valid"])),
                       item_tfms=Resize(img_size or cfg.img_size), batch_tfms=list(tfms or []))
    files, n_train = list(df["path"]), int((~df["is_valid"]).sum())
    bs = bs or cfg.bs
    if n_train < bs:
        warnings.warn(f"{n_train} training images, fewer than one batch of {bs}: using batches of {n_train}",
                      stacklevel=2)
        bs = n_train
    kw = dict(bs=bs, num_workers=cfg.num_workers, seed=seed)
    if sampling_weights is None:
        dls = dblock.dataloaders(files, **kw)
    else:
        dls = dblock.weighted_dataloaders(files, _item_weights(df["label"], sampling_weights), **kw)
    dls.skipped = df.attrs["skipped"]
    return dls


def _dataset_url(name: str) -> str:
    if "://" in name:
        return name
    url = getattr(URLs, name.upper(), None)
    if not isinstance(url, str):
        known = sorted(k for k, v in vars(URLs).items() if isinstance(v, str) and v.endswith(".tgz"))
        raise ValueError(f"unknown fastai dataset {name!r}: choose one of {', '.join(known)}")
    return url


_LABEL_RES = {"PETS": r"^(.*)_\d+\.jpg$"}


def untar_dls(name: str, cfg, base=None, **kw) -> DataLoaders:
    """Download (once) a fastai dataset by name (PETS, IMAGENETTE_160, ...) or archive URL and build DataLoaders."""
    url = _dataset_url(name)
    try:
        path = untar_data(url, base=base)
    except OSError as e:
        raise DataUnreachableError(f"could not download {url} ({e}). Offline, use the embedded ELPV data "
                                   "(elpv_dls) or a local folder of images (folder_dls).") from e
    if name.upper() in _LABEL_RES and "label_re" not in kw:
        kw["label_re"] = _LABEL_RES[name.upper()]
    return folder_dls(path, cfg, **kw)


class TensorPairs:
    """A dataset of (x[i], y[i]) over tensors (N, ...) and (N,), with the class names `vocab`."""

    def __init__(self, x, y, vocab):
        self.x, self.y, self.vocab, self.c = x, y, list(vocab), len(vocab)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def tensor_dls(x_train, y_train, x_valid, y_valid, vocab, bs: int = 64, num_workers: int = 0,
               sampling_weights: dict | None = None, tune: tuple | None = None,
               val_bs: int | None = None, tfms: list | None = None, stats: tuple | None = None) -> DataLoaders:
    """fastai DataLoaders over tensors (e.g. cached features): shuffled train batches, the last partial one dropped
    as an image loader does (unless it is the only one); the validation set in order. `dls.vocab`, `dls.c` as for
    images. `sampling_weights` {class name: weight}: over-sampling, as in `elpv_dls`. `tune` (x, y): the cells to
    choose on, as `dls.tune` (see `attach_tune`). The validation and tune cells go in batches of `val_bs` (default
    4 x bs): prediction keeps no gradients, and with small tensors fastai's per-batch overhead is most of the cost.
    Image tensors (N, 3, H, W) only: `tfms`, fastai batch transforms on the training batches (augmentation), and
    `stats` (mean, std), a `Normalize` after them on every loader (`image_batches`)."""
    from fastai.callback.data import WeightedDL
    from fastai.data.load import DataLoader
    train_kw = dict(bs=bs, shuffle=True, drop_last=len(y_train) > bs, num_workers=num_workers)
    if tfms is not None or stats is not None:
        train_kw["after_batch"] = image_batches(tfms or [], stats, split_idx=0)
    pairs = TensorPairs(x_train, y_train, vocab)
    if sampling_weights is None:
        train = DataLoader(pairs, **train_kw)
    else:
        train = WeightedDL(pairs, wgts=_item_weights([vocab[int(i)] for i in y_train], sampling_weights), **train_kw)
    val_bs = val_bs or 4 * bs
    plain = dict(bs=val_bs, shuffle=False, num_workers=num_workers)
    if "after_batch" in train_kw:
        plain["after_batch"] = image_batches([], stats, split_idx=1)
    valid = DataLoader(TensorPairs(x_valid, y_valid, vocab), **plain)
    dls = DataLoaders(train, valid)
    if tune is not None:
        dls.tune = DataLoader(TensorPairs(*tune, vocab), **plain)
    return dls


def image_batches(tfms: list, stats: tuple | None = None, split_idx: int = 0):
    """The batch Pipeline of a loader over image tensors: the tensors as fastai `TensorImage`s (batch transforms
    dispatch on that type), `tfms` (sorted by their `order`; the random ones only where `split_idx` is 0, training),
    then `Normalize` with `stats` (mean, std) when given."""
    from fastai.vision.all import Normalize, Pipeline
    norm = [] if stats is None else [Normalize.from_stats(*(s.flatten() for s in stats))]
    return Pipeline([AsImage(), *tfms, *norm], split_idx=split_idx)


class AsImage(Transform):
    """Plain image tensors (B, C, H, W) as fastai `TensorImage`s; labels (B,) pass unchanged."""
    order = 0

    def encodes(self, x: torch.Tensor):
        from fastai.vision.all import TensorImage
        return TensorImage(x) if x.ndim == 4 else x


def plain_train_dl(dls, bs: int | None = None, shuffle: bool = False):
    """The training items through the validation transforms (no augmentation): in order, or shuffled with the last
    partial batch dropped unless it is the only one (as `tensor_dls`)."""
    dl = dls.test_dl(dls.train_ds.items, with_labels=True, bs=bs or dls.bs)
    return dl.new(shuffle=True, drop_last=len(dls.train_ds) > dl.bs) if shuffle else dl


def preload_dls(dls, bs: int | None = None) -> DataLoaders:
    """Every image of `dls` decoded, resized and batch-transformed once (no augmentation), held in memory as
    tensors and standardised per channel with the training images' mean and std: `tensor_dls` for many short
    runs on small images, where fastai's per-image pipeline would cost more than the model."""
    grab = _grab
    drop_normalize(dls)   # standardise below, from the training images, not with another dataset's stats
    (xt, yt), (xv, yv) = grab(plain_train_dl(dls)), grab(dls.valid)
    mean, std = xt.mean((0, 2, 3), keepdim=True), xt.std((0, 2, 3), keepdim=True).clamp(min=1e-6)
    tune = None
    if getattr(dls, "tune", None) is not None:
        xu, yu = grab(dls.tune)
        tune = ((xu - mean) / std, yu)
    return tensor_dls((xt - mean) / std, yt, (xv - mean) / std, yv, list(dls.vocab), bs=bs or dls.bs, tune=tune)


def _grab(dl) -> tuple:
    """(x, y) float32 / int64 CPU tensors of every batch of `dl`, in order."""
    import torch
    xs, ys = zip(*[(xb.as_subclass(torch.Tensor).float().cpu(), yb.as_subclass(torch.Tensor).cpu()) for xb, yb in dl])
    return torch.cat(xs), torch.cat(ys)


def preload_cells(cfg, img_size: int | None = None, task: str = "binary", folder=None) -> tuple:
    """(x (2624, 3, s, s) float32 in [0, 1], y (2624,), paths (2624,), vocab): every ELPV cell decoded and resized
    once (no augmentation, not standardised), for cross-validation over preloaded images (`fold_tensor_dls`).
    Stored on disk (`folder`, default `cache_dir('cells')`; atomic, keyed by the size, the resize, the transforms,
    the cells and their labels): a later run, or another lesson at the same size, loads it instead of decoding
    2,624 files."""
    from .store import cache_dir, cached, hash_key
    dls = elpv_dls(cfg, task=task, frac=1.0, img_size=img_size)
    drop_normalize(dls)
    paths = [str(p) for p in dls.train_ds.items["path"]] + [str(p) for p in dls.valid_ds.items["path"]]
    key = hash_key("preload_cells", img_size or cfg.img_size, DATA_INTERPOLATION, repr(dls.train.after_item),
                   repr(dls.train.after_batch), paths, cell_labels(paths, task)[0].tolist(), list(dls.vocab))

    def build():
        (xt, yt), (xv, yv) = _grab(plain_train_dl(dls)), _grab(dls.valid)
        return dict(x=torch.cat([xt, xv]), y=torch.cat([yt, yv]))
    stored, _, _ = cached(Path(folder or cache_dir("cells")) / f"{key[:16]}.pt", key, ("x", "y"), build)
    return stored["x"], stored["y"], paths, list(dls.vocab)


def drop_normalize(dls) -> None:
    """Remove every fastai Normalize from the batch transforms of `dls`' loaders (in place)."""
    from fastai.vision.all import Normalize
    for dl in [*dls.loaders, *([dls.tune] if getattr(dls, "tune", None) is not None else [])]:
        dl.after_batch.fs = dl.after_batch.fs.filter(lambda t: not isinstance(t, Normalize))


def valid_labels(dls) -> np.ndarray:
    """(N_valid,) class indices of the validation set, in loader order, without opening an image."""
    ds = dls.valid_ds
    if isinstance(ds, TensorPairs):
        return np.asarray(ds.y)
    return np.array([int(ds.tls[-1][i]) for i in range(len(ds))])
