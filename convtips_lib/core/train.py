"""Training: the one training path. Every model, full network or a head on cached features, trains in a fastai
Learner made by `learner`, so every tip (a loss, a sampler, an optimizer, a Callback) works everywhere."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import (Callback, CancelValidException, ChannelsLast, CrossEntropyLossFlat, Learner, LRFinder,
                               Normalize, ProgressCallback, Recorder, accuracy, noop, skm_to_fastai)
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from .compat import renamed_kwargs
from .env import is_quiet, seed_everything
from .measure import classification_metrics as _classification
from .models import Classifier, model_stats, prefers_channels_last, pretrained
from .profiles import DEFAULT_ARCH
from .surgery import freeze, param_groups

__all__ = ["METRICS", "FIT_SCHEDULES", "learner", "make_learner", "fit", "check_trains", "on_cuda", "fit_gradual", "history", "Run", "run_grid",
           "select_lr", "best_on_tune", "best_epoch", "tune_loader", "NoTuneCells", "pool_folds", "pool_per_fold",
           "at_chosen_per_fold", "cross_validate",
           "ValidateLast", "VALIDATE"]

METRICS = ("accuracy", "balanced_accuracy", "f1_macro")   # the one set of metric names: histories, evaluate, results


def _metrics() -> list:
    """fastai metrics named as in `METRICS` (scikit-learn computes the balanced accuracy and macro F1)."""
    return [accuracy, skm_to_fastai(balanced_accuracy_score, name="balanced_accuracy"),
            skm_to_fastai(f1_score, average="macro", name="f1_macro")]


def tune_loader(dls):
    """The loader of the cells choices are made on (`dls.tune`, see `core.data.attach_tune`), or None."""
    return getattr(dls, "tune", None)


def predict_loader(model: nn.Module, dl) -> tuple:
    """((N, C) float32 softmax probabilities, (N,) labels) of `model` in eval mode on every batch of `dl`, in
    order; the model's mode is restored afterwards. Used for the tune cells, outside fastai's validation pass."""
    was_training, device = model.training, next(model.parameters()).device
    probs, ys = [], []
    model.eval()
    try:
        with torch.no_grad():
            for xb, yb in dl:
                out = model(torch.as_tensor(xb).as_subclass(torch.Tensor).to(device))
                probs.append(torch.softmax(out.float(), -1).cpu().numpy())
                ys.append(torch.as_tensor(yb).as_subclass(torch.Tensor).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(probs), np.concatenate(ys)


class History(Callback):
    """One row per epoch across every `fit` call (fastai's Recorder forgets earlier fits), and the softmax
    probabilities and predicted class of every validation image after each epoch (`probs`: list of (N_valid, C)
    float32 arrays, whatever the loss; `preds`: list of (N_valid,) int arrays; `y_true` the labels), for paired
    statistics on the fixed validation set. When the DataLoaders carry tune cells (`dls.tune`), their
    probabilities after each epoch too (`tune_probs`, labels `tune_y`): the only predictions a choice may read."""
    order = Recorder.order + 1

    def __init__(self):
        self.rows, self.probs, self.preds, self.y_true, self.phase, self.fitting = [], [], [], None, "fit", False
        self.tune_probs, self.tune_y = [], None
        self._batch, self._probs, self._y = [], [], []

    def before_epoch(self):
        self._t0 = time.perf_counter()

    def before_train(self):
        # get_preds runs before_fit/after_epoch too, but never a training phase; lr_find trains but is no epoch
        self.fitting = not any(isinstance(cb, LRFinder) for cb in self.learn.cbs)

    def before_validate(self):
        self._batch, self._probs, self._y = [], [], []

    def after_batch(self):
        if not self.training and self.fitting:
            pred = self.pred.detach()
            self._batch.append(pred.argmax(-1).cpu().numpy())
            self._probs.append(torch.softmax(pred.float(), -1).cpu().numpy())
            self._y.append(self.y.detach().cpu().numpy())

    def after_epoch(self):
        if not self.fitting:
            return
        self.fitting = False
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        if getattr(self.recorder, "cancel_valid", False):   # `ValidateLast`: this epoch has its training loss only
            row = {n: None for n in names} | dict(train_loss=float(self.recorder.log[1]))
            self.rows.append(dict(epoch=len(self.rows) + 1, phase=self.phase, **row,
                                  seconds=time.perf_counter() - self._t0))
            return
        vals = self.recorder.log[1:len(names) + 1]
        row = {n: float(v) if v is not None else None for n, v in zip(names, vals)}
        row["seconds"] = time.perf_counter() - self._t0   # fastai's own epoch time is rounded to whole seconds
        self.rows.append(dict(epoch=len(self.rows) + 1, phase=self.phase, **row))
        self.preds.append(np.concatenate(self._batch) if self._batch else np.array([], dtype=int))
        self.probs.append(np.concatenate(self._probs) if self._probs else np.zeros((0, 0), dtype=np.float32))
        self.y_true = np.concatenate(self._y) if self._y else self.y_true
        tune = tune_loader(self.learn.dls)
        if tune is not None:
            probs, self.tune_y = predict_loader(self.learn.model, tune)
            self.tune_probs.append(probs)
            row = self.rows[-1]
            row.update({f"tune_{k}": v for k, v in _classification(self.tune_y, probs.argmax(1)).items()})


class ValidateLast(Callback):
    """Skip fastai's validation pass (and the tune cells) after every epoch but the last of a fit: for runs whose
    per-epoch predictions nothing reads, where many short epochs (equal optimizer steps on little data) would
    otherwise pay a pass over the test cells each. `History` then keeps predictions of the validated epochs only."""
    order = Recorder.order - 1

    def before_validate(self):
        if self.epoch < self.n_epoch - 1:
            raise CancelValidException()


VALIDATE = ("every", "last")   # when `fit` predicts the test (and tune) cells: after every epoch, or the last only


def set_norm(dls, stats) -> None:
    """Make image DataLoaders normalise with `stats` (mean, std), replacing any other Normalize."""
    norm = Normalize.from_stats(*stats)
    for dl in [*dls.loaders, *([dls.tune] if getattr(dls, "tune", None) is not None else [])]:
        dl.after_batch.fs = dl.after_batch.fs.filter(lambda t: not isinstance(t, Normalize))
        dl.after_batch.add([norm])


def _seed_loaders(dls, seed: int) -> None:
    """Reset each DataLoader's own shuffle RNG (fastai draws it once, at creation) so a seed repeats a run."""
    for i, dl in enumerate(dls.loaders):
        dl.rng = random.Random(seed + i)


def on_cuda(dls) -> bool:
    """Whether `dls` put their batches on a CUDA device."""
    device = getattr(dls, "device", None)
    return device is not None and torch.device(device).type == "cuda"


def learner(dls, model: nn.Module, loss_func=None, cbs=None, splitter=None, seed: int | None = None,
            fp16: bool | None = None, channels_last: bool | None = None, **kw) -> Learner:
    """The one Learner factory: `METRICS`, `History`, quiet in CI, cross-entropy unless `loss_func`, seeded loaders;
    fastai's mixed precision (`to_fp16`) when `fp16`, by default whenever the batches are on a CUDA device;
    fastai's `ChannelsLast` when `channels_last`, by default when the model `prefers_channels_last` (depthwise
    convolutions: about 2x faster steps on a CPU)."""
    if seed is not None:
        seed_everything(seed)
        _seed_loaders(dls, seed)
    learn = Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(), metrics=_metrics(),
                    splitter=splitter or (lambda m: [list(m.parameters())]), cbs=[History(), *(cbs or [])], **kw)
    if on_cuda(dls) if fp16 is None else fp16:
        learn.to_fp16()
    if prefers_channels_last(model) if channels_last is None else channels_last:
        learn.add_cb(ChannelsLast())
    if is_quiet():
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
        learn.logger = noop
    return learn


@renamed_kwargs(pretrained_="weights")
def make_learner(dls, arch: str = DEFAULT_ARCH, weights="imagenet", depth="head",
                 model: nn.Module | None = None, loss_func=None, cbs=None, seed: int | None = None,
                 **kw) -> Learner:
    """A Learner for `arch` (or a given `model`) on image `dls`, normalised with the model's stats, body frozen to
    `depth` (the whole network trains from a random init). `weights`: 'imagenet', None or a local file."""
    if weights is False or weights is True:   # the deprecated pretrained_=True/False flag
        weights = "imagenet" if weights else None
    if seed is not None:
        seed_everything(seed)                 # the new head's initialisation repeats with the seed
    model = model or pretrained(arch, dls.c, weights=weights)
    set_norm(dls, model_stats(model))
    learn = learner(dls, model, loss_func, cbs, param_groups if isinstance(model, Classifier) else None, seed, **kw)
    if isinstance(model, Classifier):
        freeze(learn, depth if weights is not None else "none")
    return learn


FIT_SCHEDULES = ("one-cycle", "constant")   # of lesson 05's SCHEDULES, the two fit runs in every phase


def check_trains(learn: Learner) -> None:
    """Refuse a fit that would take no optimizer step: fastai drops the last incomplete training batch, so fewer
    training images than one batch train nothing (train loss nan) and only fastprogress's 'generator is empty'
    would tell."""
    if len(learn.dls.train) == 0:
        n, bs = len(learn.dls.train_ds), learn.dls.train.bs
        raise ValueError(f"{n} training images make no batch of {bs} (fastai drops the last incomplete batch), so "
                         f"nothing would train: use batches of at most {n} images (bs=), or more training images")


def fit(learn: Learner, epochs: int, lr: float, fine_tune: bool = False, freeze_epochs: int = 1,
        schedule: str = "one-cycle", validate: str = "every") -> pd.DataFrame:
    """Train with one-cycle at peak `lr` (or a constant `lr`: `schedule`), or fastai's `fine_tune` (`freeze_epochs`
    of the head alone at `lr`, then the whole network at lr/100 for the first layers up to lr/2 for the last);
    returns the whole history as a DataFrame. `validate` ('every' or 'last', `VALIDATE`): predict the test (and
    tune) cells after every epoch, or only after the last of each fit (`ValidateLast`)."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
    check_trains(learn)
    if schedule not in FIT_SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(FIT_SCHEDULES)}")
    if validate not in VALIDATE:
        raise ValueError(f"unknown validate {validate!r}: choose one of {', '.join(VALIDATE)}")
    one_cycle = learn.fit_one_cycle if schedule == "one-cycle" else learn.fit
    cbs = [ValidateLast()] if validate == "last" else []
    run = lambda n, lr: one_cycle(n, lr, cbs=cbs)  # noqa: E731
    hist = learn.history
    if fine_tune:
        hist.phase = "frozen"
        learn.freeze()
        run(freeze_epochs, lr)
        hist.phase = "unfrozen"
        learn.unfreeze()
        run(epochs, slice(lr / 100, lr / 2))
    else:
        hist.phase = "fit"
        run(epochs, lr)
    return history(learn)


@renamed_kwargs(stages="depths")
def fit_gradual(learn: Learner, lr: float, epochs=1, depths=("head", "middle", "none")) -> pd.DataFrame:
    """Gradual unfreezing (Howard & Ruder, ULMFiT 2018): `epochs` per freeze depth (one int for every depth, or
    one per depth), each depth freezing less.

    Depths after the first use discriminative learning rates, lr/100 for the earliest layers up to lr/2.
    """
    per_depth = [epochs] * len(depths) if np.ndim(epochs) == 0 else list(epochs)
    for i, (depth, n) in enumerate(zip(depths, per_depth)):
        learn.history.phase = f"depth: {depth}"
        freeze(learn, depth)
        learn.fit_one_cycle(n, lr if i == 0 else slice(lr / 100, lr / 2))
    return history(learn)


def history(learn: Learner) -> pd.DataFrame:
    """Per-epoch losses, `METRICS` and seconds of every fit so far."""
    return pd.DataFrame(learn.history.rows)


def last_metrics(learn: Learner) -> dict:
    """`METRICS` on the validation set after the last epoch (no extra pass)."""
    row = learn.history.rows[-1]
    return {m: row[m] for m in METRICS}


def valid_probs(learn: Learner, epoch: int = -1) -> np.ndarray:
    """(N_valid, C) softmax probabilities of the validation images after `epoch` (default: the last), loader order."""
    return learn.history.probs[epoch]


@dataclass
class Run:
    """One experiment, the record every `train_*` returns: its `settings`, the per-epoch `history` (a DataFrame),
    the validation labels `y_true`, classes `y_pred` (N,) and probabilities `probs` (N, C) after the last epoch
    (`epoch_probs`: one array per epoch), its `metrics` (`METRICS`, or more), wall-clock `seconds`, the `learn`er,
    and what else the experiment measured (`extra`)."""
    settings: dict
    history: pd.DataFrame
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    metrics: dict
    seconds: float
    learn: Learner | None = None
    epoch_probs: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    tune_y: np.ndarray | None = None                       # (N_tune,) labels of the tune cells, if any
    tune_epoch_probs: list = field(default_factory=list)   # (N_tune, C) probabilities after each epoch

    @classmethod
    def of(cls, learn: Learner, settings: dict, seconds: float, metrics: dict | None = None, **extra) -> "Run":
        """The record of a trained Learner from its `History`: history, predictions after the last epoch and
        (unless given) `last_metrics`; the tune cells' predictions when the DataLoaders have them."""
        hist = learn.history
        return cls(dict(settings), history(learn), np.asarray(hist.y_true), hist.preds[-1], valid_probs(learn),
                   dict(last_metrics(learn) if metrics is None else metrics), float(seconds), learn,
                   list(hist.probs), dict(extra), hist.tune_y, list(hist.tune_probs))

    @property
    def has_tune(self) -> bool:
        return self.tune_y is not None and len(self.tune_epoch_probs) > 0

    def tune_metrics(self, epoch: int = -1) -> dict:
        """`METRICS` on the tune cells after `epoch` (0-based index, default the last): what a choice reads."""
        if not self.has_tune:
            raise NoTuneCells("this run has no tune cells to choose on: build its DataLoaders with "
                              "elpv_dls(..., tune=True) (or tensor_dls(..., tune=(x, y)))")
        return _classification(self.tune_y, self.tune_epoch_probs[epoch].argmax(1))

    def row(self, probs: bool = False, history: bool = False, learn: bool = False) -> dict:
        """One flat row for a table of runs: settings, metrics, seconds, extra, y_true and y_pred, the tune cells'
        metrics as `tune_<metric>` when the run has them (and, on request, probs, the history DataFrame and the
        Learner)."""
        tune = {f"tune_{k}": v for k, v in self.tune_metrics().items()} if self.has_tune else {}
        out = dict(**self.settings, **self.metrics, **tune, seconds=self.seconds, **self.extra, y_true=self.y_true,
                   y_pred=self.y_pred)
        if probs:
            out["probs"] = self.probs
        if history:
            out["history"] = self.history
        if learn:
            out["learn"] = self.learn
        return out


def run_grid(train: Callable[..., Run], settings, seeds) -> list:
    """`train(**s, seed=seed)` for every settings dict `s` of `settings` and every seed: a list of `Run`s."""
    return [train(**s, seed=seed) for s in settings for seed in seeds]


def pool_folds(runs: list, settings: dict | None = None, metrics: Callable | None = None) -> Run:
    """One `Run` from the k fold `Run`s of a cross-validation (`core.data.elpv_folds`): every fold's test
    predictions concatenated in fold order (each cell predicted once, by a model that never saw it; the same order
    for every experiment on the same folds), metrics over the pooled cells, seconds summed, the fold histories in
    one table (column `fold`), per-epoch probabilities pooled when every fold ran the same epochs. Choices stay
    inside the folds: `extra['folds']` keeps each fold's settings and tune metrics; the pooled run has no tune
    cells of its own. `metrics(y_true, y_pred, probs) -> dict` scores the pooled cells (default `METRICS`), e.g.
    a lesson's own metrics such as the recall of a rare class."""
    if not runs:
        raise ValueError("pool_folds needs at least one fold's Run")
    cat = lambda xs: np.concatenate([np.asarray(x) for x in xs])  # noqa: E731
    y_true, probs = cat(r.y_true for r in runs), cat(r.probs for r in runs)
    y_pred = cat(r.y_pred for r in runs)
    epochs = {len(r.epoch_probs) for r in runs}
    epoch_probs = ([cat(r.epoch_probs[e] for r in runs) for e in range(epochs.pop())] if len(epochs) == 1 else [])
    hist = pd.concat([r.history.assign(fold=i) for i, r in enumerate(runs)], ignore_index=True)
    folds = [dict(fold=i, **r.settings, **({f"tune_{k}": v for k, v in r.tune_metrics().items()} if r.has_tune else {}))
             for i, r in enumerate(runs)]
    return Run(dict(settings if settings is not None else runs[0].settings), hist, y_true, y_pred, probs,
               _classification(y_true, y_pred) if metrics is None else dict(metrics(y_true, y_pred, probs)),
               float(sum(r.seconds for r in runs)), None, epoch_probs,
               dict(folds=folds, n_folds=len(runs)))


def pool_per_fold(runs: list, keep: bool = False) -> Run:
    """`pool_folds` of one experiment's fold `Run`s (fold order), each fold trained at its own rate: settings lr
    that rate (or 'per fold'); extra fold_lrs, fold_tune (each fold's tune balanced accuracy: what a choice reads),
    tune_balanced_accuracy (their mean), the folds' other extras (numbers averaged unless equal, arrays concatenated) and
    `learners` (one per fold) when `keep`. `fold_runs` (an attribute, not in the row) keeps the fold Runs, so a
    choice per fold can be pooled later without training again (`at_chosen_per_fold`)."""
    lrs = [float(r.settings["lr"]) for r in runs]
    pooled = pool_folds(runs, {**runs[0].settings, "lr": lrs[0] if len(set(lrs)) == 1 else "per fold"})
    tune = [r.tune_metrics()["balanced_accuracy"] if r.has_tune else np.nan for r in runs]
    for k, v in runs[0].extra.items():
        vals = [r.extra[k] for r in runs]
        if isinstance(v, np.ndarray):
            pooled.extra[k] = np.concatenate(vals)
        elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            pooled.extra[k] = v if len(set(vals)) == 1 else float(np.mean(vals))
    pooled.extra.update(fold_lrs=lrs, fold_tune=tune, tune_balanced_accuracy=float(np.mean(tune)),
                        learners=[r.learn for r in runs] if keep else None)
    pooled.fold_runs = runs
    return pooled


def at_chosen_per_fold(tried: list, keep: bool = False) -> tuple:
    """(each fold's chosen rate, the pooled `Run` of those choices) from `tried`, the `pool_per_fold` runs of one
    experiment at several rates: per fold, the rate whose fold run scored best on that fold's tune cells (ties to
    the first; the test cells never enter), its own fold run reused. The fold runs of `tried` are released."""
    n = len(tried[0].fold_runs)
    pick = [int(np.nanargmax([r.extra["fold_tune"][i] for r in tried])) for i in range(n)]
    chosen = pool_per_fold([tried[j].fold_runs[i] for i, j in enumerate(pick)], keep)
    for r in tried:
        del r.fold_runs
    return chosen.extra["fold_lrs"], chosen


def cross_validate(train_fold: Callable[..., Run], folds: list, **settings) -> Run:
    """`train_fold(roles, **settings)` on every fold's role table (`elpv_folds`), pooled by `pool_folds`: an
    experiment judged on all 2,624 cells instead of 656, every choice made on its fold's tune cells."""
    return pool_folds([train_fold(roles, **settings) for roles in folds], settings or None)


class NoTuneCells(ValueError):
    """A choice was asked of runs that have no tune cells: it would have to read the test cells."""


def best_on_tune(runs: pd.DataFrame, by=None, metric: str = "balanced_accuracy", candidates=None) -> pd.DataFrame:
    """The row of `runs` (a table of `Run.row()`s) with the best `tune_<metric>`, one per group of `by` (a column
    or list of columns; None: one row overall), ties to the first. Reads only the tune cells' score: the test
    columns never enter a choice. A run that diverged (`finite` False) never wins. `candidates` (columns, e.g.
    ['regime', 'lr']): the rows sharing their values (seeds) are one candidate, scored by its mean tune score;
    the result then holds those columns, `by` and that mean."""
    col = f"tune_{metric}"
    if col not in runs:
        raise NoTuneCells(f"the runs have no {col!r} column to choose on: build their DataLoaders with "
                          "elpv_dls(..., tune=True), so the choice reads the tune cells and never the test cells")
    ok = runs[runs["finite"].astype(bool)] if "finite" in runs else runs
    if ok.empty:
        raise ValueError("every run diverged (finite is False): there is nothing to choose")
    groups = [] if by is None else [by] if isinstance(by, str) else list(by)
    if candidates is not None:
        keys = list(dict.fromkeys(groups + ([candidates] if isinstance(candidates, str) else list(candidates))))
        ok = ok.groupby(keys, as_index=False, sort=False)[col].mean()
    score = ok[col].fillna(-np.inf)
    if not groups:
        return ok.loc[[score.idxmax()]]
    return ok.loc[score.groupby([ok[b] for b in groups], sort=False).idxmax()]


def best_epoch(run: Run, metric: str = "balanced_accuracy") -> int:
    """The epoch (1-based) after which `run`'s tune cells scored best on `metric` (ties to the earliest): choosing
    how long to train without looking at the test cells."""
    scores = [run.tune_metrics(e)[metric] for e in range(len(run.tune_epoch_probs))] if run.has_tune else None
    if scores is None:
        run.tune_metrics()   # raises NoTuneCells with the fix
    return int(np.argmax(scores)) + 1


def select_lr(score: Callable[[float], float], lrs) -> tuple:
    """(best lr, {lr: score}): the learning rate of `lrs` whose `score(lr)` is highest. `score` trains on the
    training rows left after a tuning part is held out and scores on that part, never on the cells that judge a
    claim; with one rate there is nothing to choose and `score` is not called."""
    lrs = [float(lr) for lr in ([lrs] if isinstance(lrs, (int, float)) else lrs)]
    if len(lrs) == 1:
        return lrs[0], {}
    scores = {lr: float(score(lr)) for lr in lrs}
    return max(scores, key=scores.get), scores


def valid_preds(learn: Learner, epoch: int = -1) -> tuple:
    """(y_true, y_pred): (N_valid,) labels and predicted classes after `epoch` (default: the last), loader order."""
    return learn.history.y_true, learn.history.preds[epoch]
