"""Lesson 04's studies: every remedy on heads over cached features (learning rate, and threshold moving's
threshold, chosen per remedy on the tune cells) and on the whole network, and the baselines that show how accuracy
misleads. Nothing here chooses on the test cells: a choice reads `dls.tune` (`Features.x_tune`), never
`dls.valid`."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.compat import renamed_kwargs
from ..core.data import cell_labels, elpv_dls, subsample
from ..core.measure import classification_metrics, evaluate, metric_value
from ..core.train import (
    METRICS,
    NoTuneCells,
    Run,
    best_on_tune,
    fit,
    make_learner,
    pool_folds,
    select_lr,
    valid_probs,
)
from ..topics.features import Features, fit_head, fold_features
from ..topics.imbalance import (
    FocalLoss,
    LogitAdjustedLoss,
    MinorityAugment,
    check_every_class,
    class_counts,
    class_weights,
    imbalance_metrics,
    imbalanced_indices,
    oversample_weights,
    threshold_preds,
    tune_threshold,
    undersample_indices,
)

__all__ = ["PAPER_AUC", "HARSH_RATIO", "REMEDIES", "HEAD_REMEDIES", "NET_REMEDIES", "with_labels", "subset_train",
           "shrink_train", "head_remedy", "tune_decision", "tune_score", "tune_lr", "head_grid", "SCENARIOS", "fold_scenario", "cv_head_grid",
           "SIZE_REMEDIES", "NATURAL_REMEDIES", "size_grid",
           "best_remedy",
           "remedy_frame", "train_remedy", "always_predict"]


PAPER_AUC = 0.9442    # ROC AUC of the ELPV paper's CNN (Deitsch et al. 2019), for comparison

HARSH_RATIO = 1 / 20  # the constructed imbalance: 1 defective cell kept per 20 functional ones (the weapon example)

SCENARIOS = ("binary, natural", "binary, harsh", "4-class, natural", "4-class, harsh")   # task x imbalance

# ------------------------------------------------------------------ remedies
REMEDIES = {   # name -> what it changes
    "plain": "nothing: cross-entropy, every item drawn once per epoch",
    "class weights (inverse)": "loss: each class weighted n / (k n_c) (scikit-learn's 'balanced')",
    "class weights (effective number)": "loss: weights (1 - beta) / (1 - beta^n_c), beta 0.999 (Cui et al. 2019)",
    "over-sampling": "sampler: items drawn with replacement, every class equally often (fastai WeightedDL)",
    "under-sampling": "data: majority items dropped until the classes are equal (imbalanced-learn)",
    "minority augmentation": "transform: brightness, contrast and flips on the rare class only (lesson 03)",
    "threshold moving": "decision: the plain model, minority threshold chosen on the tune cells",
    "focal loss": "loss: focal loss, gamma 2 (Lin et al. 2017; torchvision)",
    "logit adjustment": "loss: cross-entropy on logits + log prior (Menon et al. 2021)",
}

HEAD_REMEDIES = tuple(r for r in REMEDIES if r != "minority augmentation")   # cached features cannot be augmented

NET_REMEDIES = ("plain", "class weights (inverse)", "over-sampling", "under-sampling", "minority augmentation")

# under ELPV's natural imbalance: does weighting matter at all, and is under-sampling as good as over-sampling with
# the most data the dataset has (the large-data half of "over-sample small data, under-sample large")
NATURAL_REMEDIES = ("plain", "class weights (inverse)", "over-sampling", "under-sampling")


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


def _labels(y) -> torch.Tensor:
    return torch.tensor(np.array(y), dtype=torch.long)   # a copy: pandas arrays are read-only views


def with_labels(feats: Features, y_train, y_valid, vocab, y_tune=None) -> Features:
    """The same cached features with other labels (e.g. the 4-class defect level instead of functional/defective);
    features with tune cells need their labels too (`y_tune`)."""
    if feats.x_tune is not None and y_tune is None:
        raise ValueError("these features have tune cells: pass their labels too (y_tune=, e.g. from "
                         "dls.tune.dataset.items), or the choices made on them would read the old labels")
    return replace(feats, y_train=_labels(y_train), y_valid=_labels(y_valid), vocab=[str(v) for v in vocab],
                   y_tune=feats.y_tune if y_tune is None else _labels(y_tune))


def subset_train(feats: Features, keep) -> Features:
    """Cached features with only the training rows at positions `keep` (tune and test cells unchanged)."""
    keep = torch.as_tensor(np.asarray(keep), dtype=torch.long)
    return replace(feats, x_train=feats.x_train[keep], y_train=feats.y_train[keep])


def shrink_train(feats: Features, share: float, seed: int = 0) -> Features:
    """Cached features with a stratified `share` of the training rows (every class keeps its proportion, at least
    one item each), e.g. to compare remedies with little and with more data; tune and test cells unchanged."""
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
    """A linear head on cached features trained with `remedy` (`HEAD_REMEDIES`), one-cycle, the test and tune cells
    predicted after the last epoch only: its `Run` (settings remedy, seed; metrics `imbalance_metrics` on the test
    cells; the tune cells' probabilities when `feats` has them; extra n_train, minority (the rarest training class) and, for threshold moving, the threshold, which also
    decides y_pred, and `threshold_on`: the cells it was chosen on, 'tune', or 'train' for features without tune
    cells (e.g. toy data), never the test cells)."""
    _known(remedy, HEAD_REMEDIES)
    t = time.perf_counter()
    names = np.array(feats.vocab)[feats.y_train.numpy()]
    minority = feats.vocab.index(rarest(names))
    if remedy == "under-sampling":
        feats = subset_train(feats, undersample_indices(names, 1.0, seed))
        names = np.array(feats.vocab)[feats.y_train.numpy()]
    weights = oversample_weights(names, feats.vocab) if remedy == "over-sampling" else None
    run = fit_head(feats, epochs=epochs, lr=lr, bs=bs, seed=seed, loss_func=_loss_for(remedy, names, feats.vocab),
                   sampling_weights=weights, validate="last")   # every choice and claim reads the last epoch only
    learn = run["learn"]
    probs = valid_probs(learn)
    y_pred = probs.argmax(1)
    extra = {}
    if remedy == "threshold moving":
        extra.update(_threshold(learn, feats, minority))
        y_pred = threshold_preds(probs, extra["threshold"], minority)
    y_true = run["y_true"]
    hist = learn.history
    return Run(dict(remedy=remedy, seed=seed), run["history"], y_true, y_pred, probs,
               imbalance_metrics(y_true, probs, y_pred, minority), time.perf_counter() - t, learn,
               list(hist.probs), dict(n_train=len(feats.y_train), minority=feats.vocab[minority], **extra),
               hist.tune_y, list(hist.tune_probs))


def _threshold(learn, feats: Features, minority: int) -> dict:
    """Threshold moving's choice: the minority threshold with the best balanced accuracy on the tune cells' last
    predictions; without tune cells, on the training rows (what the head was fit on: optimistic, never the test
    cells)."""
    hist = learn.history
    if hist.tune_probs:
        y, p, on = hist.tune_y, hist.tune_probs[-1], "tune"
    else:
        train_dl = learn.dls.valid.new(learn.dls.train.dataset, shuffle=False, drop_last=False)
        y, p, on = feats.y_train.numpy(), evaluate(learn, train_dl).probs, "train"
    return dict(threshold=tune_threshold(y, p[:, minority], minority), threshold_on=on)


def tune_decision(run: Run) -> np.ndarray:
    """(N_tune,) classes `run`'s own decision gives the tune cells after its last epoch: the argmax, or threshold
    moving's threshold on the minority class."""
    if not run.has_tune:
        run.tune_metrics()   # raises NoTuneCells with the fix
    probs = run.tune_epoch_probs[-1]
    if "threshold" not in run.extra:
        return probs.argmax(1)
    if run.learn is None:
        raise ValueError("a threshold-moving run without its Learner: its vocab names the minority column")
    minority = [str(v) for v in run.learn.dls.vocab].index(run.extra["minority"])
    return threshold_preds(probs, run.extra["threshold"], minority)


def tune_score(run: Run, metric: str = "balanced_accuracy") -> float:
    """`metric` of `run`'s decision (`tune_decision`) on the tune cells: what every choice of this lesson reads."""
    return metric_value(run.tune_y, tune_decision(run), metric)


def _tune_columns(run: Run) -> dict:
    """The tune cells' `METRICS` of the run's own decision, as `tune_<metric>` columns (threshold moving's
    thresholded predictions, not the argmax that `Run.row` would score)."""
    if not run.has_tune:
        return {}
    y_pred = tune_decision(run)
    return {f"tune_{k}": v for k, v in classification_metrics(run.tune_y, y_pred).items() if k in METRICS}


def _lr_runs(feats: Features, remedy: str, lrs, epochs: int, seed: int, bs: int) -> tuple:
    """(chosen lr, its Run or None): each rate of `lrs` trained on the training rows and scored on the tune cells
    (`select_lr` by `tune_score`); with one rate nothing is trained or chosen."""
    lrs = [float(lr) for lr in ([lrs] if isinstance(lrs, (int, float)) else lrs)]
    if len(lrs) > 1 and feats.x_tune is None:
        raise NoTuneCells("choosing a learning rate needs tune cells: build the features from "
                          "elpv_dls(..., tune=True), so the choice never reads the test cells")
    runs = {}

    def score(lr):
        runs[lr] = head_remedy(feats, remedy, epochs, lr, seed, bs)
        return tune_score(runs[lr])
    lr, _ = select_lr(score, lrs)
    return lr, runs.get(lr)


def tune_lr(feats: Features, remedy: str, lrs, epochs: int, seed: int = 0, bs: int = 64) -> float:
    """The learning rate of `lrs` whose head (`remedy`, trained on the training rows) has the best balanced accuracy
    on the tune cells (`tune_score`: for threshold moving, after its threshold); the only one when `lrs` has one.
    Raises `NoTuneCells` when there is a choice to make and `feats` has no tune cells."""
    return _lr_runs(feats, remedy, lrs, epochs, seed, bs)[0]


def _grid_runs(feats: Features, remedies, seeds, epochs: int, lrs, bs: int) -> list:
    """[(Run, lr)] of `head_remedy` for every remedy (outer) and seed (inner), each remedy at its own learning rate
    (`tune_lr` over `lrs`, on the first seed, whose run at that rate is reused)."""
    out = []
    for r in remedies:
        lr, first = _lr_runs(feats, r, lrs, epochs, seeds[0], bs)
        out += [(first if s == seeds[0] and first is not None else head_remedy(feats, r, epochs, lr, s, bs), lr)
                for s in seeds]
    return out


def head_grid(feats: Features, remedies=HEAD_REMEDIES, seeds=(0,), epochs: int = 10, lrs=(1e-2,), bs: int = 64,
              **labels) -> pd.DataFrame:
    """`head_remedy` for every remedy and seed, each remedy at its own learning rate (`tune_lr` over `lrs`, on the
    first seed, whose run at that rate is reused); the `tune_<metric>` columns score each remedy's own decision;
    extra keyword columns (e.g. scenario='harsh') label the rows."""
    rows = [dict(run.row(probs=True), **_tune_columns(run), lr=lr)
            for run, lr in _grid_runs(feats, remedies, seeds, epochs, lrs, bs)]
    return pd.DataFrame(rows).assign(**labels)


def fold_scenario(x, paths, roles: pd.DataFrame, scenario: str, seed: int = 0, share: float = 1.0) -> Features:
    """One role table's cached features (`fold_features` of `x` (N, D), one row per path of `paths`) under
    `scenario` (`SCENARIOS`): the binary or 4-class labels; for 'harsh' the train cells cut to `HARSH_RATIO`
    defective per functional cell (drawn per defect level); then a stratified `share` of the train cells
    (`shrink_train`). The tune and test cells are unchanged."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    y, vocab = cell_labels(paths, "4class" if scenario.startswith("4-class") else "binary")
    feats = fold_features(x, y, paths, roles, vocab)
    if scenario.endswith("harsh"):
        train = roles[roles["role"] == "train"]
        feats = subset_train(feats, imbalanced_indices(train["label_bin"], HARSH_RATIO, "defective", seed,
                                                       strata=train["label_4"]))
    return shrink_train(feats, share, seed)


def _pooled_row(runs: list, lrs: list, vocab: list) -> dict:
    """One row from the fold `Run`s of one remedy and seed: `pool_folds`' predictions and `imbalance_metrics`
    over every fold's test cells, the folds' mean tune scores, n_train and geometric-mean learning rate."""
    k = vocab.index(runs[0].extra["minority"])
    tune = pd.DataFrame([_tune_columns(r) for r in runs]).mean().to_dict()
    pooled = pool_folds(runs, metrics=lambda yt, yp, pr: imbalance_metrics(yt, pr, yp, k))
    row = pooled.row(probs=True)
    del row["folds"]
    return dict(row, **tune, lr=float(np.exp(np.mean(np.log(lrs)))), lrs_by_fold=tuple(lrs),
                n_train=float(np.mean([r.extra["n_train"] for r in runs])), minority=vocab[k])


def cv_head_grid(x, paths, folds: list, scenario: str, remedies=HEAD_REMEDIES, seeds=(0,), epochs: int = 10,
                 lrs=(1e-2,), bs: int = 64, share: float = 1.0, **labels) -> pd.DataFrame:
    """`head_grid` cross-validated over `folds` (role tables of `elpv_folds`) on features of every cell (`x`,
    `paths`: `cell_features`): in each fold every remedy's learning rate (and threshold) is chosen on that fold's
    tune cells and its heads train on that fold's train cells (`fold_scenario`). One row per remedy and seed whose
    predictions are every fold's test cells in fold order (all cells, each predicted once, by a head that never saw
    it: `pool_folds`), with `imbalance_metrics` over them, the folds' mean `tune_<metric>`, `n_train`, and `lr`
    (geometric mean of the folds' chosen rates; `lrs_by_fold` each); columns `scenario` and `labels` added."""
    per_fold, vocab = [], None
    for roles in folds:
        feats = fold_scenario(x, paths, roles, scenario, seeds[0], share)
        vocab = feats.vocab
        per_fold.append(_grid_runs(feats, remedies, seeds, epochs, lrs, bs))
    rows = []
    for one in zip(*per_fold):   # the same remedy and seed in every fold
        runs, fold_lrs = (list(v) for v in zip(*one))
        rows.append(_pooled_row(runs, fold_lrs, vocab))
        for r in runs:
            r.learn = None   # thousands of Learners would stay alive otherwise
    return pd.DataFrame(rows).assign(scenario=scenario, **labels)


SIZE_REMEDIES = ("over-sampling", "under-sampling")   # the two sides of "over-sample small data, under-sample large"


def size_grid(x, paths, folds: list, sizes, seeds=(0,), epochs: int = 10, lrs=(1e-2,), frac: float = 1.0,
              reuse: pd.DataFrame | None = None, bs: int = 64) -> pd.DataFrame:
    """`SIZE_REMEDIES` cross-validated (`cv_head_grid`, 'binary, harsh') on each `share` of `sizes` of the harsh
    train cells (of `frac` of them), column `share`. A share of 1 is read from `reuse` (rows of the harsh grid
    trained with the same seeds, epochs, rates and `frac`) when given, not trained again."""
    out = []
    for share in sizes:
        if share == 1 and reuse is not None:
            rows = reuse[reuse["remedy"].isin(SIZE_REMEDIES)]
        else:
            rows = cv_head_grid(x, paths, folds, "binary, harsh", SIZE_REMEDIES, seeds, epochs, lrs, bs,
                                share=frac * share)
        out.append(rows.assign(share=share))
    return pd.concat(out, ignore_index=True)


def best_remedy(runs: pd.DataFrame, exclude=("plain",), metric: str = "balanced_accuracy") -> str:
    """The remedy of `runs` (`head_grid` rows, one scenario) whose mean `tune_<metric>` over seeds is highest,
    `exclude`d remedies left out: chosen on the tune cells, never on the test columns. (Threshold moving's tune
    score is a little optimistic: its threshold was fit on the same tune cells.)"""
    ok = runs[~runs["remedy"].isin(exclude)]
    return str(best_on_tune(ok, metric=metric, candidates="remedy")["remedy"].iloc[0])


def epochs_for_steps(steps: int, batches_per_epoch: int) -> int:
    """Whole epochs closest to `steps` optimizer steps (at least one): the same budget for every remedy."""
    return max(1, int(round(steps / max(1, batches_per_epoch))))


def remedy_frame(df: pd.DataFrame, remedy: str, frac: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """The rows a whole-network remedy trains and is judged on: `frac` of `df`'s train cells (stratified; `df` an
    `elpv_roles` table, e.g. through `imbalanced_frame`), under-sampled for 'under-sampling', and the test cells
    whole (`is_valid`). The tune cells are left out: nothing in this comparison is chosen, so nothing reads them,
    and no model trains on them."""
    if "role" not in df:
        raise ValueError("remedy_frame needs the cells' roles: pass elpv_roles() (or imbalanced_frame of it)")
    rest = subsample(df[df["role"] != "tune"], frac, seed)   # is_valid marks the test cells: kept whole
    train = rest[rest["role"] == "train"]
    if remedy == "under-sampling":
        train = train.iloc[undersample_indices(train["label_bin"], 1.0, seed)]
    return pd.concat([train, rest[rest["role"] == "test"]])


def train_remedy(cfg, df: pd.DataFrame, remedy: str, steps: int, frac: float = 1.0, lr: float | None = None,
                 seed: int | None = None, aug_tfms=None, arch: str | None = None,
                 minority: str = "defective") -> Run:
    """Fine-tune the whole pretrained `arch` on the binary task of `frac` of `df`'s train cells (`remedy_frame`)
    with `remedy` (`NET_REMEDIES`) for about `steps` optimizer steps, at the same `lr` (default the profile's) for
    every remedy, so nothing is chosen: its `Run` (settings remedy, seed; metrics `imbalance_metrics` on the test
    cells after the last epoch, the only one predicted; extra n_train, epochs, steps). `aug_tfms`: batch transforms of 'minority augmentation'."""
    arch = arch or cfg.arch
    _known(remedy, NET_REMEDIES)
    t, seed = time.perf_counter(), cfg.seed if seed is None else seed
    lr = cfg.lr if lr is None else lr
    df = remedy_frame(df, remedy, frac, seed)
    names = df[~df["is_valid"]]["label_bin"].astype(str).to_numpy()
    weights = oversample_weights(names) if remedy == "over-sampling" else None
    # a batch at most as large as the training set: under-sampling's few cells (a handful in smoke) would otherwise
    # fill no batch (fastai drops the last incomplete one), and the run would train no step
    dls = elpv_dls(cfg, frac=1.0, seed=seed, df=df, sampling_weights=weights, bs=min(cfg.bs, len(names)))
    vocab = [str(v) for v in dls.vocab]
    cbs = []
    if remedy == "minority augmentation":
        if not aug_tfms:
            raise ValueError("minority augmentation needs aug_tfms, e.g. ctl.policy_tfms('flips', cfg.img_size)")
        cbs.append(MinorityAugment(aug_tfms, [vocab.index(minority)]))
    learn = make_learner(dls, arch, weights="imagenet", depth="none", seed=seed,
                         loss_func=_loss_for(remedy, names, vocab), cbs=cbs)
    epochs = epochs_for_steps(steps, len(dls.train))
    fit(learn, epochs, lr, validate="last")   # under-sampling's many short epochs: the test cells predicted once
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
