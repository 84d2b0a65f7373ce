"""Measurement: classification metrics, confusion matrices, paired statistics with confidence intervals,
parameters, FLOPs and latency."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from fastcore.basics import noop
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
from torch import nn

from .compat import renamed_kwargs
from .models import to_channels_last

__all__ = ["Evaluation", "evaluate", "top_mistakes", "classification_metrics", "metric_value", "Estimate", "bootstrap",
           "paired_bootstrap", "metric_with_ci", "stack_preds", "mcnemar", "timing_ratio", "median_ratio", "exact", "proportion",
           "count_params", "count_flops", "latency", "latencies", "timed_in_turns"]


def classification_metrics(y_true, y_pred) -> dict:
    """Accuracy, balanced accuracy and macro F1 (fractions in [0, 1]), computed by scikit-learn."""
    return dict(accuracy=float(accuracy_score(y_true, y_pred)),
                balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
                f1_macro=float(f1_score(y_true, y_pred, average="macro")))


# ------------------------------------------------------------------ metrics over many resamples at once
# scikit-learn scores one prediction vector per call; a bootstrap needs thousands, so these are written by hand
# over a leading resample axis (tests check them against scikit-learn).

def _counts(y_true, y_pred, k: int) -> tuple:
    """(true positives, support, predicted) per class, each (..., k), of labels (..., N)."""
    t = y_true[..., None] == np.arange(k)
    p = y_pred[..., None] == np.arange(k)
    return (t & p).sum(-2), t.sum(-2), p.sum(-2)


def _safe_div(a, b):
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def _from_counts(metric: str, tp, sup, pr, minority: int):
    """`metric` from per-class true positives, support and predicted counts (..., k)."""
    if metric == "accuracy":
        return _safe_div(tp.sum(-1), sup.sum(-1))
    if metric == "balanced_accuracy":
        return np.nanmean(_safe_div(tp, sup), -1)
    if metric == "f1_macro":
        return np.nanmean(_safe_div(2 * tp, sup + pr), -1)
    return _safe_div(tp, sup)[..., minority]   # minority_recall


def _minority(y_true: np.ndarray, k: int) -> int:
    support = np.bincount(y_true, minlength=k).astype(float)
    return int(np.argmin(np.where(support > 0, support, np.inf)))   # the rarest class present


def _check_metric(metric: str) -> None:
    if metric not in _METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(_METRIC_NAMES)}")


_METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1_macro", "minority_recall")


def _metric_fn(metric: str, y_true: np.ndarray, k: int):
    """A function (y_true (..., N), y_pred (..., N)) -> (...,) for `metric`."""
    _check_metric(metric)
    minority = _minority(y_true, k)
    return lambda t, p: _from_counts(metric, *_counts(t, p, k), minority)


def _resample_weights(idx, n_items: int) -> np.ndarray:
    """(..., N) float32: how often each of the `n_items` items is drawn in each resample of indices `idx` (..., N)
    (whole numbers, exact in float32 up to 2**24 draws)."""
    idx = np.asarray(idx)
    rows = int(np.prod(idx.shape[:-1]))
    flat = idx.reshape(rows, -1) + n_items * np.arange(rows)[:, None]
    counts = np.bincount(flat.ravel(), minlength=rows * n_items).astype(np.float32)
    return counts.reshape(*idx.shape[:-1], n_items)


def _weighted_metric_fn(metric: str, y_true: np.ndarray, k: int):
    """A function (w (..., N) resample weights, y_pred (N,)) -> (...,): `metric` of each resample, from its weighted
    per-class counts (one matrix product instead of indexing N predictions per resample: the same numbers as
    `_metric_fn` on the resampled labels, many times faster)."""
    _check_metric(metric)
    minority, eye = _minority(y_true, k), np.eye(k, dtype=np.float32)
    truth = eye[y_true]                                                   # (N, k)

    def fn(w, y_pred):
        pred = eye[np.asarray(y_pred, dtype=int)]
        tp, sup, pr = (np.asarray(w @ m, dtype=float) for m in (truth * pred, truth, pred))   # exact whole numbers
        return _from_counts(metric, tp, sup, pr, minority)
    return fn


def metric_value(y_true, y_pred, metric: str = "balanced_accuracy") -> float:
    """One metric of predictions (N,): accuracy, balanced_accuracy, f1_macro or minority_recall (rarest true class)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    k = int(max(y_true.max(), y_pred.max())) + 1
    return float(_metric_fn(metric, y_true, k)(y_true, y_pred))


@dataclass(frozen=True)
class Estimate:
    """A measured effect with its 95 % confidence interval [low, high], the metric and how it was computed."""
    effect: float
    low: float
    high: float
    metric: str = ""
    method: str = ""

    def __str__(self) -> str:
        return f"{self.effect:+.3f}, 95 % CI [{self.low:+.3f}, {self.high:+.3f}]"


def _as_seeds(pred, n: int) -> np.ndarray:
    """Predictions as (S, N) int: one row per seed."""
    pred = np.asarray(pred, dtype=int)
    pred = pred[None] if pred.ndim == 1 else pred
    if pred.shape[-1] != n:
        raise ValueError(f"predictions cover {pred.shape[-1]} images but y_true has {n}: use the same validation set")
    return pred


def bootstrap(y_true, preds: dict, statistic, metric: str = "balanced_accuracy", n: int = 2000,
              seed: int = 0) -> Estimate:
    """`statistic({name: metric values})` with a 95 % CI from resampling the validation images, the same indices
    for every model (paired). `preds`: {name: (N,) or (S, N) predictions over S seeds}; with seeds the
    statistic uses each model's mean over seeds, and the seeds are resampled too (the interval includes
    seed-to-seed spread). E.g. a difference: `lambda m: m['b'] - m['a']`."""
    y_true = np.asarray(y_true, dtype=int)
    preds = {k: _as_seeds(v, len(y_true)) for k, v in preds.items()}
    k = int(max(y_true.max(), *(p.max() for p in preds.values()))) + 1
    fn, n_seeds = _weighted_metric_fn(metric, y_true, k), max(p.shape[0] for p in preds.values())

    def stat(idx, seeds=None):   # idx (..., N) image indices; seeds (..., S) drawn seed rows or None
        out, w = {}, _resample_weights(idx, len(y_true))
        for name, p in preds.items():
            per_seed = np.stack([fn(w, row) for row in p])                        # (S, ...)
            if seeds is None or len(p) == 1:
                out[name] = per_seed.mean(0)
            else:
                out[name] = np.take_along_axis(per_seed.T, seeds, -1).mean(-1)  # mean over the drawn seeds
        return np.asarray(statistic(out), dtype=float)

    effect = float(stat(np.arange(len(y_true))))
    # by hand, not scipy.stats.bootstrap: scipy materialises every resampled array and has no two-level resampling;
    # the same draws as scipy's percentile bootstrap (one level), scored from resample weights (`_resample_weights`)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), (n, len(y_true)))
    if n_seeds == 1:
        draws = stat(idx)
        method = f"paired bootstrap over {len(y_true)} validation images, {n} resamples"
    else:
        draws = stat(idx, rng.integers(0, n_seeds, (n, n_seeds)))
        method = f"two-level bootstrap over {n_seeds} seeds and {len(y_true)} validation images, {n} resamples"
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(effect, float(low), float(high), metric, method)


def paired_bootstrap(y_true, pred_a, pred_b, metric: str = "balanced_accuracy", n: int = 2000,
                     seed: int = 0) -> Estimate:
    """metric(b) - metric(a) on the same validation images, with its 95 % CI (paired bootstrap; seeds pooled)."""
    return bootstrap(y_true, dict(a=pred_a, b=pred_b), lambda m: m["b"] - m["a"], metric, n, seed)


def metric_with_ci(rows: pd.DataFrame, by, metric: str = "balanced_accuracy", n: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Per value of `by` (a column, or a list of columns): the metric of its predictions, pooled over the rows
    (seeds) under it, with a 95 % CI (bootstrap over the validation images, and seeds); groups in order of first
    appearance."""
    cols, out = [by] if isinstance(by, str) else list(by), []
    for key, g in rows.groupby(cols, sort=False):
        est = bootstrap(g["y_true"].iloc[0], {"m": np.stack(list(g["y_pred"]))}, lambda m: m["m"], metric, n, seed)
        out.append({**dict(zip(cols, key)), metric: est.effect, "low": est.low, "high": est.high})
    return pd.DataFrame(out)


def stack_preds(rows, by) -> dict:
    """{key: (S, N) predictions} from a table of runs with a `y_pred` column, one row per seed under each key
    (the values of the columns `by`; a bare value when `by` has one column)."""
    by = [by] if isinstance(by, str) else list(by)
    out = {}
    for key, g in rows.groupby(by, sort=True):
        key = key[0] if len(by) == 1 and isinstance(key, tuple) else key
        out[key] = np.stack([np.asarray(p, dtype=int) for p in g["y_pred"]])
    return out


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """McNemar's exact test of two classifiers' accuracy: discordant counts and the two-sided p-value (scipy)."""
    from scipy.stats import binomtest
    y_true, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    only_a, only_b = int(((a == y_true) & (b != y_true)).sum()), int(((a != y_true) & (b == y_true)).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return dict(only_a_right=only_a, only_b_right=only_b, pvalue=p)


def median_ratio(slow, fast, n: int = 2000, seed: int = 0, metric: str = "ratio", of: str = "values",
                 fast_extra: float = 0.0, reps: int = 1) -> Estimate:
    """(reps x median(slow)) / (fast_extra + reps x median(fast)) of two sets of positive measurements (seconds,
    steps...), with a 95 % CI from resampling each set (scipy's bootstrap, unpaired); `of` names them."""
    from scipy.stats import bootstrap as scipy_bootstrap
    slow, fast = np.asarray(slow, dtype=float), np.asarray(fast, dtype=float)
    ratio = lambda s, f, axis=-1: reps * np.median(s, axis) / (fast_extra + reps * np.median(f, axis))  # noqa: E731
    if min(len(slow), len(fast)) < 2:   # one measurement has no spread: the interval is unknown (inconclusive)
        return Estimate(float(ratio(slow, fast)), float("nan"), float("nan"), metric, f"fewer than two {of}: no interval")
    res = scipy_bootstrap((slow, fast), ratio, vectorized=True, n_resamples=n, method="percentile",
                          random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return Estimate(float(ratio(slow, fast)), float(low), float(high), metric,
                    f"ratio of medians of {len(slow)} and {len(fast)} {of}, bootstrap, {n} resamples")


def timing_ratio(slow_s, fast_s, n: int = 2000, seed: int = 0, fast_extra_s: float = 0.0, reps: int = 1) -> Estimate:
    """How many times faster: (reps x median(slow)) / (fast_extra_s + reps x median(fast)), from repeated timings
    (seconds), with a 95 % CI from resampling each set of timings (`median_ratio`)."""
    return median_ratio(slow_s, fast_s, n, seed, "speed-up (x)", "timings", fast_extra_s, reps)


def proportion(k: int, n: int, metric: str = "share") -> Estimate:
    """A share k/n with its exact (Clopper-Pearson) 95 % CI (scipy)."""
    from scipy.stats import binomtest
    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high), metric, f"exact binomial interval, {k} of {n}")


def exact(value: float, metric: str = "", why: str = "deterministic") -> Estimate:
    """A measurement with no sampling noise (a check, a count): a zero-width interval, saying why."""
    return Estimate(float(value), float(value), float(value), metric, f"exact ({why})")


@dataclass
class Evaluation:
    """Predictions on one dataset: labels, probabilities (N, C), metrics and confusion matrix (C, C)."""
    vocab: list
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    metrics: dict
    confusion: np.ndarray

    @classmethod
    def of(cls, vocab, y_true, y_pred, probs) -> "Evaluation":
        """An Evaluation from predictions already made (labels and classes (N,), probabilities (N, C))."""
        y_true, y_pred, vocab = np.asarray(y_true), np.asarray(y_pred), [str(v) for v in vocab]
        return cls(vocab, y_true, y_pred, np.asarray(probs), classification_metrics(y_true, y_pred),
                   confusion_matrix(y_true, y_pred, labels=range(len(vocab))))

    @property
    def per_class_recall(self) -> dict:
        """Recall of each class (the diagonal of the row-normalised confusion matrix)."""
        rows = self.confusion.sum(1).clip(min=1)
        return {c: float(self.confusion[i, i] / rows[i]) for i, c in enumerate(self.vocab)}


def top_mistakes(ev: Evaluation, paths, n: int = 8) -> pd.DataFrame:
    """The `n` wrong predictions of `ev` made with the highest probability, most confident first (ties in order):
    path (from `paths`, in `ev`'s order), true and predicted class, that probability."""
    probs, y_true, y_pred = np.asarray(ev.probs), np.asarray(ev.y_true), np.asarray(ev.y_pred)
    wrong = np.flatnonzero(y_true != y_pred)
    order = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:n]
    return pd.DataFrame(dict(path=[str(paths[i]) for i in order], true=[ev.vocab[int(i)] for i in y_true[order]],
                             predicted=[ev.vocab[int(i)] for i in y_pred[order]],
                             probability=probs[order, y_pred[order]].astype(float)))


def evaluate(learn, dl=None) -> Evaluation:
    """Evaluate a fastai Learner on `dl` (default: its validation set), without progress bars; the probabilities are
    the softmax of the model's outputs whatever the loss (a focal or logit-adjusted loss has no activation)."""
    with learn.no_bar(), learn.no_logging():
        logits, y = learn.get_preds(dl=dl, act=noop)
    probs = torch.softmax(logits.float(), -1)
    return Evaluation.of(list(learn.dls.vocab), y.numpy(), probs.argmax(1).numpy(), probs.numpy())


def noise_band(p: float, n: int, z: float = 2.0) -> float:
    """`z` binomial standard errors of a rate `p` measured on `n` samples: differences below it are noise."""
    return z * float(np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@renamed_kwargs(size="img_size")
def count_flops(model: nn.Module, img_size: int, bs: int = 1) -> int:
    """FLOPs of one forward pass on a (bs, 3, img_size, img_size) batch, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(bs, 3, img_size, img_size, device=next(model.parameters()).device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


@renamed_kwargs(size="img_size")
def latency(model: nn.Module, img_size: int, bs: int = 1, reps: int = 5, warmup: int = 1) -> dict:
    """Median forward time: ms per batch, ms per image and images/s on (bs, 3, img_size, img_size) inputs;
    `times_ms` keeps every timed pass (for intervals)."""
    dev = next(model.parameters()).device
    x = torch.randn(bs, 3, img_size, img_size, device=dev)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    ms = 1000 * float(np.median(times))
    return dict(ms_per_batch=ms, ms_per_image=ms / bs, images_per_s=1000 * bs / ms,
                times_ms=[1000 * t for t in times])


def timed_in_turns(fns: dict, reps: int = 5, warmup: int = 2) -> dict:
    """{name: ms of each of `reps` timed calls} for the callables `fns` {name: fn}, called in turns (one call of each
    per round, after `warmup` untimed rounds) so that a busy moment hits them all alike."""
    times = {k: [] for k in fns}
    for r in range(warmup + reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(1000 * (time.perf_counter() - t))
    return times


def latencies(models: dict, img_size: int, bs: int = 1, reps: int = 5, warmup: int = 2) -> dict:
    """{name: every timed forward pass, ms per batch} for `models` {name: module} on (bs, 3, img_size, img_size)
    inputs on the CPU, timed in turns (`timed_in_turns`), each in the memory layout it runs fastest in
    (`to_channels_last`: a pruned copy's new weights would otherwise fall back to the slower one)."""
    cpu = {k: to_channels_last(copy.deepcopy(m).cpu().eval()) for k, m in models.items()}
    x = torch.randn(bs, 3, img_size, img_size)
    with torch.no_grad():
        return timed_in_turns({k: (lambda m=m: m(x)) for k, m in cpu.items()}, reps, warmup)
