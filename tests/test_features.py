"""Tests for convtips_lib.features: body stages, split points, the feature cache and the shallow heads."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import convtips_lib.results as results
from convtips_lib.data import elpv_dls, elpv_frame
from convtips_lib.features import (Features, _save, body_stages, cached_features, default_cache_dir, feature_key,
                                   fit_head, fit_head_live, fit_logreg, split_at)
from convtips_lib.models import OFFLINE_WEIGHTS, freeze, param_groups, pretrained
from convtips_lib.profiles import profile
from convtips_lib.train import make_learner

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
    return elpv_dls(cfg, task=task, df=small_df, frac=frac, size=size)


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


# ---------------------------------------------------------------- stages and split points

def test_stages_compose_to_body(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = x
        for stage in body_stages(model):
            out = stage(out)
        assert out.shape == (2, 1280)
        assert torch.allclose(out, model.body(x), atol=1e-5)


@pytest.mark.parametrize("name", list(OFFLINE_WEIGHTS))
def test_stages_are_the_param_groups(name):
    net = pretrained(name, 2, pretrained=False)
    stages, groups = body_stages(net), param_groups(net)
    assert len(stages) == len(groups) - 1
    for stage, group in zip(stages, groups):
        assert {id(p) for p in stage.parameters()} == {id(p) for p in group}


@pytest.mark.parametrize("n", [0, 3, 7])
def test_freezing_n_groups_freezes_the_first_n_stages(n):
    net = pretrained(LITE0, 2, pretrained=False)
    assert freeze(net, n) == n
    for i, stage in enumerate(body_stages(net)):
        assert all(p.requires_grad == (i >= n) for p in stage.parameters())


@pytest.mark.parametrize("n", [0, 1, 4, 7, 8, None])
def test_split_at_composes_to_model(model, n):
    prefix, rest = split_at(model, n)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rest(prefix(x)), model(x), atol=1e-5)
    if n in (8, None):
        assert prefix(x).shape == (2, 1280)


@pytest.mark.parametrize("n", [-1, 9, 2.0, True])
def test_split_at_rejects_bad_n(model, n):
    with pytest.raises(ValueError, match="0..8"):
        split_at(model, n)


def test_unsupported_body_names_the_alternative():
    net = pretrained("resnet18", 2, pretrained=False).eval()
    with pytest.raises(TypeError, match="n=None"):
        body_stages(net)
    prefix, rest = split_at(net, None)  # pooled features work for any architecture
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rest(prefix(x)), net(x), atol=1e-5)


# ---------------------------------------------------------------- the cache

def test_cache_miss_then_hit(model, dls, tmp_path):
    a = cached_features(model, dls, cache_dir=tmp_path)
    b = cached_features(model, dls, cache_dir=tmp_path)
    assert (a.hit, b.hit) == (False, True)
    assert a.path == b.path and a.path.parent == tmp_path and a.path.name == a.key[:16] + ".pt"
    assert a.x_train.shape == (32, 1280) and a.x_valid.shape == (32, 1280)
    for f in ("x_train", "y_train", "x_valid", "y_valid"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert a.vocab == b.vocab == list(dls.vocab)
    assert a.y_valid.tolist() == [int(y) for _, y in dls.valid_ds]


def test_features_are_what_a_learner_sees(model, cfg, small_df, tmp_path):
    feats = cached_features(model, _dls(cfg, small_df), cache_dir=tmp_path)
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
    base = cached_features(model, dls, cache_dir=tmp_path)
    other_model, other_dls, n = model, dls, None
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
    other = cached_features(other_model, other_dls, n=n, cache_dir=tmp_path)
    assert not other.hit and other.key != base.key and other.path != base.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.path.name, other.path.name])


def test_key_is_stable(model, cfg, small_df, dls):
    assert feature_key(model, None, dls) == feature_key(copy.deepcopy(model), 8, _dls(cfg, small_df))


def test_cache_leaves_no_temporary_files(model, dls, tmp_path):
    cached_features(model, dls, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [feature_key(model, None, dls)[:16] + ".pt"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.pt"
    _save(path, dict(key="old", x=torch.zeros(3)))
    before = path.read_bytes()

    def boom(*a, **kw):
        raise KeyboardInterrupt("interrupted")
    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        _save(path, dict(key="new", x=torch.ones(3)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


def test_interrupted_build_leaves_no_cache_file(model, dls, tmp_path, monkeypatch):
    monkeypatch.setattr(results.os, "replace", lambda *a, **kw: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        cached_features(model, dls, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("garbage", [b"not a torch file", b""])
def test_corrupt_cache_file_is_rebuilt_with_a_warning(model, dls, tmp_path, garbage):
    good = cached_features(model, dls, cache_dir=tmp_path)
    good.path.write_bytes(garbage)
    with pytest.warns(UserWarning, match=good.path.name):
        again = cached_features(model, dls, cache_dir=tmp_path)
    assert not again.hit and torch.equal(again.x_train, good.x_train)
    assert cached_features(model, dls, cache_dir=tmp_path).hit


def test_cache_file_for_another_key_is_not_used(model, dls, tmp_path):
    good = cached_features(model, dls, cache_dir=tmp_path)
    _save(good.path, dict(key="someone else's", x_train=torch.zeros(1)))
    with pytest.warns(UserWarning, match="rebuilding"):
        assert not cached_features(model, dls, cache_dir=tmp_path).hit


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVTIPS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("CONVTIPS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "convtips" / "features"


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
    assert a["history"].equals(b["history"])
    assert not a["history"].equals(fit_head(_blobs(), epochs=2, seed=4)["history"])


def test_fit_head_trains_the_rest_of_the_model(model, dls, tmp_path):
    feats = cached_features(model, dls, n=7, cache_dir=tmp_path)
    assert feats.x_train.shape == (32, 192, 1, 1)
    _, rest = split_at(copy.deepcopy(model), 7)
    before = [p.clone() for p in rest.parameters()]
    out = fit_head(feats, rest=rest, epochs=1, lr=1e-3)
    assert 0 <= out["metrics"]["accuracy"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, rest.parameters()))


def test_live_and_cached_heads_agree(model, dls, tmp_path):
    body_before = copy.deepcopy(model.body.state_dict())
    cached = fit_head(cached_features(model, dls, cache_dir=tmp_path), epochs=2, lr=3e-3, bs=16, seed=1)
    live = fit_head_live(model, dls, epochs=2, lr=3e-3, bs=16, seed=1)
    assert np.allclose(cached["history"]["train_loss"], live["history"]["train_loss"], atol=1e-4)
    assert cached["metrics"] == pytest.approx(live["metrics"], abs=1 / 32 + 1e-9)
    after = model.body.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())  # frozen: BN stats untouched too
    assert model.training is False


def test_fit_logreg(model, dls, tmp_path):
    assert fit_logreg(_blobs())["metrics"]["accuracy"] > 0.95
    out = fit_logreg(cached_features(model, dls, n=7, cache_dir=tmp_path))  # (N, C, H, W) features are flattened
    assert set(out["metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro"} and out["seconds"] >= 0


def test_fit_head_rejects_zero_epochs():
    with pytest.raises(ValueError, match="epochs"):
        fit_head(_blobs(), epochs=0)
