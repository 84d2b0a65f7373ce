"""Tests for convtips_lib.measure: classification metrics, parameter and FLOP counts, latency."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from torch import nn

from convtips_lib.measure import classification_metrics, count_flops, count_params, latency


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


# ---------------------------------------------------------------- latency

@pytest.mark.parametrize("bs", [1, 4])
def test_latency(bs):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    lat = latency(model, 32, bs=bs, reps=3, warmup=1)
    assert set(lat) == {"ms_per_batch", "ms_per_image", "images_per_s"}
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
    from convtips_lib.measure import Evaluation
    conf = np.array([[3, 1], [2, 2]])
    ev = Evaluation(["a", "b"], np.zeros(8), np.zeros(8), np.zeros((8, 2)), {}, conf)
    assert ev.per_class_recall == {"a": pytest.approx(0.75), "b": pytest.approx(0.5)}
    empty = Evaluation(["a", "b"], np.zeros(0), np.zeros(0), np.zeros((0, 2)), {}, np.zeros((2, 2), int))
    assert empty.per_class_recall == {"a": 0.0, "b": 0.0}


def test_noise_band_is_two_binomial_standard_errors():
    from convtips_lib.measure import noise_band
    assert noise_band(0.5, 100) == pytest.approx(2 * 0.05)
    assert noise_band(0.8, 654, z=1) == pytest.approx((0.8 * 0.2 / 654) ** 0.5)
    assert noise_band(0.8, 2600) < noise_band(0.8, 650)
