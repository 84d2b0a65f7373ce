"""The protocol: train, tune and test roles. Choices read the tune cells only; claims are judged on the test cells."""
import numpy as np
import pandas as pd
import pytest
import torch

from convtips_lib.core.data import TUNE_N, elpv_dls, elpv_roles, preload_dls, tensor_dls
from convtips_lib.core.profiles import profile
from convtips_lib.core.train import NoTuneCells, Run, best_epoch, best_on_tune, learner, fit


def _paths(items) -> set:
    return set(map(str, items["path"]))


def test_tune_dls_keep_the_three_roles_apart():
    cfg = profile("smoke")
    dls = elpv_dls(cfg, frac=0.05, tune=True)
    roles = elpv_roles().assign(path=lambda d: d["path"].astype(str)).set_index("path")["role"]
    train, valid, tune = _paths(dls.train_ds.items), _paths(dls.valid_ds.items), _paths(dls.tune.dataset.items)
    assert {roles[p] for p in train} == {"train"} and {roles[p] for p in valid} == {"test"}
    assert {roles[p] for p in tune} == {"tune"} and len(tune) == TUNE_N   # all tune cells, whatever the fraction
    assert len(valid) == 656


def test_tune_without_a_role_column_says_how_to_fix_it():
    from convtips_lib.core.data import elpv_frame
    with pytest.raises(ValueError, match="role"):
        elpv_dls(profile("smoke"), df=elpv_frame(), tune=True)


def _tiny_tensor_dls(tune=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return tensor_dls(x[:48], y[:48], x[48:80], y[48:80], ["a", "b"], bs=16,
                      tune=(x[80:], y[80:]) if tune else None)


def test_history_predicts_the_tune_cells_after_every_epoch():
    dls = _tiny_tensor_dls()
    learn = learner(dls, torch.nn.Linear(4, 2), seed=0)
    fit(learn, 3, 1e-1)
    run = Run.of(learn, {}, 0.0)
    assert run.has_tune and len(run.tune_epoch_probs) == 3 and run.tune_epoch_probs[0].shape == (16, 2)
    assert np.array_equal(run.tune_y, dls.tune.dataset.y.numpy())
    assert "tune_balanced_accuracy" in run.row() and "tune_balanced_accuracy" in run.history
    assert 1 <= best_epoch(run) <= 3


def test_a_run_without_tune_cells_refuses_to_choose():
    learn = learner(_tiny_tensor_dls(tune=False), torch.nn.Linear(4, 2), seed=0)
    fit(learn, 1, 1e-1)
    run = Run.of(learn, {}, 0.0)
    with pytest.raises(NoTuneCells, match="tune=True"):
        best_epoch(run)
    with pytest.raises(NoTuneCells, match="tune=True"):
        best_on_tune(pd.DataFrame([run.row()]))


def test_the_choice_reads_the_tune_cells_and_never_the_test_cells():
    runs = pd.DataFrame(dict(optimizer=["sgd"] * 3 + ["adam"] * 3, lr=[0.01, 0.1, 1.0, 1e-4, 1e-3, 1e-2],
                             tune_balanced_accuracy=[0.6, 0.8, 0.7, 0.9, 0.5, 0.6],
                             balanced_accuracy=[0.9, 0.5, 0.6, 0.5, 0.9, 0.9]))
    picked = best_on_tune(runs, "optimizer")
    assert dict(zip(picked.optimizer, picked.lr)) == {"sgd": 0.1, "adam": 1e-4}
    poisoned = runs.assign(balanced_accuracy=np.random.default_rng(0).permutation(runs.balanced_accuracy.values))
    assert best_on_tune(poisoned, "optimizer").index.tolist() == picked.index.tolist()   # test column ignored


def test_a_diverged_run_never_wins_the_choice():
    runs = pd.DataFrame(dict(lr=[0.1, 1.0], tune_balanced_accuracy=[0.6, 0.9], finite=[True, False]))
    assert best_on_tune(runs)["lr"].item() == 0.1


def test_the_best_epoch_follows_the_tune_cells_not_the_test_cells():
    y = np.array([0, 1, 0, 1])
    good, bad = np.eye(2)[y], np.eye(2)[1 - y]
    run = Run({}, pd.DataFrame(), y, y, good, {}, 0.0, epoch_probs=[good, good, bad], tune_y=y,
              tune_epoch_probs=[bad, good, bad])
    assert best_epoch(run) == 2


def test_preloaded_dls_keep_the_tune_cells():
    dls = preload_dls(elpv_dls(profile("smoke"), frac=0.02, img_size=16, tune=True))
    assert len(dls.tune.dataset) == TUNE_N and dls.tune.dataset.x.shape[1:] == (3, 16, 16)
    assert abs(float(dls.train.dataset.x.mean())) < 0.05   # standardised with the training images' statistics
