"""Tests for convtips_lib.topics.handcrafted: HOG and LBP features (skimage as reference), caching and the linear SVM."""
import numpy as np
import pytest
from skimage.feature import hog, local_binary_pattern
from sklearn.datasets import make_classification

import convtips_lib.topics.handcrafted as hc
from convtips_lib.core.data import BadImageError, elpv_frame
from convtips_lib.topics.handcrafted import (KINDS, gray_images, handcrafted_features, hog_features, lbp_features,
                                      svm_baseline)


@pytest.fixture(scope="module")
def paths():
    """Eight ELPV cell images (4 functional, 4 defective)."""
    df = elpv_frame()
    return list(df.groupby("label_bin").sample(4, random_state=0)["path"])


@pytest.fixture(scope="module")
def images(paths):
    return gray_images(paths, 64)


def test_gray_images(images, paths):
    assert images.shape == (8, 64, 64) and images.dtype == np.float32
    assert 0 <= images.min() < images.max() <= 1
    from PIL import Image
    ref = np.asarray(Image.open(paths[5]).convert("RGB").resize((64, 64), Image.BILINEAR).convert("L")) / 255
    assert np.allclose(images[5], ref, atol=1e-6)                     # PIL's bilinear resize, then gray


def test_hog_shape_matches_skimage_and_is_deterministic(images):
    x = hog_features(images)
    assert x.shape == (8, 7 * 7 * 2 * 2 * 9)  # 8x8 cells of 8 px, 2x2 blocks, 9 orientations
    ref = hog(images[3], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
    assert np.allclose(x[3], ref, atol=1e-6)
    assert np.array_equal(x, hog_features(images))
    assert not np.allclose(x[0], x[1])


def test_hog_cell_size_changes_the_dimension(images):
    assert hog_features(images[:2], pixels_per_cell=16).shape == (2, 3 * 3 * 2 * 2 * 9)


def _lbp_reference(im, P, R, grid):
    codes = local_binary_pattern(np.rint(im * 255).astype(np.uint8), P, R, method="uniform").astype(int)
    cells = [c for row in np.array_split(codes, grid, axis=0) for c in np.array_split(row, grid, axis=1)]
    return np.concatenate([np.bincount(c.ravel(), minlength=P + 2) / c.size for c in cells])


@pytest.mark.parametrize("P,R,grid,size", [(8, 1, 4, 64), (16, 2, 3, 50)])
def test_lbp_matches_a_per_cell_reference(paths, P, R, grid, size):
    ims = gray_images(paths[:3], size)
    x = lbp_features(ims, P=P, R=R, grid=grid)
    assert x.shape == (3, grid * grid * (P + 2))
    assert np.allclose(x.reshape(3, grid * grid, P + 2).sum(-1), 1)  # one histogram per cell
    for i in range(3):
        assert np.allclose(x[i], _lbp_reference(ims[i], P, R, grid))
    assert np.array_equal(x, lbp_features(ims, P=P, R=R, grid=grid))


def test_features_need_an_image_stack():
    with pytest.raises(ValueError, match="gray_images"):
        hog_features(np.zeros((64, 64)))


@pytest.mark.parametrize("kind,dim", [("hog", 1764), ("lbp", 160), ("hog+lbp", 1924)])
def test_handcrafted_features_kinds(paths, kind, dim):
    x = handcrafted_features(paths[:2], img_size=64, kind=kind)
    assert x.shape == (2, dim) and x.dtype == np.float32


def test_handcrafted_features_are_hog_then_lbp_of_the_gray_images(paths):
    ims = gray_images(paths[:2], 48)
    both = handcrafted_features(paths[:2], img_size=48)
    assert np.allclose(both, np.concatenate([hog_features(ims), lbp_features(ims)], axis=1), atol=1e-6)


def test_deprecated_size_still_works(paths):
    with pytest.warns(DeprecationWarning, match="img_size"):
        old = handcrafted_features(paths[:2], size=32, kind="lbp")
    assert np.array_equal(old, handcrafted_features(paths[:2], img_size=32, kind="lbp"))


def test_unknown_kind_lists_the_choices(paths):
    with pytest.raises(ValueError, match="hog\\+lbp") as info:
        handcrafted_features(paths[:1], kind="sift")
    assert str(info.value).endswith(", ".join(KINDS))        # every kind the function accepts


def test_corrupt_image_names_the_file(paths, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(BadImageError, match="broken.png"):
        handcrafted_features([paths[0], bad], img_size=32)


def test_cache_hit_miss_and_keys(paths, tmp_path, monkeypatch):
    x = handcrafted_features(paths, img_size=32, cache=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("hc_")
    monkeypatch.setattr(hc, "_compute", lambda *a, **kw: pytest.fail("a cache hit must not recompute"))
    assert np.array_equal(handcrafted_features(paths, img_size=32, cache=tmp_path), x)
    monkeypatch.undo()
    handcrafted_features(paths, img_size=48, cache=tmp_path)
    handcrafted_features(paths, img_size=32, cache=tmp_path, lbp_kw=dict(P=16, R=2))
    handcrafted_features(paths[:-1], img_size=32, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4
    assert np.array_equal(handcrafted_features(paths, img_size=32), x)  # cache=False computes the same


def test_svm_beats_chance_on_synthetic_data():
    X, y = make_classification(n_samples=400, n_features=40, n_informative=5, random_state=0)
    out = svm_baseline(X[:300], y[:300], X[300:], y[300:])
    assert set(out["metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro"}
    assert out["metrics"]["accuracy"] > 0.75 and out["seconds"] >= 0
    assert np.array_equal(out["y_true"], y[300:]) and np.array_equal(out["y_pred"], out["model"].predict(X[300:]))
    assert out["metrics"]["accuracy"] == pytest.approx((out["y_pred"] == y[300:]).mean())
    weighted = svm_baseline(X[:300], y[:300], X[300:], y[300:], C=0.1, class_weight="balanced")
    assert weighted["metrics"]["balanced_accuracy"] > 0.75


def test_svm_on_shuffled_labels_is_near_chance():
    X, y = make_classification(n_samples=400, n_features=40, n_informative=5, random_state=0)
    y_shuffled = np.random.default_rng(0).permutation(y)
    assert svm_baseline(X[:300], y_shuffled[:300], X[300:], y_shuffled[300:])["metrics"]["accuracy"] < 0.65
