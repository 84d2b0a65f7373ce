"""Deploy (lesson 08): a trained classifier as one folder — its weights (sha256-pinned), and the preprocessing and
class names it needs — reloaded with identical predictions, and predictions on image files that name every file
that could not be classified and still classify the others."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..core.data import DATA_INTERPOLATION, RESIZE_METHODS, BadImageError, open_image, resize_image
from ..core.models import Classifier, ModelCfg, load_weights, narrow_to, pretrained, sha256sum
from ..core.store import atomic_write, save_tensors

__all__ = ["RESIZES", "ModelFolderError", "export_model", "load_model", "predict_files"]

MODEL_FORMAT = "convtips-model/1"
RESIZES = RESIZE_METHODS   # squash: the whole image to size x size (ELPV's square cells); crop: fastai's Resize


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or not written by `export_model`."""


def export_model(learn, folder, arch: str, img_size: int, resize: str = "squash", metrics: dict | None = None,
                 interpolation: str = DATA_INTERPOLATION) -> Path:
    """Write `learn.model` (a `Classifier`, pruned or not) to `folder`: weights.pth (its state dict) and model.json
    (format, arch, class names, its `ModelCfg` with the image size (px), resize and interpolation the data was
    loaded with, the weights' sha256, metrics), each atomically."""
    if not isinstance(learn.model, Classifier):
        raise TypeError("export_model writes a Classifier (from `pretrained`/`make_learner`); got "
                        f"{type(learn.model).__name__}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    folder = Path(folder)
    weights = save_tensors(folder / "weights.pth", {k: v.detach().cpu() for k, v in learn.model.state_dict().items()})
    cfg = replace(learn.model.meta, arch=arch, img_size=int(img_size), resize=resize, interpolation=interpolation)
    meta = dict(format=MODEL_FORMAT, arch=cfg.arch, vocab=[str(v) for v in learn.dls.vocab], img_size=cfg.img_size,
                resize=cfg.resize, interpolation=cfg.interpolation, channels="RGB (grayscale replicated, 16-bit scaled "
                "to 8)", stats=dict(mean=list(cfg.mean), std=list(cfg.std)),
                sha256=sha256sum(weights), metrics=metrics or {}, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write(folder / "model.json", json.dumps(meta, indent=1))
    return folder


def _folder_cfg(meta: dict, source: str = "model folder") -> ModelCfg:
    """The `ModelCfg` a model.json describes (bilinear where a file written before it was recorded has none)."""
    return ModelCfg(meta.get("arch", ""), int(meta["img_size"]), meta["stats"]["mean"], meta["stats"]["std"],
                    meta.get("interpolation", DATA_INTERPOLATION), meta["resize"], source=source,
                    sha256=meta.get("sha256"))


def _read_meta(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelFolderError(f"no model folder {folder}: give the folder `convtips train` or `export_model` wrote")
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{folder / 'model.json'} is missing or unreadable ({e}): the folder was not written "
                               "by export_model, or was cut short; export the model again") from e
    missing = [k for k in ("format", "arch", "vocab", "img_size", "resize", "stats", "sha256") if k not in meta]
    if missing or meta.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{folder / 'model.json'} is not a {MODEL_FORMAT} description (missing: "
                               f"{', '.join(missing) or 'none'}, format {meta.get('format')!r}): export the model again")
    return meta


def load_model(folder) -> tuple:
    """(model in eval mode, meta) from a folder `export_model` wrote; the weights are checked against their sha256
    and read with `torch.load(weights_only=True)`."""
    folder = Path(folder)
    meta = _read_meta(folder)
    sd = load_weights(folder / "weights.pth", meta["sha256"])
    model = pretrained(meta["arch"], len(meta["vocab"]), weights=None)   # the architecture; the weights follow
    try:
        model = narrow_to(model, sd)            # a pruned model (lesson 07) has narrower layers: rebuilt to fit
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModelFolderError(f"the weights in {folder} do not fit a {meta['arch']} with {len(meta['vocab'])} "
                               f"classes ({e}): export the model again") from e
    model.meta = replace(_folder_cfg(meta, f"model folder {folder}"), timm_arch=model.meta.timm_arch)
    return model, meta


def model_input(path, meta) -> torch.Tensor:
    """The image file at `path` as the model sees it: (3, img_size, img_size), resized as the model's record says
    (a `ModelCfg`, or the model.json dict `load_model` returns), scaled to [0, 1] and normalised with its stats;
    `BadImageError` naming the file if it cannot be read."""
    cfg = meta if isinstance(meta, ModelCfg) else _folder_cfg(meta)
    img = resize_image(open_image(path), cfg.img_size, cfg.interpolation, cfg.resize)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in cfg.stats)
    return (x - mean) / std


def predict_files(model, meta: dict, paths, bs: int = 16) -> list:
    """One dict per path, in order: path, label and probability of the predicted class, or `error` saying why the
    file could not be classified (missing, not an image, unreadable); the other files are still classified."""
    rows, good, cfg = [], [], _folder_cfg(meta)
    for p in paths:
        try:
            good.append((len(rows), model_input(p, cfg)))
            rows.append(dict(path=str(p)))
        except (BadImageError, OSError, ValueError) as e:
            rows.append(dict(path=str(p), error=str(e)))
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(good), bs):
            idx, xs = zip(*good[i:i + bs])
            probs = torch.softmax(model(torch.stack(xs).to(dev)), -1).cpu()
            for k, pr in zip(idx, probs):
                rows[k].update(label=meta["vocab"][int(pr.argmax())], probability=float(pr.max()),
                               probs=pr.numpy())
    return rows
