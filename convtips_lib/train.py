"""Training: one fastai Learner factory and one `fit` that keeps the history across phases."""
from __future__ import annotations

import random

import pandas as pd
from fastai.vision.all import (BalancedAccuracy, Callback, F1Score, Learner, Normalize, ProgressCallback, Recorder,
                               accuracy, noop)
from torch import nn

from .env import is_quiet, seed_everything
from .models import Classifier, freeze, param_groups, pretrained

__all__ = ["History", "make_learner", "fit", "fit_gradual", "history", "last_metrics"]


class History(Callback):
    """Keeps one row per epoch across every `fit` call (fastai's Recorder forgets earlier fits)."""
    order = Recorder.order + 1

    def __init__(self):
        self.rows, self.phase, self.fitting = [], "fit", False

    def before_train(self):
        self.fitting = True  # get_preds runs before_fit/after_epoch too, but never a training phase

    def after_epoch(self):
        if not self.fitting:
            return
        self.fitting = False
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        vals = self.recorder.log[1:len(names) + 1]
        self.rows.append(dict(epoch=len(self.rows) + 1, phase=self.phase,
                              **{n: float(v) if v is not None else None for n, v in zip(names, vals)}))


def _set_norm(dls, stats) -> None:
    """Make the DataLoaders normalise with the model's `stats`, replacing any other Normalize."""
    for dl in dls.loaders:
        dl.after_batch.fs = dl.after_batch.fs.filter(lambda t: not isinstance(t, Normalize))
    dls.add_tfms([Normalize.from_stats(*stats)], "after_batch")


def _seed_loaders(dls, seed: int) -> None:
    """Reset each DataLoader's own shuffle RNG (fastai draws it once, at creation) so a seed repeats a run."""
    for i, dl in enumerate(dls.loaders):
        dl.rng = random.Random(seed + i)


def make_learner(dls, arch: str = "efficientnet_lite0", pretrained_: bool = True, depth="head",
                 model: nn.Module | None = None, loss_func=None, cbs=None, train_bn: bool = True,
                 seed: int | None = None, **kw) -> Learner:
    """A fastai Learner for `arch` (or a given `model`) on `dls`, body frozen to `depth`, with accuracy, balanced accuracy, F1."""
    if seed is not None:
        seed_everything(seed)
        _seed_loaders(dls, seed)
    model = model or pretrained(arch, dls.c, pretrained=pretrained_)
    _set_norm(dls, getattr(model, "meta", {}).get("stats", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))))
    metrics = [accuracy, BalancedAccuracy(), F1Score(average="macro")]
    splitter = param_groups if isinstance(model, Classifier) else (lambda m: [list(m.parameters())])
    learn = Learner(dls, model, loss_func=loss_func, metrics=metrics, splitter=splitter, train_bn=train_bn,
                    cbs=[History(), *(cbs or [])], **kw)
    if is_quiet():
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
        learn.logger = noop
    if isinstance(model, Classifier):
        freeze(learn, depth if pretrained_ else "none")
    return learn


def fit(learn: Learner, epochs: int, lr: float, fine_tune: bool = False, freeze_epochs: int = 1) -> pd.DataFrame:
    """Train with one-cycle at peak `lr` (or fastai's `fine_tune`); returns the whole history as a DataFrame."""
    hist = learn.history
    if fine_tune:
        hist.phase = "frozen"
        learn.freeze()
        learn.fit_one_cycle(freeze_epochs, lr)
        hist.phase = "unfrozen"
        learn.unfreeze()
        learn.fit_one_cycle(epochs, slice(lr / 100, lr / 2))
    else:
        hist.phase = "fit"
        learn.fit_one_cycle(epochs, lr)
    return history(learn)


def fit_gradual(learn: Learner, lr: float, epochs: int = 1, stages=("head", "middle", "none")) -> pd.DataFrame:
    """Gradual unfreezing (Howard & Ruder, ULMFiT 2018): `epochs` per stage, each stage freezing less of the body.

    Stages after the first use discriminative learning rates, lr/100 for the earliest layers up to lr/2.
    """
    for i, depth in enumerate(stages):
        learn.history.phase = f"frozen: {depth}"
        freeze(learn, depth)
        learn.fit_one_cycle(epochs, lr if i == 0 else slice(lr / 100, lr / 2))
    return history(learn)


def history(learn: Learner) -> pd.DataFrame:
    """Per-epoch losses and metrics of every fit so far."""
    return pd.DataFrame(learn.history.rows)


_METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy_score": "balanced_accuracy", "f1_score": "f1_macro"}


def last_metrics(learn: Learner) -> dict:
    """Validation accuracy, balanced accuracy and macro F1 after the last epoch, as `evaluate` names them (no extra pass)."""
    row = learn.history.rows[-1]
    return {new: row[old] for old, new in _METRIC_NAMES.items()}
