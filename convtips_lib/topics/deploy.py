"""Deploy (lesson 08): a trained classifier as one folder — its weights (sha256-pinned), and the preprocessing and
class names it needs — reloaded with identical predictions, and predictions on image files that name every file
that could not be classified and still classify the others."""
from __future__ import annotations

import json
import math
import operator
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.data import DATA_INTERPOLATION, INTERPOLATIONS, RESIZE_METHODS, open_image, resize_image
from ..core.models import (Classifier, ModelCfg, load_weights, narrow_to, pretrained, sha256sum, state_mismatch,
                           to_channels_last)
from ..core.store import atomic_write, save_tensors

__all__ = ["RESIZES", "ModelFolderError", "export_model", "load_model", "predict_files"]

MODEL_FORMAT = "convtips-model/1"
RESIZES = RESIZE_METHODS   # squash: the whole image to size x size (ELPV's square cells); crop: fastai's Resize
IMG_SIZES = range(8, 4097)  # px a model folder may name: smaller leaves a network nothing to see, larger fills memory
_REEXPORT = "re-export the model with `convtips train` (or export_model)"
_FIX_JSON = f"{_REEXPORT[0].upper()}{_REEXPORT[1:]}, or correct {{name}} in model.json"
_FIX_EXPORT = "Pass export_model the {name} the data was loaded with (and a learner whose dls belong to its model)"


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
    mean, std = learn.model.meta.stats
    meta = dict(format=MODEL_FORMAT, arch=arch, vocab=[str(v) for v in learn.dls.vocab], img_size=_whole(img_size),
                resize=resize, interpolation=interpolation, channels="RGB (grayscale replicated, 16-bit scaled to 8)",
                stats=dict(mean=list(mean), std=list(std)))
    _check_preprocessing(meta, "export_model", _FIX_EXPORT)   # never write a folder that load_model refuses
    _check_outputs(learn.model.head[-1].out_features, meta, "export_model (learn.dls.vocab)", _FIX_EXPORT)
    folder = Path(folder)
    weights = save_tensors(folder / "weights.pth", {k: v.detach().cpu() for k, v in learn.model.state_dict().items()})
    meta.update(sha256=sha256sum(weights), metrics=metrics or {}, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write(folder / "model.json", json.dumps(meta, indent=1))
    return folder


def _bad_field(where: str, name: str, value, valid: str, fix: str = _FIX_JSON) -> ModelFolderError:
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:100] + f"... ({len(value)} items)"
    return ModelFolderError(f"{where}: {name} is {shown}, but must be {valid}. {fix.format(name=name)}")


def _whole(v):
    """`v` as a Python int where it is an integer of any kind (numpy's included), else unchanged (to be refused)."""
    try:
        return operator.index(v)
    except TypeError:
        return v


def _finite_numbers(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


def _check_stats(stats, where: str, fix: str) -> None:
    if not isinstance(stats, dict):
        raise _bad_field(where, "stats", stats, 'an object {"mean": [r, g, b], "std": [r, g, b]}', fix)
    for name in ("mean", "std"):
        if not _finite_numbers(stats.get(name), 3):
            raise _bad_field(where, f"stats.{name}", stats.get(name), "three finite numbers, one per RGB channel "
                             "(e.g. [0.5, 0.5, 0.5])", fix)
    if not all(s > 0 for s in stats["std"]):
        raise _bad_field(where, "stats.std", stats["std"], "three numbers above 0 (each channel is divided by its "
                         "std)", fix)


def _check_preprocessing(meta: dict, where: str, fix: str = _FIX_JSON) -> None:
    """The fields `model_input` reads (img_size, resize, interpolation, stats): `ModelFolderError` on the first bad."""
    size = meta.get("img_size")
    if isinstance(size, bool) or not isinstance(size, int) or size not in IMG_SIZES:
        raise _bad_field(where, "img_size", size, f"a whole number of pixels from {IMG_SIZES.start} to "
                         f"{IMG_SIZES.stop - 1} (the side the model was trained at, e.g. 224)", fix)
    if meta.get("resize") not in RESIZES:
        raise _bad_field(where, "resize", meta.get("resize"), f"one of {', '.join(map(repr, RESIZES))}", fix)
    if meta.get("interpolation", DATA_INTERPOLATION) not in tuple(INTERPOLATIONS):
        raise _bad_field(where, "interpolation", meta["interpolation"],
                         f"one of {', '.join(map(repr, INTERPOLATIONS))}", fix)
    _check_stats(meta.get("stats"), where, fix)


def _check_description(meta: dict, where: str) -> None:
    """The fields naming the network and its classes (arch, vocab, sha256): `ModelFolderError` on the first bad one."""
    if not isinstance(meta["arch"], str) or not meta["arch"]:
        raise _bad_field(where, "arch", meta["arch"], "an architecture name (e.g. 'efficientnet_lite0')")
    vocab = meta["vocab"]
    if not isinstance(vocab, list) or not vocab or not all(isinstance(v, str) for v in vocab):
        raise _bad_field(where, "vocab", vocab, 'a list of class names, one per output (e.g. ["bright", "dark"])')
    if len(set(vocab)) != len(vocab):
        raise _bad_field(where, "vocab", vocab, "a list naming each class once")
    if not isinstance(meta["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]):
        raise _bad_field(where, "sha256", meta["sha256"], "the 64 hex digits of weights.pth's sha256")


def _check_outputs(n_out: int, meta: dict, where: str, fix: str = _FIX_JSON) -> None:
    """`ModelFolderError` unless the network's `n_out` outputs match model.json's class names one to one."""
    if n_out != len(meta["vocab"]):
        raise _bad_field(where, "vocab", meta["vocab"], f"{n_out} class names, one per output of the network (it has "
                         f"{n_out} outputs, the vocab lists {len(meta['vocab'])}), in the order it was trained with",
                         fix)


def _folder_cfg(meta: dict, source: str = "model folder") -> ModelCfg:
    """The `ModelCfg` a model.json describes (bilinear where a file written before it was recorded has none)."""
    _check_preprocessing(meta, source)
    return ModelCfg(meta.get("arch", ""), meta["img_size"], meta["stats"]["mean"], meta["stats"]["std"],
                    meta.get("interpolation", DATA_INTERPOLATION), meta["resize"], source=source,
                    sha256=meta.get("sha256"))


def _read_meta(folder: Path) -> dict:
    """model.json of `folder`, every field checked: `ModelFolderError` naming the first one missing or bad."""
    if not folder.is_dir():
        raise ModelFolderError(f"no model folder {folder}: give the folder `convtips train` or `export_model` wrote")
    path = folder / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path} is missing or unreadable ({e}): the folder was not written "
                               f"by export_model, or was cut short; {_REEXPORT}") from e
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{path} holds a JSON {type(meta).__name__}, not an object: {_REEXPORT}")
    missing = [k for k in ("format", "arch", "vocab", "img_size", "resize", "stats", "sha256") if k not in meta]
    if missing or meta.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{path} is not a {MODEL_FORMAT} description (missing: "
                               f"{', '.join(missing) or 'none'}, format {meta.get('format')!r}): {_REEXPORT}")
    _check_description(meta, str(path))
    _check_preprocessing(meta, str(path))
    return meta


def _folder_weights(folder: Path, meta: dict) -> dict:
    """weights.pth's state dict, checked against model.json's sha256; refused when a value is NaN or infinite."""
    path = folder / "weights.pth"
    if not path.is_file():
        raise ModelFolderError(f"{folder} has no weights.pth (model.json alone): the export was cut short; {_REEXPORT}")
    sd = load_weights(path, meta["sha256"])
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFolderError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {', '.join(bad[:3])}): "
                               "the training diverged; train again (e.g. with a lower lr)")
    return sd


def _fit_weights(model: nn.Module, sd: dict, folder: Path, arch: str) -> nn.Module:
    """`model` with the state dict `sd` loaded, its layers narrowed to a pruned model's widths (lesson 07)."""
    own = model.state_dict()
    problem = None if own.keys() == sd.keys() else state_mismatch(own, sd)
    if problem is None:
        try:
            return narrow_to(model, sd)
        except (RuntimeError, KeyError, ValueError):
            problem = state_mismatch(model.state_dict(), sd)   # the shapes narrowing could not reach
    raise ModelFolderError(f"the weights in {folder} do not fit a {arch}: {problem}. The folder mixes files of two "
                           f"models: {_REEXPORT}")


def load_model(folder) -> tuple:
    """(model in eval mode, meta) from a folder `export_model` wrote; model.json is checked field by field and
    against the network, the weights against their sha256, read with `torch.load(weights_only=True)`. The model
    predicts in the memory layout it runs fastest in (`to_channels_last`: 4x faster for a Lite on a CPU)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    sd = _folder_weights(folder, meta)
    model = pretrained(meta["arch"], len(meta["vocab"]), weights=None)   # the architecture; the weights follow
    model = _fit_weights(model, sd, folder, meta["arch"])
    _check_outputs(model.head[-1].out_features, meta, str(folder / "model.json"))
    model.meta = replace(_folder_cfg(meta, f"model folder {folder}"), timm_arch=model.meta.timm_arch)
    return to_channels_last(model.eval()), meta


def model_input(path, meta) -> torch.Tensor:
    """The image file at `path` as the model sees it: (3, img_size, img_size), resized as the model's record says
    (a `ModelCfg`, or the model.json dict `load_model` returns), scaled to [0, 1] and normalised with its stats;
    `BadImageError` naming the file if it cannot be read."""
    cfg = meta if isinstance(meta, ModelCfg) else _folder_cfg(meta)
    img = resize_image(open_image(path), cfg.img_size, cfg.interpolation, cfg.resize)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in cfg.stats)
    return (x - mean) / std


def _inputs(paths, cfg: ModelCfg) -> tuple:
    """(rows, [(row index, input tensor)]): one row per path, with `error` where the file cannot be read."""
    rows, good = [], []
    for p in paths:
        try:
            good.append((len(rows), model_input(p, cfg)))
            rows.append(dict(path=str(p)))
        except Exception as e:  # noqa: BLE001 - one file that fails, however, must not lose the others' results
            rows.append(dict(path=str(p), error=str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"))
    return rows, good


def _label(row: dict, probs: torch.Tensor, vocab: list) -> None:
    """Fill `row` with the predicted label and its probability, or an `error` where the scores are not finite."""
    if not torch.isfinite(probs).all():
        row["error"] = ("the model's scores for it are not finite (NaN or infinite): its weights or inputs "
                        "overflowed; check the model with an image it was trained on, or train it again")
    else:
        row.update(label=vocab[int(probs.argmax())], probability=float(probs.max()), probs=probs.numpy())


def predict_files(model, meta: dict, paths, bs: int = 16) -> list:
    """One dict per path, in order: path, label and probability of the predicted class, or `error` saying why the
    file could not be classified (missing, not an image, unreadable, no finite score); the others are still
    classified. `ModelFolderError` when `meta` does not describe `model` (its vocab, its preprocessing)."""
    rows, good = _inputs(paths, _folder_cfg(meta))
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(good), bs):
            idx, xs = zip(*good[i:i + bs])
            probs = torch.softmax(model(torch.stack(xs).to(dev)).float(), -1).cpu()
            _check_outputs(probs.shape[-1], meta, "the model record")
            for k, pr in zip(idx, probs):
                _label(rows[k], pr, meta["vocab"])
    return rows
