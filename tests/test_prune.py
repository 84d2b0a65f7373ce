"""Tests for convtips_lib.topics.prune: L1 order on a hand-made layer, per-filter scores against direct computation,
structural pruning (parameters and FLOPs drop as expected, the network still runs, keeps its output shape and
trains), block removal, export and reload (state dict and ONNX give the same outputs), bad pruning ratios."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback
from fastai.optimizer import SGD
from torch import nn

from convtips_lib.core.data import tensor_dls
from convtips_lib.core.measure import count_flops, count_params
from convtips_lib.core.train import NoTuneCells, fit, learner
from convtips_lib.topics.prune import (ScoreImportance, check_ratio, export_check, export_pruned, filter_scores,
                                      l1_order, load_pruned, make_pruner, model_cost, onnx_latency, onnx_outputs,
                                      prune_copy, prune_iteratively, prune_once, rank_agreement, ranked_channels,
                                      ranking_batches)
from convtips_lib.studies.lesson07 import (Block, block_removal, first_reaching, fresh_learner, prunable_net,
                                           prune_by_each_ranking, removable_blocks, removal_gap, train_from_scratch,
                                           without_block)

TINY = dict(widths=(4, 8), blocks=1)


def _tiny_dls(n=48, size=16, seed=0, tune=None, flip_test=False):
    """Tiny two-class images (the class: the mean of channel 0 above 0), a quarter of them the test cells;
    `tune='flipped'`: tune cells that are the test images with every label flipped, so that any run's tune
    balanced accuracy is 1 minus its test one (a choice on tune and one on test disagree wherever they can);
    `flip_test`: the test labels flipped instead (the test cells poisoned)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    k = n * 3 // 4
    xv, yv = x[k:], y[k:]
    tune_cells = (xv.clone(), 1 - yv) if tune == "flipped" else None
    return tensor_dls(x[:k], y[:k], xv, 1 - yv if flip_test else yv, ["a", "b"], bs=12, tune=tune_cells)


def test_l1_order_of_a_hand_made_conv_layer():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():   # L1 norms 3, 0.5, 2, 1 (signs must not matter)
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, -1.0], [0.25, 0.75]]).view(4, 2, 1, 1))
    assert l1_order(conv).tolist() == [1, 3, 2, 0]


def test_filter_scores_match_a_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(5, 2)).eval()
    x = torch.randn(10, 3, 8, 8)
    s = filter_scores(net, x, bs=4)
    batches = filter_scores(net, [(x[:6], None), (x[6:], None)])          # a loader's (x, y) batches, too
    assert np.allclose(batches[["mean_activation", "apoz"]], s[["mean_activation", "apoz"]], atol=1e-6)
    a = torch.relu(net[1](net[0](x)))
    assert list(s["layer"].unique()) == ["0"] and len(s) == 5
    assert np.allclose(s["l1"], net[0].weight.abs().sum((1, 2, 3)).detach())
    assert np.allclose(s["l2"], net[0].weight.detach().flatten(1).norm(dim=1))
    assert np.allclose(s["mean_activation"], a.mean((0, 2, 3)).detach(), atol=1e-6)
    assert np.allclose(s["apoz"], (a <= 0).float().mean((0, 2, 3)))


def test_rank_agreement_is_one_for_identical_rankings_and_negates_apoz():
    s = pd.DataFrame(dict(layer=["a"] * 4 + ["b"] * 3, l1=[1, 2, 3, 4, 3, 1, 2], l2=[1, 2, 3, 4, 3, 1, 2],
                          mean_activation=[4, 3, 2, 1, 1, 3, 2], apoz=[1, 2, 3, 4, 3, 1, 2]))
    c = rank_agreement(s)
    assert c.loc["l1", "l2"] == pytest.approx(1) and c.loc["l1", "mean_activation"] == pytest.approx(-1)
    assert c.loc["l1", "apoz"] == pytest.approx(-1)      # many zeros = weak: apoz is negated before ranking


@pytest.mark.parametrize("residual", [True, False])
def test_prunable_net_shapes_and_removable_blocks(residual):
    net = prunable_net(3, residual, **TINY)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    names = removable_blocks(net)
    assert len(names) == 2
    smaller = without_block(net, names[0])
    assert isinstance(smaller.get_submodule(names[0]), nn.Identity) and isinstance(net.get_submodule(names[0]), Block)
    assert smaller(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="not a removable block"):
        without_block(net, "0")


def test_a_block_with_zero_weights_is_the_identity_only_with_its_shortcut():
    x = torch.rand(2, 4, 5, 5)                       # non-negative, as the input of a block after a ReLU is
    for residual in (True, False):
        b = Block(4, residual).eval()
        for p in b.parameters():
            nn.init.zeros_(p)
        assert torch.equal(b(x), x) == residual


def test_pruning_removes_channels_parameters_and_flops_and_the_net_still_trains():
    torch.manual_seed(0)
    net = prunable_net(2, True, widths=(8, 16), blocks=1)
    p0, f0 = count_params(net), count_flops(net, 16)
    pruned = prune_copy(net, 16, 0.5)
    assert count_params(net) == p0                    # the original is left as it was
    w = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    # a shortcut couples a stage's first conv with its block's last conv: torch-pruning removes the same channels
    assert w["1.0"] == w["2.body.1.0"] and w["3.0"] == w["4.body.1.0"]
    # global ranking: uneven per layer, but half of the 56 channels of the five independent groups are gone
    assert w["0.0"] + w["1.0"] + w["2.body.0.0"] + w["3.0"] + w["4.body.0.0"] == (8 + 8 + 8 + 16 + 16) // 2
    # conv weights shrink ~4x (in and out halved), the linear head's inputs 2x: params and FLOPs fall by 3-4x
    assert 3 < p0 / count_params(pruned) < 4.2 and 3 < f0 / count_flops(pruned, 16) < 4.2
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 2)
    learn = learner(_tiny_dls(), pruned, seed=0)
    before = [p.detach().clone() for p in pruned.parameters()]
    fit(learn, 1, 1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters()))


def test_pruning_ratio_zero_changes_nothing_and_bad_ratios_are_refused():
    net = prunable_net(2, **TINY)
    assert count_params(prune_copy(net, 16, 0.0)) == count_params(net)
    for bad in (1.0, -0.1, 1.5, "half", None):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            check_ratio(bad)
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            make_pruner(net, 16, bad)
    with pytest.raises(ValueError, match="steps"):
        make_pruner(net, 16, 0.5, steps=0)
    with pytest.raises(ValueError, match="unknown importance"):
        make_pruner(net, 16, 0.5, importance="taylor-ish")


def test_iterative_pruning_shrinks_step_by_step_and_one_shot_reaches_the_same_size():
    dls = _tiny_dls()
    learn = learner(dls, prunable_net(2, True, widths=(8, 16), blocks=1), seed=0)
    fit(learn, 1, 1e-2)
    steps = prune_iteratively(learn, 16, 0.5, steps=2, epochs=1, lr=1e-2, reps=2)
    assert steps["step"].tolist() == [0, 1, 2] and steps["params"].is_monotonic_decreasing
    assert steps["flops"].iloc[-1] < steps["flops"].iloc[0] / 2 and len(steps["times_ms"].iloc[0]) == 2
    assert len(steps["y_pred"].iloc[-1]) == len(dls.valid_ds)
    assert count_params(steps["model"].iloc[-1]) == steps["params"].iloc[-1]     # a copy of the net at each step
    assert count_params(steps["model"].iloc[0]) == steps["params"].iloc[0]
    once = learner(dls, prunable_net(2, True, widths=(8, 16), blocks=1), seed=0)
    row = prune_once(once, 16, 0.5, epochs=2, lr=1e-2, reps=2)
    # the same share of channels goes; global ranking may take them from other layers, so the sizes are close
    assert row["params"] == pytest.approx(steps["params"].iloc[-1], rel=0.1) and row["step"] == 1


def test_block_removal_rows():
    learn = learner(_tiny_dls(), prunable_net(2, False, **TINY), seed=0)
    rows = block_removal(learn)
    assert rows["removed"].tolist() == ["none"] + removable_blocks(learn.model) and not rows["retrained"].any()
    assert isinstance(learn.model.get_submodule(rows["removed"].iloc[1]), Block)     # the learner's net is intact
    assert rows["drop"].iloc[0] == 0 and np.allclose(rows["drop"], rows["balanced_accuracy"].iloc[0]
                                                     - rows["balanced_accuracy"])
    assert block_removal(learn, epochs=1)["retrained"].all()


def test_export_reload_and_onnx_give_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    pruned = prune_copy(prunable_net(2, True, widths=(8, 16), blocks=1), 16, 0.5).eval()
    paths = export_pruned(pruned, tmp_path, 16)
    x = torch.randn(5, 3, 16, 16)
    reloaded = load_pruned(prunable_net(2, True, widths=(8, 16), blocks=1), paths["state_dict"])
    with torch.no_grad():
        ref = pruned(x)
        assert torch.allclose(reloaded(x), ref)
    assert count_params(reloaded) == count_params(pruned)
    assert np.allclose(onnx_outputs(paths["onnx"], x), ref.numpy(), atol=1e-5)
    times = onnx_latency({"a": paths["onnx"], "b": paths["onnx"]}, 16, bs=4, reps=3)
    assert set(times) == {"a", "b"} and len(times["a"]) == 3 and min(times["b"]) > 0
    assert export_check(pruned, paths, prunable_net(2, True, widths=(8, 16), blocks=1), x)["onnx_max_diff"] < 1e-5
    with pytest.raises(RuntimeError):             # a state dict of another architecture is refused, not half-loaded
        load_pruned(prunable_net(2, True, widths=(8, 16), blocks=2), paths["state_dict"])


def test_model_cost_fields():
    cost = model_cost(prunable_net(2, **TINY), 16, bs=4, reps=2)
    assert set(cost) == {"params", "flops", "ms_per_batch", "times_ms"} and len(cost["times_ms"]) == 2


def test_train_from_scratch_keeps_the_learning_rate_the_tune_cells_chose():
    lrs = (1e-5, 3e-2)
    run = train_from_scratch(_tiny_dls(tune="flipped"), True, (4, 8), 1, epochs=2, lrs=lrs, seed=0)
    sweep, lr = run.extra["lr_sweep"], run.settings["lr"]
    assert set(sweep) == set(lrs) and lr == max(sweep, key=sweep.get)           # chosen by the tune cells' score
    assert sweep[lr] == run.row()["tune_balanced_accuracy"] == run.tune_metrics()["balanced_accuracy"]
    # the tune labels are the test labels flipped: the rate the test cells would pick is the other one
    test = {x: 1 - v for x, v in sweep.items()}
    assert test[lr] == pytest.approx(run.metrics["balanced_accuracy"])
    assert len(set(sweep.values())) == 2 and lr == min(test, key=test.get)
    assert run.learn.history.rows[-1]["balanced_accuracy"] == run.metrics["balanced_accuracy"]
    assert run.probs.shape == (len(run.y_true), 2) and np.array_equal(run.y_pred, run.learn.history.preds[-1])
    copy = fresh_learner(run.learn)
    assert copy.model is not run.learn.model
    assert all(torch.equal(a, b) for a, b in zip(copy.model.state_dict().values(), run.learn.model.state_dict().values()))


def test_train_from_scratch_ignores_the_test_cells_and_needs_tune_cells_to_choose():
    lrs = (1e-5, 3e-2)
    clean = train_from_scratch(_tiny_dls(tune="flipped"), True, (4, 8), 1, epochs=2, lrs=lrs, seed=0)
    poisoned = train_from_scratch(_tiny_dls(tune="flipped", flip_test=True), True, (4, 8), 1, epochs=2, lrs=lrs,
                                  seed=0)
    assert poisoned.settings["lr"] == clean.settings["lr"] and poisoned.extra["lr_sweep"] == clean.extra["lr_sweep"]
    assert poisoned.metrics["balanced_accuracy"] == pytest.approx(1 - clean.metrics["balanced_accuracy"])
    with pytest.raises(NoTuneCells, match="tune=True"):
        train_from_scratch(_tiny_dls(), True, (4, 8), 1, epochs=1, lrs=lrs, seed=0)
    one = train_from_scratch(_tiny_dls(), True, (4, 8), 1, epochs=1, lrs=(1e-2,), seed=0)   # nothing to choose
    assert one.settings["lr"] == 1e-2 and one.extra["lr_sweep"] == {}


def test_first_reaching_picks_the_first_step_with_enough_savings():
    steps = pd.DataFrame(dict(step=[0, 1, 2, 3], flops=[100, 70, 45, 20]))
    assert first_reaching(steps, 2.0)["step"] == 2 and first_reaching(steps, 10.0)["step"] == 3


def test_removal_gap_is_the_difference_of_mean_drops():
    y = np.array([0, 1] * 20)
    wrong = 1 - y
    half = np.where(np.arange(40) < 20, y, wrong)         # right on the first 20 images only: accuracy 0.5
    plain = pd.DataFrame(dict(removed=["none", "a", "b"], y_true=[y] * 3, y_pred=[y, wrong, half]))
    resnet = pd.DataFrame(dict(removed=["none", "a", "b"], y_true=[y] * 3, y_pred=[y, y, half]))
    est = removal_gap(plain, resnet, metric="accuracy", n=200)
    assert est.effect == pytest.approx(((1 - 0) + (1 - 0.5)) / 2 - ((1 - 1) + (1 - 0.5)) / 2)
    assert est.low <= est.effect <= est.high


def test_train_from_scratch_repeats_with_the_same_seed():
    torch.manual_seed(123)
    a = train_from_scratch(_tiny_dls(), True, (4, 8), 1, epochs=1, lrs=(1e-2,), seed=3)
    torch.manual_seed(456)                        # whatever ran before, the seed decides the initial weights
    b = train_from_scratch(_tiny_dls(), True, (4, 8), 1, epochs=1, lrs=(1e-2,), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.learn.model.state_dict().values(), b.learn.model.state_dict().values()))


# ---------------------------------------------------------------- importances: names or callables

def _known_weakest_net():
    """Conv(3 -> 4) + BN + ReLU + head where filter 2 has by far the lowest mean activation and the most zeros (BN
    bias -5) but the largest L1 norm (weights x 5), and filter 0 the smallest L1 norm (weights x 0.2)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.tensor([0.2, 1.0, 5.0, 1.0]).view(4, 1, 1, 1))
        net[1].bias.copy_(torch.tensor([1.0, 0.5, -5.0, 2.0]))
    return net


def _kept_filters(net: nn.Module, pruned: nn.Module) -> list:
    w, kept = net[0].weight.detach(), pruned[0].weight.detach()
    return [i for i in range(len(w)) if any(torch.equal(w[i], k) for k in kept)]


def test_mean_activation_importance_removes_the_filters_with_the_lowest_mean_activation():
    net, x = _known_weakest_net(), torch.randn(64, 3, 8, 8)
    scores = filter_scores(net, x)
    assert scores["mean_activation"].argsort().tolist()[:2] == [2, 1] and int(scores["l1"].idxmin()) == 0
    for importance in ("mean_activation", ScoreImportance.of(scores, "mean_activation")):
        assert _kept_filters(net, prune_copy(net, 8, 0.25, importance, batches=x)) == [0, 1, 3]
        assert _kept_filters(net, prune_copy(net, 8, 0.5, importance, batches=x)) == [0, 3]
    assert _kept_filters(net, prune_copy(net, 8, 0.25)) == [1, 2, 3]         # L1: the smallest weights go


def test_apoz_importance_removes_the_filter_with_the_most_zeros():
    net, x = _known_weakest_net(), torch.randn(64, 3, 8, 8)
    apoz = filter_scores(net, x)["apoz"]
    most_zeros = int(apoz.idxmax())
    for importance in ("apoz", ScoreImportance.of(filter_scores(net, x), "apoz")):
        kept = _kept_filters(net, prune_copy(net, 8, 0.25, importance, batches=x))
        assert most_zeros not in kept and len(kept) == 3


def test_the_default_l1_pruning_is_torch_prunings_magnitude_importance_as_before():
    import torch_pruning as tp
    torch.manual_seed(0)
    net = prunable_net(2, True, widths=(8, 16), blocks=1)
    default = prune_copy(net, 16, 0.5)
    explicit = prune_copy(net, 16, 0.5, tp.importance.MagnitudeImportance(p=1))   # what "l1" built before
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_activation_importance_measures_again_at_every_step_and_fixed_scores_refuse_a_pruned_layer():
    torch.manual_seed(0)
    net, x = prunable_net(2, True, widths=(8, 16), blocks=1).eval(), torch.randn(24, 3, 16, 16)
    pruner = make_pruner(net, 16, 0.5, steps=2, importance="apoz", batches=x)
    pruner.step()
    pruner.step()   # fixed scores of the first step's widths would be refused here: they are measured again
    assert net.training is False and net(x[:2]).shape == (2, 2)
    assert count_params(net) < count_params(prunable_net(2, True, widths=(8, 16), blocks=1)) / 2.5
    fixed = ScoreImportance.of(filter_scores(net, x), "l1")
    pruned = prune_copy(net, 16, 0.3)
    with pytest.raises(ValueError, match="was pruned since they were measured"):
        make_pruner(pruned, 16, 0.3, importance=fixed).step()


def test_activation_rankings_need_images_and_names_are_checked():
    net = prunable_net(2, **TINY)
    with pytest.raises(ValueError, match="batches="):
        make_pruner(net, 16, 0.5, importance="mean_activation")
    with pytest.raises(ValueError, match="unknown ranking"):
        ScoreImportance.of(filter_scores(net, torch.randn(4, 3, 16, 16)), "taylor")


def test_activation_rankings_are_measured_on_the_tune_cells_never_the_test_cells(monkeypatch):
    import convtips_lib.topics.prune as prune
    seen = []
    real = prune.make_pruner
    monkeypatch.setattr(prune, "make_pruner", lambda *a, **kw: seen.append(a[5]) or real(*a, **kw))
    dls = _tiny_dls(tune="flipped")
    learn = learner(dls, prunable_net(2, True, **TINY), seed=0)
    p0 = count_params(learn.model)
    row = prune_once(learn, 16, 0.5, epochs=1, lr=1e-2, reps=1, importance="mean_activation")
    assert row["params"] < p0 and len(row["y_pred"]) == len(learn.dls.valid_ds)
    prune_iteratively(learner(dls, prunable_net(2, True, **TINY), seed=0), 16, 0.5, 1, 1, 1e-2, reps=1,
                      importance="apoz")
    assert seen == [dls.tune, dls.tune]
    assert ranking_batches(_tiny_dls()) is not None and ranking_batches(_tiny_dls()).dataset.x.shape[0] == 36


# ---------------------------------------------------------------- every ranking to the same ratio

def test_ranked_channels_count_a_shortcuts_coupled_channels_once():
    plain, resnet = prunable_net(2, False, widths=(8, 16), blocks=1), prunable_net(2, True, widths=(8, 16), blocks=1)
    assert ranked_channels(plain, 16) == 8 + 8 + 8 + 8 + 16 + 16 + 16        # every conv is its own group
    # a stage's stride-2 conv and its block's last conv are added together: their channels are ranked once
    assert ranked_channels(resnet, 16) == 8 + 8 + 8 + 16 + 16
    resnet.train()
    before = [b.clone() for b in resnet.buffers()]
    ranked_channels(resnet, 16)
    assert all(torch.equal(a, b) for a, b in zip(before, resnet.buffers()))   # BatchNorm statistics untouched


def _trained_tiny(residual=True, tune=None):
    learn = learner(_tiny_dls(tune=tune), prunable_net(2, residual, widths=(8, 16), blocks=1), seed=0)
    fit(learn, 1, 1e-2)
    return learn


def test_every_ranking_prunes_a_fresh_copy_to_the_same_share_of_channels():
    learn = _trained_tiny(tune="flipped")
    p0, n0 = count_params(learn.model), ranked_channels(learn.model, 16)
    rows = prune_by_each_ranking(learn, 16, 0.5, epochs=1, lr=1e-2, reps=1)
    assert rows["ranking"].tolist() == ["random", "l1", "l2", "mean_activation", "apoz"]
    assert rows["channels"].tolist() == [n0 // 2] * 5                     # the same share, whichever ranking
    assert (rows["params"] < p0).all() and count_params(learn.model) == p0  # the trained network is left as it was
    # the same share, taken from different layers: random and L1 choose different filters
    widths = rows.set_index("ranking")["widths"]
    assert widths["random"] != widths["l1"]
    y = rows["y_true"].iloc[0]
    assert all(np.array_equal(t, y) for t in rows["y_true"]) and len(y) == len(learn.dls.valid_ds)
    assert all(len(p) == len(y) for p in rows["y_pred"]) and rows["pruned_ba"].between(0, 1).all()
    assert {"flops", "balanced_accuracy", "ms_per_batch"} <= set(rows.columns)


def test_each_ranking_starts_from_the_same_copy_and_seed():
    learn = _trained_tiny()
    twice = prune_by_each_ranking(learn, 16, 0.5, epochs=1, lr=1e-2, rankings=("l1", "l1"), reps=1, seed=3)
    a, b = twice["y_pred"]
    assert np.array_equal(a, b) and twice["pruned_ba"].iloc[0] == twice["pruned_ba"].iloc[1]
    once = prune_once(fresh_learner(learn, 3), 16, 0.5, epochs=1, lr=1e-2, reps=1)   # what section 3 runs
    assert np.array_equal(once["y_pred"], a)


def test_random_and_l1_rankings_remove_different_filters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 2)).eval()
    by_l1 = _kept_filters(net, prune_copy(net, 8, 0.5))
    by_random = _kept_filters(net, prune_copy(net, 8, 0.5, "random"))
    assert by_l1 == _kept_filters(net, prune_copy(net, 8, 0.5))          # a ranking: the same filters every time
    assert len(by_random) == len(by_l1) == 8 and by_random != by_l1       # the same number, other filters


def test_prune_by_each_ranking_refuses_unknown_rankings_before_pruning_any(monkeypatch):
    import convtips_lib.studies.lesson07 as lesson07
    pruned = []
    monkeypatch.setattr(lesson07, "prune_once", lambda *a, **kw: pruned.append(kw["importance"]))
    learn = learner(_tiny_dls(), prunable_net(2, True, **TINY), seed=0)
    for bad in (("l1", "taylor"), (), "l1"):
        with pytest.raises(ValueError, match="one or more of l1, l2, random, mean_activation, apoz"):
            prune_by_each_ranking(learn, 16, 0.5, epochs=1, lr=1e-2, rankings=bad)
    assert pruned == []                                                  # refused before the first copy was pruned


def test_tied_scores_still_remove_exactly_the_share_asked_for():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 2)).eval()
    scores = filter_scores(net, torch.randn(16, 3, 8, 8)).assign(apoz=0.5)   # APoZ counts zeros: ties happen
    kept = _kept_filters(net, prune_copy(net, 8, 0.5, ScoreImportance.of(scores, "apoz")))
    l1 = net[0].weight.detach().abs().sum((1, 2, 3))
    assert kept == sorted(l1.argsort(descending=True)[:4].tolist())      # 4 of 8, the ties broken by the L1 norm


def _linear_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))   # no BatchNorm or dropout: train = eval


def test_distill_from_an_identical_teacher_alone_has_no_gradient_and_the_hard_loss_does():
    from convtips_lib.topics.prune import Distill
    before = _linear_net()
    moved = []
    for cbs in ([Distill(copy.deepcopy(before), alpha=1.0)], []):
        learn = learner(_tiny_dls(), copy.deepcopy(before), cbs=cbs, seed=0, opt_func=SGD)   # SGD: Adam would
        learn.fit(1, 1e-1, wd=0.0)                                # magnify rounding-sized gradients into steps
        moved.append(float((learn.model[1].weight - before[1].weight).abs().max().detach()))
    assert moved[0] < 1e-6 < 1e-3 < moved[1]


class _LossSpy(Callback):
    order = 90

    def after_loss(self):
        if self.training:
            self.seen = (self.pred.detach(), self.yb[0], self.xb[0], float(self.loss))


def test_distill_loss_is_the_mix_of_the_hard_loss_and_the_softened_kl():
    from convtips_lib.topics.prune import Distill
    teacher, spy = _linear_net(1), _LossSpy()
    learn = learner(_tiny_dls(), _linear_net(0), cbs=[Distill(teacher, alpha=0.3, T=2.0), spy], seed=0)
    learn.fit(1, 1e-3)
    pred, y, x, loss = spy.seen
    p_t = torch.softmax(teacher(x) / 2.0, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(pred / 2.0, 1))).sum(1).mean() * 4.0
    want = 0.7 * nn.functional.cross_entropy(pred, y) + 0.3 * kl
    assert loss == pytest.approx(float(want.detach()), rel=1e-4)
    assert teacher.training   # its mode given back after the fit


@pytest.mark.parametrize("kw", [dict(alpha=0.0), dict(alpha=1.5), dict(T=0.0)])
def test_distill_refuses_weights_that_mean_nothing(kw):
    from convtips_lib.topics.prune import Distill
    with pytest.raises(ValueError, match="alpha"):
        Distill(_linear_net(), **kw)


def test_prune_once_with_a_teacher_distils_during_fine_tuning_only():
    learn = _trained_tiny()
    rows = {}
    for name, teacher in (("plain", None), ("distilled", learn.model)):
        copy_ = fresh_learner(learn, 0)
        seen = []
        spy = type("Spy", (Callback,), {"after_loss": lambda self: seen.append(
            any(type(cb).__name__ == "Distill" for cb in self.learn.cbs))})()
        copy_.add_cb(spy)
        rows[name] = prune_once(copy_, 16, 0.5, 1, 1e-2, reps=1, teacher=teacher)
        assert any(seen) is (teacher is not None)           # the teacher's loss was in the fine-tuning ...
        assert not any(type(cb).__name__ == "Distill" for cb in copy_.cbs)   # ... and is gone after it
    assert rows["plain"]["params"] == rows["distilled"]["params"]   # the same cut, only the fine-tuning differs
