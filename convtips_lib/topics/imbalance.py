"""Imbalanced data (lesson 04): how imbalanced the data is, a harsher imbalance made on purpose, the remedies as
fastai pieces (a class-weighted or focal loss, logit adjustment, a weighted sampler, under-sampling, minority-only
augmentation, threshold moving) and the metrics that do not lie about a rare class. The lesson's remedy comparisons
are in `studies.lesson04`.

One word for the class of interest, everywhere in the library: `minority` — by name (str) where labels are names,
by column index (int) where probabilities are an (N, k) array; its recall is `minority_recall`. A cell is called
`minority` when that class's probability is at least the threshold (`>=`, `threshold_preds`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.vision.all import Callback, Normalize, Pipeline, TensorImage
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from ..core.measure import classification_metrics

__all__ = ["class_counts", "check_every_class", "class_weights", "imbalanced_indices", "imbalanced_frame",
           "undersample_indices", "oversample_weights", "FocalLoss", "LogitAdjustedLoss", "MinorityAugment",
           "tune_threshold", "threshold_preds", "imbalance_metrics", "per_class_table", "pr_curve"]


# ------------------------------------------------------------------ counting and weighting classes
def class_counts(labels, classes=None) -> pd.Series:
    """Items per class (in `classes` order if given, else sorted), zeros included."""
    s = pd.Series(np.asarray(labels)).astype(str)
    classes = sorted(s.unique()) if classes is None else [str(c) for c in classes]
    return s.value_counts().reindex(classes, fill_value=0).rename("count")


def check_every_class(counts: pd.Series, what: str) -> None:
    """Refuse class counts (`class_counts`) with an empty class: `what` (a class weight, a prior) needs them all."""
    absent = list(counts.index[counts == 0])
    if absent:
        raise ValueError(f"class {absent[0]!r} has no training items, so {what} is undefined: keep at least one item "
                         f"of every class ({dict(counts)})")


def class_weights(labels, method: str = "inverse", beta: float = 0.999, classes=None) -> dict:
    """{class: loss weight} from the training labels. 'inverse': n / (k * n_c), scikit-learn's 'balanced'
    (weight x count is the same for every class); 'effective': Cui et al. (CVPR 2019), (1 - beta) / (1 - beta^n_c),
    scaled to sum to k (written by hand: no library we use has it)."""
    counts = class_counts(labels, classes)
    check_every_class(counts, "a class weight")
    if method == "inverse":
        y = np.asarray(labels).astype(str)
        w = compute_class_weight("balanced", classes=np.array(counts.index), y=y)
    elif method == "effective":
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta} (Cui et al. use 0.9 to 0.9999)")
        w = (1 - beta) / (1 - beta ** counts.to_numpy(float))
        w = w * len(w) / w.sum()
    else:
        raise ValueError(f"unknown method {method!r}: choose 'inverse' or 'effective'")
    return dict(zip(counts.index, map(float, w)))


def _ratio_check(ratio: float) -> float:
    if not (isinstance(ratio, (int, float, np.floating)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1] (minority items per majority item, e.g. 1/20), got {ratio!r}")
    return float(ratio)


def imbalanced_indices(labels, ratio: float, minority: str, seed: int = 0, strata=None) -> np.ndarray:
    """Sorted positions that keep every item of the other classes and `ratio` x (largest class) items of `minority`
    (at least one), drawn at random: a harsher imbalance made on purpose. `strata` (one value per item, e.g. the
    defect level): the minority draw keeps each stratum's share, and at least one item of each."""
    ratio, labels = _ratio_check(ratio), np.asarray(labels).astype(str)
    counts = class_counts(labels)
    if minority not in counts.index:
        raise ValueError(f"no class {minority!r} in the labels: choose one of {list(counts.index)}")
    rare = np.flatnonzero(labels == minority)
    n_keep = max(1, int(round(ratio * counts.drop(minority).max())))
    if n_keep > len(rare):
        raise ValueError(f"ratio {ratio:g} needs {n_keep} {minority!r} items but there are {len(rare)}: "
                         f"the data is already at most that imbalanced; choose a smaller ratio")
    rng = np.random.default_rng(seed)
    if strata is None:
        keep = rng.choice(rare, n_keep, replace=False)
    else:
        groups = pd.Series(rare).groupby(np.asarray(strata).astype(str)[rare], sort=True)
        keep = np.concatenate([rng.choice(g.to_numpy(), min(len(g), max(1, int(round(n_keep * len(g) / len(rare))))),
                                          replace=False) for _, g in groups])
    return np.sort(np.concatenate([np.flatnonzero(labels != minority), keep]))


def imbalanced_frame(df: pd.DataFrame, ratio: float, minority: str = "defective", col: str = "label_bin",
                     seed: int = 0) -> pd.DataFrame:
    """`df` (e.g. `elpv_frame()`) with its training rows made imbalanced (`imbalanced_indices`, the minority drawn
    across defect levels); validation rows unchanged. With the cells' roles (`elpv_roles()`) only the 'train' cells
    are made imbalanced: the tune cells that choices are made on and the test cells that judge stay as they are."""
    is_train = df["role"] == "train" if "role" in df else ~df["is_valid"]
    train = df[is_train]
    keep = train.iloc[imbalanced_indices(train[col], ratio, minority, seed, strata=train["label_4"])]
    return pd.concat([keep, df[~is_train]])


def undersample_indices(labels, ratio: float = 1.0, seed: int = 0) -> np.ndarray:
    """Sorted positions kept by imbalanced-learn's RandomUnderSampler: every item of the rarest class, and of each
    other class at most (rarest count / `ratio`) items (ratio 1: all classes equal)."""
    from imblearn.under_sampling import RandomUnderSampler
    ratio, labels = _ratio_check(ratio), np.asarray(labels).astype(str)
    counts = class_counts(labels)
    cap = int(counts.min() / ratio)
    strategy = {c: int(min(n, cap)) for c, n in counts.items()}
    sampler = RandomUnderSampler(sampling_strategy=strategy, random_state=seed)
    sampler.fit_resample(np.arange(len(labels))[:, None], labels)
    return np.sort(sampler.sample_indices_)


def oversample_weights(labels, classes=None) -> dict:
    """{class: 1 / count}: a weighted sampler drawing with these weights sees every class equally often."""
    counts = class_counts(labels, classes)
    check_every_class(counts, "over-sampling")
    return {c: 1.0 / n for c, n in counts.items()}


# ------------------------------------------------------------------ losses and a callback
class FocalLoss(nn.Module):
    """Focal loss (Lin et al., ICCV 2017) as torchvision computes it (`sigmoid_focal_loss`, one-vs-rest on one-hot
    targets), averaged; logits (B, k), targets (B,). Down-weights the easy, mostly majority, examples."""

    def __init__(self, gamma: float = 2.0, alpha: float = -1):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits, target):
        from torchvision.ops import sigmoid_focal_loss
        onehot = F.one_hot(target.long(), logits.shape[-1]).to(logits.dtype)
        return sigmoid_focal_loss(logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction="sum") / len(logits)

    def activation(self, x):
        return torch.softmax(x, -1)

    def decodes(self, x):
        return x.argmax(-1)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE(logits + tau * log prior, y); predictions stay the
    plain argmax, which then favours rare classes. Written by hand: three lines, no library we use has it."""

    def __init__(self, prior, tau: float = 1.0):
        super().__init__()
        prior = torch.as_tensor(np.asarray(prior, dtype=np.float32))
        if (prior <= 0).any():
            raise ValueError(f"every class needs a prior > 0, got {prior.tolist()}: a class is absent from training")
        self.register_buffer("log_prior", (prior / prior.sum()).log())
        self.tau = tau

    def forward(self, logits, target):
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.device), target.long())

    def activation(self, x):
        return torch.softmax(x, -1)

    def decodes(self, x):
        return x.argmax(-1)


class MinorityAugment(Callback):
    """Augment only the training images of the classes `targets` (indices) with batch transforms `tfms` (e.g.
    lesson 03's flips, brightness and contrast); the other images pass unchanged. The batch arrives normalised:
    it is un-normalised for the transforms (which expect [0, 1]) and normalised again."""
    order = 5

    def __init__(self, tfms: list, targets):
        self.pipe, self.targets = Pipeline(list(tfms), split_idx=0), torch.as_tensor(list(targets))

    def before_fit(self):
        self.norm = next((t for t in self.dls.train.after_batch.fs if isinstance(t, Normalize)), None)

    def before_batch(self):
        if not self.training:
            return
        x, y = (t.as_subclass(torch.Tensor) for t in (self.xb[0], self.yb[0]))   # plain tensors for indexing
        rare = torch.isin(y, self.targets.to(y.device))
        if rare.any():
            xr = TensorImage(x[rare])
            xr = self.pipe(self.norm.decode(xr) if self.norm else xr)
            xr = self.norm(TensorImage(xr)) if self.norm else xr
            x = x.clone()
            x[rare] = xr.as_subclass(torch.Tensor)
            self.learn.xb = (TensorImage(x),)


# ------------------------------------------------------------------ thresholds and metrics
def tune_threshold(y_true, p_minority, minority: int = 1) -> float:
    """The probability threshold for `minority` with the highest balanced accuracy ((TPR + TNR) / 2, from
    scikit-learn's roc_curve) on these predictions; choose it on the tune cells, never on the test cells."""
    y = np.asarray(y_true) == minority
    if y.all() or not y.any():
        raise ValueError("tune_threshold needs both the minority class and others among y_true")
    fpr, tpr, thr = roc_curve(y, np.asarray(p_minority, dtype=float))
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


def threshold_preds(probs, threshold: float, minority: int = 1) -> np.ndarray:
    """(N,) classes: `minority` where its probability >= `threshold`, else the most likely other class."""
    probs = np.asarray(probs, dtype=float)
    others = probs.copy()
    others[:, minority] = -np.inf
    return np.where(probs[:, minority] >= threshold, minority, others.argmax(1))


def imbalance_metrics(y_true, probs, y_pred=None, minority: int = 1) -> dict:
    """Accuracy, balanced accuracy, macro F1, minority recall and ROC AUC (binary: of `minority`; more classes:
    one-vs-rest macro) of (N, k) probabilities, all from scikit-learn; `y_pred` defaults to the argmax."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    y_pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred)
    k = probs.shape[1]
    auc = (roc_auc_score(y_true == minority, probs[:, minority]) if k == 2 else
           roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=np.arange(k)))
    rec = precision_recall_fscore_support(y_true, y_pred, labels=[minority], zero_division=0)[1][0]
    return dict(classification_metrics(y_true, y_pred), minority_recall=float(rec), roc_auc=float(auc))


def per_class_table(y_true, y_pred, vocab) -> pd.DataFrame:
    """Per class: precision, recall, F1 and support (scikit-learn), and the row of the confusion matrix."""
    labels = np.arange(len(vocab))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out = pd.DataFrame(dict(cls=[str(v) for v in vocab], precision=p, recall=r, f1=f, support=s))
    return out.join(pd.DataFrame(cm, columns=[f"predicted {v}" for v in vocab]))


def pr_curve(y_true, p_minority, minority: int = 1) -> tuple:
    """(DataFrame of precision and recall along the threshold, average precision), scikit-learn's."""
    y = np.asarray(y_true) == minority
    prec, rec, _ = precision_recall_curve(y, p_minority)
    return pd.DataFrame(dict(recall=rec, precision=prec)), float(average_precision_score(y, p_minority))


