"""Tests for convtips_lib.topics.ensemble: the 10-crop's positions, averaging and voting on fixed probabilities,
members' disagreement, the ensemble curve and 10-crop prediction."""
import numpy as np
import pytest
import torch
from torch import nn

from convtips_lib.topics.ensemble import CROP_NAMES, average_probs, crop_probs, disagreement, error_correlation, ten_crop, vote
from convtips_lib.studies.lesson06 import ensemble_curve, predict_seconds


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


def test_ensemble_curve_of_members_right_on_different_images():
    y = np.zeros(90, int)
    probs = np.full((3, 90, 2), [0.6, 0.4])
    for m in range(3):                        # each member wrong on its own third: any two outvote the third
        probs[m, m * 30:(m + 1) * 30] = [0.45, 0.55]
    curve = ensemble_curve(y, probs, "accuracy", n=200).set_index(["members", "what"])["value"]
    assert curve[(1, "ensemble")] == pytest.approx(2 / 3) and curve[(3, "ensemble")] == pytest.approx(1.0)
    assert curve[(3, "mean member")] == pytest.approx(2 / 3) and curve[(3, "best member")] == pytest.approx(2 / 3)


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


def test_ensemble_gain_against_mean_and_best_member():
    from convtips_lib.studies.lesson06 import ensemble_gain
    y = np.zeros(90, int)
    probs = np.full((3, 90, 2), [0.6, 0.4])
    for m in range(3):
        probs[m, m * 30:(m + 1) * 30] = [0.45, 0.55]
    est = ensemble_gain(y, probs, "best", "accuracy", n=300)
    assert est.effect == pytest.approx(1 / 3) and est.low > 0
    with pytest.raises(ValueError, match="'mean' or 'best'"):
        ensemble_gain(y, probs, "median")
