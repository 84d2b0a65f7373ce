"""Feature cache: a frozen body's activations computed once, stored on disk, and shallow heads trained on them."""
from __future__ import annotations

import hashlib
import io
import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .env import seed_everything
from .measure import classification_metrics
from .models import IMAGENET_STATS
from .results import atomic_write
from .train import _set_norm

__all__ = ["Features", "body_stages", "split_at", "feature_key", "cached_features", "default_cache_dir",
           "fit_head", "fit_head_live", "fit_logreg"]


# ---------------------------------------------------------------- stages of a body

def _is_timm_efficientnet(body: nn.Module) -> bool:
    return all(hasattr(body, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"))


def body_stages(model: nn.Module) -> list:
    """The body as stages applied in order (images -> (B, nf)), one per parameter group of `param_groups`.

    timm's coarse groups put conv_head + bn2 in the last block's group, so the last stage is
    blocks[-1] + conv_head + bn2 + global pool: freezing n groups == freezing the first n stages.
    """
    body = getattr(model, "body", None)
    if body is None or not _is_timm_efficientnet(body):
        got = type(model if body is None else body).__name__
        raise TypeError(f"body_stages supports a Classifier whose body is a timm EfficientNet (efficientnet_lite*, "
                        f"tf_efficientnet_*), got {got}. For pooled features of any architecture, use n=None.")
    blocks = list(body.blocks)
    last = [blocks[-1], body.conv_head, body.bn2, body.global_pool]
    if getattr(body, "drop_rate", 0.0) > 0:
        last.append(nn.Dropout(body.drop_rate))
    return [nn.Sequential(body.conv_stem, body.bn1), *blocks[:-1], nn.Sequential(*last)]


def _resolve_n(model: nn.Module, n: int | None):
    """`n` frozen stages checked against the body; None = pooled features (the whole body, any architecture)."""
    if n is None and not _is_timm_efficientnet(getattr(model, "body", None)):
        return "pooled"
    n_stages = len(body_stages(model))
    if n is None:
        return n_stages
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= n_stages:
        raise ValueError(f"n must be a number of frozen stages 0..{n_stages} (or None for pooled features), got {n!r}")
    return n


def split_at(model: nn.Module, n: int | None = None) -> tuple:
    """(prefix, rest) with rest(prefix(x)) == model(x); prefix = the first `n` stages (None: the whole body).

    Both share the model's modules: training `rest` trains the model's later layers.
    """
    n = _resolve_n(model, n)
    if n == "pooled":
        return nn.Sequential(model.body), nn.Sequential(model.head)
    stages = body_stages(model)
    return nn.Sequential(*stages[:n]), nn.Sequential(*stages[n:], model.head)


# ---------------------------------------------------------------- cache key

def _item_paths(items) -> list:
    if isinstance(items, pd.DataFrame):
        return [str(p) for p in (items["path"] if "path" in items else items.iloc[:, 0])]
    return [str(p) for p in items]


def _labels(ds) -> list:
    return [int(ds.tls[-1][i]) for i in range(len(ds))]


def _state_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, values; buffers such as BN running stats included)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tfms_repr(dl) -> str:
    """The loader's item and batch transforms, any Normalize left out (cached_features applies the model's stats)."""
    from fastai.vision.all import Normalize
    return repr(dl.after_item) + repr([t for t in dl.after_batch.fs if not isinstance(t, Normalize)])


def _opened_size(dls) -> tuple:
    """(width, height) of an image as the dataset opens it, before the loader's transforms (e.g. `OpenResized`)."""
    return tuple(getattr(dls.valid_ds[0][0], "size", ()))


def feature_key(model: nn.Module, n: int | None, dls) -> str:
    """sha256 (hex) of everything the features depend on: arch, prefix weights, n, how images are opened (size),
    transforms, stats, split, labels."""
    prefix, _ = split_at(model, n)
    meta = getattr(model, "meta", {})
    parts = [meta.get("arch"), _state_hash(prefix), _resolve_n(model, n), meta.get("stats"),
             _opened_size(dls), _tfms_repr(dls.valid), repr(dls.train_ds.tls[-1].tfms),
             _item_paths(dls.train_ds.items), _labels(dls.train_ds),
             _item_paths(dls.valid_ds.items), _labels(dls.valid_ds)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# ---------------------------------------------------------------- storage (shared with handcrafted.py)

def default_cache_dir() -> Path:
    """Default feature cache folder: `$CONVTIPS_CACHE/features`, else ~/.cache/convtips/features."""
    root = os.environ.get("CONVTIPS_CACHE")
    return Path(root) / "features" if root else Path.home() / ".cache" / "convtips" / "features"


def _save(path: Path, payload: dict) -> Path:
    """Write a dict of tensors/strings with torch.save, atomically (temporary file + rename)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, buf.getvalue())


def _load(path: Path, key: str, fields: Iterable[str]) -> dict | None:
    """The payload stored at `path` for `key`; None when absent, or (with a warning) unreadable or not for `key`."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") != key or not all(f in payload for f in fields):
            raise ValueError("stored key or fields do not match")
        return payload
    except Exception as e:  # noqa: BLE001 - any unreadable cache file is rebuilt
        warnings.warn(f"feature cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None


def _cached(path: Path, key: str, fields: tuple, build: Callable[[], dict]) -> tuple:
    """(payload, hit, seconds): load `path` when it holds `key`, else build, store atomically and return it."""
    t = time.perf_counter()
    payload = _load(path, key, fields)
    hit = payload is not None
    if not hit:
        payload = dict(build(), key=key)
        _save(path, payload)
    return payload, hit, time.perf_counter() - t


# ---------------------------------------------------------------- feature extraction

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


def _stats(model: nn.Module) -> tuple:
    """The (mean, std) the model expects, as `make_learner` uses them."""
    return getattr(model, "meta", {}).get("stats", IMAGENET_STATS)


def _plain_train_dl(dls, bs: int | None = None, order: list | None = None):
    """The training items (in `order`, else as stored) via the validation transforms: no augmentation, no drop_last."""
    items = dls.train_ds.items
    if order is not None:
        items = items.iloc[order] if isinstance(items, pd.DataFrame) else [items[i] for i in order]
    return dls.test_dl(items, with_labels=True, bs=bs or dls.bs)


@contextmanager
def _eval_mode(module: nn.Module):
    """Put `module` in eval mode, then restore every submodule's own train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _plain(t) -> torch.Tensor:
    """A plain torch.Tensor view of a fastai TensorImage/TensorCategory (their per-op dispatch doubles forward time)."""
    return torch.as_tensor(t).as_subclass(torch.Tensor)


def _extract(prefix: nn.Module, dl, device: torch.device) -> tuple:
    """(x, y) on the CPU: prefix outputs (N, ...) run on `device` and labels (N,), eval mode, no grad."""
    xs, ys = [], []
    with _eval_mode(prefix), torch.no_grad():
        for xb, yb in dl:
            xs.append(prefix(_plain(xb).float().to(device)).cpu())
            ys.append(_plain(yb).long().cpu())
    return torch.cat(xs), torch.cat(ys)


def cached_features(model: nn.Module, dls, n: int | None = None, cache_dir: Path | str | None = None) -> Features:
    """The first `n` stages' outputs (None: pooled (B, nf)) on train and valid, built once and cached on disk.

    Normalises `dls` with the model's stats (as `make_learner` does); the training items go through the
    validation transforms, in order, so the features are deterministic. Runs on the model's device.
    """
    _set_norm(dls, _stats(model))
    key = feature_key(model, n, dls)
    path = Path(cache_dir or default_cache_dir()) / f"{key[:16]}.pt"
    prefix, _ = split_at(model, n)

    def build():
        dev = next(model.parameters()).device
        (xt, yt), (xv, yv) = _extract(prefix, _plain_train_dl(dls), dev), _extract(prefix, dls.valid, dev)
        return dict(x_train=xt, y_train=yt, x_valid=xv, y_valid=yv, vocab=[str(v) for v in dls.vocab])

    fields = ("x_train", "y_train", "x_valid", "y_valid", "vocab")
    p, hit, seconds = _cached(path, key, fields, build)
    return Features(*(p[f] for f in fields), key=key, path=path, hit=hit, seconds=seconds)


# ---------------------------------------------------------------- shallow heads

def _default_head(x: torch.Tensor, n_classes: int) -> nn.Module:
    """A fresh Linear(D, n_classes) (after Flatten when the features are not (N, D))."""
    lin = nn.Linear(int(np.prod(x.shape[1:])), n_classes)
    return lin if x.ndim == 2 else nn.Sequential(nn.Flatten(), lin)


def _predict(head: nn.Module, batches: Iterable) -> tuple:
    """(y_true, y_pred, mean loss) of `head` in eval mode over (x, y) batches."""
    head.eval()
    ys, preds, loss, n = [], [], 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            out = head(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            n += len(y)
            ys.append(y.cpu())
            preds.append(out.argmax(1).cpu())
    return torch.cat(ys).numpy(), torch.cat(preds).numpy(), loss / max(n, 1)


def _to(batches: Iterable, device: torch.device):
    for x, y in batches:
        yield x.to(device), y.to(device)


def _train_epoch(head: nn.Module, batches: Iterable, opt, sched) -> float:
    """One pass of cross-entropy steps over (x, y) batches; returns the mean training loss."""
    head.train()
    losses = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _train_head(head: nn.Module, train_batches: Callable, valid_batches: Callable, steps: int,
                epochs: int, lr: float, wd: float = 0.01) -> dict:
    """Train `head` (on its device) with AdamW + one-cycle over `train_batches()` (one epoch per call)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    t = time.perf_counter()
    dev = next(head.parameters()).device
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    rows = []
    for epoch in range(epochs):
        train_loss = _train_epoch(head, _to(train_batches(), dev), opt, sched)
        y_true, y_pred, valid_loss = _predict(head, _to(valid_batches(), dev))
        rows.append(dict(epoch=epoch + 1, train_loss=train_loss, valid_loss=valid_loss,
                         **classification_metrics(y_true, y_pred)))
    return dict(history=pd.DataFrame(rows), metrics=classification_metrics(y_true, y_pred), head=head,
                seconds=time.perf_counter() - t)


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, bs: int, gen: torch.Generator | None = None):
    idx = torch.randperm(len(y), generator=gen) if gen is not None else torch.arange(len(y))
    for i in range(0, len(y), bs):
        j = idx[i:i + bs]
        yield x[j], y[j]


def fit_head(feats: Features, rest: nn.Module | None = None, epochs: int = 5, lr: float = 3e-3, bs: int = 64,
             seed: int = 42) -> dict:
    """Train `rest` (default: a fresh Linear on the features) on cached features with AdamW + one-cycle.

    Returns dict(history: DataFrame per epoch, metrics: valid accuracy/balanced_accuracy/f1_macro, head, seconds).
    """
    seed_everything(seed)
    head = rest if rest is not None else _default_head(feats.x_train, len(feats.vocab))
    gen = torch.Generator().manual_seed(seed)
    return _train_head(head, lambda: _tensor_batches(feats.x_train, feats.y_train, bs, gen),
                       lambda: _tensor_batches(feats.x_valid, feats.y_valid, 4 * bs),
                       math.ceil(len(feats.y_train) / bs), epochs, lr)


def _live_batches(body: nn.Module, dl):
    """(body(x), y) on the CPU over a DataLoader, the body frozen on its device: eval mode, no grad."""
    dev = next(body.parameters()).device
    for xb, yb in dl:
        with _eval_mode(body), torch.no_grad():
            x = body(_plain(xb).float().to(dev)).cpu()
        yield x, _plain(yb).long().cpu()


def fit_head_live(model: nn.Module, dls, epochs: int = 5, lr: float = 3e-3, bs: int = 64, seed: int = 42) -> dict:
    """Baseline for the cache: `fit_head`'s training (same init, batch order, schedule), but the frozen body
    runs on the images every epoch. Returns the same dict as `fit_head`.
    """
    _set_norm(dls, _stats(model))
    seed_everything(seed)
    head = _default_head(torch.zeros(1, model.head[-1].in_features), len(dls.vocab))
    gen, n = torch.Generator().manual_seed(seed), len(dls.train_ds)
    order = lambda: torch.randperm(n, generator=gen).tolist()  # noqa: E731
    return _train_head(head, lambda: _live_batches(model.body, _plain_train_dl(dls, bs, order())),
                       lambda: _live_batches(model.body, dls.valid), math.ceil(n / bs), epochs, lr)


def fit_logreg(feats: Features, C: float = 1.0, max_iter: int = 1000) -> dict:
    """Standardised logistic regression on the (flattened) features: dict(metrics, model, seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    t = time.perf_counter()
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(flat(feats.x_train), feats.y_train.numpy())
    metrics = classification_metrics(feats.y_valid.numpy(), clf.predict(flat(feats.x_valid)))
    return dict(metrics=metrics, model=clf, seconds=time.perf_counter() - t)
