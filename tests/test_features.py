"""Tests for convtips_lib.topics.features: the feature cache and heads on cached features (one Learner path)."""
import copy

import numpy as np
import pytest
import torch
from fastai.learner import Learner

import convtips_lib.core.store as store
from convtips_lib.core.data import elpv_dls, elpv_frame
from convtips_lib.core.models import pretrained
from convtips_lib.core.profiles import profile
from convtips_lib.core.store import save_tensors
from convtips_lib.core.surgery import split_at
from convtips_lib.core.train import METRICS, make_learner
from convtips_lib.topics.features import (Features, cached_features, feature_key, features_dls, fit_head,
                                          fit_head_live, fit_logreg)

LITE0 = "efficientnet_lite0"
SIZE = 32   # px: lite0 runs at any multiple of 32; small keeps the cache tests fast


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def cfg():
    return profile("smoke")


@pytest.fixture(scope="module")
def model():
    """lite0 with the shipped ImageNet weights and a 2-class head, eval mode (never mutated by tests)."""
    return pretrained(LITE0, 2).eval()


@pytest.fixture(scope="module")
def small_df():
    """A tiny balanced ELPV table: 16 rows per (split, binary label), 32 train + 32 valid."""
    df = elpv_frame()
    return df.groupby(["is_valid", "label_bin"]).sample(16, random_state=0)


def _dls(cfg, small_df, size=SIZE, frac=1.0, task="binary"):
    return elpv_dls(cfg, task=task, df=small_df, frac=frac, img_size=size)


@pytest.fixture(scope="module")
def dls(cfg, small_df):
    return _dls(cfg, small_df)


def _feats(x_train, y_train, x_valid, y_valid, vocab=("a", "b")) -> Features:
    return Features(x_train, y_train, x_valid, y_valid, list(vocab), key="synthetic", path=None, hit=False, seconds=0.0)


def _blobs(n=200, d=16, seed=0) -> Features:
    """Two well-separated Gaussian classes in d dimensions, split in half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) + 3 * (2 * y[:, None] - 1) * (torch.arange(d) < 2)
    return _feats(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:])


# ---------------------------------------------------------------- the cache

def test_cache_miss_then_hit(model, dls, tmp_path):
    a = cached_features(model, dls, folder=tmp_path)
    b = cached_features(model, dls, folder=tmp_path)
    assert (a.hit, b.hit) == (False, True)
    assert a.path == b.path and a.path.parent == tmp_path and a.path.name == a.key[:16] + ".pt"
    assert a.x_train.shape == (32, 1280) and a.x_valid.shape == (32, 1280)
    for f in ("x_train", "y_train", "x_valid", "y_valid"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert a.vocab == b.vocab == list(dls.vocab)
    assert a.y_valid.tolist() == [int(y) for _, y in dls.valid_ds]


def test_features_are_what_a_learner_sees(model, cfg, small_df, tmp_path):
    feats = cached_features(model, _dls(cfg, small_df), folder=tmp_path)
    ref = _dls(cfg, small_df)
    make_learner(ref, model=copy.deepcopy(model))  # adds the model's Normalize to the loaders
    xb, _ = ref.valid.one_batch()
    with torch.no_grad():
        want = model.eval().body(xb.as_subclass(torch.Tensor))
    assert torch.allclose(feats.x_valid[: len(want)], want, atol=1e-5)


def _perturbed(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.body.conv_stem.weight[0, 0, 0, 0] += 0.1
    return m


@pytest.mark.parametrize("change", ["size", "n", "weights", "frac", "task"])
def test_cache_invalidated_when_an_input_changes(model, cfg, small_df, dls, tmp_path, change):
    base = cached_features(model, dls, folder=tmp_path)
    other_model, other_dls, n = model, dls, "head"
    if change == "size":
        other_dls = _dls(cfg, small_df, size=SIZE + 32)
    elif change == "n":
        n = 7
    elif change == "weights":
        other_model = _perturbed(model)
    elif change == "frac":
        other_dls = _dls(cfg, small_df, frac=0.5)
    elif change == "task":
        other_dls = _dls(cfg, small_df, task="4class")
    other = cached_features(other_model, other_dls, depth=n, folder=tmp_path)
    assert not other.hit and other.key != base.key and other.path != base.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.path.name, other.path.name])


def test_key_is_stable(model, cfg, small_df, dls):
    assert feature_key(model, "head", dls) == feature_key(copy.deepcopy(model), 8, _dls(cfg, small_df))


def test_cache_leaves_no_temporary_files(model, dls, tmp_path):
    cached_features(model, dls, folder=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [feature_key(model, "head", dls)[:16] + ".pt"]


def test_a_failed_cache_write_keeps_the_features_and_leaves_no_file(model, dls, tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "replace", lambda *a, **kw: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.warns(UserWarning, match="could not store the cache entry.*disk full"):
        feats = cached_features(model, dls, folder=tmp_path)
    assert not feats.hit and feats.x_train.shape == (32, 1280) and feats.y_valid.shape == (32,)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_the_cache_entry_s_place_fails_before_extracting(model, dls, tmp_path, monkeypatch):
    import convtips_lib.topics.features as features
    (tmp_path / (feature_key(model, "head", dls)[:16] + ".pt")).mkdir()
    monkeypatch.setattr(features, "_extract", lambda *a: pytest.fail("features extracted only to be lost"))
    with pytest.raises(store.StorageError, match="a folder"):
        cached_features(model, dls, folder=tmp_path)


@pytest.mark.parametrize("garbage", [b"not a torch file", b""])
def test_corrupt_cache_file_is_rebuilt_with_a_warning(model, dls, tmp_path, garbage):
    good = cached_features(model, dls, folder=tmp_path)
    good.path.write_bytes(garbage)
    with pytest.warns(UserWarning, match=good.path.name):
        again = cached_features(model, dls, folder=tmp_path)
    assert not again.hit and torch.equal(again.x_train, good.x_train)
    assert cached_features(model, dls, folder=tmp_path).hit


def test_cache_file_for_another_key_is_not_used(model, dls, tmp_path):
    good = cached_features(model, dls, folder=tmp_path)
    save_tensors(good.path, dict(key="someone else's", x_train=torch.zeros(1)))
    with pytest.warns(UserWarning, match="rebuilding"):
        assert not cached_features(model, dls, folder=tmp_path).hit


# ---------------------------------------------------------------- heads on features

def test_fit_head_learns_separable_features():
    out = fit_head(_blobs(), epochs=5, lr=1e-2, bs=16, seed=0)
    hist = out["history"]
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5]
    assert {"train_loss", "valid_loss", "accuracy", "balanced_accuracy"} <= set(hist.columns)
    assert out["metrics"]["accuracy"] > 0.95
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]


def test_fit_head_is_seeded():
    a, b = (fit_head(_blobs(), epochs=2, seed=3) for _ in range(2))
    losses = lambda out: out["history"].drop(columns="seconds")  # noqa: E731
    assert losses(a).equals(losses(b))
    assert not losses(a).equals(losses(fit_head(_blobs(), epochs=2, seed=4)))


def test_fit_head_trains_the_rest_of_the_model(model, dls, tmp_path):
    feats = cached_features(model, dls, depth=7, folder=tmp_path)
    assert feats.x_train.shape == (32, 192, 1, 1)
    _, rest = split_at(copy.deepcopy(model), 7)
    before = [p.clone() for p in rest.parameters()]
    out = fit_head(feats, rest=rest, epochs=1, lr=1e-3)
    assert 0 <= out["metrics"]["accuracy"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, rest.parameters()))


def test_live_and_cached_heads_agree(model, dls, tmp_path):
    body_before = copy.deepcopy(model.body.state_dict())
    cached = fit_head(cached_features(model, dls, folder=tmp_path), epochs=2, lr=3e-3, bs=16, seed=1)
    live = fit_head_live(model, dls, epochs=2, lr=3e-3, bs=16, seed=1)
    assert np.allclose(cached["history"]["train_loss"], live["history"]["train_loss"], atol=1e-4)
    assert np.array_equal(cached["y_pred"], live["y_pred"])       # same Learner, same batches: image by image
    assert cached["metrics"] == pytest.approx(live["metrics"])
    after = model.body.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())  # frozen: BN stats untouched too
    assert model.training is False
    assert all(p.requires_grad for p in model.body.parameters())   # the user's model is not re-flagged


def test_fit_logreg(model, dls, tmp_path):
    assert fit_logreg(_blobs())["metrics"]["accuracy"] > 0.95
    out = fit_logreg(cached_features(model, dls, depth=7, folder=tmp_path))  # (N, C, H, W) features are flattened
    assert set(out["metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro"} and out["seconds"] >= 0


def test_fewer_samples_than_a_batch_still_train():
    feats = _blobs(n=20)
    out = fit_head(feats, epochs=1, bs=64)
    assert len(features_dls(feats, bs=64).train) == 1 and np.isfinite(out["history"]["train_loss"]).all()


def test_fit_head_rejects_zero_epochs():
    with pytest.raises(ValueError, match="epochs"):
        fit_head(_blobs(), epochs=0)


def test_heads_train_through_a_fastai_learner():
    out = fit_head(_blobs(), epochs=2, lr=1e-2, bs=16, seed=0)
    assert isinstance(out["learn"], Learner)
    assert set(METRICS) <= set(out["history"].columns) and len(out["epoch_seconds"]) == 2
    assert len(out["y_pred"]) == len(out["y_true"]) == 100


def test_features_dls_batches_like_an_image_loader():
    dls = features_dls(_blobs(), bs=16)
    assert dls.c == 2 and list(dls.vocab) == ["a", "b"]
    assert len(dls.train) == 100 // 16 and len(dls.valid) == -(-100 // 64)   # drop-last train; full valid, 4 x bs


def test_cached_features_deprecated_names_still_work(model, dls, tmp_path):
    with pytest.warns(DeprecationWarning, match="depth"):
        a = cached_features(model, dls, n=7, folder=tmp_path)
    with pytest.warns(DeprecationWarning, match="folder"):
        b = cached_features(model, dls, depth=7, cache_dir=tmp_path)
    assert a.key == b.key and b.hit


def _roles(small_df):
    """`small_df` with roles: its 32 valid rows test, 8 of its training rows tune, the other 24 train."""
    train = small_df.index[~small_df["is_valid"]]
    role = np.where(small_df["is_valid"], "test", "train").astype(object)
    role[small_df.index.get_indexer(train[:8])] = "tune"
    return small_df.assign(role=role)


def test_tune_cells_are_cached_keyed_and_reach_the_head(model, cfg, small_df, dls, tmp_path):
    df = _roles(small_df)
    tuned = elpv_dls(cfg, df=df, frac=1.0, img_size=SIZE, tune=True)
    feats = cached_features(model, tuned, folder=tmp_path)
    assert feats.x_tune.shape == (8, feats.x_train.shape[1]) and len(feats.x_train) == 24
    assert feature_key(model, "head", tuned) != feature_key(model, "head", dls)
    again = cached_features(model, tuned, folder=tmp_path)
    assert again.hit and torch.equal(again.x_tune, feats.x_tune)
    run = fit_head(feats, epochs=1, seed=0)
    assert len(run["learn"].history.tune_probs) == 1


def test_the_tune_loader_is_normalised_like_the_valid_loader(model, cfg, small_df):
    from fastai.vision.all import Normalize
    df = _roles(small_df)
    tuned = elpv_dls(cfg, df=df, frac=1.0, img_size=SIZE, tune=True)
    make_learner(tuned, LITE0, model=copy.deepcopy(model))
    norms = [[t for t in dl.after_batch.fs if isinstance(t, Normalize)] for dl in (tuned.valid, tuned.tune)]
    assert len(norms[0]) == len(norms[1]) == 1 and torch.equal(norms[0][0].mean, norms[1][0].mean)
    xb_valid, xb_tune = tuned.valid.one_batch()[0], tuned.tune.one_batch()[0]
    assert abs(float(xb_valid.mean()) - float(xb_tune.mean())) < 0.5   # both standardised, not raw [0, 1]


@pytest.mark.slow   # features of all 2,624 cells
def test_cross_validated_heads_cut_each_fold_from_one_feature_table(model, cfg, tmp_path):
    from convtips_lib.core.data import elpv_folds
    from convtips_lib.topics.features import cell_features, fold_features
    x, y, paths, vocab = cell_features(model, cfg, img_size=SIZE, folder=tmp_path)
    assert x.shape == (2624, 1280) and len(set(paths)) == 2624
    fold = elpv_folds()[0]
    feats = fold_features(x, y, paths, fold, vocab)
    n = fold["role"].value_counts()
    assert (len(feats.y_train), len(feats.y_valid), len(feats.y_tune)) == (n["train"], n["test"], n["tune"])
    first_test = paths.index(str(fold.loc[fold["role"] == "test", "path"].iloc[0]))
    assert torch.equal(feats.x_valid[0], x[first_test])
    assert cell_features(model, cfg, img_size=SIZE, folder=tmp_path)[0].equal(x)   # from the cache
