"""Tests for convtips_lib.topics.augment: PCA colour augmentation against numpy, every transform's shape, dtype and
seeding, bad input, policies, the policy runs and the lesson's measurements on tiny images."""
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import convtips_lib.studies.lesson03 as study
import convtips_lib.topics.augment as aug
from fastai.vision.all import TensorImage

from convtips_lib.core.data import elpv_dls, subsample
from convtips_lib.core.measure import metric_value
from convtips_lib.core.profiles import profile

S = 48   # image side for the transform tests


@pytest.fixture(scope="module")
def noise():
    """One (1, 3, S, S) image of seeded noise in [0.2, 0.8] (never clipped by a small shift)."""
    g = torch.Generator().manual_seed(0)
    return 0.2 + 0.6 * torch.rand(1, 3, S, S, generator=g)


@pytest.fixture(scope="module")
def tiny():
    """The smoke profile at 32 px: eight optimizer steps (two epochs of four) per run, two rates."""
    return profile("smoke").with_(img_size=32, bs=32, aug=dict(fracs=(0.05, 0.1), steps=8, epoch_steps=4,
                                                               lrs=(1e-3, 1e-2), strengths=(0, 1)))


# ------------------------------------------------------------------ PCA colour augmentation
def test_pca_sigma_zero_is_identity(noise):
    vals, vecs = aug.IMAGENET_PCA
    out = aug.apply_tfms([aug.PCAColor(vals, vecs, sigma=0.0)], noise.expand(4, -1, -1, -1), seed=3)
    assert torch.equal(out, noise.expand(4, -1, -1, -1))


def test_pca_shift_is_one_colour_per_image_in_the_span_of_the_eigenvectors(noise):
    vecs = torch.linalg.qr(torch.randn(3, 2, generator=torch.Generator().manual_seed(1)))[0]   # two orthonormal axes
    x = noise.expand(5, -1, -1, -1)
    shift = aug.apply_tfms([aug.PCAColor(torch.tensor([0.3, 0.1]), vecs, sigma=0.5)], x, seed=0) - x
    per_image = shift[:, :, :1, :1].flatten(1)                                   # (5, 3)
    assert torch.allclose(shift, per_image[:, :, None, None].expand_as(shift), atol=1e-6)   # same at every pixel
    assert len(torch.unique(per_image.round(decimals=5), dim=0)) == 5           # a new draw per image
    normal = torch.linalg.cross(vecs[:, 0], vecs[:, 1])                          # the axis outside the span
    assert torch.allclose(per_image @ normal, torch.zeros(5), atol=1e-6)
    assert per_image.abs().max() > 1e-3


def test_pca_shift_matches_the_formula(noise):
    vals, vecs = aug.IMAGENET_PCA
    t = aug.PCAColor(vals, vecs, sigma=0.1)
    torch.manual_seed(7)
    got = t.shifts(4)
    torch.manual_seed(7)
    a = torch.randn(4, 3) * 0.1
    want = torch.stack([sum(a[n, i] * vals[i] * vecs[:, i] for i in range(3)) for n in range(4)])
    assert torch.allclose(got, want, atol=1e-7)


def test_rgb_pca_recovers_a_known_covariance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    cov = q @ np.diag([0.04, 0.01, 0.002]) @ q.T
    pixels = rng.multivariate_normal([0.5, 0.4, 0.3], cov, size=20 * 32 * 32)   # (P, 3)
    images = torch.tensor(pixels.T.reshape(3, 20, 32, 32).transpose(1, 0, 2, 3))
    vals, vecs = aug.rgb_pca(images)
    ref_vals, ref_vecs = np.linalg.eigh(np.cov(pixels.T))
    assert np.allclose(vals.numpy(), ref_vals[::-1], rtol=1e-4)                  # numpy on the same pixels
    assert np.allclose(vals.numpy(), [0.04, 0.01, 0.002], rtol=0.05)             # the covariance we drew from
    cos = np.abs(np.sum(vecs.numpy() * q[:, [0, 1, 2]], axis=0))
    assert np.all(cos > 0.99)
    assert torch.allclose(vecs.T @ vecs, torch.eye(3), atol=1e-5)


def test_rgb_pca_one_channel_raises():
    with pytest.raises(ValueError, match="3 colour channels.*brightness"):
        aug.rgb_pca(torch.rand(2, 1, 8, 8))


def test_rgb_pca_replicated_gray_raises():
    with pytest.raises(ValueError, match="identical"):
        aug.rgb_pca(torch.rand(2, 1, 8, 8).expand(-1, 3, -1, -1))


def test_pca_color_bad_input():
    vals, vecs = aug.IMAGENET_PCA
    with pytest.raises(ValueError, match="3 colour channels"):
        aug.apply_tfms([aug.PCAColor(vals, vecs)], torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="float"):
        aug.apply_tfms([aug.PCAColor(vals, vecs)], torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="eigvecs must be"):
        aug.PCAColor(vals, vecs[:2])
    with pytest.raises(ValueError, match="sigma"):
        aug.PCAColor(vals, vecs, sigma=-0.1)


# ------------------------------------------------------------------ every transform
@pytest.mark.parametrize("name", list(aug.AUGMENTS))
def test_transform_keeps_shape_and_dtype(name, noise):
    x = noise.expand(3, -1, -1, -1).contiguous()
    out = aug.apply_tfms([aug.augment(name, aug.AUGMENTS[name].demo, img_size=S)], x, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype and type(out) is torch.Tensor


@pytest.mark.parametrize("name", list(aug.AUGMENTS))
def test_ten_seeds_ten_outputs_one_seed_one(name, noise):
    a = aug.AUGMENTS[name]
    tfm = aug.augment(name, a.demo, img_size=S)
    outs = [aug.apply_tfms([tfm], noise, seed=s) for s in range(10)]
    distinct = len({o.numpy().tobytes() for o in outs})
    assert distinct == (2 if a.discrete else 10)
    assert torch.equal(aug.apply_tfms([tfm], noise, seed=4), outs[4])


RESAMPLING = ("random resized crop", "blur", "elastic warp")   # magnitude 0 still resamples: not bit-exact


@pytest.mark.parametrize("name", [n for n in aug.AUGMENTS if n not in RESAMPLING])
def test_magnitude_zero_is_identity(name, noise):
    out = aug.apply_tfms([aug.augment(name, 0, img_size=S)], noise, seed=0)
    assert torch.allclose(out, noise, atol=1e-5)


def test_training_only(noise):
    tfms = [aug.augment(n, aug.AUGMENTS[n].demo, img_size=S) for n in ("rotation", "shear", "PCA colour", "brightness")]
    assert torch.allclose(aug.apply_tfms(tfms, noise, seed=0, split_idx=1), noise)


@pytest.mark.parametrize("name,magnitude", [("rotation", 400), ("brightness", 1.0), ("random resized crop", -0.1),
                                            ("PCA colour", 3)])
def test_magnitude_out_of_range_names_the_range(name, magnitude):
    a = aug.AUGMENTS[name]
    with pytest.raises(ValueError, match=rf"out of range \[{a.lo}, {a.hi}\].*default is {a.default}"):
        aug.augment(name, magnitude, img_size=S)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="flip horizontal.*blur"):
        aug.augment("solarize")
    with pytest.raises(ValueError, match="none.*everything"):
        aug.policy_tfms("all of them", S)
    with pytest.raises(ValueError, match="img_size"):
        aug.augment("random resized crop")


def test_augment_samples_and_table(noise):
    img = (noise[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    x = aug.augment_samples(img, "channel shift", 0.5, n=5, seed=0, img_size=32)
    assert x.shape == (5, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    table = aug.augment_table()
    assert list(table.index) == list(aug.AUGMENTS)
    assert set(table.loc[~table["one_channel"], "el_label"]) == {"n/a"}


def test_image_batch_replicates_gray():
    x = aug.image_batch([np.full((10, 20), 128, np.uint8)], 16)
    assert x.shape == (1, 3, 16, 16) and torch.allclose(x, torch.full_like(x, 128 / 255))


def test_image_batch_is_the_loaders_bilinear_squash():
    from PIL import Image
    px = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    want = np.asarray(Image.fromarray(px).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    assert torch.equal(aug.image_batch([px], 16)[0], torch.from_numpy(want).permute(2, 0, 1))


# ------------------------------------------------------------------ policies
def test_policy_strength_scales_and_caps():
    assert aug.policy_tfms("everything", S, strength=0) == []
    rot = lambda tfms: [t for t in tfms if type(t).__name__ == "Rotate"][0]  # noqa: E731
    assert rot(aug.policy_tfms("everything", S, 2.0)).aff_fs[0].keywords["max_deg"] == 20
    crop = [t for t in aug.policy_tfms("everything", S, 4.0) if "ResizedCrop" in repr(getattr(t, "tfm", ""))][0]
    assert crop.tfm.scale[0] == pytest.approx(1 - aug.AUGMENTS["random resized crop"].hi)
    flips = [t for t in aug.policy_tfms("flips", S, 3.0)]
    assert len(flips) == 2
    with pytest.raises(ValueError, match="strength"):
        aug.policy_tfms("flips", S, -1)


def _runs(y, preds: dict) -> pd.DataFrame:
    return pd.DataFrame([dict(policy=p, frac=f, strength=1.0, seed=0, y_true=y, y_pred=np.asarray(v))
                         for (p, f), v in preds.items()])


def test_aug_gain_and_gain_change_match_metric_value():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    flip = lambda k: np.where(np.arange(200) < k, 1 - y, y)  # noqa: E731   wrong on the first k images
    preds = {("none", 0.1): flip(60), ("flips", 0.1): flip(20), ("everything", 0.1): flip(30),
             ("none", 0.5): flip(20), ("flips", 0.5): flip(20), ("everything", 0.5): flip(10)}
    runs = _runs(y, preds)
    m = {k: metric_value(y, v, "accuracy") for k, v in preds.items()}
    g = {f: (m[("flips", f)] + m[("everything", f)]) / 2 - m[("none", f)] for f in (0.1, 0.5)}
    assert study.aug_gain(runs, 0.1, "accuracy").effect == pytest.approx(g[0.1])
    assert study.aug_gain(runs, metric="accuracy").effect == pytest.approx((g[0.1] + g[0.5]) / 2)
    est = study.gain_change(runs, "accuracy")
    assert est.effect == pytest.approx(g[0.1] - g[0.5]) and est.low <= est.effect <= est.high


def test_robustness_gain_matches_hand_computation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    flip = lambda k: np.where(np.arange(300) < k, 1 - y, y)  # noqa: E731
    without = {"original": flip(10), "cam a": flip(90), "cam b": flip(50)}
    with_ = {"original": flip(20), "cam a": flip(40), "cam b": flip(30)}
    acc = lambda p: metric_value(y, p, "accuracy")  # noqa: E731
    drop = lambda d, c: acc(d["original"]) - acc(d[c])  # noqa: E731
    want = np.mean([drop(without, c) - drop(with_, c) for c in ("cam a", "cam b")])
    assert study.robustness_gain(y, without, with_, "accuracy").effect == pytest.approx(want)


def _fake_run(settings, fold_lrs, fold_tune, keep):
    from convtips_lib.core.train import Run
    y = np.array([0, 1, 1, 0])
    return Run(settings, pd.DataFrame({"epoch": [0]}), y, y, np.eye(2)[y], {"balanced_accuracy": 1.0}, 0.0, None, [],
               dict(fold_lrs=fold_lrs, fold_tune=fold_tune, steps=2, learners=["L0", "L1"] if keep else None))


def _fake_cv(calls):
    """Stand-ins for `cv_policy` and `pool_per_fold` that record the calls and score each fold's tune cells by a known
    rule: fold 0 prefers the larger rate, fold 1 the smaller; strength 2 beats 1 on fold 0."""
    from types import SimpleNamespace

    def cv(cfg, cells, policy, frac, lrs, seed, strength=1.0, keep=False):
        calls.append(dict(policy=policy, frac=frac, lrs=lrs, seed=seed, strength=strength))
        per = [float(lrs)] * 2 if np.ndim(lrs) == 0 else list(lrs)
        run = _fake_run(dict(policy=policy, strength=strength, lr=per[0] if len(set(per)) == 1 else "per fold",
                             seed=seed, frac=frac), per, [per[0] * 10 + strength / 10, 1 - per[1] * 10], keep)
        run.fold_runs = [SimpleNamespace(lr=lr, fold=i, settings=run.settings) for i, lr in enumerate(per)]
        return run

    def pooled(runs, keep=False):
        calls.append(dict(pooled=[(r.fold, r.lr) for r in runs]))
        return _fake_run({**runs[0].settings, "lr": "per fold"}, [r.lr for r in runs], [0.5, 0.5], keep)
    return cv, pooled


def test_policy_grid_chooses_each_folds_rate_on_its_tune_cells(tiny, monkeypatch):
    calls = []
    cv, pooled = _fake_cv(calls)
    import convtips_lib.core.train as core_train
    monkeypatch.setattr(study, "cv_policy", cv)
    monkeypatch.setattr(core_train, "pool_per_fold", pooled)   # what at_chosen_per_fold pools the chosen runs with
    runs, search, learners = study.policy_grid(tiny, None, policies=["none"], fracs=[0.1], seeds=[0, 1],
                                               keep=[("none", 0.1)])
    assert list(search["lr"]) == [1e-3, 1e-2]                              # every rate tried with the first seed
    assert list(runs["fold_lrs"].iloc[0]) == [1e-2, 1e-3]                  # fold 0 prefers 1e-2, fold 1 1e-3
    assert calls[2] == dict(pooled=[(0, 1e-2), (1, 1e-3)])                 # the first seed: the folds' own runs
    assert [c["lrs"] for c in calls[3:]] == [[1e-2, 1e-3]]                 # the second seed trained at those rates
    assert list(runs["seed"]) == [0, 1] and learners[("none", 0.1)] == ["L0", "L1"]
    assert runs["learners"].isna().all()                                  # no Learner kept in the table


def test_strength_sweep_reuses_runs_and_uses_the_policys_rates(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "cv_policy", _fake_cv(calls)[0])
    y = np.array([0, 1, 1, 0])
    runs = pd.DataFrame([dict(policy=p, frac=0.05, seed=tiny.seed, strength=1.0, y_true=y, y_pred=pred,
                              fold_lrs=[3e-3, 1e-2], fold_tune=[0.5, 0.5], history=None)
                         for p, pred in (("none", [0, 1, 0, 0]), ("flips+crop+rotation", [0, 1, 1, 1]))])
    sweep = study.strength_sweep(tiny.with_(aug=dict(strengths=(0, 1, 2))), None, runs)
    assert list(sweep["strength"]) == [0, 1, 2] and list(sweep["policy"][:2]) == ["none", "flips+crop+rotation"]
    assert list(sweep["y_pred"].iloc[1]) == [0, 1, 1, 1] and "history" not in sweep
    assert calls == [dict(policy="flips+crop+rotation", frac=0.05, lrs=[3e-3, 1e-2], seed=tiny.seed, strength=2)]


def test_at_best_strength_scores_each_folds_own_choice():
    folds = [pd.DataFrame({"role": ["test", "test", "train"]}), pd.DataFrame({"role": ["test", "tune", "test"]})]
    y = np.array([0, 1, 1, 0])
    sweep = pd.DataFrame([dict(strength=0, fold_tune=[0.9, 0.1], y_true=y, y_pred=[0, 0, 0, 0]),
                          dict(strength=2, fold_tune=[0.2, 0.8], y_true=y, y_pred=[1, 1, 1, 1])])
    out = study.at_best_strength(sweep, folds)
    assert out["strengths"] == [0, 2] and list(out["y_pred"]) == [0, 0, 1, 1]   # fold 0's cells from strength 0


def test_camera_shift_is_torchvisions_chain(noise):
    out = aug.apply_tfms([study.camera_shift(gamma=1.5, contrast=0.6, brightness=0.7)], noise, split_idx=1)
    want = TF.adjust_brightness(TF.adjust_contrast(TF.adjust_gamma(noise, 1.5), 0.6), 0.7)
    assert torch.allclose(out, want)
    with pytest.raises(ValueError, match="> 0"):
        study.camera_shift(gamma=0)


def test_item_policy_on_a_uint8_item():
    x = TensorImage(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    out = study.item_policy(32)(x, split_idx=0)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and isinstance(out, TensorImage)


# ------------------------------------------------------------------ runs on tiny images (two optimizer steps each)
@pytest.fixture(scope="module")
def cells(tiny):
    return study.aug_cells(tiny)


@pytest.fixture(scope="module")
def run(tiny, cells):
    return study.cv_policy(tiny, cells, "flips+crop+rotation", 0.1, [1e-3, 1e-2], seed=0, keep=True)


@pytest.mark.slow
def test_cv_policy_predicts_every_cell_once_with_equal_steps(run, tiny, cells):
    row = run.row()
    test_paths = np.concatenate([f.loc[f["role"] == "test", "path"].astype(str) for f in cells.folds])
    assert sorted(test_paths) == sorted(map(str, cells.paths)) and len(row["y_pred"]) == len(cells.paths)
    assert row["fold_lrs"] == [1e-3, 1e-2] and len(row["fold_tune"]) == tiny.aug.folds
    assert row["steps"] == tiny.aug.steps and len(row["step_s"]) == tiny.aug.steps * tiny.aug.folds
    roles = cells.folds[0]
    n_train = int((subsample(roles[roles.role != "tune"].assign(is_valid=roles.role == "test"), 0.1, 0)
                   .role == "train").sum())
    assert row["n_train"] == pytest.approx(n_train, abs=2) and 0 <= row["data_share"] <= 1
    small = study.cv_policy(tiny, cells, "none", 0.05, 1e-2, seed=0)
    assert small.extra["steps"] == row["steps"]                           # fewer cells, the same steps


@pytest.mark.slow
def test_camera_eval_and_crop_probe(run):
    row, fold_learners = run.row(), run.extra["learners"]
    cams = study.camera_eval(fold_learners)
    assert list(cams) == ["original", *study.CAMERAS] and all(len(p) == len(row["y_true"]) for p in cams.values())
    assert np.array_equal(cams["original"], row["y_pred"])
    probe = study.crop_probe(fold_learners, scales=(0.2, 1.0), seed=0)
    assert list(probe["scale"]) == [0.2, 1.0] and (probe["cells"] == probe["cells"].iloc[0]).all()
    assert probe["lost"].iloc[-1] == 0          # a crop keeping the whole cell changes nothing
    assert ((probe["low"] <= probe["share"]) & (probe["share"] <= probe["high"])).all()


@pytest.mark.slow
def test_model_step_times(tiny):
    times = study.model_step_times(tiny, n=2)
    assert len(times) == 2 and (times > 0).all()


def test_pipeline_speed(tiny):
    with pytest.raises(ValueError, match="per image, 2 workers"):
        study.pipeline_speed(tiny, settings=["on a cloud"])
    speed = study.pipeline_speed(tiny, settings=["no augmentation", "per image, 1 worker",
                                                                       "per batch, on the device"], n_batches=1)
    assert list(speed["workers"]) == [0, 1, 0] and (speed["images_per_s"] > 0).all()
    assert (speed["batches"] == 1).all()


def test_elpv_dls_item_tfms_only_in_training(tiny):
    dls = elpv_dls(tiny, frac=0.05, item_tfms=[study.item_policy(24)])
    assert dls.train.one_batch()[0].shape[-1] == 24 and dls.valid.one_batch()[0].shape[-1] == 32
