"""Lesson 04's studies: every remedy on heads over cached features (learning rate tuned per remedy on rows held
out of training) and on the whole network, and the baselines that show how accuracy misleads."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.compat import renamed_kwargs
from ..core.data import elpv_dls, subsample
from ..core.measure import classification_metrics, evaluate, metric_value
from ..core.train import Run, fit, make_learner, select_lr, valid_probs
from ..topics.features import Features, fit_head
from ..topics.imbalance import (
    FocalLoss,
    LogitAdjustedLoss,
    MinorityAugment,
    check_every_class,
    class_counts,
    class_weights,
    imbalance_metrics,
    oversample_weights,
    threshold_preds,
    tune_threshold,
    undersample_indices,
)

__all__ = ["PAPER_AUC", "HARSH_RATIO", "REMEDIES", "HEAD_REMEDIES", "NET_REMEDIES", "with_labels", "subset_train",
           "shrink_train", "head_remedy", "tune_lr", "head_grid", "train_remedy", "always_predict"]


PAPER_AUC = 0.9442    # ROC AUC of the ELPV paper's CNN (Deitsch et al. 2019), for comparison

HARSH_RATIO = 1 / 20  # the constructed imbalance: 1 defective cell kept per 20 functional ones (the weapon example)

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
        check_every_class(counts, "a prior")
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


def rarest(labels) -> str:
    """The class with the fewest items (the first such, in sorted order)."""
    counts = class_counts(labels)
    return str(counts.idxmin())


def head_remedy(feats: Features, remedy: str, epochs: int, lr: float, seed: int = 0, bs: int = 64) -> Run:
    """A linear head on cached features trained with `remedy` (`HEAD_REMEDIES`), one-cycle: its `Run` (settings
    remedy, seed; metrics `imbalance_metrics`; extra n_train, minority (the rarest training class) and, for
    threshold moving, the threshold tuned on the training rows, which also decides y_pred)."""
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
    probs = valid_probs(learn)
    y_pred = probs.argmax(1)
    extra = {}
    if remedy == "threshold moving":
        train_dl = learn.dls.valid.new(learn.dls.train.dataset, shuffle=False, drop_last=False)
        extra["threshold"] = tune_threshold(feats.y_train.numpy(), evaluate(learn, train_dl).probs[:, minority], minority)
        y_pred = threshold_preds(probs, extra["threshold"], minority)
    y_true = run["y_true"]
    return Run(dict(remedy=remedy, seed=seed), run["history"], y_true, y_pred, probs,
               imbalance_metrics(y_true, probs, y_pred, minority), time.perf_counter() - t, learn,
               list(learn.history.probs), dict(n_train=len(feats.y_train), minority=feats.vocab[minority], **extra))


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
    inner = holdout_split(feats, 0.2, seed) if len(lrs) > 1 else None
    return select_lr(lambda lr: head_remedy(inner, remedy, epochs, lr, seed, bs).metrics["balanced_accuracy"], lrs)[0]


def head_grid(feats: Features, remedies=HEAD_REMEDIES, seeds=(0,), epochs: int = 10, lrs=(1e-2,), bs: int = 64,
              **labels) -> pd.DataFrame:
    """`head_remedy` for every remedy and seed, each remedy at its own learning rate (`tune_lr` over `lrs`);
    extra keyword columns (e.g. scenario='harsh') label the rows."""
    rows = []
    for r in remedies:
        lr = tune_lr(feats, r, lrs, epochs, seeds[0], bs)
        rows += [dict(head_remedy(feats, r, epochs, lr, s, bs).row(probs=True), lr=lr) for s in seeds]
    return pd.DataFrame(rows).assign(**labels)


def epochs_for_steps(steps: int, batches_per_epoch: int) -> int:
    """Whole epochs closest to `steps` optimizer steps (at least one): the same budget for every remedy."""
    return max(1, int(round(steps / max(1, batches_per_epoch))))


def train_remedy(cfg, df: pd.DataFrame, remedy: str, steps: int, frac: float = 1.0, lr: float | None = None,
                 seed: int | None = None, aug_tfms=None, arch: str | None = None,
                 minority: str = "defective") -> Run:
    """Fine-tune the whole pretrained `arch` on the binary task of `frac` of `df`'s training rows (stratified) with
    `remedy` (`NET_REMEDIES`) for about `steps` optimizer steps: its `Run` (settings remedy, seed; metrics
    `imbalance_metrics`; extra n_train, epochs, steps). `aug_tfms`: batch transforms of 'minority augmentation'."""
    arch = arch or cfg.arch
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
    probs = valid_probs(learn)
    y_true = np.asarray(learn.history.y_true)
    metrics = imbalance_metrics(y_true, probs, None, vocab.index(minority))
    run = Run.of(learn, dict(remedy=remedy, seed=seed), time.perf_counter() - t, metrics, n_train=len(dls.train_ds),
                 epochs=epochs, steps=epochs * len(dls.train))
    run.y_pred = probs.argmax(1)   # as imbalance_metrics reads them
    return run


@renamed_kwargs(cls="minority")
def always_predict(y_true, minority: int) -> dict:
    """What a model that always answers class `minority` (an index) scores; a constant ranks nothing, so its ROC AUC
    is 0.5."""
    y_pred = np.full(len(y_true), minority)
    return dict(classification_metrics(y_true, y_pred),
                minority_recall=metric_value(y_true, y_pred, "minority_recall"), roc_auc=0.5)
