"""Ensembles and multi-crop (lesson 06): members trained with different seeds and augmentation, combined by averaging
probabilities or by voting; snapshot ensembles along one cyclic schedule; the 10-crop at test time; what each costs."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds
from fastai.vision.all import Callback
from torchvision.transforms.v2 import functional as TF

from ..core.data import elpv_dls
from ..core.measure import bootstrap, classification_metrics, timed_in_turns
from ..core.train import fit, make_learner
from .augment import policy_tfms

__all__ = ["ten_crop", "CROP_NAMES", "average_probs", "vote", "ProbsRecorder", "disagreement", "error_correlation",
           "ensemble_curve", "ensemble_gain", "crop_probs", "predict_seconds", "train_member", "snapshot_members"]

CROP_NAMES = ("centre", "top left", "top right", "bottom left", "bottom right",
              "centre, mirrored", "top left, mirrored", "top right, mirrored", "bottom left, mirrored",
              "bottom right, mirrored")


def ten_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The 10-crop of an image (C, H, W) or a batch (B, C, H, W): (10, C, size, size) or (B, 10, C, size, size) —
    the centre and the four corners (torchvision's five_crop), then the horizontal mirror of each, in that order."""
    h, w = img.shape[-2:]
    if size > min(h, w) or size < 1:
        raise ValueError(f"crop size {size} must be between 1 and the image's shorter side ({min(h, w)} px): "
                         "resize the image first or choose a smaller crop")
    tl, tr, bl, br, centre = TF.five_crop(img, [size, size])
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


class ProbsRecorder(Callback):
    """Softmax probabilities (N_valid, C) of the validation set after each epoch, in `probs` (a list per epoch)."""
    order = 90

    def before_fit(self):
        self.probs, self._batch = [], []

    def before_validate(self):
        self._batch = []

    def after_batch(self):
        if not self.training:
            self._batch.append(torch.softmax(self.pred.detach().float(), -1).cpu().numpy())

    def after_validate(self):
        if self._batch:
            self.probs.append(np.concatenate(self._batch))


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


def ensemble_curve(y_true, member_probs, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """For N = 1..M (the first N members): the averaged ensemble, its best member and the mean member, each with a
    95 % CI (bootstrap over the validation images, all resampled together)."""
    member_probs = np.asarray(member_probs)
    preds = {("member", i): p.argmax(-1) for i, p in enumerate(member_probs)}
    rows = []
    for m in range(1, len(member_probs) + 1):
        preds[("ensemble", m)] = average_probs(member_probs[:m]).argmax(-1)
        members = [("member", i) for i in range(m)]
        stats = {"ensemble": lambda v, m=m: v[("ensemble", m)],
                 "best member": lambda v, ms=members: np.max([v[k] for k in ms], 0),
                 "mean member": lambda v, ms=members: np.mean([v[k] for k in ms], 0)}
        for what, stat in stats.items():
            est = bootstrap(y_true, preds, stat, metric, n, seed)
            rows.append(dict(members=m, what=what, value=est.effect, low=est.low, high=est.high))
    return pd.DataFrame(rows)


def ensemble_gain(y_true, member_probs, against: str = "mean", metric: str = "balanced_accuracy", n: int = 2000,
                  seed: int = 0):
    """The averaged ensemble of all members minus its `against` ('mean' or 'best') member, with a 95 % CI
    (bootstrap over the validation images, every model resampled together)."""
    if against not in ("mean", "best"):
        raise ValueError(f"against must be 'mean' or 'best', got {against!r}")
    member_probs = np.asarray(member_probs)
    preds = {i: p.argmax(-1) for i, p in enumerate(member_probs)}
    preds["ensemble"] = average_probs(member_probs).argmax(-1)
    pick = np.mean if against == "mean" else np.max
    return bootstrap(y_true, preds, lambda v: v["ensemble"] - pick([v[i] for i in range(len(member_probs))], 0),
                     metric, n, seed)


def crop_probs(model, x: torch.Tensor, size: int, bs: int = 8) -> np.ndarray:
    """(N, 10, C) softmax probabilities of `model` on the 10-crop of every image of the normalised batch x (N, C, H, W),
    the crops fed at their own size: the same pixel scale the model trained at, as AlexNet's 224 crops of 256."""
    model.eval()
    out = []
    with torch.no_grad():
        for xb in x.split(bs):
            crops = ten_crop(xb, size).flatten(0, 1)                                  # (b * 10, C, size, size)
            out.append(torch.softmax(model(crops), -1).view(len(xb), 10, -1).cpu().numpy())
    return np.concatenate(out)


def predict_seconds(fn, reps: int = 3) -> float:
    """Median seconds of `fn()` over `reps` calls, after one warm-up call."""
    return float(np.median(timed_in_turns({"fn": fn}, reps, warmup=1)["fn"])) / 1000


def _member_row(learn, probs, arch: str, seed: int, kind: str, t: float) -> dict:
    y_true = np.asarray(learn.history.y_true)
    return dict(arch=arch, seed=seed, kind=kind, probs=probs, y_true=y_true, y_pred=probs.argmax(-1),
                **classification_metrics(y_true, probs.argmax(-1)), seconds=time.perf_counter() - t, learn=learn)


def train_member(cfg, seed: int, arch: str = "efficientnet_lite0", policy: str = "flips",
                 epochs: int | None = None) -> dict:
    """One ensemble member: the whole pretrained `arch` fine-tuned with its own `seed` (initial head, batch order,
    augmentation draws) and lesson 03's augmentation `policy`, one-cycle at cfg.lr: dict(arch, seed, kind, probs
    (N_valid, C), y_true, y_pred, metrics..., seconds, learn)."""
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size))   # the same images for every member
    rec = ProbsRecorder()
    learn = make_learner(dls, arch, weights="imagenet", depth="none", cbs=[rec], seed=seed)
    fit(learn, epochs or cfg.epochs, cfg.lr)
    return _member_row(learn, rec.probs[-1], arch, seed, "independent", t)


def snapshot_members(cfg, seed: int, n_cycles: int, cycle_len: int = 1, arch: str = "efficientnet_lite0",
                     policy: str = "flips") -> list:
    """Snapshot ensemble (Huang et al., ICLR 2017): one run of `n_cycles` equal cosine cycles with warm restarts
    (`cycle_len` epochs each), a member taken at the end of each cycle — members for the cost of one training run."""
    t = time.perf_counter()
    dls = elpv_dls(cfg, seed=cfg.seed, tfms=policy_tfms(policy, cfg.img_size))
    rec = ProbsRecorder()
    learn = make_learner(dls, arch, weights="imagenet", depth="none", cbs=[rec], seed=seed)
    # fastai's fit_sgdr needs cycle_mult > 1; equal cycles are n cosine pieces of fastai's own schedule
    cycles = combine_scheds([1 / n_cycles] * n_cycles, [SchedCos(cfg.lr, cfg.lr / 100)] * n_cycles)
    learn.fit(n_cycles * cycle_len, cfg.lr, cbs=[ParamScheduler({"lr": cycles})])
    return [_member_row(learn, rec.probs[(k + 1) * cycle_len - 1], arch, seed, f"snapshot {k + 1}", t)
            for k in range(n_cycles)]
