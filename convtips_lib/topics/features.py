"""Feature cache: a frozen body's activations computed once, stored on disk, and heads trained on them through the
same fastai Learner as every other model (`core.train.learner`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.compat import renamed_kwargs
from ..core.data import plain_train_dl, tensor_dls
from ..core.env import seed_everything
from ..core.measure import classification_metrics
from ..core.models import model_stats, to_channels_last
from ..core.store import cache_dir, cached, hash_key, state_hash
from ..core.surgery import Frozen, split_at
from ..core.train import fit, learner, set_norm, valid_preds

__all__ = ["Features", "cached_features", "cell_features", "fold_features", "fit_head", "fit_head_live", "fit_logreg"]


@dataclass
class Features:
    """Cached activations: x_* (N, ...) float32, y_* (N,) int64 class indices, and where they came from."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    vocab: list
    key: str
    path: Path | None
    hit: bool
    seconds: float           # time to build (miss) or load (hit)
    x_tune: torch.Tensor | None = None   # the tune cells (`dls.tune`), when the DataLoaders had them
    y_tune: torch.Tensor | None = None


def _item_paths(items) -> list:
    if hasattr(items, "columns"):
        return [str(p) for p in (items["path"] if "path" in items else items.iloc[:, 0])]
    return [str(p) for p in items]


def _labels(ds) -> list:
    return [int(ds.tls[-1][i]) for i in range(len(ds))]


def _tfms_repr(dl) -> str:
    """The loader's item and batch transforms, any Normalize left out (cached_features applies the model's stats)."""
    from fastai.vision.all import Normalize
    return repr(dl.after_item) + repr([t for t in dl.after_batch.fs if not isinstance(t, Normalize)])


def _opened_size(dls) -> tuple:
    """(width, height) of an image as the dataset opens it, before the loader's transforms (e.g. `OpenResized`)."""
    return tuple(getattr(dls.valid_ds[0][0], "size", ()))


def feature_key(model: nn.Module, depth, dls) -> str:
    """sha256 (hex) of everything the features depend on: arch, frozen weights and stages, how images are opened
    (size), transforms, stats, split, labels."""
    frozen, _ = split_at(model, depth)
    return hash_key(getattr(model, "meta", {}).get("arch"), state_hash(frozen), len(frozen), model_stats(model),
                    _opened_size(dls), _tfms_repr(dls.valid), repr(dls.train_ds.tls[-1].tfms),
                    _item_paths(dls.train_ds.items), _labels(dls.train_ds),
                    _item_paths(dls.valid_ds.items), _labels(dls.valid_ds), *_tune_key(dls))


def _tune_key(dls) -> tuple:
    """What the tune cells add to a feature key: their items and labels (nothing without tune cells)."""
    tune = getattr(dls, "tune", None)
    return () if tune is None else ("tune", _item_paths(tune.dataset.items), _labels(tune.dataset))


def _plain(t) -> torch.Tensor:
    """A plain torch.Tensor view of a fastai TensorImage/TensorCategory (their per-op dispatch doubles forward time)."""
    return torch.as_tensor(t).as_subclass(torch.Tensor)


def _extract(frozen: nn.Module, dl, device: torch.device) -> tuple:
    """(x, y) on the CPU: the frozen layers' outputs (N, ...) run on `device` in eval mode, and labels (N,)."""
    net, xs, ys = Frozen(to_channels_last(frozen)), [], []
    for xb, yb in dl:
        xs.append(net(_plain(xb).float().to(device)).cpu())
        ys.append(_plain(yb).long().cpu())
    return torch.cat(xs), torch.cat(ys)


@renamed_kwargs(n="depth", cache_dir="folder")
def cached_features(model: nn.Module, dls, depth="head", folder: Path | str | None = None) -> Features:
    """The body's outputs up to `depth` ('head': pooled (N, nf)) on train and valid, built once and cached on disk.

    Normalises `dls` with the model's stats (as `make_learner` does); the training items go through the
    validation transforms, in order, so the features are deterministic. Runs on the model's device.
    """
    depth = "head" if depth is None else depth   # the deprecated n=None meant the whole body
    set_norm(dls, model_stats(model))
    key = feature_key(model, depth, dls)
    path = Path(folder or cache_dir("features")) / f"{key[:16]}.pt"
    frozen, _ = split_at(model, depth)

    tune = getattr(dls, "tune", None)

    def build():
        dev = next(model.parameters()).device
        (xt, yt), (xv, yv) = _extract(frozen, plain_train_dl(dls), dev), _extract(frozen, dls.valid, dev)
        out = dict(x_train=xt, y_train=yt, x_valid=xv, y_valid=yv, vocab=[str(v) for v in dls.vocab])
        if tune is not None:
            out["x_tune"], out["y_tune"] = _extract(frozen, tune, dev)
        return out

    fields = ("x_train", "y_train", "x_valid", "y_valid", "vocab") + (("x_tune", "y_tune") if tune is not None else ())
    p, hit, seconds = cached(path, key, fields, build)
    return Features(*(p[f] for f in fields[:5]), key=key, path=path, hit=hit, seconds=seconds,
                    x_tune=p.get("x_tune"), y_tune=p.get("y_tune"))


def cell_features(model: nn.Module, cfg, depth="head", img_size: int | None = None, task: str = "binary",
                  folder: Path | str | None = None) -> tuple:
    """(x (2624, ...), y (2624,), paths, vocab): `cached_features` of every ELPV cell (the fixed split's train and
    valid cells together, through the validation transforms), for cross-validated heads (`fold_features`)."""
    from ..core.data import elpv_dls
    dls = elpv_dls(cfg, task=task, frac=1.0, img_size=img_size)
    feats = cached_features(model, dls, depth, folder)
    paths = _item_paths(dls.train_ds.items) + _item_paths(dls.valid_ds.items)   # the features' row order
    return torch.cat([feats.x_train, feats.x_valid]), torch.cat([feats.y_train, feats.y_valid]), paths, feats.vocab


def fold_features(x, y, paths, roles, vocab) -> Features:
    """`Features` for one role table (`elpv_roles` or a fold of `core.data.elpv_folds`) cut from features of every
    cell (`cell_features`): its train cells to fit on, its test cells as the validation set, its tune cells as
    x_tune / y_tune (the only ones a choice may read)."""
    from ..core.data import split_cells
    parts = split_cells(x, y, paths, roles)
    (xt, yt), (xv, yv), (xu, yu) = parts["train"], parts["test"], parts["tune"]
    return Features(xt, yt, xv, yv, list(vocab), key="fold", path=None, hit=True, seconds=0.0, x_tune=xu, y_tune=yu)


def features_dls(feats: Features, bs: int = 64, sampling_weights: dict | None = None):
    """fastai DataLoaders over cached features: the same batches a Learner would draw from the images
    (`sampling_weights` {class: weight}: over-sampling, see `tensor_dls`)."""
    tune = None if feats.x_tune is None else (feats.x_tune, feats.y_tune)
    return tensor_dls(feats.x_train, feats.y_train, feats.x_valid, feats.y_valid, feats.vocab, bs=bs,
                      sampling_weights=sampling_weights, tune=tune)


def _linear_head(n_in: int, n_out: int, flatten: bool) -> nn.Module:
    """A fresh Linear(n_in, n_out) (after Flatten for feature maps)."""
    lin = nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Flatten(), lin) if flatten else lin


def _run(learn, epochs: int, lr: float, t: float, validate: str = "every") -> dict:
    """Train one-cycle and gather what every experiment reports: history, metrics, predictions, seconds."""
    hist = fit(learn, epochs, lr, validate=validate)
    y_true, y_pred = valid_preds(learn)
    return dict(history=hist, metrics=classification_metrics(y_true, y_pred), y_true=y_true, y_pred=y_pred,
                learn=learn, epoch_seconds=hist["seconds"].tolist(), seconds=time.perf_counter() - t)


def fit_head(feats: Features, rest: nn.Module | None = None, epochs: int = 5, lr: float = 3e-3, bs: int = 64,
             seed: int = 42, cbs=None, loss_func=None, sampling_weights: dict | None = None,
             validate: str = "every") -> dict:
    """Train `rest` (default: a fresh Linear) on cached features in a fastai Learner, one-cycle at peak `lr`;
    `validate` as in `core.train.fit` ('last': the test and tune cells predicted after the last epoch only).

    Returns dict(history, metrics, y_true, y_pred, learn, epoch_seconds, seconds).
    """
    t = time.perf_counter()
    seed_everything(seed)
    x = feats.x_train
    head = rest if rest is not None else _linear_head(int(np.prod(x.shape[1:])), len(feats.vocab), x.ndim > 2)
    learn = learner(features_dls(feats, bs, sampling_weights), head, loss_func=loss_func, cbs=cbs, seed=seed)
    return _run(learn, epochs, lr, t, validate)


def fit_head_live(model: nn.Module, dls, epochs: int = 5, lr: float = 3e-3, bs: int = 64, seed: int = 42,
                  validate: str = "every") -> dict:
    """Baseline for the cache: `fit_head`'s training (same Learner, init, batch order, schedule), but the frozen body
    runs on the images every epoch. Returns the same dict as `fit_head`."""
    from fastai.data.core import DataLoaders
    t = time.perf_counter()
    set_norm(dls, model_stats(model))
    seed_everything(seed)
    head = _linear_head(model.head[-1].in_features, len(dls.vocab), False)
    live = DataLoaders(plain_train_dl(dls, bs, shuffle=True), dls.valid.new(bs=bs))
    learn = learner(live, nn.Sequential(Frozen(model.body), head), seed=seed,
                    splitter=lambda m: [list(m[1].parameters())])
    return _run(learn, epochs, lr, t, validate)


def fit_logreg(feats: Features, C: float = 1.0, max_iter: int = 1000) -> dict:
    """Standardised logistic regression on the (flattened) features: dict(metrics, y_true, y_pred, model, seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    t = time.perf_counter()
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(flat(feats.x_train), feats.y_train.numpy())
    y_true, y_pred = feats.y_valid.numpy(), clf.predict(flat(feats.x_valid))
    return dict(metrics=classification_metrics(y_true, y_pred), y_true=y_true, y_pred=y_pred, model=clf,
                seconds=time.perf_counter() - t)
