"""Transfer-learning regimes: how much of a pretrained network to freeze, and training under one (lesson 02). The
freeze x data-size grid and the statistics that decide the lesson's claims are in `studies.lesson02`.

A budget in optimizer steps (`with_steps`) makes runs on different amounts of data comparable: every run takes the
same number of steps, whatever its data size, so a small-data run is not simply under-trained."""
from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from ..core.data import elpv_dls
from ..core.env import device, seed_everything
from ..core.models import pretrained
from ..core.surgery import DEPTHS, split_at
from ..core.train import Run, fit, fit_gradual, learner, make_learner, valid_preds
from .features import Features, cached_features, features_dls

__all__ = ["REGIMES", "regime_spec", "train_regime", "train_on_features", "with_steps", "phases"]

# regime -> (weights, freeze depth, how to train). `cached`: the frozen layers never change (BatchNorm included, in
# eval mode), so the regime trains the rest on their cached activations (`cached_features`, `train_on_features`).
REGIMES = {
    "head only": dict(weights="imagenet", depth="head", cached=True),
    "freeze to middle": dict(weights="imagenet", depth="middle", cached=True),
    "whole network": dict(weights="imagenet", depth="none"),
    "from scratch": dict(weights=None, depth="none"),
    "fine_tune (fastai)": dict(weights="imagenet", depth="head", fine_tune=True),
    "gradual unfreezing": dict(weights="imagenet", depth="head", gradual=True),
}
# the manual regimes (pretrained, one freeze depth for the whole run) and the share of the body each freezes
FROZEN_SHARE = {r: DEPTHS[s["depth"]] for r, s in REGIMES.items()
                if s["weights"] and not (s.get("fine_tune") or s.get("gradual"))}


def regime_spec(regime: str) -> dict:
    """The `REGIMES` entry of `regime` (weights, depth, how it trains), or a ValueError naming the known ones."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    return REGIMES[regime]


def phases(regime: str) -> int:
    """How many fits a regime's training is made of: 3 for gradual unfreezing (one per depth), 2 for `fine_tune`
    (head, then everything), else 1. A step budget is shared equally between them."""
    spec = regime_spec(regime)
    return 3 if spec.get("gradual") else 2 if spec.get("fine_tune") else 1


def with_steps(dls, steps: int, seed: int = 0):
    """Make `dls.train` draw exactly `steps` batches per epoch from an endless stream of passes over its items,
    each pass reshuffled (seeded): runs on 80 or 1,600 images take the same optimizer steps, each item is seen as
    often as any other (to within one), and the loader is still evaluated once per epoch. Returns `dls`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    dl, rng = dls.train, np.random.default_rng(seed)
    n = len(dl.dataset)
    stream = itertools.chain.from_iterable(rng.permutation(n).tolist() for _ in itertools.count())
    dl.n, dl.drop_last = steps * dl.bs, True
    dl.get_idxs = lambda: list(itertools.islice(stream, dl.n))   # replaces fastai's one shuffled pass per epoch
    return dls


def _budget(learn, regime: str, steps: int | None, seed: int) -> int | None:
    """Epochs per fit under a step budget (one, of steps // phases batches), or None without one."""
    if steps is None:
        return None
    k = phases(regime)
    if steps < k:
        raise ValueError(f"{regime!r} trains in {k} fits: give it at least {k} steps, got {steps}")
    with_steps(learn.dls, steps // k, seed)
    return 1


def _train(learn, cfg, regime: str, lr: float, epochs: int | None) -> pd.DataFrame:
    """Train one regime: `epochs` per fit under a step budget, else about `cfg.epochs` epochs in all (at least
    one per fit)."""
    spec = regime_spec(regime)
    if spec.get("gradual"):
        return fit_gradual(learn, lr, epochs=epochs or max(1, round(cfg.epochs / 3)))
    if spec.get("fine_tune"):
        return fit(learn, epochs or max(1, cfg.epochs - 1), lr, fine_tune=True, freeze_epochs=1)
    return fit(learn, epochs or cfg.epochs, lr)


def _record(learn, settings: dict, t: float, n_train: int, hist: pd.DataFrame) -> Run:
    """The `Run` of a regime: its settings (with lr), sizes, the optimizer steps it took and how many passes over
    its training items they made (`passes`), the validation predictions after the first epoch."""
    n_steps = len(hist) * len(learn.dls.train)
    return Run.of(learn, settings, time.perf_counter() - t, n_train=n_train, epochs=len(hist), steps=n_steps,
                  passes=n_steps * learn.dls.train.bs / max(1, n_train), y_pred_first=valid_preds(learn, 0)[1])


def train_regime(cfg, regime: str, frac: float, seed: int = 0, arch: str | None = None, task: str = "binary",
                 steps: int | None = None, lr: float | None = None, tune: bool = False) -> Run:
    """Train `arch` under one regime on `frac` of the training split at peak `lr` (default `cfg.lr`): its `Run`
    (settings regime, frac, seed, lr; extra n_train, epochs, steps, passes and y_pred_first, the validation
    predictions after the first epoch). `steps`: the run's optimizer steps, whatever `frac` (`with_steps`), else
    about `cfg.epochs` epochs. `tune=True`: train on the train cells only and predict the tune cells
    (`elpv_dls`). A `cached` regime trains on the cached activations of its frozen layers (`train_on_features`)."""
    arch, lr = arch or cfg.arch, cfg.lr if lr is None else float(lr)
    spec = regime_spec(regime)
    t = time.perf_counter()
    dls = elpv_dls(cfg, task=task, frac=frac, seed=seed, tune=tune)
    if spec.get("cached"):
        feats = cached_features(pretrained(arch, dls.c).to(device()), dls, depth=spec["depth"])
        return train_on_features(cfg, regime, feats, seed=seed, steps=steps, lr=lr, arch=arch, frac=frac, t=t)
    learn = make_learner(dls, arch, weights=spec["weights"], depth=spec["depth"], seed=seed)
    hist = _train(learn, cfg, regime, lr, _budget(learn, regime, steps, seed))
    return _record(learn, dict(regime=regime, frac=frac, seed=seed, lr=lr), t, len(dls.train_ds), hist)


def _subset(feats: Features, keep) -> Features:
    """`feats` with only the training rows where `keep` (bool, (N_train,)) is True."""
    keep = torch.as_tensor(np.asarray(keep, dtype=bool))
    if len(keep) != len(feats.y_train):
        raise ValueError(f"keep has {len(keep)} entries but the features hold {len(feats.y_train)} training rows")
    return replace(feats, x_train=feats.x_train[keep], y_train=feats.y_train[keep])


def train_on_features(cfg, regime: str, feats: Features, keep=None, seed: int = 0, steps: int | None = None,
                      lr: float | None = None, arch: str | None = None, frac: float | None = None,
                      t: float | None = None) -> Run:
    """Train a `cached` regime: the layers of a fresh `arch` after its freeze depth (seeded: the new head's
    initialisation repeats), on `feats`, the cached activations of the layers before (`cached_features` at that
    depth), restricted to the training rows `keep` (bool mask; default all). Same budget, learning rate and `Run`
    as `train_regime`; the tune cells are predicted when `feats` has them."""
    spec, lr = regime_spec(regime), cfg.lr if lr is None else float(lr)
    if not spec.get("cached"):
        raise ValueError(f"{regime!r} trains layers that change their inputs: it cannot run on cached activations; "
                         f"choose one of {', '.join(r for r, s in REGIMES.items() if s.get('cached'))}")
    t = time.perf_counter() if t is None else t
    sub = feats if keep is None else _subset(feats, keep)
    seed_everything(seed)
    rest = split_at(pretrained(arch or cfg.arch, len(feats.vocab)), spec["depth"])[1]
    learn = learner(features_dls(sub, cfg.bs), rest, seed=seed)
    hist = _train(learn, cfg, regime, lr, _budget(learn, regime, steps, seed))
    return _record(learn, dict(regime=regime, frac=frac, seed=seed, lr=lr), t, len(sub.y_train), hist)
