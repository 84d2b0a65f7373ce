"""Tests for convtips_lib.topics.optim: every optimizer trains, schedules, the Adam -> SGD switch, the sweep's
best rates (chosen on the tune cells only) and sensitivity, on tiny tensor data."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.optimizer import OptimWrapper
from torch import nn

from convtips_lib.core.data import tensor_dls
from convtips_lib.core.train import NoTuneCells, learner
from convtips_lib.topics.optim import DEFAULT_LRS, OPTIMIZERS, SCHEDULES, SwitchOptimizer, fit_schedule, lr_grid, opt_func, sgd_lr_from_adam
from convtips_lib.studies.lesson05 import (at_chosen, lrs_per_fold, cv_sweep, cv_train, init_drop, init_drop_gap,
                                          loss_curves, lr_sensitivity, lr_width_gap, scale_init, small_net,
                                          steps_ratio, steps_to_target, train_optimizer)


def _draw(g, n):
    """n 8 x 8 'images' of two separable classes (mean brightness tells them apart), from generator `g`."""
    y = torch.arange(n) % 2
    return torch.randn(n, 3, 8, 8, generator=g) * 0.5 + y[:, None, None, None] * 1.0, y


@pytest.fixture(scope="module")
def dls():
    """Two separable classes of 8 x 8 'images': 96 to train on, 40 to judge."""
    g = torch.Generator().manual_seed(0)
    (xt, yt), (xv, yv) = _draw(g, 96), _draw(g, 40)
    return tensor_dls(xt, yt, xv, yv, ["a", "b"], bs=16)


@pytest.fixture(scope="module")
def tune_dls():
    """The same kind of data with 30 tune cells beside the 40 test cells (`dls.tune`)."""
    g = torch.Generator().manual_seed(1)
    (xt, yt), (xv, yv), tune = _draw(g, 96), _draw(g, 40), _draw(g, 30)
    return tensor_dls(xt, yt, xv, yv, ["a", "b"], bs=16, tune=tune)


def _tiny(n_out):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, n_out))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(dls, name):
    run = train_optimizer(dls, name, DEFAULT_LRS[name] / 10 if name == "sgd" else DEFAULT_LRS[name], 3, seed=0,
                          net=_tiny).row(history=True)
    assert run["finite"] and np.mean(run["losses"][-6:]) < np.mean(run["losses"][:6])
    assert len(run["history"]) == 3


def test_unknown_optimizer_lists_the_known():
    with pytest.raises(ValueError, match="choose one of sgd, adam, adamw, rmsprop, adadelta"):
        opt_func("lion")
    with pytest.raises(ValueError, match="unknown optimizer"):
        lr_grid("lion")


def test_lr_grid_is_centred_on_the_default():
    assert lr_grid("sgd", (-1, 0, 1)) == [0.01, 0.1, 1.0]
    assert lr_grid("adam", (0,)) == [DEFAULT_LRS["adam"]]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_trains_and_ends_where_it_should(dls, schedule):
    learn = learner(dls, _tiny(2), opt_func=opt_func("sgd"), seed=0)
    hist = fit_schedule(learn, 2, 0.05, schedule)
    lr_end = learn.opt.hypers[0]["lr"]
    assert len(hist) == 2 and np.isfinite(hist["train_loss"]).all()
    if schedule in ("constant", "step"):     # step: the last quarter runs at lr / 100
        assert lr_end == pytest.approx({"constant": 0.05, "step": 0.0005}[schedule])
    else:                                    # cosine and one-cycle anneal: the last batch is far below the peak
        assert lr_end < 0.05 / 20


def test_one_cycle_works_for_adadelta_which_has_no_momentum(dls):
    run = train_optimizer(dls, "adadelta", 1.0, 2, seed=0, net=_tiny)
    assert run.extra["finite"] and run.settings["optimizer"] == "adadelta"


def test_bad_schedule_lists_the_known(dls):
    learn = learner(dls, _tiny(2), opt_func=opt_func("sgd"), seed=0)
    with pytest.raises(ValueError, match="choose one of constant, step, cosine, one-cycle"):
        fit_schedule(learn, 1, 0.1, "warm")


def test_switch_changes_the_optimizer_at_the_epoch_and_keeps_groups_and_schedule(dls):
    seen = []
    from fastai.callback.core import Callback

    class Spy(Callback):
        order = SwitchOptimizer.order + 1

        def before_epoch(self):
            inner = self.opt.opt
            seen.append((self.epoch, type(inner).__name__, len(inner.param_groups)))

        def after_batch(self):
            if self.training:
                seen.append(("lr", self.epoch, self.opt.hypers[0]["lr"]))

    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 2))
    learn = learner(dls, model, opt_func=opt_func("adam"), cbs=[SwitchOptimizer(2), Spy()], seed=0,
                    splitter=lambda m: [list(m[1].parameters()), list(m[3].parameters())])
    fit_schedule(learn, 4, 1e-3, "cosine")
    epochs = [s for s in seen if s[0] != "lr"]
    assert [e[1] for e in epochs] == ["Adam", "Adam", "SGD", "SGD"] and {e[2] for e in epochs} == {2}
    switch = learn.cbs.filter(lambda c: isinstance(c, SwitchOptimizer))[0]
    assert switch.switched_at == 2 and switch.lr_scale > 0
    lrs = [lr for tag, ep, lr in (s for s in seen if s[0] == "lr") if ep >= 2]
    adam_lrs = [lr for tag, ep, lr in (s for s in seen if s[0] == "lr") if ep < 2]
    assert lrs == sorted(lrs, reverse=True) and adam_lrs == sorted(adam_lrs, reverse=True)   # cosine kept
    assert np.isfinite(learn.recorder.losses[-1])


def test_switch_refuses_epoch_zero():
    with pytest.raises(ValueError, match="at_epoch must be >= 1"):
        SwitchOptimizer(0)


def test_sgd_lr_from_adam_matches_a_hand_computation():
    p = nn.Parameter(torch.zeros(5))
    opt = torch.optim.Adam([p], lr=0.01, eps=1e-8)
    p.grad = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    opt.step()   # after one step v_hat = g^2, so lr / sqrt(v_hat) = 0.01 / |g|: median 0.01 / 3
    assert sgd_lr_from_adam(opt, momentum=0.9) == pytest.approx(0.01 / 3 * (1 - 0.9), rel=1e-5)
    with pytest.raises(ValueError, match="no Adam state"):
        sgd_lr_from_adam(torch.optim.Adam([nn.Parameter(torch.zeros(2))]))


def test_sgd_lr_from_fastai_adam_matches_torch_adam_on_the_same_gradients():
    """fastai's own Adam keeps sqr_avg and step (hypers sqr_mom, eps) where torch's keeps exp_avg_sq and step (betas,
    eps): after the same gradients both give the same debiased second moment, so the same SGD rate."""
    from fastai.optimizer import Adam
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 7, generator=g) for _ in range(3)]
    pf, pt = nn.Parameter(torch.zeros(2, 7)), nn.Parameter(torch.zeros(2, 7))
    fastai_adam = Adam([pf], lr=0.01, mom=0.9, sqr_mom=0.999, eps=1e-8, wd=0.0)
    torch_adam = torch.optim.Adam([pt], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for grad in grads:
        pf.grad, pt.grad = grad.clone(), grad.clone()
        fastai_adam.step()
        torch_adam.step()
    assert torch.allclose(fastai_adam.state[pf]["sqr_avg"], torch_adam.state[pt]["exp_avg_sq"])
    assert sgd_lr_from_adam(fastai_adam) == pytest.approx(sgd_lr_from_adam(torch_adam), rel=1e-6)
    assert sgd_lr_from_adam(OptimWrapper(opt=torch_adam)) == sgd_lr_from_adam(torch_adam)   # as opt_func('adam')


def test_switch_refuses_torch_rmsprop_up_front_unless_given_a_scale(dls):
    learn = learner(dls, _tiny(2), opt_func=opt_func("rmsprop"), cbs=[SwitchOptimizer(1)], seed=0)
    with pytest.raises(ValueError, match="trains with torch's RMSprop: use Adam"):
        learn.fit(2, 1e-3)
    assert learn.history.rows == []                        # refused before the first epoch
    fixed = SwitchOptimizer(1, lr_scale=3.0)
    learn = learner(dls, _tiny(2), opt_func=opt_func("rmsprop"), cbs=[fixed], seed=0)
    learn.fit(2, 1e-3)
    assert fixed.switched_at == 1 and type(learn.opt.opt).__name__ == "SGD"


def _sweep():
    """A pooled sweep (one row per optimizer and rate, two folds) whose test columns and tune columns disagree on
    the best rate: on test Adam is best at 1e-3 and SGD at 0.1 (1.0 diverged); on each fold's tune cells Adam is best
    at 1e-2 in fold 0 and 1e-4 in fold 1, SGD at 0.01 in both, and SGD's diverged run scores best of all."""
    y = np.array([0, 1] * 50)
    right = lambda k: np.where(np.arange(100) < k, y, 1 - y)  # noqa: E731 - predictions right on the first k cells
    rows = [dict(optimizer="adam", lr=lr, balanced_accuracy=acc, fold_tune=tune, finite=True, fold_finite=[True] * 2,
                 y_true=y, y_pred=right(int(acc * 100)))
            for lr, acc, tune in ((1e-4, 0.80, [0.70, 0.9]), (1e-3, 0.81, [0.71, 0.6]), (1e-2, 0.80, [0.75, 0.5]))]
    rows += [dict(optimizer="sgd", lr=lr, balanced_accuracy=acc, fold_tune=tune, finite=f, fold_finite=[f, f],
                  y_true=y, y_pred=right(int(acc * 100)))
             for lr, acc, tune, f in ((0.01, 0.60, [0.8, 0.8], True), (0.1, 0.84, [0.62, 0.6], True),
                                      (1.0, 0.99, [0.99, 0.99], False))]
    return pd.DataFrame(rows)


def test_chosen_lrs_follow_each_folds_tune_cells_and_never_pick_a_diverged_run():
    assert lrs_per_fold(_sweep()) == {"adam": [1e-2, 1e-4], "sgd": [0.01, 0.01]}   # on test: adam 1e-3, sgd 0.1


def test_chosen_lrs_never_read_the_test_columns():
    sweep = _sweep()
    poisoned = sweep.assign(balanced_accuracy=np.random.default_rng(0).permutation(sweep["balanced_accuracy"]),
                            y_pred=[np.zeros(100, int)] * len(sweep))
    poisoned.loc[poisoned["lr"] == 1e-3, "balanced_accuracy"] = 10.0    # a test score no choice may follow
    assert lrs_per_fold(poisoned) == lrs_per_fold(sweep)
    worse = sweep.copy()
    worse.at[2, "fold_tune"] = [0.0, 0.5]
    assert lrs_per_fold(worse)["adam"] == [1e-3, 1e-4]                     # the tune scores alone move the choice


def test_chosen_lrs_refuse_a_sweep_without_tune_cells():
    with pytest.raises(ValueError, match="fold_tune"):
        lrs_per_fold(_sweep().drop(columns="fold_tune"))
    with pytest.raises(NoTuneCells, match="tune=True"):
        lrs_per_fold(_sweep().assign(fold_tune=[[np.nan, np.nan]] * 6))


def test_lr_sensitivity_measures_the_width_of_the_good_rates_in_decades():
    sens = lr_sensitivity(_sweep(), within=0.015).set_index("optimizer")
    assert sens.loc["adam", "n_good"] == 3 and sens.loc["adam", "decades"] == pytest.approx(2)
    assert sens.loc["sgd", "n_good"] == 1 and sens.loc["sgd", "decades"] == 0
    assert sens.loc["sgd", "test_best"] == pytest.approx(0.84)     # the diverged run's 0.99 is not a best
    narrow = lr_sensitivity(_sweep(), within=0.005).set_index("optimizer")
    assert narrow.loc["adam", "n_good"] == 1 and narrow.loc["adam", "decades"] == 0


def test_lr_width_gap_has_an_interval_around_the_width_difference():
    est = lr_width_gap(_sweep(), "adam", "sgd", within=0.015, n=500)
    assert est.effect == pytest.approx(2.0) and est.low <= est.effect <= est.high
    assert lr_width_gap(_sweep(), "sgd", "adam", within=0.015, n=200).effect == pytest.approx(-2.0)


def test_a_diverged_run_is_out_of_the_band_in_the_table_and_in_the_interval_alike():
    sweep = _sweep()
    y = sweep["y_true"].iloc[0]
    sweep.at[5, "y_pred"] = np.where(np.arange(100) < 84, y, 1 - y)   # the diverged run predicts like the best one
    sweep.at[5, "balanced_accuracy"] = 0.84
    sens = lr_sensitivity(sweep).set_index("optimizer")
    assert sens.loc["sgd", "n_good"] == 1 and sens.loc["sgd", "decades"] == 0
    est = lr_width_gap(sweep, "adam", "sgd", n=200)
    assert est.effect == pytest.approx(sens.loc["adam", "decades"] - sens.loc["sgd", "decades"])


def _fold_dls(seed=1, n_folds=2):
    """Fold-like DataLoaders of separable tiny 'images', each with its own tune cells."""
    g = torch.Generator().manual_seed(seed)
    return [tensor_dls(*_draw(g, 64), *_draw(g, 40), ["a", "b"], bs=16, tune=_draw(g, 30)) for _ in range(n_folds)]


def test_cv_train_pools_every_fold_and_keeps_each_folds_tune_score_and_losses():
    fdls = _fold_dls()
    run = cv_train(fdls, "sgd", [0.05, 0.01], 2, seed=0, net=_tiny)
    assert len(run.y_pred) == 80 and run.extra["fold_lrs"] == [0.05, 0.01] and run.settings["lr"] == "per fold"
    assert len(run.extra["fold_tune"]) == 2 and all(0 <= t <= 1 for t in run.extra["fold_tune"])
    assert len(run.extra["fold_losses"]) == 2 and len(run.extra["fold_losses"][0]) == 2 * 4
    assert cv_train(fdls, "sgd", 0.05, 1, seed=0, net=_tiny).settings["lr"] == 0.05
    with pytest.raises(ValueError, match="3 learning rates for 2 folds"):
        cv_train(fdls, "sgd", [0.1, 0.2, 0.3], 1, net=_tiny)


def test_a_real_cv_sweep_chooses_by_each_folds_tune_cells():
    fdls = _fold_dls()
    sweep = cv_sweep(fdls, ["sgd"], {"sgd": [1e-4, 0.05]}, 2, seed=0)
    chosen = lrs_per_fold(sweep)["sgd"]
    for fold in range(2):
        tune = {r.lr: r.fold_tune[fold] for r in sweep.itertuples()}
        assert chosen[fold] == max(tune, key=tune.get)


def test_at_chosen_pools_the_sweeps_own_runs_as_cv_train_would_train_them_again():
    fdls = _fold_dls()
    sweep = cv_sweep(fdls, ["sgd"], {"sgd": [1e-4, 0.05]}, 2, seed=0)
    chosen = {"sgd": [0.05, 1e-4]}
    row = at_chosen(sweep, chosen).iloc[0]
    again = cv_train(fdls, "sgd", chosen["sgd"], 2, seed=0)
    assert row["fold_lrs"] == [0.05, 1e-4] and np.array_equal(row["y_pred"], again.y_pred)
    assert row["fold_losses"] == again.extra["fold_losses"] and row["balanced_accuracy"] == again.metrics["balanced_accuracy"]


def test_steps_to_target_counts_the_first_crossing_and_censors_a_miss():
    assert steps_to_target([0.9, 0.6, 0.4, 0.5, 0.3], 0.45) == 3
    assert steps_to_target([0.9, 0.8], 0.1) == 3                   # never reached: one step more than it had


def test_steps_ratio_is_the_ratio_of_median_steps_over_folds_and_seeds():
    runs = pd.DataFrame([dict(optimizer="sgd", fold_losses=[[0.9] * 9 + [0.1], [0.9] * 7 + [0.1]]),
                         dict(optimizer="sgd", fold_losses=[[0.9] * 11 + [0.1], [0.9] * 9 + [0.1]]),
                         dict(optimizer="adam", fold_losses=[[0.9, 0.1], [0.9] * 2 + [0.1]]),
                         dict(optimizer="adam", fold_losses=[[0.1], [0.9, 0.1]])])
    est = steps_ratio(runs, "sgd", "adam", 0.5, n=200)      # sgd steps 10, 8, 12, 10; adam 2, 3, 1, 2
    assert est.effect == pytest.approx(10 / 2) and est.low <= est.effect <= est.high and est.metric == "x fewer steps"


def test_scale_init_scales_conv_and_linear_weights_and_keeps_the_forward_behind_batchnorm():
    torch.manual_seed(0)
    a = small_net(2).eval()
    b = scale_init(copy.deepcopy(a), 4.0)
    assert torch.allclose(b[0].weight, 4 * a[0].weight) and torch.allclose(b[-1].weight, 4 * a[-1].weight)
    x = torch.randn(3, 3, 32, 32)
    a.train(), b.train()
    feats = lambda m: m[:-1](x)  # noqa: E731 - everything before the linear head
    assert torch.allclose(feats(a), feats(b), atol=1e-3)   # up to BatchNorm's eps


def test_init_drop_and_its_gap_read_the_scaled_runs_against_scale_one():
    y = np.array([0, 1] * 50)
    right = lambda k: np.where(np.arange(100) < k, y, 1 - y)  # noqa: E731
    preds = {("sgd", 1.0): right(90), ("sgd", 4.0): right(60), ("sgd", 0.25): right(70),
             ("adam", 1.0): right(85), ("adam", 4.0): right(80), ("adam", 0.25): right(85)}
    drops = init_drop(y, preds, (0.25, 4.0))
    assert drops["sgd"] == pytest.approx(0.25) and drops["adam"] == pytest.approx(0.025)
    est = init_drop_gap(y, preds, (0.25, 4.0), n=300)
    assert est.effect == pytest.approx(0.225) and est.low <= est.effect <= est.high


def test_loss_curves_shapes(dls):
    runs = pd.DataFrame([train_optimizer(dls, "adam", 1e-3, 2, seed=s, net=_tiny).row(history=True) for s in (0, 1)])
    curve = loss_curves(runs, smooth=3)
    assert set(curve["seed"]) == {0, 1} and curve.groupby("seed")["step"].max().tolist() == [12, 12]


def test_small_net_runs_on_small_images():
    out = small_net(2)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2)


def test_same_seed_same_run(dls):
    a = train_optimizer(dls, "sgd", 0.05, 1, seed=4, net=_tiny)
    b = train_optimizer(dls, "sgd", 0.05, 1, seed=4, net=_tiny)
    assert a.extra["losses"] == b.extra["losses"]
