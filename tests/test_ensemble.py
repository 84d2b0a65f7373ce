"""Tests for convtips_lib.topics.ensemble: the 10-crop's positions, averaging and voting on fixed probabilities,
members' disagreement, the ensemble curve and 10-crop prediction; and lesson 06's choice of the best member on the
tune cells, fixed before the test cells judge it."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from convtips_lib.topics.ensemble import CROP_NAMES, average_probs, crop_probs, disagreement, error_correlation, ten_crop, vote
from convtips_lib.core.measure import bootstrap, classification_metrics
from convtips_lib.core.train import NoTuneCells, Run
from convtips_lib.studies.lesson06 import best_member, ensemble_curve, ensemble_gain, predict_seconds


def test_ten_crop_positions_against_slices_of_a_known_array():
    img = torch.arange(3 * 6 * 8, dtype=torch.float32).view(3, 6, 8)
    crops = ten_crop(img, 4)
    assert crops.shape == (10, 3, 4, 4) and len(CROP_NAMES) == 10
    expected = [img[:, 1:5, 2:6], img[:, :4, :4], img[:, :4, 4:], img[:, 2:, :4], img[:, 2:, 4:]]
    for k, e in enumerate(expected):
        assert torch.equal(crops[k], e), CROP_NAMES[k]
        assert torch.equal(crops[k + 5], e.flip(-1)), CROP_NAMES[k + 5]     # the mirrors of the first five


def test_ten_crop_of_a_batch_and_bad_sizes():
    assert ten_crop(torch.zeros(2, 3, 10, 10), 6).shape == (2, 10, 3, 6, 6)
    with pytest.raises(ValueError, match="shorter side"):
        ten_crop(torch.zeros(3, 6, 8), 7)


def test_average_and_vote_on_fixed_probabilities():
    probs = np.array([[[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]],
                      [[0.6, 0.4], [0.3, 0.7], [0.8, 0.2]],
                      [[0.2, 0.8], [0.45, 0.55], [0.7, 0.3]]])
    assert np.allclose(average_probs(probs), [[17 / 30, 13 / 30], [23 / 60, 37 / 60], [0.65, 0.35]])
    assert vote(probs).tolist() == [0, 1, 0]


def test_a_tied_vote_goes_to_the_higher_average_probability():
    probs = np.array([[[0.9, 0.1]], [[0.4, 0.6]]])        # one vote each: class 0 has the higher mean (0.65)
    assert vote(probs).tolist() == [0]
    assert vote(probs[:, :, ::-1]).tolist() == [1]


def test_disagreement_and_error_correlation():
    y = np.array([0, 1, 0, 1])
    same = np.array([[0, 1, 1, 1], [0, 1, 1, 1]])
    assert disagreement(same) == 0 and error_correlation(same, y) == pytest.approx(1)
    diff = np.array([[0, 1, 1, 1], [1, 1, 0, 1]])
    assert disagreement(diff) == 0.5 and error_correlation(diff, y) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="two members"):
        error_correlation(same[:1], y)


def _thirds():
    """Three members on 90 cells of class 0, each wrong on its own third: any two outvote the third."""
    y = np.zeros(90, int)
    probs = np.full((3, 90, 2), [0.6, 0.4])
    for m in range(3):
        probs[m, m * 30:(m + 1) * 30] = [0.45, 0.55]
    return y, probs


def _run(test_probs, y_test, tune_probs, y_tune, **settings):
    """A member's Run with its test probabilities and (one epoch of) tune probabilities."""
    test_probs = np.asarray(test_probs, float)
    return Run(dict(settings), None, np.asarray(y_test), test_probs.argmax(-1), test_probs,
               dict(balanced_accuracy=0.0), 0.0, None, [test_probs], tune_y=np.asarray(y_tune),
               tune_epoch_probs=[np.asarray(tune_probs, float)])


def _disagreeing_members():
    """Three members whose test and tune scores rank them in opposite orders: member 0 is best on test (right on
    every test cell) and worst on tune, member 2 worst on test and best on tune."""
    y_test, y_tune = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 1, 0, 1])
    right, wrong = np.eye(2)[y_test], np.eye(2)[1 - y_test]
    test = [right, np.where(np.arange(6)[:, None] < 2, wrong, right), wrong]
    tr, tw = np.eye(2)[y_tune], np.eye(2)[1 - y_tune]
    tune = [tw, np.where(np.arange(4)[:, None] < 2, tw, tr), tr]
    return y_test, [_run(p, y_test, q, y_tune, seed=i) for i, (p, q) in enumerate(zip(test, tune))]


def test_best_member_follows_the_tune_cells_when_test_and_tune_disagree():
    y_test, members = _disagreeing_members()
    rows = pd.DataFrame([m.row() for m in members])
    test_scores = [classification_metrics(y_test, m.y_pred)["balanced_accuracy"] for m in members]
    assert test_scores == [1.0, pytest.approx(2 / 3), 0.0]          # the test cells would pick member 0 ...
    assert rows["tune_balanced_accuracy"].tolist() == [0.0, 0.5, 1.0]
    assert best_member(members) == 2                                # ... the tune cells pick member 2
    assert best_member(rows) == 2 and best_member(rows.set_index(pd.Index([7, 3, 5]))) == 2   # by position
    assert best_member(members[:2]) == 1                            # the best of the first two, on tune


def test_best_member_needs_tune_cells():
    y_test, members = _disagreeing_members()
    rows = pd.DataFrame([m.row() for m in members]).drop(columns=[c for c in members[0].row() if c.startswith("tune_")])
    with pytest.raises(NoTuneCells):
        best_member(rows)


def test_the_gain_over_the_best_member_is_judged_against_the_member_chosen_on_tune():
    y_test, members = _disagreeing_members()
    probs = np.stack([m.probs for m in members])
    chosen = best_member(members)
    est = ensemble_gain(y_test, probs, chosen, "accuracy", n=200)
    ens = (probs.mean(0).argmax(-1) == y_test).mean()
    assert est.effect == pytest.approx(ens - 0.0)                   # minus member 2 (0 % on test), not member 0
    assert ensemble_gain(y_test, probs, 0, "accuracy", n=200).effect == pytest.approx(ens - 1.0)
    with pytest.raises(ValueError, match="tune cells"):
        ensemble_gain(y_test, probs, "best")                      # re-picking on the test cells is refused


def test_the_chosen_member_is_fixed_not_repicked_on_each_test_resample():
    # two members as good on test, wrong on different halves: a per-resample maximum would sit above both
    y = np.zeros(200, int)
    probs = np.full((2, 200, 2), [0.6, 0.4])
    probs[0, :100], probs[1, 100:] = [0.4, 0.6], [0.4, 0.6]
    curve = ensemble_curve(y, probs, pd.DataFrame({"tune_accuracy": [0.2, 0.9]}), "accuracy", n=400)
    best = curve[(curve["members"] == 2) & (curve["what"] == "best member on tune")].iloc[0]
    alone = ensemble_curve(y, probs[1:], None, "accuracy", n=400).iloc[-1]       # member 1 alone, its own interval
    assert best["value"] == pytest.approx(0.5)
    assert best["low"] == pytest.approx(alone["low"]) and best["high"] == pytest.approx(alone["high"])
    repicked = bootstrap(y, {0: probs[0].argmax(-1), 1: probs[1].argmax(-1)}, lambda v: np.max([v[0], v[1]], 0),
                         "accuracy", 400)
    assert repicked.low > best["low"]                    # what re-picking on every test resample would have flattered
    assert ensemble_gain(y, probs, 1, "accuracy", n=400).effect == pytest.approx(0.5)   # ties go to class 0: all right


def test_ensemble_curve_of_members_right_on_different_images():
    y, probs = _thirds()
    tune = pd.DataFrame({"tune_accuracy": [0.5, 0.9, 0.7]})
    curve = ensemble_curve(y, probs, tune, "accuracy", n=200).set_index(["members", "what"])["value"]
    assert curve[(1, "ensemble")] == pytest.approx(2 / 3) and curve[(3, "ensemble")] == pytest.approx(1.0)
    assert curve[(3, "mean member")] == pytest.approx(2 / 3) and curve[(3, "best member on tune")] == pytest.approx(2 / 3)
    assert "best member on tune" not in set(ensemble_curve(y, probs, None, "accuracy", n=50)["what"])
    with pytest.raises(ValueError, match="members"):
        ensemble_curve(y, probs, tune.iloc[:2])


def test_crop_probs_average_like_a_tta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    p = crop_probs(model, torch.randn(5, 3, 16, 16), 12, bs=2)
    assert p.shape == (5, 10, 2) and np.allclose(p.sum(-1), 1)


def test_history_keeps_the_probabilities_of_every_epoch():
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import learner, valid_probs
    x, y = torch.randn(32, 4), torch.arange(32) % 2
    learn = learner(tensor_dls(x, y, x[:12], y[:12], ["a", "b"], bs=8), nn.Linear(4, 2), seed=0)
    learn.fit(2, 1e-2)
    probs = learn.history.probs
    assert len(probs) == 2 and probs[0].shape == (12, 2) and np.allclose(probs[1].sum(1), 1)
    with torch.no_grad():   # the same as a softmax of the model's outputs on the validation rows
        assert np.allclose(valid_probs(learn), torch.softmax(learn.model(x[:12]), -1).numpy(), atol=1e-6)
    assert np.array_equal(valid_probs(learn).argmax(1), learn.history.preds[-1])


def test_predict_seconds_is_a_median_of_repeats():
    assert predict_seconds(lambda: sum(range(1000)), reps=3) >= 0


def test_ensemble_gain_against_mean_and_a_fixed_member():
    y, probs = _thirds()
    est = ensemble_gain(y, probs, 1, "accuracy", n=300)
    assert est.effect == pytest.approx(1 / 3) and est.low > 0
    assert ensemble_gain(y, probs, "mean", "accuracy", n=300).effect == pytest.approx(1 / 3)
    for bad in ("median", 3, True):
        with pytest.raises(ValueError):
            ensemble_gain(y, probs, bad)


def test_tta_probs_predicts_only_the_first_cells_in_loader_order(tmp_path):
    import pandas as pd
    from fastai.data.block import CategoryBlock, ColReader, ColSplitter, DataBlock
    from fastai.vision.all import ImageBlock, Resize
    from PIL import Image
    from convtips_lib.core.train import learner
    from convtips_lib.topics.ensemble import tta_probs
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(path)
        rows.append(dict(path=str(path), label="ab"[i % 2], is_valid=i >= 6))
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader("path"), get_y=ColReader("label"),
                      splitter=ColSplitter("is_valid"), item_tfms=Resize(8))
    dls = block.dataloaders(pd.DataFrame(rows), bs=4, num_workers=0)
    learn = learner(dls, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), seed=0)
    with learn.no_bar(), learn.no_logging():
        plain = learn.get_preds(dl=dls.valid)[0].numpy()
    assert tta_probs(learn).shape == (6, 2)
    part = tta_probs(learn, 3, beta=1)                 # beta 1: the plain image's prediction, no augmented copies
    assert part.shape == (3, 2) and np.allclose(part, plain[:3], atol=1e-6)
    assert np.allclose(tta_probs(learn, 0, beta=1), plain, atol=1e-6)   # 0: all cells


# ------------------------------------------------------------------ members cross-validated on cached features
from convtips_lib.studies.lesson06 import cv_members, member_plan  # noqa: E402


def test_member_plan_covers_every_body_then_adds_seeds_of_the_first():
    plan = member_plan(5, ("a", "b", "c"), seed=42)
    assert plan == [("a", 42), ("b", 42), ("c", 42), ("a", 43), ("a", 44)]
    with pytest.raises(ValueError, match="at least 3"):
        member_plan(2, ("a", "b", "c"))


@pytest.fixture(scope="module")
def two_bodies():
    """Features of every ELPV cell under two fake 'bodies': one carries the label strongly, one weakly."""
    from convtips_lib.core.data import cell_labels, elpv_frame
    paths = [str(p) for p in elpv_frame()["path"]]
    y, vocab = cell_labels(paths, "binary")
    out = {}
    for name, signal, s in (("strong", 6.0, 0), ("weak", 0.5, 1)):
        x = torch.randn(len(paths), 6, generator=torch.Generator().manual_seed(s))
        x[:, 0] += signal * y.float()
        out[name] = (x, y, paths, vocab)
    return out


def test_cv_members_predict_every_cell_once_in_the_same_order_for_every_member(two_bodies):
    from convtips_lib.core.data import elpv_folds, elpv_frame
    folds = elpv_folds(2)
    plan = member_plan(3, ("strong", "weak"), seed=0)
    rows = cv_members(two_bodies, plan, folds, epochs=3, lrs=(1e-3, 3e-2))
    assert list(rows["member"]) == [0, 1, 2] and list(rows["arch"]) == ["strong", "weak", "strong"]
    test_paths = np.concatenate([f.loc[f.role == "test", "path"].to_numpy() for f in folds])
    assert sorted(test_paths) == sorted(two_bodies["strong"][2])   # every cell judged once
    yb = (elpv_frame().set_index("path").loc[test_paths, "label_bin"] == "functional").astype(int).to_numpy()
    for _, r in rows.iterrows():
        assert np.array_equal(r["y_true"], yb) and r["probs"].shape == (len(yb), 2)   # fold order, every member
        assert len(r["lrs_by_fold"]) == 2 and 0 <= r["tune_balanced_accuracy"] <= 1
    ba = rows.set_index("member")["balanced_accuracy"]
    assert ba[0] > ba[1] + 0.2                                     # the strong body's head is the better member
    assert best_member(rows) in (0, 2)                             # and the tune cells see it


def test_a_member_s_rate_is_chosen_on_its_fold_s_tune_cells_only(two_bodies):
    """Scramble the features of the fold's test cells: the chosen learning rate must not move, the score must."""
    from convtips_lib.core.data import elpv_folds
    fold = elpv_folds(2)[:1]
    x, y, paths, vocab = two_bodies["strong"]
    test = np.flatnonzero(np.isin(paths, fold[0].loc[fold[0].role == "test", "path"]))
    scrambled = x.clone()
    scrambled[test] = torch.randn(len(test), x.shape[1], generator=torch.Generator().manual_seed(5))
    args = dict(plan=[("b", 0)], folds=fold, epochs=2, lrs=(1e-4, 1e-3, 3e-2))
    clean, dirty = (cv_members({"b": (v, y, paths, vocab)}, **args) for v in (x, scrambled))
    assert clean["lrs_by_fold"].iloc[0] == dirty["lrs_by_fold"].iloc[0]
    assert clean["balanced_accuracy"].iloc[0] > dirty["balanced_accuracy"].iloc[0] + 0.1
