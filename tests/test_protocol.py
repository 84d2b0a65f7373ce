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
    n = elpv_roles(cfg.valid_n, cfg.tune_n)["role"].value_counts()
    assert {roles[p] for p in tune} == {"tune"} and len(tune) == n["tune"]   # all of them, whatever the fraction
    assert len(valid) == n["test"]


def test_smoke_predicts_fewer_test_and_tune_cells_and_the_other_profiles_all():
    """Smoke decides nothing, so its loaders judge on a stratified, seeded subset; cpu and gpu on every cell."""
    full, small = elpv_roles(), elpv_roles(128, 64)
    n = small["role"].value_counts()
    assert abs(n["test"] - 128) <= 4 and abs(n["tune"] - 64) <= 4 and n["train"] == (full.role == "train").sum()
    assert set(small["path"]) <= set(full["path"]) and small.equals(elpv_roles(128, 64))        # seeded
    assert (small.set_index("path")["role"] == full.set_index("path")["role"].loc[small["path"]]).all()
    for role in ("test", "tune"):
        assert set(small[small.role == role]["label_4"]) == set(full["label_4"])                # stratified
    assert (profile("smoke").valid_n, profile("smoke").tune_n) == (128, 64)
    assert all((profile(p).valid_n, profile(p).tune_n) == (0, 0) for p in ("cpu", "gpu"))
    assert len(elpv_dls(profile("cpu").with_(img_size=16), frac=0.02, tune=True).tune.dataset) == TUNE_N


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
    cfg = profile("smoke")
    dls = preload_dls(elpv_dls(cfg, frac=0.02, img_size=16, tune=True))
    assert len(dls.tune.dataset) == (elpv_roles(cfg.valid_n, cfg.tune_n).role == "tune").sum() and dls.tune.dataset.x.shape[1:] == (3, 16, 16)
    assert abs(float(dls.train.dataset.x.mean())) < 0.05   # standardised with the training images' statistics


# ---------------------------------------------------------------- cross-validation over all 2,624 cells
from convtips_lib.core.data import CV_FOLDS, elpv_folds, fold_tensor_dls, preload_cells, split_cells, thin_roles  # noqa: E402
from convtips_lib.core.train import at_chosen_per_fold, cross_validate, pool_folds, pool_per_fold  # noqa: E402


def test_folds_judge_every_cell_once_and_keep_roles_apart():
    folds = elpv_folds()
    assert len(folds) == CV_FOLDS
    test = np.concatenate([f.index[f["role"] == "test"] for f in folds])
    assert len(test) == 2624 and len(set(test)) == 2624                        # each cell a test cell exactly once
    for f in folds:
        n = f["role"].value_counts()
        assert 520 <= n["test"] <= 530 and abs(n["tune"] - (2624 - n["test"]) / 5) <= 6
        share = f.groupby("role")["defective"].mean()
        assert share.max() - share.min() < 0.02                                # stratified
    assert all(a["role"].equals(b["role"]) for a, b in zip(folds, elpv_folds()))   # seeded
    with pytest.raises(ValueError, match="k must"):
        elpv_folds(1)


def test_split_cells_follows_the_role_table_and_names_a_missing_cell():
    folds = elpv_folds()
    paths = list(folds[0]["path"].astype(str))
    x, y = torch.arange(len(paths)).float()[:, None], torch.zeros(len(paths), dtype=torch.long)
    parts = split_cells(x, y, paths, folds[0])
    order = folds[0].index[folds[0]["role"] == "test"]
    assert torch.equal(parts["test"][0][:, 0].long(), torch.as_tensor(np.asarray(order)))
    with pytest.raises(ValueError, match="have no row here"):
        split_cells(x[:10], y[:10], paths[:10], folds[0])


@pytest.mark.slow   # decodes all 2,624 cells
def test_cross_validation_pools_each_fold_s_test_cells_with_choices_inside_the_folds():
    x, y, paths, vocab = preload_cells(profile("smoke"), img_size=8)
    assert x.shape == (2624, 3, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    folds = elpv_folds(3)

    def train_fold(roles, lr):
        dls = fold_tensor_dls(x, y, paths, roles, vocab, bs=256)
        learn = learner(dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), seed=0)
        fit(learn, 1, lr)
        return Run.of(learn, dict(lr=lr), 0.0)

    run = cross_validate(train_fold, folds, lr=1e-2)
    order = np.concatenate([f.index[f["role"] == "test"] for f in folds])
    want = np.asarray([vocab.index(v) for v in elpv_roles().loc[order, "label_bin"]])
    assert np.array_equal(run.y_true, want) and run.probs.shape == (2624, 2)
    assert run.settings == dict(lr=1e-2) and len(run.extra["folds"]) == 3
    assert "tune_balanced_accuracy" in run.extra["folds"][0] and not run.has_tune
    assert set(run.history["fold"]) == {0, 1, 2} and len(run.epoch_probs) == 1
    with pytest.raises(ValueError, match="at least one"):
        pool_folds([])


def test_best_on_tune_scores_a_candidate_by_its_mean_over_seeds():
    """The single best run belongs to rate 1e-2, whose seeds average lower: the mean picks 1e-3; a diverged seed
    leaves its candidate to the seeds that finished; the test column never moves the choice."""
    rows = pd.DataFrame(dict(regime=["a"] * 4 + ["b"] * 2, lr=[1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-2],
                             seed=[0, 1, 0, 1, 0, 0], tune_balanced_accuracy=[0.80, 0.80, 0.90, 0.60, 0.5, 0.7],
                             balanced_accuracy=[0.0, 0.0, 1.0, 1.0, 1.0, 0.0], finite=[True] * 6))
    best = best_on_tune(rows, by="regime", candidates=["regime", "lr"])
    assert dict(zip(best["regime"], best["lr"])) == {"a": 1e-3, "b": 1e-2}
    assert best_on_tune(rows, by="regime")["lr"].tolist() == [1e-2, 1e-2]          # per run: the lucky seed
    assert best_on_tune(rows, candidates="regime")["regime"].item() == "a"          # 0.775 vs 0.6
    rows.loc[3, ["tune_balanced_accuracy", "finite"]] = [float("nan"), False]
    assert best_on_tune(rows, by="regime", candidates=["regime", "lr"]).iloc[0]["lr"] == 1e-2   # 0.90 alone


def _fold_run(lr: float, fold: int, tune_right: int, n_train: int = 10) -> "Run":
    """A fold's Run at rate `lr`: 4 test cells, 4 tune cells of which `tune_right` are right."""
    y = np.array([0, 1, 0, 1])
    tune_pred = np.where(np.arange(4) < tune_right, y, 1 - y)
    return Run(dict(lr=lr, part=fold), pd.DataFrame({"epoch": [1]}), y, y, np.eye(2)[y], {}, 1.0,
               extra=dict(n_train=n_train, steps=8, step_s=np.array([0.1, 0.2]), note="x"),
               tune_y=y, tune_epoch_probs=[np.eye(2)[tune_pred]])


def test_pool_per_fold_keeps_each_folds_rate_and_tune_score():
    pooled = pool_per_fold([_fold_run(1e-3, 0, 4, n_train=10), _fold_run(1e-2, 1, 2, n_train=11)])
    row = pooled.row()
    assert row["lr"] == "per fold" and row["fold_lrs"] == [1e-3, 1e-2]
    assert row["fold_tune"] == [1.0, 0.5] and row["tune_balanced_accuracy"] == 0.75
    assert row["n_train"] == 10.5 and row["steps"] == 8 and isinstance(row["steps"], int)   # equal: kept as is
    assert len(row["step_s"]) == 4 and "note" not in row and len(pooled.fold_runs) == 2


def test_at_chosen_per_fold_takes_each_folds_best_tune_run_and_releases_the_rest():
    tried = [pool_per_fold([_fold_run(1e-3, 0, 4), _fold_run(1e-3, 1, 1)]),
             pool_per_fold([_fold_run(1e-2, 0, 3), _fold_run(1e-2, 1, 2)])]
    lrs, chosen = at_chosen_per_fold(tried)
    assert lrs == [1e-3, 1e-2] and chosen.extra["fold_tune"] == [1.0, 0.5]
    assert not any(hasattr(r, "fold_runs") for r in tried)                 # the rates not chosen are released


def test_thin_roles_keeps_the_train_cells_and_about_n_of_the_others():
    fold = elpv_folds(2)[0]
    thin = thin_roles(fold, 128, 64)
    n = thin["role"].value_counts()
    assert n["train"] == (fold.role == "train").sum() and abs(n["test"] - 128) <= 6 and abs(n["tune"] - 64) <= 6
    assert thin.equals(thin_roles(fold, 128, 64)) and thin_roles(fold).equals(fold)        # seeded; 0: all


def test_preloaded_cells_are_stored_and_reloaded_identically(tmp_path):
    cfg = profile("smoke")
    x, y, paths, vocab = preload_cells(cfg, img_size=8, folder=tmp_path)
    files = list(tmp_path.iterdir())
    again = preload_cells(cfg, img_size=8, folder=tmp_path)                 # loaded, not rebuilt
    assert len(files) == 1 and list(tmp_path.iterdir()) == files
    assert torch.equal(x, again[0]) and torch.equal(y, again[1]) and paths == again[2] and vocab == again[3]
    four = preload_cells(cfg, img_size=8, task="4class", folder=tmp_path)   # other labels: another entry
    assert len(list(tmp_path.iterdir())) == 2 and torch.equal(four[0], x) and four[3] != vocab
