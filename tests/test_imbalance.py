"""Tests for convtips_lib.topics.imbalance: class weights, samplers, losses, thresholds and metrics on known inputs,
and the remedies on small cached-feature sets."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, f1_score, precision_score, recall_score,
                             roc_auc_score)

from convtips_lib.core.data import elpv_frame, elpv_roles, tensor_dls
from convtips_lib.core.measure import evaluate, metric_value
from convtips_lib.core.train import NoTuneCells
from convtips_lib.topics.features import Features
from convtips_lib.topics.imbalance import FocalLoss, LogitAdjustedLoss, MinorityAugment, class_counts, class_weights, imbalance_metrics, imbalanced_frame, imbalanced_indices, oversample_weights, per_class_table, pr_curve, threshold_preds, tune_threshold, undersample_indices
from convtips_lib.studies.lesson04 import (HEAD_REMEDIES, always_predict, best_remedy, head_grid, head_remedy, rarest,
                                           remedy_frame, shrink_train, subset_train, tune_decision, tune_lr,
                                           tune_score, with_labels)

LABELS = np.array(["a"] * 80 + ["b"] * 15 + ["c"] * 5)


# ---------------------------------------------------------------- class weights

def test_inverse_weights_times_counts_is_constant():
    w, n = class_weights(LABELS), class_counts(LABELS)
    products = [w[c] * n[c] for c in n.index]
    assert np.allclose(products, products[0]) and products[0] == pytest.approx(len(LABELS) / 3)


def test_effective_number_weights_match_cui_et_al():
    beta = 0.99
    w = class_weights(LABELS, "effective", beta=beta)
    raw = {c: (1 - beta) / (1 - beta ** n) for c, n in (("a", 80), ("b", 15), ("c", 5))}
    scale = 3 / sum(raw.values())
    assert w == pytest.approx({c: v * scale for c, v in raw.items()})
    assert w["c"] > w["b"] > w["a"] and sum(w.values()) == pytest.approx(3)


def test_effective_weights_approach_inverse_as_beta_nears_one_and_equal_at_zero():
    assert class_weights(LABELS, "effective", beta=0.0) == pytest.approx({"a": 1, "b": 1, "c": 1})
    near, inv = class_weights(LABELS, "effective", beta=0.999999), class_weights(LABELS)
    ratio = [near[c] / inv[c] for c in inv]
    assert np.allclose(ratio, ratio[0], rtol=1e-3)


def test_class_absent_from_training_is_named():
    with pytest.raises(ValueError, match="class 'c' has no training items"):
        class_weights(["a", "b", "a"], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="class 'c'"):
        oversample_weights(["a", "b"], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown method"):
        class_weights(LABELS, "median")


# ---------------------------------------------------------------- making and undoing imbalance

def test_imbalanced_indices_keep_every_majority_item_and_the_ratio():
    labels = np.array(["f"] * 200 + ["d"] * 100)
    keep = imbalanced_indices(labels, 1 / 20, "d", seed=0)
    kept = class_counts(labels[keep])
    assert kept["f"] == 200 and kept["d"] == 10
    assert not np.array_equal(keep, imbalanced_indices(labels, 1 / 20, "d", seed=1))
    assert np.array_equal(keep, imbalanced_indices(labels, 1 / 20, "d", seed=0))


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, "1/20"])
def test_bad_ratio_says_what_to_pass(ratio):
    with pytest.raises(ValueError, match="ratio must be in"):
        imbalanced_indices(LABELS, ratio, "c")


def test_ratio_beyond_the_data_and_unknown_class_are_explained():
    with pytest.raises(ValueError, match="already at most that imbalanced"):
        imbalanced_indices(LABELS, 0.5, "c")
    with pytest.raises(ValueError, match="no class 'z'"):
        imbalanced_indices(LABELS, 0.05, "z")


def test_imbalanced_frame_leaves_the_validation_set_alone():
    df = elpv_frame()
    harsh = imbalanced_frame(df, 1 / 20, seed=0)
    train = harsh[~harsh["is_valid"]]
    n = train["label_bin"].value_counts()
    assert n["defective"] == round(n["functional"] / 20)
    assert harsh[harsh["is_valid"]].equals(df[df["is_valid"]])


def test_undersampler_keeps_every_minority_item_and_the_requested_ratio():
    keep = undersample_indices(LABELS, 1.0, seed=0)
    assert set(np.flatnonzero(LABELS == "c")) <= set(keep)
    assert dict(class_counts(LABELS[keep])) == {"a": 5, "b": 5, "c": 5}
    half = class_counts(LABELS[undersample_indices(LABELS, 0.5, seed=0)])
    assert dict(half) == {"a": 10, "b": 10, "c": 5}


def test_oversampler_draws_classes_about_uniformly():
    y = torch.tensor([0] * 90 + [1] * 10)
    dls = tensor_dls(torch.randn(100, 3), y, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), ["a", "b"], bs=10,
                     sampling_weights=oversample_weights(np.array(["a", "b"])[y]))
    np.random.seed(0)
    drawn = torch.cat([yb for _ in range(50) for _, yb in dls.train])
    assert abs(float(drawn.float().mean()) - 0.5) < 0.03     # 10 % of the items, drawn half of the time


def test_sampling_weights_need_every_class():
    with pytest.raises(ValueError, match="weight > 0 for every class"):
        tensor_dls(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(2, 2), torch.tensor([0, 1]),
                   ["a", "b"], sampling_weights={"a": 1.0})


# ---------------------------------------------------------------- losses and the minority-only callback

def test_focal_loss_is_torchvisions_and_gamma_zero_is_weighted_bce():
    from torchvision.ops import sigmoid_focal_loss
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert FocalLoss(gamma=2)(logits, y) == pytest.approx(float(sigmoid_focal_loss(logits, onehot, alpha=-1).sum() / 6))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / 6
    assert FocalLoss(gamma=0)(logits, y) == pytest.approx(float(bce), rel=1e-5)


def test_logit_adjustment_with_a_uniform_prior_is_cross_entropy():
    logits, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert float(LogitAdjustedLoss([1, 1])(logits, y)) == pytest.approx(float(ce))
    skewed = LogitAdjustedLoss([9, 1])(logits, y)
    expected = torch.nn.functional.cross_entropy(logits + torch.tensor([0.9, 0.1]).log(), y)
    assert float(skewed) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="prior > 0"):
        LogitAdjustedLoss([3, 0])


def test_minority_augment_changes_only_the_rare_images():
    from types import SimpleNamespace

    from fastai.vision.all import Brightness, Normalize
    norm = Normalize.from_stats([0.5] * 3, [0.25] * 3)
    cb = MinorityAugment([Brightness(max_lighting=0.9, p=1.0)], targets=[1])
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0, 0])
    cb.learn = SimpleNamespace(training=True, xb=(x,), yb=(y,),
                               dls=SimpleNamespace(train=SimpleNamespace(after_batch=SimpleNamespace(fs=[norm]))))
    cb.before_fit()
    cb.before_batch()
    out = cb.learn.xb[0]
    assert torch.equal(out[y == 0], x[y == 0]) and not torch.allclose(out[y == 1], x[y == 1])


# ---------------------------------------------------------------- thresholds and metrics

def test_tune_threshold_finds_the_known_best_cut():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9])
    assert tune_threshold(y, p) == pytest.approx(0.35)          # every item right at >= 0.35
    probs = np.stack([1 - p, p], 1)
    assert (threshold_preds(probs, 0.35) == y).all()
    assert (threshold_preds(probs, 0.5) == [0, 0, 0, 0, 0, 1]).all()
    with pytest.raises(ValueError, match="both"):
        tune_threshold([1, 1], [0.3, 0.4])


def test_metrics_equal_scikit_learns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    probs = np.clip(np.stack([1 - y * 0.6 - rng.random(200) * 0.3, y * 0.6 + rng.random(200) * 0.3], 1), 0, 1)
    probs = probs / probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = imbalance_metrics(y, probs, minority=1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["minority_recall"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    table = per_class_table(y, pred, ["neg", "pos"])
    assert table.loc[1, "precision"] == pytest.approx(precision_score(y, pred))
    assert table[["predicted neg", "predicted pos"]].to_numpy().tolist() == confusion_matrix(y, pred).tolist()
    curve, ap = pr_curve(y, probs[:, 1])
    assert curve["recall"].iloc[-1] == 0 and 0 < ap <= 1


def test_always_majority_looks_accurate_but_is_not():
    y = np.array([0] * 90 + [1] * 10)
    m = always_predict(y, 0)
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["minority_recall"] == 0 and m["roc_auc"] == 0.5


def test_four_class_auc_is_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    probs = rng.dirichlet(np.ones(4), 40)
    m = imbalance_metrics(y, probs, minority=2)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


# ---------------------------------------------------------------- remedies on separable toy features

@pytest.fixture(scope="module")
def toy_feats():
    """Two Gaussian classes in 8-d, 200 common vs 10 rare in training, balanced validation."""
    g = torch.Generator().manual_seed(0)

    def draw(n0, n1):
        x = torch.cat([torch.randn(n0, 8, generator=g), torch.randn(n1, 8, generator=g) + 1.2])
        return x, torch.tensor([0] * n0 + [1] * n1)
    (xt, yt), (xv, yv) = draw(200, 10), draw(60, 60)
    return Features(xt, yt, xv, yv, ["common", "rare"], key="toy", path=None, hit=False, seconds=0.0)


def test_every_head_remedy_trains_and_reports(toy_feats):
    rows = head_grid(toy_feats, HEAD_REMEDIES, seeds=(0,), epochs=3, lr=1e-2, bs=32, scenario="toy")
    assert list(rows["remedy"]) == list(HEAD_REMEDIES) and (rows["scenario"] == "toy").all()
    assert rows["minority"].eq("rare").all() and rows["roc_auc"].between(0, 1).all()
    assert rows.set_index("remedy").loc["under-sampling", "n_train"] == 20
    assert all(len(p) == 120 for p in rows["y_pred"])


def test_remedies_raise_the_minority_recall_of_a_biased_head(toy_feats):
    plain = head_remedy(toy_feats, "plain", epochs=5, lr=1e-2, seed=0, bs=32)
    weighted = head_remedy(toy_feats, "class weights (inverse)", epochs=5, lr=1e-2, seed=0, bs=32)
    assert plain.metrics["minority_recall"] < 0.5 < weighted.metrics["minority_recall"]
    assert weighted.settings == dict(remedy="class weights (inverse)", seed=0) and weighted.extra["minority"] == "rare"


def test_same_seed_same_numbers(toy_feats):
    a = head_remedy(toy_feats, "over-sampling", epochs=2, lr=1e-2, seed=3, bs=32)
    b = head_remedy(toy_feats, "over-sampling", epochs=2, lr=1e-2, seed=3, bs=32)
    assert np.array_equal(a.probs, b.probs)


def test_relabel_and_subset_keep_the_features(toy_feats):
    four = with_labels(toy_feats, toy_feats.y_train % 2, toy_feats.y_valid % 2, ["x", "y"])
    assert four.vocab == ["x", "y"] and torch.equal(four.x_train, toy_feats.x_train)
    sub = subset_train(toy_feats, [0, 205])
    assert sub.y_train.tolist() == [0, 1] and len(sub.y_valid) == 120
    assert rarest(["a", "b", "b"]) == "a"


def test_unknown_remedy_lists_the_known(toy_feats):
    with pytest.raises(ValueError, match="choose one of plain"):
        head_remedy(toy_feats, "magic", 1, 1e-2)


def test_class_counts_in_given_order_with_zeros():
    assert class_counts(["b", "b"], ["a", "b"]).to_dict() == {"a": 0, "b": 2}
    assert isinstance(class_counts(LABELS), pd.Series)


def test_shrink_train_keeps_class_shares_and_every_class(toy_feats):
    small = shrink_train(toy_feats, 0.2, seed=0)
    assert small.y_train.bincount().tolist() == [40, 2] and len(small.y_valid) == 120
    assert shrink_train(toy_feats, 1.0) is toy_feats
    with pytest.raises(ValueError, match="share must be"):
        shrink_train(toy_feats, 0)


# ---------------------------------------------------------------- choices on the tune cells, never on the test cells

def _draw(g, n0, n1, shift):
    x = torch.cat([torch.randn(n0, 8, generator=g), torch.randn(n1, 8, generator=g) + shift])
    return x, torch.tensor([0] * n0 + [1] * n1)


def _with_tune(train, valid, tune, vocab=("common", "rare")):
    return Features(*train, *valid, list(vocab), key="toy", path=None, hit=False, seconds=0.0,
                    x_tune=tune[0], y_tune=tune[1])


def _train_threshold(run):
    """The threshold the training rows would choose (what threshold moving used to read)."""
    learn = run.learn
    dl = learn.dls.valid.new(learn.dls.train.dataset, shuffle=False, drop_last=False)
    y = np.asarray(learn.dls.train.dataset.y)
    return tune_threshold(y, evaluate(learn, dl).probs[:, 1], 1)


def test_threshold_moving_chooses_its_threshold_on_the_tune_cells():
    g = torch.Generator().manual_seed(0)
    # the rare class sits nearer the common one on the tune cells, farther on the test cells: each set's best
    # threshold differs, and the run must take the tune cells'
    feats = _with_tune(_draw(g, 200, 40, 1.5), _draw(g, 60, 60, 3.0), _draw(g, 80, 40, 0.6))
    run = head_remedy(feats, "threshold moving", epochs=4, lr=1e-2, seed=0, bs=32)
    on_tune = tune_threshold(run.tune_y, run.tune_epoch_probs[-1][:, 1], 1)
    on_test = tune_threshold(run.y_true, run.probs[:, 1], 1)
    assert run.extra["threshold_on"] == "tune" and run.extra["threshold"] == pytest.approx(on_tune)
    assert abs(on_tune - _train_threshold(run)) > 1e-6 and abs(on_tune - on_test) > 1e-6
    assert (run.y_pred == threshold_preds(run.probs, on_tune, 1)).all()          # the test cells only apply it
    assert (tune_decision(run) == threshold_preds(run.tune_epoch_probs[-1], on_tune, 1)).all()


def test_threshold_without_tune_cells_reads_the_training_rows_never_the_test_cells(toy_feats):
    run = head_remedy(toy_feats, "threshold moving", epochs=3, lr=1e-2, seed=0, bs=32)
    assert run.extra["threshold_on"] == "train" and not run.has_tune
    assert run.extra["threshold"] == pytest.approx(_train_threshold(run))


@pytest.fixture(scope="module")
def flipped_tune():
    """Balanced, well separated classes whose tune cells carry flipped labels: a trained head scores near 0 on them
    and near 1 on the test cells, so the tune and the test cells choose different learning rates."""
    g = torch.Generator().manual_seed(1)
    (xu, yu) = _draw(g, 60, 60, 2.0)
    return _with_tune(_draw(g, 100, 100, 2.0), _draw(g, 60, 60, 2.0), (xu, 1 - yu))


def test_learning_rate_follows_the_tune_cells(flipped_tune):
    lrs = (3e-2, 1e-7)                                     # a tie would keep the first: the trained one
    runs = {lr: head_remedy(flipped_tune, "plain", 4, lr, seed=0, bs=32) for lr in lrs}
    by_test = max(lrs, key=lambda lr: runs[lr].metrics["balanced_accuracy"])
    by_tune = max(lrs, key=lambda lr: tune_score(runs[lr]))
    assert (by_test, by_tune) == (3e-2, 1e-7)              # the two kinds of cells disagree here
    assert tune_lr(flipped_tune, "plain", lrs, epochs=4, bs=32) == by_tune
    rows = head_grid(flipped_tune, ("plain", "threshold moving"), seeds=(0, 1), epochs=4, lrs=lrs, bs=32)
    assert (rows.set_index("remedy").loc["plain", "lr"] == by_tune).all()
    first = rows[(rows.remedy == "plain") & (rows.seed == 0)].iloc[0]
    assert np.array_equal(first["probs"], runs[by_tune].probs)    # the tuning run at the chosen rate, reused


def test_head_grid_scores_each_remedys_own_decision_on_the_tune_cells(flipped_tune):
    rows = head_grid(flipped_tune, ("plain", "threshold moving"), seeds=(0,), epochs=4, lrs=(3e-2,), bs=32)
    thr = rows.set_index("remedy").loc["threshold moving"]
    run = head_remedy(flipped_tune, "threshold moving", 4, 3e-2, seed=0, bs=32)
    assert thr["tune_balanced_accuracy"] == pytest.approx(tune_score(run))
    assert thr["tune_balanced_accuracy"] == pytest.approx(metric_value(run.tune_y, tune_decision(run)))


def test_a_learning_rate_choice_needs_tune_cells(toy_feats):
    assert tune_lr(toy_feats, "plain", [1e-2], epochs=1) == 1e-2           # one rate: nothing to choose
    with pytest.raises(NoTuneCells, match="tune=True"):
        tune_lr(toy_feats, "plain", [1e-5, 3e-2], epochs=1, bs=32)


def test_best_remedy_reads_the_tune_columns_only():
    runs = pd.DataFrame(dict(remedy=["plain", "a", "a", "b", "b"], seed=[0, 0, 1, 0, 1],
                             balanced_accuracy=[0.9, 0.6, 0.6, 0.9, 0.9],        # the test cells favour b
                             tune_balanced_accuracy=[1.0, 0.8, 0.7, 0.7, 0.7]))  # the tune cells favour a
    assert best_remedy(runs) == "a"
    with pytest.raises(NoTuneCells):
        best_remedy(runs.drop(columns="tune_balanced_accuracy"))


def test_relabelling_features_with_tune_cells_needs_their_labels(flipped_tune):
    with pytest.raises(ValueError, match="y_tune"):
        with_labels(flipped_tune, flipped_tune.y_train, flipped_tune.y_valid, ["x", "y"])
    out = with_labels(flipped_tune, flipped_tune.y_train, flipped_tune.y_valid, ["x", "y"], 1 - flipped_tune.y_tune)
    assert torch.equal(out.y_tune, 1 - flipped_tune.y_tune)
    assert torch.equal(subset_train(out, [0, 1]).x_tune, flipped_tune.x_tune)      # the harsh subset keeps them
    assert torch.equal(shrink_train(out, 0.5).y_tune, out.y_tune)


def test_the_harsh_frame_leaves_the_tune_and_test_cells_alone():
    df = elpv_roles()
    harsh = imbalanced_frame(df, 1 / 20, seed=0)
    n = harsh[harsh.role == "train"]["label_bin"].value_counts()
    assert n["defective"] == round(n["functional"] / 20)
    for role in ("tune", "test"):
        assert harsh[harsh.role == role].sort_index().equals(df[df.role == role])


@pytest.mark.parametrize("remedy", ["plain", "under-sampling"])
def test_remedy_frame_trains_on_train_cells_only_and_keeps_the_test_cells_whole(remedy):
    df = imbalanced_frame(elpv_roles(), 1 / 20, seed=0)
    out = remedy_frame(df, remedy, 0.5, seed=0)
    assert "tune" not in set(out.role)                       # nothing chosen here: the tune cells stay unseen
    assert out[out.is_valid].sort_index().equals(df[df.role == "test"])
    train = out[~out.is_valid]
    assert (train.role == "train").all()
    n = train["label_bin"].value_counts()
    if remedy == "under-sampling":
        assert n["defective"] == n["functional"]
    else:
        assert abs(n.sum() - 0.5 * (df.role == "train").sum()) < 10
    with pytest.raises(ValueError, match="elpv_roles"):
        remedy_frame(elpv_frame(), remedy)


def test_imbalanced_indices_by_strata_keep_one_of_each():
    labels = np.array(["f"] * 400 + ["d"] * 40)
    strata = np.array(["0"] * 400 + ["1/3"] * 30 + ["2/3"] * 2 + ["1"] * 8)
    keep = imbalanced_indices(labels, 1 / 20, "d", seed=0, strata=strata)
    kept = pd.Series(strata[keep]).value_counts()
    assert kept["0"] == 400 and kept["2/3"] >= 1 and kept["1/3"] == 15 and kept["1"] == 4


# ------------------------------------------------------------------ cross-validated heads (all 2,624 cells judged)
@pytest.fixture(scope="module")
def cell_feats():
    """Features of every ELPV cell that carry its label (and noise), in elpv_frame's order."""
    from convtips_lib.core.data import cell_labels
    paths = [str(p) for p in elpv_frame()["path"]]
    y, _ = cell_labels(paths, "binary")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(paths), 8, generator=g)
    x[:, 0] += 3.0 * y.float()
    return x, paths


def test_cross_validated_heads_judge_every_cell_once_with_choices_inside_each_fold(cell_feats):
    from convtips_lib.core.data import elpv_folds
    from convtips_lib.studies.lesson04 import cv_head_grid, fold_scenario
    x, paths = cell_feats
    folds = elpv_folds(2)
    rows = cv_head_grid(x, paths, folds, "binary, harsh", ("plain", "threshold moving"), seeds=(0,), epochs=2,
                        lrs=(1e-3, 3e-2), bs=64)
    assert len(rows) == 2 and set(rows["scenario"]) == {"binary, harsh"}
    test_paths = np.concatenate([f.loc[f.role == "test", "path"].to_numpy() for f in folds])
    assert sorted(test_paths) == sorted(paths)            # every cell judged once
    yb = (elpv_frame().set_index("path").loc[test_paths, "label_bin"] == "functional").astype(int).to_numpy()
    for _, r in rows.iterrows():
        assert len(r["y_pred"]) == len(paths) and np.array_equal(r["y_true"], yb)   # in fold order
        assert len(r["lrs_by_fold"]) == 2 and "tune_balanced_accuracy" in r
        assert r["minority"] == "defective" and 0 <= r["minority_recall"] <= 1
    ba = rows.set_index("remedy")["balanced_accuracy"]
    assert ba["threshold moving"] > max(0.8, ba["plain"])   # the signal is learned; the plain head leans
    harsh = fold_scenario(x, paths, folds[0], "binary, harsh")
    n = np.bincount(harsh.y_train.numpy())
    assert abs(n[0] / n[1] - 1 / 20) < 0.01                  # the harsh ratio, on the fold's train cells only
    assert len(harsh.y_tune) == (folds[0].role == "tune").sum() and len(harsh.y_valid) == folds[0].is_valid.sum()
    four = fold_scenario(x, paths, folds[0], "4-class, natural")
    assert four.vocab == ["0", "1/3", "2/3", "1"] and int(four.y_train.max()) == 3
    with pytest.raises(ValueError, match="choose one of"):
        fold_scenario(x, paths, folds[0], "binary, mild")


def test_the_fold_choice_reads_only_that_fold_s_tune_cells(cell_feats):
    """Scramble the features of a fold's test cells: the learning rate chosen in that fold must not move, while
    the judged score does (the scramble reached the cells that judge)."""
    from convtips_lib.core.data import elpv_folds
    from convtips_lib.studies.lesson04 import cv_head_grid
    x, paths = cell_feats
    fold = elpv_folds(2)[:1]
    test = np.flatnonzero(np.isin(paths, fold[0].loc[fold[0].role == "test", "path"]))
    scrambled = x.clone()
    scrambled[test] = torch.randn(len(test), x.shape[1], generator=torch.Generator().manual_seed(1))
    args = dict(remedies=("plain",), seeds=(0,), epochs=2, lrs=(1e-4, 1e-3, 3e-2), bs=64)
    clean, dirty = (cv_head_grid(v, paths, fold, "binary, natural", **args) for v in (x, scrambled))
    assert clean["lrs_by_fold"].iloc[0] == dirty["lrs_by_fold"].iloc[0]
    assert clean["balanced_accuracy"].iloc[0] > dirty["balanced_accuracy"].iloc[0] + 0.1


def test_a_whole_network_remedy_with_fewer_cells_than_a_batch_still_trains(recwarn):
    from convtips_lib.core.profiles import profile
    from convtips_lib.studies.lesson04 import train_remedy
    cfg = profile("smoke")
    df = imbalanced_frame(elpv_roles(32, 8), 1 / 20, seed=0)
    run = train_remedy(cfg, df, "under-sampling", steps=2, frac=0.1)
    assert run.extra["n_train"] < cfg.bs and run.extra["steps"] >= 2          # was 0 steps: no batch of 64
    assert np.isfinite(run.history["train_loss"]).all()
    assert not [w for w in recwarn if "generator is empty" in str(w.message)]
