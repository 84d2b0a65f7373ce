"""Tests for convtips_lib.core.measure: classification metrics, parameter and FLOP counts, latency."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from torch import nn

from convtips_lib.core.measure import classification_metrics, count_flops, count_params, latency


# ---------------------------------------------------------------- classification_metrics

@pytest.mark.parametrize("n_classes,seed", [(2, 0), (4, 1), (3, 2)])
def test_classification_metrics_match_sklearn(n_classes, seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, 200)
    y_pred = rng.integers(0, n_classes, 200)
    m = classification_metrics(y_true, y_pred)
    assert set(m) == {"accuracy", "balanced_accuracy", "f1_macro"}
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in m.values())


def test_classification_metrics_perfect_and_string_labels():
    y = ["functional", "defective", "functional", "defective"]
    assert classification_metrics(y, y) == {"accuracy": 1.0, "balanced_accuracy": 1.0, "f1_macro": 1.0}


def test_classification_metrics_accepts_tensors():
    y_true = torch.tensor([0, 1, 1, 0, 1])
    y_pred = torch.tensor([0, 1, 0, 0, 1])
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)


# ---------------------------------------------------------------- count_params

def test_count_params_linear():
    lin = nn.Linear(10, 3)
    assert count_params(lin) == 10 * 3 + 3 == 33
    assert count_params(lin, trainable_only=True) == 33


def test_count_params_trainable_only():
    model = nn.Sequential(nn.Linear(10, 3), nn.ReLU(), nn.Linear(3, 2))   # 33 + 8
    assert count_params(model) == 41
    model[0].requires_grad_(False)
    assert count_params(model) == 41
    assert count_params(model, trainable_only=True) == 8
    model.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 0


def test_count_params_conv_and_bn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    assert count_params(model) == 8 * 3 * 3 * 3 + 2 * 8        # BN running stats are buffers, not parameters


# ---------------------------------------------------------------- count_flops (FlopCounterMode counts 2 * MACs)

def test_count_flops_linear_only():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 4))
    assert count_flops(model, 8) == 2 * (192 * 10 + 10 * 4)
    assert count_flops(model, 8, bs=3) == 3 * 2 * (192 * 10 + 10 * 4)


@pytest.mark.parametrize("size,stride,padding", [(32, 1, 1), (33, 2, 0)])
def test_count_flops_conv(size, stride, padding):
    conv = nn.Conv2d(3, 16, 3, stride=stride, padding=padding)
    out = (size + 2 * padding - 3) // stride + 1
    macs = 16 * out * out * 3 * 3 * 3
    assert count_flops(conv, size) == 2 * macs
    assert count_flops(conv, size, bs=2) == 2 * 2 * macs


def test_count_flops_leaves_model_in_eval():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.5))
    model.train()
    count_flops(model, 4)
    assert not model.training


def test_deprecated_size_still_works_for_flops_and_latency():
    conv = nn.Conv2d(3, 16, 3, padding=1)
    with pytest.warns(DeprecationWarning, match="img_size"):
        assert count_flops(conv, size=8) == count_flops(conv, img_size=8) == 2 * 16 * 8 * 8 * 27
    with pytest.warns(DeprecationWarning, match="img_size"):
        assert len(latency(conv, size=8, reps=2)["times_ms"]) == 2


# ---------------------------------------------------------------- latency

@pytest.mark.parametrize("bs", [1, 4])
def test_latency(bs):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    lat = latency(model, 32, bs=bs, reps=3, warmup=1)
    assert set(lat) == {"ms_per_batch", "ms_per_image", "images_per_s", "times_ms"}
    assert len(lat["times_ms"]) == 3 and lat["ms_per_batch"] == pytest.approx(float(np.median(lat["times_ms"])))
    assert lat["ms_per_batch"] > 0
    assert lat["ms_per_image"] == pytest.approx(lat["ms_per_batch"] / bs)
    assert lat["images_per_s"] == pytest.approx(1000 * bs / lat["ms_per_batch"])


def test_latency_runs_warmup_plus_reps_forward_passes():
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            calls.append(x.shape)
            return self.lin(x.mean((2, 3)))

    latency(Counting(), 16, bs=2, reps=4, warmup=2)
    assert len(calls) == 6
    assert all(tuple(s) == (2, 3, 16, 16) for s in calls)


# ---------------------------------------------------------------- Evaluation

def test_per_class_recall_from_confusion():
    from convtips_lib.core.measure import Evaluation
    conf = np.array([[3, 1], [2, 2]])
    ev = Evaluation(["a", "b"], np.zeros(8), np.zeros(8), np.zeros((8, 2)), {}, conf)
    assert ev.per_class_recall == {"a": pytest.approx(0.75), "b": pytest.approx(0.5)}
    empty = Evaluation(["a", "b"], np.zeros(0), np.zeros(0), np.zeros((0, 2)), {}, np.zeros((2, 2), int))
    assert empty.per_class_recall == {"a": 0.0, "b": 0.0}


def test_noise_band_is_two_binomial_standard_errors():
    from convtips_lib.core.measure import noise_band
    assert noise_band(0.5, 100) == pytest.approx(2 * 0.05)
    assert noise_band(0.8, 654, z=1) == pytest.approx((0.8 * 0.2 / 654) ** 0.5)
    assert noise_band(0.8, 2600) < noise_band(0.8, 650)



# ---------------------------------------------------------------- statistics with intervals

from scipy.stats import binomtest  # noqa: E402
from sklearn.metrics import recall_score  # noqa: E402

from convtips_lib.core.measure import (bootstrap, exact, mcnemar, metric_value, paired_bootstrap,  # noqa: E402
                                       proportion, stack_preds, timing_ratio)


def _pair(n=600, right_a=0.6, right_b=0.9, k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    wrong = lambda p: np.where(rng.random(n) < p, y, (y + 1) % k)  # noqa: E731
    return y, wrong(right_a), wrong(right_b)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_metric_value_matches_scikit_learn(k, seed):
    y, a, _ = _pair(k=k, seed=seed)
    a[a == k - 1] = 0   # one class never predicted
    assert metric_value(y, a, "accuracy") == pytest.approx(accuracy_score(y, a))
    assert metric_value(y, a, "balanced_accuracy") == pytest.approx(balanced_accuracy_score(y, a))
    assert metric_value(y, a, "f1_macro") == pytest.approx(f1_score(y, a, average="macro", zero_division=0))
    rare = np.argmin(np.bincount(y))
    assert metric_value(y, a, "minority_recall") == pytest.approx(recall_score(y, a, average=None)[rare])


def test_unknown_metric_lists_the_known():
    with pytest.raises(ValueError, match="balanced_accuracy"):
        metric_value([0, 1], [0, 1], "auc")


def test_identical_predictions_give_zero_and_a_zero_width_interval():
    y, a, _ = _pair()
    est = paired_bootstrap(y, a, a)
    assert (est.effect, est.low, est.high) == (0.0, 0.0, 0.0)


def test_a_clearly_better_model_gets_an_interval_above_zero():
    y, a, b = _pair(right_a=0.6, right_b=0.9)   # b is right on ~30 % more images
    est = paired_bootstrap(y, a, b, "accuracy")
    assert 0 < est.low < est.effect < est.high and est.effect == pytest.approx((b == y).mean() - (a == y).mean())


def test_small_example_matches_a_hand_computation():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    a = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])   # accuracy 0.5
    b = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])   # accuracy 0.8
    est = paired_bootstrap(y, a, b, "accuracy", n=500)
    assert est.effect == pytest.approx(0.3) and est.low <= 0.3 <= est.high


def test_same_seed_same_interval_other_seed_other_interval():
    y, a, b = _pair()
    assert paired_bootstrap(y, a, b, seed=3) == paired_bootstrap(y, a, b, seed=3)
    assert paired_bootstrap(y, a, b, seed=3) != paired_bootstrap(y, a, b, seed=4)


def test_statistic_of_several_models_shares_the_resampling():
    y, a, b = _pair()
    est = bootstrap(y, dict(a=a, b=b, c=b), lambda m: (m["b"] - m["a"]) - (m["c"] - m["a"]))
    assert (est.effect, est.low, est.high) == (0.0, 0.0, 0.0)   # the same indices for every model


def test_seeds_that_disagree_widen_the_interval():
    y, a, b = _pair()
    _, _, b2 = _pair(right_b=0.7, seed=5)
    pooled = paired_bootstrap(y, np.stack([a, a]), np.stack([b, b2]))
    one = paired_bootstrap(y, a, b)
    assert "two-level" in pooled.method and (pooled.high - pooled.low) > (one.high - one.low)


def test_two_level_interval_is_at_least_as_wide_as_the_seeds_mean_alone():
    y, a, b = _pair()
    _, _, b2 = _pair(right_b=0.7, seed=5)   # the two seeds of b disagree by about 20 points
    two_level = paired_bootstrap(y, a, np.stack([b, b2]), "accuracy")
    mean_only = bootstrap(y, dict(a=a, b1=b, b2=b2), lambda m: (m["b1"] + m["b2"]) / 2 - m["a"], "accuracy")
    assert "two-level" in two_level.method and "two-level" not in mean_only.method
    assert two_level.effect == pytest.approx(mean_only.effect)
    assert two_level.high - two_level.low >= mean_only.high - mean_only.low


def test_predictions_must_cover_the_validation_set():
    y, a, b = _pair()
    with pytest.raises(ValueError, match="validation set"):
        paired_bootstrap(y, a[:-1], b)


def test_mcnemar_matches_scipy():
    y = np.zeros(30, int)
    a = np.r_[np.zeros(20, int), np.ones(10, int)]      # wrong on 10
    b = np.r_[np.ones(2, int), np.zeros(28, int)]       # wrong on 2
    out = mcnemar(y, a, b)
    assert (out["only_a_right"], out["only_b_right"]) == (2, 10)
    assert out["pvalue"] == pytest.approx(binomtest(10, 12, 0.5).pvalue)


def test_timing_ratio_of_clearly_different_timings_excludes_one():
    est = timing_ratio([1.0, 1.1, 0.9, 1.05, 0.95], [0.1, 0.11, 0.09, 0.1, 0.105])
    assert est.low > 1 and est.effect == pytest.approx(10, rel=0.1)
    one = timing_ratio([1.0], [0.5], fast_extra_s=1.5, reps=2)
    assert one.effect == pytest.approx(2 / 2.5) and np.isnan(one.low)   # one timing: no interval


def test_proportion_is_scipys_exact_interval():
    est = proportion(3, 10)
    ci = binomtest(3, 10).proportion_ci(0.95, method="exact")
    assert (est.effect, est.low, est.high) == pytest.approx((0.3, ci.low, ci.high))


def test_exact_has_zero_width():
    est = exact(0.8, "share", "five forward passes")
    assert est.low == est.high == est.effect == 0.8 and est.method.startswith("exact")


def test_stack_preds_groups_seeds_under_a_key():
    import pandas as pd
    rows = pd.DataFrame(dict(regime=["a", "a", "b"], y_pred=[[0, 1], [1, 1], [0, 0]]))
    out = stack_preds(rows, "regime")
    assert out["a"].shape == (2, 2) and out["b"].tolist() == [[0, 0]]


def test_latencies_times_every_model_in_turns():
    from convtips_lib.core.measure import latencies
    small, big = nn.Conv2d(3, 2, 1), nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(8)])
    t = latencies({"small": small, "big": big}, 32, bs=4, reps=4)
    assert set(t) == {"small", "big"} and all(len(v) == 4 for v in t.values())
    assert np.median(t["big"]) > np.median(t["small"]) > 0


def test_timed_in_turns_calls_each_in_turn_after_the_warm_up():
    from convtips_lib.core.measure import timed_in_turns
    calls = []
    t = timed_in_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b"] * 4 and all(len(v) == 3 and min(v) >= 0 for v in t.values())


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1_macro", "minority_recall"])
@pytest.mark.parametrize("k", [2, 4])
def test_bootstrap_equals_scipys_percentile_bootstrap_of_the_metric(metric, k):
    # bootstrap scores resamples from weighted counts; scipy re-indexes the predictions and scores each resample
    from scipy.stats import bootstrap as scipy_bootstrap
    y, a, b = _pair(n=300, k=k, seed=k)
    ours = paired_bootstrap(y, a, b, metric, n=400, seed=7)
    rare = np.argmin(np.bincount(y))   # minority recall: the rarest class of all the cells, on every resample
    score = lambda t, p: (recall_score(t, p, labels=[rare], average=None)[0] if metric == "minority_recall"  # noqa: E731
                          else metric_value(t, p, metric))
    diff = lambda i, axis=-1: np.array([score(y[r], b[r]) - score(y[r], a[r]) for r in np.atleast_2d(i)])  # noqa: E731
    ref = scipy_bootstrap((np.arange(len(y)),), diff, vectorized=True, n_resamples=400, method="percentile",
                          random_state=np.random.default_rng(7)).confidence_interval
    assert ours.effect == pytest.approx(metric_value(y, b, metric) - metric_value(y, a, metric))
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
