"""Tests for convtips_lib.core.train: the Learner factory, normalisation, freezing, fit's history, seeding."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from fastai.vision.all import Normalize, ProgressCallback

from convtips_lib.core.data import elpv_dls
from convtips_lib.core.models import pretrained
from convtips_lib.core.profiles import profile
from convtips_lib.core.train import METRICS, fit, fit_gradual, history, last_metrics, learner, make_learner, valid_preds

CFG = profile("smoke").with_(img_size=32, bs=64)
FRAC = 0.08   # about 160 training images and (below) a quarter of the validation set: a fit takes about a second


@pytest.fixture(scope="module")
def dls():
    from convtips_lib.core.data import elpv_frame
    df = elpv_frame()
    valid = df[df["is_valid"]].groupby("label_bin").sample(frac=0.25, random_state=0)
    return elpv_dls(CFG, task="binary", frac=FRAC, seed=0, df=pd.concat([df[~df["is_valid"]], valid]))


def test_learner_has_the_course_metrics(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    names = [getattr(m, "name", getattr(m, "__name__", "")) for m in learn.metrics]
    assert names == list(METRICS) == ["accuracy", "balanced_accuracy", "f1_macro"]


def test_dls_normalised_once_with_model_stats(dls):
    make_learner(dls, "efficientnet_lite0", seed=0)
    make_learner(dls, "resnet18", weights=None, seed=0)   # ImageNet stats replace the Lite's 0.5/0.5
    norms = [t for t in dls.train.after_batch.fs if isinstance(t, Normalize)]
    assert len(norms) == 1
    assert torch.allclose(norms[0].mean.flatten().cpu(), torch.tensor([0.485, 0.456, 0.406]))


@pytest.mark.parametrize("depth, frozen", [("head", 1.0), ("middle", 0.5), ("none", 0.0)])
def test_depth_freezes_that_share_of_the_body(dls, depth, frozen):
    learn = make_learner(dls, "efficientnet_lite0", depth=depth, seed=0)
    n_body = len(learn.opt.param_groups) - 1
    assert learn.opt.frozen_idx == round(frozen * n_body)
    # BatchNorm stays trainable in frozen groups (train_bn=True); weights of convs and linears (ndim > 1) do not
    first_trainable = [any(p.requires_grad for p in g["params"] if p.ndim > 1)
                       for g in learn.opt.param_groups].index(True)
    assert first_trainable == learn.opt.frozen_idx
    assert all(p.requires_grad for p in learn.model.head.parameters())


def test_random_init_trains_the_whole_network(dls):
    learn = make_learner(dls, "efficientnet_lite0", weights=None, depth="head", seed=0)
    assert learn.model.meta["source"] == "random init"
    assert all(p.requires_grad for p in learn.model.parameters())


def test_quiet_mode_removes_progress_bars(dls, monkeypatch):
    monkeypatch.setenv("CONVTIPS_QUIET", "1")
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    assert not any(isinstance(cb, ProgressCallback) for cb in learn.cbs)


@pytest.mark.slow
def test_fit_returns_one_row_per_epoch(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    hist = fit(learn, 2, 1e-3)
    assert isinstance(hist, pd.DataFrame) and list(hist["epoch"]) == [1, 2]
    assert {"train_loss", "valid_loss", "accuracy", "balanced_accuracy", "f1_macro", "seconds"} <= set(hist.columns)
    assert hist[["train_loss", "valid_loss", "accuracy"]].notna().all().all()
    assert hist["accuracy"].between(0, 1).all()


@pytest.mark.slow
def test_fine_tune_keeps_both_phases(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    hist = fit(learn, 1, 1e-3, fine_tune=True, freeze_epochs=1)
    assert list(hist["phase"]) == ["frozen", "unfrozen"] and list(hist["epoch"]) == [1, 2]
    assert all(p.requires_grad for p in learn.model.parameters())   # unfrozen at the end


@pytest.mark.slow
def test_history_ignores_evaluation_passes(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    fit(learn, 1, 1e-3)
    learn.get_preds()
    learn.validate()
    assert len(history(learn)) == 1


@pytest.mark.slow
def test_same_seed_same_numbers(dls):
    runs = [fit(make_learner(dls, "efficientnet_lite0", seed=7), 1, 1e-3).drop(columns="seconds") for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_given_model_is_used(dls):
    model = pretrained("efficientnet_lite0", dls.c, weights=None)
    learn = make_learner(dls, model=model, seed=0)
    assert learn.model is model


@pytest.mark.slow
def test_fit_gradual_unfreezes_stage_by_stage(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    hist = fit_gradual(learn, 1e-3, epochs=1, depths=("head", "middle", "none"))
    assert list(hist["phase"]) == ["depth: head", "depth: middle", "depth: none"]
    assert all(p.requires_grad for p in learn.model.parameters())


@pytest.mark.slow
def test_fit_gradual_takes_epochs_per_depth(dls):
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    hist = fit_gradual(learn, 1e-3, epochs=[2, 1], depths=("head", "none"))
    assert list(hist["phase"]) == ["depth: head", "depth: head", "depth: none"]


def test_channels_last_where_depthwise_convolutions_are(dls):
    from fastai.vision.all import ChannelsLast
    from convtips_lib.core.models import prefers_channels_last, small_net, to_channels_last
    lite = pretrained("efficientnet_lite0", 2, weights=None)
    assert prefers_channels_last(lite) and not prefers_channels_last(small_net(2))
    assert any(isinstance(cb, ChannelsLast) for cb in learner(dls, lite, seed=0).cbs)
    assert not any(isinstance(cb, ChannelsLast) for cb in learner(dls, small_net(2), seed=0).cbs)
    assert not any(isinstance(cb, ChannelsLast) for cb in learner(dls, lite, seed=0, channels_last=False).cbs)
    conv = next(m for m in to_channels_last(lite).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    lite.eval()
    with torch.no_grad():   # the same function in either layout
        assert torch.allclose(lite(x), lite.to(memory_format=torch.contiguous_format)(x), atol=1e-5)


@pytest.mark.slow
def test_last_metrics_equal_a_fresh_evaluation(dls):
    from convtips_lib.core.measure import evaluate
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    fit(learn, 1, 1e-3)
    got, want = last_metrics(learn), evaluate(learn).metrics
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want)


@pytest.mark.slow
def test_valid_preds_are_the_epochs_predictions(dls):
    from convtips_lib.core.data import valid_labels
    from convtips_lib.core.measure import classification_metrics
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    fit(learn, 2, 1e-3)
    y_true, y_pred = valid_preds(learn)
    assert list(y_true) == list(valid_labels(dls)) and len(learn.history.preds) == 2
    assert classification_metrics(y_true, y_pred) == pytest.approx(last_metrics(learn))   # every METRICS name
    assert set(last_metrics(learn)) == set(METRICS)
    first = classification_metrics(y_true, valid_preds(learn, 0)[1])   # the predictions after epoch 1
    assert first["accuracy"] == pytest.approx(history(learn)["accuracy"].iloc[0])


@pytest.mark.slow
def test_deprecated_names_still_work(dls):
    with pytest.warns(DeprecationWarning, match="weights"):
        learn = make_learner(dls, "efficientnet_lite0", pretrained_=False, seed=0)
    assert learn.model.meta["source"] == "random init"
    with pytest.warns(DeprecationWarning, match="depths"):
        hist = fit_gradual(learn, 1e-3, epochs=1, stages=("head", "none"))
    assert len(hist) == 2


def test_fit_refuses_zero_epochs(dls):
    with pytest.raises(ValueError, match="epochs"):
        fit(make_learner(dls, "efficientnet_lite0", seed=0), 0, 1e-3)


def test_lr_find_leaves_the_history_empty_and_fit_still_records():
    import torch
    from torch import nn
    from convtips_lib.core.data import tensor_dls
    x, y = torch.randn(64, 4), torch.arange(64) % 2
    learn = learner(tensor_dls(x, y, x[:16], y[:16], ["a", "b"], bs=8), nn.Linear(4, 2), seed=0)
    with learn.no_bar(), learn.no_logging():
        suggestion = learn.lr_find(show_plot=False)
    assert suggestion.valley > 0 and learn.history.rows == []
    learn.fit(1, 1e-2)
    assert len(learn.history.rows) == 1 and len(learn.history.preds[0]) == 16


@pytest.mark.slow
def test_constant_schedule_keeps_one_rate_and_unknown_schedules_are_refused(dls):
    from fastai.vision.all import ParamScheduler
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    fit(learn, 1, 1e-3, schedule="constant")
    assert not any(isinstance(cb, ParamScheduler) for cb in learn.cbs)
    lrs = learn.recorder.lrs
    assert len(lrs) > 1 and max(lrs) == pytest.approx(min(lrs)) == pytest.approx(1e-3)
    learn = make_learner(dls, "efficientnet_lite0", seed=0)
    fit(learn, 1, 1e-3)
    assert max(learn.recorder.lrs) > 2 * min(learn.recorder.lrs)          # one-cycle warms up and anneals
    with pytest.raises(ValueError, match="one-cycle, constant"):
        fit(learn, 1, 1e-3, schedule="cosine")


def _tiny_learn(seed=0):
    from convtips_lib.core.data import tensor_dls
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return learner(tensor_dls(x[:28], y[:28], x[28:], y[28:], ["a", "b"], bs=8), torch.nn.Linear(4, 2), seed=seed)


def test_run_of_a_learner_reads_its_history():
    from convtips_lib.core.train import Run, fit, valid_probs
    learn = _tiny_learn()
    fit(learn, 2, 1e-2)
    run = Run.of(learn, dict(lr=1e-2), 1.5, note="x")
    assert run.probs.shape == (12, 2) and len(run.epoch_probs) == 2 and run.history.shape[0] == 2
    assert np.array_equal(run.probs, valid_probs(learn)) and np.array_equal(run.y_pred, learn.history.preds[-1])
    assert run.metrics == {m: learn.history.rows[-1][m] for m in ("accuracy", "balanced_accuracy", "f1_macro")}
    row = run.row()
    assert row["lr"] == 1e-2 and row["note"] == "x" and row["seconds"] == 1.5
    assert not {"learn", "probs", "history"} & set(row)
    full = run.row(probs=True, history=True, learn=True)
    assert full["learn"] is learn and full["probs"] is run.probs and full["history"] is run.history


def test_select_lr_picks_the_best_score_and_skips_a_single_rate():
    from convtips_lib.core.train import select_lr
    calls = []
    best, scores = select_lr(lambda lr: calls.append(lr) or -abs(lr - 0.01), (0.001, 0.01, 0.1))
    assert best == 0.01 and set(scores) == {0.001, 0.01, 0.1} and calls == [0.001, 0.01, 0.1]
    assert select_lr(lambda lr: 1 / 0, [0.3]) == (0.3, {})   # nothing to choose: score is never called


def test_run_grid_calls_every_setting_with_every_seed():
    from convtips_lib.core.train import run_grid
    out = run_grid(lambda a, seed: (a, seed), [dict(a=1), dict(a=2)], (7, 8))
    assert out == [(1, 7), (1, 8), (2, 7), (2, 8)]


def test_evaluate_gives_probabilities_whatever_the_loss():
    from convtips_lib.core.measure import evaluate
    from convtips_lib.core.train import fit
    from convtips_lib.topics.imbalance import FocalLoss
    learn = _tiny_learn()
    learn.loss_func = FocalLoss()          # a loss without an activation: get_preds alone would return logits
    fit(learn, 1, 1e-2)
    ev = evaluate(learn)
    assert np.allclose(ev.probs.sum(1), 1, atol=1e-5) and np.allclose(ev.probs, learn.history.probs[-1], atol=1e-6)


def test_validate_last_predicts_once_and_trains_the_same():
    """validate='last': every epoch trains as before (same weights), only the last is predicted; the tune cells too."""
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import Run
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    y = (x[:, 0] > 0).long()
    runs = {}
    for v in ("every", "last"):
        dls = tensor_dls(x[:28], y[:28], x[28:40], y[28:40], ["a", "b"], bs=8, tune=(x[40:], y[40:]))
        torch.manual_seed(0)   # the same initial weights
        learn = learner(dls, torch.nn.Linear(4, 2), seed=0)
        hist = fit(learn, 3, 1e-2, validate=v)
        runs[v] = (Run.of(learn, {}, 0.0), hist, learn)
    (every, h_every, l_every), (last, h_last, l_last) = runs["every"], runs["last"]
    assert len(h_last) == 3 and h_last["train_loss"].notna().all() and h_last["valid_loss"].isna().tolist() == [
        True, True, False]
    assert np.allclose(h_every["train_loss"], h_last["train_loss"])
    assert len(every.epoch_probs) == 3 and len(last.epoch_probs) == 1 and len(last.tune_epoch_probs) == 1
    assert np.allclose(every.probs, last.probs) and np.allclose(every.tune_epoch_probs[-1], last.tune_epoch_probs[0])
    assert every.metrics == last.metrics
    with pytest.raises(ValueError, match="every, last"):
        fit(l_last, 1, 1e-2, validate="never")


def test_every_learner_on_cuda_trains_in_mixed_precision_and_on_cpu_in_fp32():
    from fastai.callback.fp16 import MixedPrecision
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import learner, on_cuda
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 2
    mixed = lambda learn: any(isinstance(cb, MixedPrecision) for cb in learn.cbs)  # noqa: E731
    net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 2))  # noqa: E731
    dls = tensor_dls(x, y, x, y, ["a", "b"], bs=4)
    assert not on_cuda(dls) and not mixed(learner(dls, net()))
    assert mixed(learner(dls, net(), fp16=True))
    dls.device = torch.device("cuda")          # no batch is drawn: no GPU is needed to see the choice
    assert on_cuda(dls) and mixed(learner(dls, net())) and not mixed(learner(dls, net(), fp16=False))
