"""Imbalanced data (lesson 04): how imbalanced the data is, a harsher imbalance made on purpose, the remedies as
fastai pieces (a class-weighted or focal loss, logit adjustment, a weighted sampler, under-sampling, minority-only
augmentation, threshold moving) and the metrics that do not lie about a rare class."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.vision.all import Callback, Normalize, Pipeline, TensorImage, noop
from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_curve,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from ..core.data import elpv_dls, subsample
from ..core.measure import classification_metrics, metric_value
from ..core.train import fit, make_learner
from .features import Features, fit_head

__all__ = ["PAPER_AUC", "HARSH_RATIO", "class_counts", "class_weights", "imbalanced_indices", "imbalanced_frame",
           "undersample_indices", "oversample_weights", "FocalLoss", "LogitAdjustedLoss", "MinorityAugment",
           "tune_threshold", "threshold_preds", "imbalance_metrics", "per_class_table", "pr_curve", "REMEDIES",
           "HEAD_REMEDIES", "NET_REMEDIES", "with_labels", "subset_train", "shrink_train", "rarest", "head_remedy", "holdout_split",
           "tune_lr", "head_grid",
           "train_remedy", "epochs_for_steps", "always_predict"]

PAPER_AUC = 0.9442    # ROC AUC of the ELPV paper's CNN (Deitsch et al. 2019), for comparison
HARSH_RATIO = 1 / 20  # the constructed imbalance: 1 defective cell kept per 20 functional ones (the weapon example)


# ------------------------------------------------------------------ counting and weighting classes
def class_counts(labels, classes=None) -> pd.Series:
    """Items per class (in `classes` order if given, else sorted), zeros included."""
    s = pd.Series(np.asarray(labels)).astype(str)
    classes = sorted(s.unique()) if classes is None else [str(c) for c in classes]
    return s.value_counts().reindex(classes, fill_value=0).rename("count")


def _need_every_class(counts: pd.Series, what: str) -> None:
    absent = list(counts.index[counts == 0])
    if absent:
        raise ValueError(f"class {absent[0]!r} has no training items, so {what} is undefined: keep at least one item "
                         f"of every class ({dict(counts)})")


def class_weights(labels, method: str = "inverse", beta: float = 0.999, classes=None) -> dict:
    """{class: loss weight} from the training labels. 'inverse': n / (k * n_c), scikit-learn's 'balanced'
    (weight x count is the same for every class); 'effective': Cui et al. (CVPR 2019), (1 - beta) / (1 - beta^n_c),
    scaled to sum to k (written by hand: no library we use has it)."""
    counts = class_counts(labels, classes)
    _need_every_class(counts, "a class weight")
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
    across defect levels); validation rows unchanged."""
    train = df[~df["is_valid"]]
    keep = train.iloc[imbalanced_indices(train[col], ratio, minority, seed, strata=train["label_4"])]
    return pd.concat([keep, df[df["is_valid"]]])


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
    _need_every_class(counts, "over-sampling")
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
    scikit-learn's roc_curve) on these predictions; choose it on training, never on validation, data."""
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


# ------------------------------------------------------------------ remedies
REMEDIES = {   # name -> what it changes
    "plain": "nothing: cross-entropy, every item drawn once per epoch",
    "class weights (inverse)": "loss: each class weighted n / (k n_c) (scikit-learn's 'balanced')",
    "class weights (effective number)": "loss: weights (1 - beta) / (1 - beta^n_c), beta 0.999 (Cui et al. 2019)",
    "over-sampling": "sampler: items drawn with replacement, every class equally often (fastai WeightedDL)",
    "under-sampling": "data: majority items dropped until the classes are equal (imbalanced-learn)",
    "minority augmentation": "transform: brightness, contrast and flips on the rare class only (lesson 03)",
    "threshold moving": "decision: the plain model, minority threshold chosen on the training set",
    "focal loss": "loss: focal loss, gamma 2 (Lin et al. 2017; torchvision)",
    "logit adjustment": "loss: cross-entropy on logits + log prior (Menon et al. 2021)",
}
HEAD_REMEDIES = tuple(r for r in REMEDIES if r != "minority augmentation")   # cached features cannot be augmented
NET_REMEDIES = ("plain", "class weights (inverse)", "over-sampling", "under-sampling", "minority augmentation")


def _known(remedy: str, allowed) -> None:
    if remedy not in allowed:
        raise ValueError(f"unknown remedy {remedy!r} here: choose one of {', '.join(allowed)}")


def _loss_for(remedy: str, labels, vocab):
    """The loss function of `remedy` (None: plain cross-entropy) for training labels (class names)."""
    if remedy.startswith("class weights"):
        w = class_weights(labels, "inverse" if "inverse" in remedy else "effective", classes=vocab)
        return nn.CrossEntropyLoss(weight=torch.tensor([w[str(c)] for c in vocab], dtype=torch.float32))
    if remedy == "focal loss":
        return FocalLoss()
    if remedy == "logit adjustment":
        counts = class_counts(labels, vocab)
        _need_every_class(counts, "a prior")
        return LogitAdjustedLoss(counts.to_numpy(float))
    return None


def with_labels(feats: Features, y_train, y_valid, vocab) -> Features:
    """The same cached features with other labels (e.g. the 4-class defect level instead of functional/defective)."""
    return replace(feats, y_train=torch.tensor(np.array(y_train), dtype=torch.long),   # copies: pandas arrays are
                   y_valid=torch.tensor(np.array(y_valid), dtype=torch.long),         # read-only views
                   vocab=[str(v) for v in vocab])


def subset_train(feats: Features, keep) -> Features:
    """Cached features with only the training rows at positions `keep` (validation unchanged)."""
    keep = torch.as_tensor(np.asarray(keep), dtype=torch.long)
    return replace(feats, x_train=feats.x_train[keep], y_train=feats.y_train[keep])


def shrink_train(feats: Features, share: float, seed: int = 0) -> Features:
    """Cached features with a stratified `share` of the training rows (every class keeps its proportion, at least
    one item each), e.g. to compare remedies with little and with more data."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if share == 1:
        return feats
    y = feats.y_train.numpy()
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(y == c), max(1, int(round(share * (y == c).sum()))), replace=False)
            for c in np.unique(y)]
    return subset_train(feats, np.sort(np.concatenate(keep)))


def _probs(learn, dl) -> np.ndarray:
    """(N, k) softmax probabilities of `learn` on `dl`, whatever its loss."""
    logits, _ = learn.get_preds(dl=dl, act=noop)
    return torch.softmax(logits.float(), -1).numpy()


def rarest(labels) -> str:
    """The class with the fewest items (the first such, in sorted order)."""
    counts = class_counts(labels)
    return str(counts.idxmin())


def head_remedy(feats: Features, remedy: str, epochs: int, lr: float, seed: int = 0, bs: int = 64) -> dict:
    """A linear head on cached features trained with `remedy` (`HEAD_REMEDIES`), one-cycle: dict(remedy, seed,
    n_train, minority (the rarest training class), metrics..., y_true, y_pred, probs, seconds)."""
    _known(remedy, HEAD_REMEDIES)
    t = time.perf_counter()
    names = np.array(feats.vocab)[feats.y_train.numpy()]
    minority = feats.vocab.index(rarest(names))
    if remedy == "under-sampling":
        feats = subset_train(feats, undersample_indices(names, 1.0, seed))
        names = np.array(feats.vocab)[feats.y_train.numpy()]
    weights = oversample_weights(names, feats.vocab) if remedy == "over-sampling" else None
    run = fit_head(feats, epochs=epochs, lr=lr, bs=bs, seed=seed, loss_func=_loss_for(remedy, names, feats.vocab),
                   sampling_weights=weights)
    learn = run["learn"]
    probs = _probs(learn, learn.dls.valid)
    y_pred = probs.argmax(1)
    extra = {}
    if remedy == "threshold moving":
        train_dl = learn.dls.valid.new(learn.dls.train.dataset, shuffle=False, drop_last=False)
        extra["threshold"] = tune_threshold(feats.y_train.numpy(), _probs(learn, train_dl)[:, minority], minority)
        y_pred = threshold_preds(probs, extra["threshold"], minority)
    y_true = run["y_true"]
    return dict(remedy=remedy, seed=seed, n_train=len(feats.y_train), minority=feats.vocab[minority], **extra,
                **imbalance_metrics(y_true, probs, y_pred, minority), y_true=y_true, y_pred=y_pred, probs=probs,
                seconds=time.perf_counter() - t)


def holdout_split(feats: Features, share: float = 0.2, seed: int = 0) -> Features:
    """The training features split in two, stratified by class: `1 - share` to train on, `share` as the validation
    set, for choosing a learning rate without looking at the real validation set."""
    from sklearn.model_selection import train_test_split
    y = feats.y_train.numpy()
    fit_idx, hold_idx = train_test_split(np.arange(len(y)), test_size=share, stratify=y, random_state=seed)
    fit_idx, hold_idx = np.sort(fit_idx), np.sort(hold_idx)
    return replace(feats, x_train=feats.x_train[fit_idx], y_train=feats.y_train[fit_idx],
                   x_valid=feats.x_train[hold_idx], y_valid=feats.y_train[hold_idx])


def tune_lr(feats: Features, remedy: str, lrs, epochs: int, seed: int = 0, bs: int = 64) -> float:
    """The learning rate of `lrs` with the best balanced accuracy of `remedy` on a held-out fifth of the training
    features (`holdout_split`); the only one when `lrs` has one."""
    lrs = list(lrs)
    if len(lrs) == 1:
        return float(lrs[0])
    inner = holdout_split(feats, 0.2, seed)
    scores = [head_remedy(inner, remedy, epochs, lr, seed, bs)["balanced_accuracy"] for lr in lrs]
    return float(lrs[int(np.argmax(scores))])


def head_grid(feats: Features, remedies=HEAD_REMEDIES, seeds=(0,), epochs: int = 10, lrs=(1e-2,), bs: int = 64,
              **labels) -> pd.DataFrame:
    """`head_remedy` for every remedy and seed, each remedy at its own learning rate (`tune_lr` over `lrs`);
    extra keyword columns (e.g. scenario='harsh') label the rows."""
    rows = []
    for r in remedies:
        lr = tune_lr(feats, r, lrs, epochs, seeds[0], bs)
        rows += [dict(head_remedy(feats, r, epochs, lr, s, bs), lr=lr) for s in seeds]
    return pd.DataFrame(rows).assign(**labels)


def epochs_for_steps(steps: int, batches_per_epoch: int) -> int:
    """Whole epochs closest to `steps` optimizer steps (at least one): the same budget for every remedy."""
    return max(1, int(round(steps / max(1, batches_per_epoch))))


def train_remedy(cfg, df: pd.DataFrame, remedy: str, steps: int, frac: float = 1.0, lr: float | None = None,
                 seed: int | None = None, aug_tfms=None, arch: str = "efficientnet_lite0",
                 minority: str = "defective") -> dict:
    """Fine-tune the whole pretrained `arch` on the binary task of `frac` of `df`'s training rows (stratified) with
    `remedy` (`NET_REMEDIES`) for about `steps` optimizer steps: dict(remedy, seed, n_train, epochs, steps,
    metrics..., y_true, y_pred, probs, seconds, learn). `aug_tfms`: batch transforms of 'minority augmentation'."""
    _known(remedy, NET_REMEDIES)
    t, seed = time.perf_counter(), cfg.seed if seed is None else seed
    lr = cfg.lr if lr is None else lr
    df = subsample(df, frac, seed)
    train = df[~df["is_valid"]]
    if remedy == "under-sampling":
        keep = train.iloc[undersample_indices(train["label_bin"], 1.0, seed)]
        df = pd.concat([keep, df[df["is_valid"]]])
        train = keep
    names = train["label_bin"].astype(str).to_numpy()
    weights = oversample_weights(names) if remedy == "over-sampling" else None
    dls = elpv_dls(cfg, frac=1.0, seed=seed, df=df, sampling_weights=weights)
    vocab = [str(v) for v in dls.vocab]
    cbs = []
    if remedy == "minority augmentation":
        if not aug_tfms:
            raise ValueError("minority augmentation needs aug_tfms, e.g. ctl.policy_tfms('flips', cfg.img_size)")
        cbs.append(MinorityAugment(aug_tfms, [vocab.index(minority)]))
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed,
                         loss_func=_loss_for(remedy, names, vocab), cbs=cbs)
    epochs = epochs_for_steps(steps, len(dls.train))
    fit(learn, epochs, lr)
    probs = _probs(learn, dls.valid)
    y_true = np.asarray(learn.history.y_true)
    k = vocab.index(minority)
    return dict(remedy=remedy, seed=seed, n_train=len(dls.train_ds), epochs=epochs, steps=epochs * len(dls.train),
                **imbalance_metrics(y_true, probs, None, k), y_true=y_true, y_pred=probs.argmax(1), probs=probs,
                seconds=time.perf_counter() - t, learn=learn)


def always_predict(y_true, cls: int) -> dict:
    """What a model that always answers class `cls` scores; a constant ranks nothing, so its ROC AUC is 0.5."""
    y_pred = np.full(len(y_true), cls)
    return dict(classification_metrics(y_true, y_pred),
                minority_recall=metric_value(y_true, y_pred, "minority_recall"), roc_auc=0.5)
